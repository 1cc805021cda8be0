"""``fit``: train any model/guide pair on data in one call and diagnose it, as ``SVI.run`` does in
numpyro, with the experiment files' defaults and checks.

>>> import torch, ppl_vae
>>> from ppl_vae.models import vae
>>> from ppl_vae.guides import GaussianGuide
>>> model = vae((6,), latent_dim=2, hidden=[8])
>>> x = torch.bernoulli(torch.full((40, 6), 0.3), generator=torch.Generator().manual_seed(0))
>>> result = ppl_vae.fit(model, GaussianGuide(model), x, epochs=2, device="cpu", diagnostics=None)
>>> [row["epoch"] for row in result.history], len(result.data.test)
([1, 2], 4)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import get_args

import torch

from ppl_vae.data.datasets import Binarize, Dataset, split
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation.collapse import diagnose
from ppl_vae.infer.config import DiagnosticsConfig, TrainConfig
from ppl_vae.infer.training import Trainer

__all__ = ["fit", "Fit"]

#: what ``fit`` diagnoses by default: ``diagnose``'s defaults (500 held-out rows, K = 200)
DIAGNOSE = DiagnosticsConfig()


@dataclass
class Fit:
    """What ``fit`` returns.

    :param model, guide: the trained pair, as the trainer runs it (a user's Pyro code wrapped by
        ``infer.pairs.as_pair``; the toolkit's own pairs unchanged), on the training device.
    :param history: one row per scored epoch (``Trainer.fit``): training objective, train and
        held-out -ELBO with its reconstruction and KL terms, nats per example.
    :param diagnostics: ``evaluation.collapse.diagnose`` on the held-out split (-ELBO terms,
        importance-weighted log p(x), active units, mutual information), or ``{}`` where not asked for.
    :param data: the data as trained on, with its held-out split, on the training device.
    :param trainer: the ``Trainer``, to train on (``trainer.config`` has more epochs: ``trainer.fit()``),
        take single steps (``trainer.train_step``) or ``save`` a checkpoint.
    """

    model: object
    guide: object
    history: list[dict]
    diagnostics: dict
    data: Dataset
    trainer: Trainer


def as_dataset(data: Dataset | torch.Tensor, held_out: float | None = None, binarize: Binarize | None = None,
               seed: int = 0) -> Dataset:
    """``data`` as a ``Dataset``: one is returned as it is (its split and binarisation are its own); a
    tensor ``[N, *data_shape]`` is shuffled with ``seed`` and ``held_out`` of its rows (default 0.1)
    held out (0: none; the held-out scores are then those of the training rows)."""
    if isinstance(data, Dataset):
        if held_out is not None or binarize is not None:
            raise ConfigError("held_out and binarize apply to tensor data; a Dataset has its own split and "
                              "binarisation: leave them out, or pass the tensor")
        return data
    held_out, binarize = 0.1 if held_out is None else held_out, binarize or "none"
    if binarize not in get_args(Binarize):
        raise ConfigError(f"binarize = {binarize!r} is not one of {', '.join(get_args(Binarize))}")
    if not 0 <= held_out < 1:
        raise ConfigError(f"held_out = {held_out!r} is out of range: the share of rows held out, in [0, 1)")
    if not isinstance(data, torch.Tensor) or data.ndim < 2:
        raise ConfigError(f"fit takes a ppl_vae.data.Dataset or a tensor [N, *data_shape], not {type(data).__name__}"
                          f"{' of shape ' + str(tuple(data.shape)) if isinstance(data, torch.Tensor) else ''}: "
                          "put one example per row")
    if binarize == "static":  # one draw, kept: the data are binary from here on
        data = torch.bernoulli(data, generator=torch.Generator(device=data.device).manual_seed(seed))
    if held_out == 0:
        return Dataset("tensor", data, data, binarize)
    train, test, _, _ = split(data, None, held_out, seed)
    return Dataset("tensor", train, test, binarize)


def fit(model, guide, data: Dataset | torch.Tensor, *, held_out: float | None = None, binarize: Binarize | None = None,
        device: str | torch.device = "auto", diagnostics: DiagnosticsConfig | None = DIAGNOSE,
        progress: bool = False, **train_options) -> Fit:
    """Train ``model``/``guide`` on ``data`` with the ELBO (any pair ``pyro.infer.SVI`` accepts), then
    diagnose it on the held-out split.

    :param data: a ``Dataset``, or a tensor ``[N, *data_shape]`` of which ``held_out`` (default 0.1)
        is held out, shuffled with a fixed seed so every training seed sees the same split (as an
        experiment file's ``data.seed`` is apart from ``train.seed``).
    :param binarize: for tensor data under a Bernoulli likelihood: ``"dynamic"`` draws binary x from
        the pixel intensities for every batch, ``"static"`` once (``"none"``, the default: the data
        must be 0/1). A ``Dataset`` brings its own split and binarisation.
    :param device: ``"auto"`` (CUDA when torch sees a GPU, else the CPU), ``"cpu"`` or ``"cuda"``.
    :param diagnostics: what ``diagnose`` computes (rows, importance samples); ``None`` skips it.
    :param train_options: ``TrainConfig`` fields (``epochs``, ``lr``, ``batch_size``, ``estimator``,
        ``kl_weight``, ``seed``, ...); each is range-checked.
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(train_options) - known)
    if unknown:
        raise ConfigError(f"fit got unknown training option(s) {', '.join(unknown)}: the options are TrainConfig's "
                          f"fields: {', '.join(sorted(known))}")
    trainer = Trainer(model, guide, as_dataset(data, held_out, binarize), TrainConfig(**train_options), device,
                      progress)
    history = trainer.fit()
    found = {} if diagnostics is None else diagnose(trainer.model, trainer.guide, trainer.data.test_eval,
                                                    diagnostics, trainer.diagnose_kl_in_closed_form,
                                                    trainer.test_fields)
    return Fit(trainer.model, trainer.guide, history, found, trainer.data, trainer)
