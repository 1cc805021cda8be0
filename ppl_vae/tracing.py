"""Tracing helpers every layer shares: run a model/guide pair, its prior, or its decoder once and read
the sites (Pyro's ``poutine.trace``, ``replay`` and ``condition``). The sites are the contract between a
model and its guide; these helpers know nothing of training or estimators.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample


def observed_site(model) -> str:
    """The site where ``model`` observes the data: ``"x"`` for the toolkit's models, else discovered
    (``pairs.Program.observed_site``)."""
    return getattr(model, "observed_site", "x")


def global_sites(model) -> tuple[str, ...]:
    """The model's latent sites shared by all data (none for the toolkit's models)."""
    return tuple(getattr(model, "global_sites", ()))


def trace_pair(model, guide, *args, **kwargs):
    """Run ``guide``, then ``model`` on the guide's latents: (model trace, guide trace), plate sites pruned."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


@torch.no_grad()
def reconstruct(model, guide, x: torch.Tensor) -> torch.Tensor:
    """Mean of p(x | z) at z ~ q(z | x): the pair's reconstruction of ``x``."""
    return trace_pair(model, guide, x)[0].nodes[observed_site(model)]["fn"].mean.reshape(x.shape)


def model_device(model) -> torch.device:
    """Where the model's parameters and buffers are (the CPU for a model with none)."""
    return next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))


@torch.no_grad()
def prior_sites(model, n: int = 1, device: str | torch.device | None = None, draw: bool = True) -> dict[str, dict]:
    """The model's latent sample sites, in model order, from one run of its prior for ``n`` placeholder
    data (on ``device``, default: where the model's tensors are): each site's ``fn`` and ``value``.

    :param draw: draw the latents; ``False`` holds each at zero (its ``fn`` is still the model's),
        which uses no random numbers.
    """
    device = model_device(model) if device is None else device
    placeholder = torch.zeros(n, *model.data_shape, device=device)  # the latents do not depend on x
    program = model if draw else _HeldAtZero(device)(model)
    trace = prune_subsample_sites(poutine.trace(program).get_trace(placeholder))
    return {name: site for name, site in trace.nodes.items() if site["type"] == "sample"
            and not site["is_observed"] and name not in global_sites(model)}


class _HeldAtZero(Messenger):
    """Every latent site takes the value 0 instead of a draw: an integer 0 where its values are
    integers (a class), else a float 0 of the site's shape."""

    def __init__(self, device: torch.device | str):
        super().__init__()
        self.device = device

    def _pyro_sample(self, msg):
        if not msg["is_observed"] and msg["value"] is None and not site_is_subsample(msg):
            fn, support = msg["fn"], msg["fn"].support
            while hasattr(support, "base_constraint"):  # constraints.independent(...)
                support = support.base_constraint
            integer = type(support).__name__.startswith("_Integer")
            msg["value"] = torch.zeros(fn.batch_shape + fn.event_shape, device=self.device,
                                       dtype=torch.long if integer else None)


def prior_draws(model, n: int, device: str | torch.device | None = None) -> dict[str, torch.Tensor]:
    """``n`` draws z ~ p(z) of every latent site, ``{site: [n, D]}`` (a hierarchical prior's marginals)."""
    return {name: site["value"] for name, site in prior_sites(model, n, device).items()}


@torch.no_grad()
def sample_prior(model, n: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Means of p(x | z) for ``n`` draws z ~ p(z): what the model generates."""
    return decode(model, {}, n, device)


@torch.no_grad()
def decode(model, latents: dict[str, torch.Tensor], n: int | None = None,
           device: str | torch.device | None = None, draw: bool = False) -> torch.Tensor:
    """Means of p(x | z) with the latent sites in ``latents`` held at the given values ``[n, D]``
    (the others drawn from the model), for ``n`` rows (default: the values' rows); ``draw``: a draw
    x ~ p(x | z) instead (what an autoregressive decoder makes up given z)."""
    first = next(iter(latents.values()), None)
    if n is None and first is None:
        raise ValueError("decode needs latent values or n, the number of rows")
    n = len(first) if n is None else n
    if device is None:  # where the given values are, else where the model's tensors are
        device = first.device if first is not None else model_device(model)
    placeholder = torch.zeros(n, *model.data_shape, device=device)  # p(x | z) does not depend on the value
    trace = poutine.trace(poutine.condition(model, data=latents)).get_trace(placeholder)
    fn = trace.nodes[observed_site(model)]["fn"]
    return (fn.sample() if draw else fn.mean).reshape(placeholder.shape)

