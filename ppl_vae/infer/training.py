"""One thin SVI loop for any model/guide pair.

The estimator turns the pair into an ``ELBOModule`` (a ``torch.nn.Module`` whose ``forward(x)`` is
the loss and whose ``parameters()`` are the model's and the guide's), and a plain ``torch.optim.Adam``
steps it. Any pair that ``pyro.infer.SVI`` runs is taken (``pairs.as_pair``): its parameters are
found as Pyro finds them and kept in a param store of the pair's own, so two pairs never share
them, and Pyro's global store and settings are left alone. Data stay on the training device and
batches are drawn by index; losses are read back once per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from ppl_vae.data.corruption import corrupted_inputs
from ppl_vae.data.datasets import Dataset
from ppl_vae.errors import ConfigError, IncompatiblePairError
from ppl_vae.infer.bounds import evaluate
from ppl_vae.infer.capture import TrainingLoss
from ppl_vae.infer.config import TrainConfig
from ppl_vae.infer.handlers import FreeBitsRelease, KLSchedule
from ppl_vae.infer.information import latent_information
from ppl_vae.infer.nonfinite import EpochSnapshot, step_error, unexplained_error
from ppl_vae.infer.pairs import Program, as_pair, requested_fields
from ppl_vae.infer.random_state import preserved_rng, rng_state, set_rng_state
from ppl_vae.io import load_tensors, save_tensors
from ppl_vae.registry import ESTIMATORS

__all__ = ["Trainer", "adam", "cpu_threads", "resolve_device"]

#: train-set examples scored per epoch (a fixed subset keeps large sets cheap)
TRAIN_EVAL_SIZE = 10_000
#: held-out examples over which a history row measures I(x; z) and KL(q(z) || p(z)) (``track_information``)
INFORMATION_ROWS = 500
#: the aggressive schedule as He et al.'s code runs it (github.com/jxhe/vae-lagging-encoder, image.py): at
#: most 99 encoder steps per decoder step, stopped once their mean loss over 10 steps rises; the phase
#: ends when the held-out I(x; z) has fallen short of its best so far 5 times
AGGRESSIVE_MAX_INNER, AGGRESSIVE_WINDOW, AGGRESSIVE_PATIENCE = 100, 10, 5


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when torch sees a GPU, else the CPU; ``"cuda"`` without one is a ``ConfigError``."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"device {str(name)!r} is not one torch knows: use auto, cpu or cuda") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(name)!r} was asked for, but torch sees no CUDA device: use cpu or auto")
    return device


@contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` within the block (0: left as they are), then restored.
    Float reductions split differently over another count of threads, so a run's numbers depend on
    it: ``train.threads`` makes it part of a cell's configuration, not of how the grid was scheduled."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def adam(params, lr: float) -> torch.optim.Adam:
    """torch's Adam, fused into one kernel over all parameters where the device supports it
    (about 5x faster than the per-tensor loop for a 784-512-512-32 VAE on a CPU), else the default."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # fused kernels need floating-point parameters on a supported device
        return torch.optim.Adam(params, lr=lr)


class Trainer:
    """Fits ``model``/``guide`` to ``data`` by stochastic gradient on the estimator's bound.

    Per epoch it records the training objective and, for the train subset and the held-out set,
    the negative ELBO with its reconstruction and KL terms (per latent site and dimension), in
    nats per example. ``save``/``load`` give exact resume: parameters, optimiser and schedule
    state, RNG state, step and history, loadable with ``torch.load(weights_only=True)``.

    :param device: ``"auto"`` (CUDA when torch sees a GPU, else the CPU), ``"cpu"`` or ``"cuda"``.
    :param progress: show a progress bar over epochs.
    """

    def __init__(self, model, guide, data: Dataset, config: TrainConfig | None = None,
                 device: str | torch.device = "auto", progress: bool = False):
        self.config = config = config or TrainConfig()
        self.device = resolve_device(device)
        _check_data(model, data)
        #: the data fields the pair takes as keywords beside x (``Dataset.train_fields``), in the data's order
        self.fields = requested_fields(model, guide, data.train_fields, f"data {data.name!r}")
        # any pair SVI runs; its parameters made
        model, guide = as_pair(model, guide, data.train_eval[:3], data.batch_fields(slice(3), self.fields))
        if isinstance(model, Program):
            model.data_size = len(data.train)  # the share of the global sites' KL in a minibatch
            if model.sites.summed_out and config.estimator != "enum":
                raise IncompatiblePairError(
                    f"the model's discrete site(s) {', '.join(map(repr, model.sites.summed_out))} are marked for "
                    f"enumeration and not sampled by the guide, which only estimator 'enum' sums out; estimator "
                    f"{config.estimator!r} would score them as drawn from the prior: use estimator 'enum'")
            if model.global_sites and config.estimator == "iw":
                raise IncompatiblePairError(
                    f"estimator 'iw' takes a log-mean-exp per datapoint, but the pair's latent site(s) "
                    f"{', '.join(map(repr, model.global_sites))} are shared by all data: use estimator 'mc'")
        self.model, self.guide = model.to(self.device), guide.to(self.device)
        self.data, self.progress = data.to(self.device), progress
        self.loss_fn = ESTIMATORS[config.estimator](config.num_particles, config.free_bits)(self.model, self.guide)
        self.analytic_kl = config.estimator == "analytic"
        n = len(self.data.train)
        self.batch_size = min(config.batch_size or n, n)
        self.steps_per_epoch = math.ceil(n / self.batch_size)
        total = config.epochs * self.steps_per_epoch
        self.optimizer = adam(self.loss_fn.parameters(), config.lr)
        gamma = (config.lr_final / config.lr) ** (1 / total) if config.lr_final else 1.0
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma)
        self.loss = TrainingLoss(self.loss_fn, config.capture, config.free_bits_sites, config.compile,
                                 getattr(self.model, "global_sites", ()), len(self.data.train),
                                 kl_weighted=getattr(self.loss_fn.elbo, "takes_kl_weight", True),
                                 cuda_graphs=config.cuda_graphs)
        self.kl_weight = torch.zeros((), device=self.device)  # inputs of the captured loss, set each step
        self.scale = torch.ones((), device=self.device, dtype=self.data.train.dtype)
        self.release = torch.ones((), device=self.device, dtype=self.data.train.dtype)
        self.free_bits_release = FreeBitsRelease(round(config.free_bits_release * total))
        self.kl_schedule = KLSchedule(config.kl_schedule, config.kl_weight,
                                      round(config.kl_warmup_epochs * self.steps_per_epoch), total, config.kl_cycles)
        self.epoch, self.step, self.history = 0, 0, []
        self.unscored: list[float] = []  # training objectives of the epochs since the last history row
        self.snapshot = EpochSnapshot([t.detach() for t in (*self.loss_fn.parameters(), *self.loss_fn.buffers())],
                                      self.optimizer, self.scheduler, self.device)
        #: in the aggressive phase (He et al. 2019), and the held-out I(x; z) that ends it
        self.aggressive, self.best_information, self.information_misses = config.aggressive, -math.inf, 0
        self.encoder_tensors, self.decoder_tensors = self._split_encoder() if config.aggressive else ([], [])

    def _split_encoder(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The trainable tensors of the guide (the encoder) and the rest (the decoder, the prior)."""
        model = {id(p) for p in self.model.parameters()}
        guide = {id(p) for p in self.guide.parameters()} - model
        encoder = [t for t in self.loss.trainable_tensors if id(t) in guide]
        if not encoder:
            raise ConfigError("[train] aggressive = true alternates encoder and decoder steps, but the guide holds no "
                              "parameters of its own (a Pyro program's live in the pair's store): use a guide that is "
                              "an nn.Module or PyroModule, or set aggressive = false")
        return encoder, [t for t in self.loss.trainable_tensors if id(t) not in guide]

    def train_epoch(self) -> float:
        """One pass over the shuffled training set; returns the mean training objective (``train_epochs``)."""
        return self.train_epochs(1)[0]

    def train_epochs(self, count: int) -> list[float]:
        """``count`` passes over the shuffled training set; the mean training objective of each.

        Losses stay on the device and are read back once, after the last pass, with one snapshot of
        the state taken before the first: in full-batch training, one host read per ``count`` steps.
        If one was not finite, the passes are replayed from the snapshot checking every step
        (``ppl_vae.infer.nonfinite``), and the error names the first bad step, its epoch and its sites.
        ``self.epoch`` is left where it was (``fit`` advances it).
        """
        self.snapshot.take(self.step)
        sums = torch.stack([self._run_epoch(check=False) for _ in range(count)]).tolist()
        objectives = [total / len(self.data.train) for total in sums]
        bad = next((i for i, objective in enumerate(objectives) if not math.isfinite(objective)), None)
        if bad is not None:
            self.step, first = self.snapshot.restore(), self.epoch
            try:
                for self.epoch in range(first, first + bad + 1):  # numbers the replayed epochs in the error
                    self._run_epoch(check=True)
            finally:
                self.epoch = first
            raise unexplained_error(objectives[bad], first + bad + 1)
        return objectives

    def _run_epoch(self, check: bool) -> torch.Tensor:
        """Step through one shuffled epoch; the summed training objective, on the device."""
        total = torch.zeros((), device=self.device)
        n = len(self.data.train)
        # full batch: the whole set in place (a shuffle would only copy it); else shuffled batches
        batches = ([slice(None)] if self.batch_size == n
                   else torch.randperm(n, device=self.device).split(self.batch_size))
        with corrupted_inputs(self.guide, self.config.input_noise, self.config.noise_level):
            for index in batches:
                x = self.data.batch(index)
                total += self._step(x, self.data.batch_fields(index, self.fields), check) * len(x)
        return total

    def train_step(self, x: torch.Tensor, **fields: torch.Tensor) -> torch.Tensor:
        """One optimiser step on the batch ``x`` (moved to the training device), as ``SVI.step`` takes
        one: the KL weight, learning-rate schedule, input noise and gradient cap of the config apply.
        Returns the batch's training objective per example, a 0-dim tensor left on the device, so a
        loop of steps never waits for the GPU: read it (``.item()``, ``math.isfinite``) when needed.
        ``fields``: the batch's rows of the data fields the pair takes (``self.fields``), by name.

        >>> for epoch in range(trainer.config.epochs):                       # doctest: +SKIP
        ...     order = torch.randperm(len(trainer.data.train), device=trainer.device)
        ...     for index in order.split(trainer.batch_size):
        ...         loss = trainer.train_step(trainer.data.batch(index),  # batch() binarises where dynamic
        ...                                   **trainer.data.batch_fields(index, trainer.fields))
        """
        if set(fields) != set(self.fields):
            raise ConfigError(f"train_step got the fields {sorted(fields)}, but the pair takes {list(self.fields)}: "
                              "pass data.batch_fields(index, trainer.fields)")
        x, fields = x.to(self.device), {k: v.to(self.device) for k, v in fields.items()}
        with corrupted_inputs(self.guide, self.config.input_noise, self.config.noise_level):
            return self._step(x, fields, check=False)

    def _step(self, x: torch.Tensor, fields: dict[str, torch.Tensor], check: bool) -> torch.Tensor:
        """One optimiser step on batch ``x`` (and its ``fields``); its training objective per example, on the device."""
        self.kl_weight.fill_(self.kl_schedule(self.step))
        self.scale.fill_(1 / len(x))  # the objective per example
        self.release.fill_(self.free_bits_release(self.step))
        if self.aggressive:
            self._encoder_steps(x, fields)
        # sets each parameter's .grad
        loss = self.loss.loss_and_grads(x, self.kl_weight, self.scale, self.release, fields)
        if check and not torch.isfinite(loss):
            raise step_error(self.model, self.guide, x, loss, self.step, self.epoch + 1, fields)
        self._update(self.decoder_tensors if self.aggressive else self.loss.trainable_tensors)
        self.scheduler.step()
        self.step += 1
        return loss.detach()

    def _update(self, tensors: list[torch.Tensor]) -> None:
        """An Adam step of ``tensors`` alone (their gradients clipped together): the others' gradients
        are dropped, and Adam, element-wise, skips a tensor without one, its moments and count as they were."""
        if tensors is not self.loss.trainable_tensors:
            chosen = {id(t) for t in tensors}
            for t in self.loss.trainable_tensors:
                if id(t) not in chosen:
                    t.grad = None
        if self.config.grad_clip:  # one outlier step cannot swamp Adam's second moment (no host read)
            torch.nn.utils.clip_grad_norm_(tensors, self.config.grad_clip)
        self.optimizer.step()

    def _encoder_steps(self, x: torch.Tensor, fields: dict[str, torch.Tensor]) -> None:
        """He et al. (2019), Algorithm 1, the inner loop: encoder-only steps, the first on the batch ``x`` and
        each later one on a fresh random batch of its size, until the mean loss of the last
        ``AGGRESSIVE_WINDOW`` steps is above the window's before (or ``AGGRESSIVE_MAX_INNER`` - 1 steps)."""
        n, window, previous = len(self.data.train), torch.zeros((), device=self.device), math.inf
        for inner in range(1, AGGRESSIVE_MAX_INNER):
            window += self.loss.loss_and_grads(x, self.kl_weight, self.scale, self.release, fields).detach()
            self._update(self.encoder_tensors)
            index = torch.randperm(n, device=self.device)[:len(x)]
            x, fields = self.data.batch(index), self.data.batch_fields(index, self.fields)
            if inner % AGGRESSIVE_WINDOW == 0:
                mean = window.item() / AGGRESSIVE_WINDOW
                if mean > previous:
                    return
                previous = mean
                window.zero_()

    def fit(self, checkpoint: str | Path | None = None, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
        """Train the remaining epochs; save to ``checkpoint`` every ``checkpoint_every`` epochs and at the end.

        Every ``eval_every`` epochs (and at the last) a history row scores the train subset and the
        held-out set; its ``train_objective`` is the mean over the epochs since the previous row.
        Scoring leaves the random stream as it found it, so how often a run is scored does not change it.
        ``on_epoch`` is called with each new row. The epochs between two such events (a row, a
        checkpoint, the end of the aggressive phase's cap) run as one ``train_epochs``: one host read
        and one snapshot for all of them."""
        with cpu_threads(self.config.threads):
            return self._fit(checkpoint, on_epoch)

    def _fit(self, checkpoint, on_epoch) -> list[dict]:
        if self.step == 0:
            pyro.set_rng_seed(self.config.seed)  # batches and samples follow the seed, whatever ran before
        bar = tqdm(desc="epochs", disable=not self.progress, initial=self.epoch, total=self.config.epochs, leave=False)
        while self.epoch < self.config.epochs:
            span = self._epochs_to_next_event(checkpoint)
            row = self.end_span(self.train_epochs(span), checkpoint, on_epoch)
            bar.update(span)
            if row:
                bar.set_postfix(test_loss=f"{row['test_loss']:.2f}", recon=f"{row['test_recon']:.2f}",
                                kl=f"{row['test_kl']:.2f}")
        bar.close()
        return self.history

    def end_span(self, objectives: list[float], checkpoint=None, on_epoch: Callable[[dict], None] | None = None
                 ) -> dict | None:
        """What follows the epochs just trained (their training ``objectives``, as ``train_epochs`` returns
        them), where they end at an event: the history row (scored on the random stream as it is, which is
        put back after), the end of the aggressive phase's cap, the checkpoint and ``on_epoch``. Returns the
        new history row, if any. ``fit`` calls it after each span; ``restarts.Restarts`` after each
        vectorised span, once per restart."""
        self.unscored += objectives
        self.epoch += len(objectives)
        every, row = self.config.checkpoint_every, None
        if self.epoch % self.config.eval_every == 0 or self.epoch == self.config.epochs:
            row = {"epoch": self.epoch, "step": self.step, "kl_weight": self.kl_schedule(self.step - 1),
                   "lr": self.optimizer.param_groups[0]["lr"],
                   "train_objective": sum(self.unscored) / len(self.unscored)}
            with preserved_rng(self.device):  # scoring draws z; training's random stream must not see it
                subset = slice(TRAIN_EVAL_SIZE)
                train = self.evaluate(self.data.train_eval[subset], self.data.batch_fields(subset, self.fields))
                test = self.evaluate(self.data.test_eval, self.test_fields)
                row |= {f"train_{k}": v for k, v in train.items()} | {f"test_{k}": v for k, v in test.items()}
                if self.config.track_information or self.config.aggressive:
                    row |= self._information_row()
            self.history.append(row)
            self.unscored = []
        if self.aggressive and self.epoch == self.config.aggressive_epochs:  # the phase's cap, if any
            self.aggressive = False
        if checkpoint and ((every and self.epoch % every == 0) or self.epoch == self.config.epochs):
            self.save(checkpoint)
        if on_epoch and row:
            on_epoch(row)
        return row

    def _epochs_to_next_event(self, checkpoint) -> int:
        """Epochs from here to the next that needs the host: a scored row, a checkpoint, the aggressive
        phase's cap, or the last."""
        every, aggressive_cap = self.config.checkpoint_every, self.config.aggressive_epochs
        ends = [self.config.epochs, (self.epoch // self.config.eval_every + 1) * self.config.eval_every]
        if checkpoint and every:
            ends.append((self.epoch // every + 1) * every)
        if self.aggressive and aggressive_cap > self.epoch:
            ends.append(aggressive_cap)
        return min(ends) - self.epoch

    def _information_row(self) -> dict:
        """The held-out I(x; z) and KL(q(z) || p(z)) (Hoffman & Johnson 2016) on ``INFORMATION_ROWS`` examples;
        under ``aggressive``, whether the epoch just trained was in the aggressive phase, and whether the
        phase goes on: it ends once I(x; z) has fallen short of its best so far ``AGGRESSIVE_PATIENCE``
        times (He et al. 2019), or after ``aggressive_epochs``."""
        rows = slice(INFORMATION_ROWS)
        info = latent_information(self.model, self.guide, self.data.test_eval[rows],
                                  fields=self.data.batch_fields(rows, self.fields, "test"))
        row = {"test_mi": info.mi, "test_marginal_kl": info.marginal_kl}
        if self.config.aggressive:
            row["aggressive"] = self.aggressive
            if info.mi > self.best_information:
                self.best_information = info.mi
            elif self.aggressive:
                self.information_misses += 1
                self.aggressive = self.information_misses < AGGRESSIVE_PATIENCE
        return row

    @property
    def diagnose_kl_in_closed_form(self) -> bool:
        """Whether the end-of-run diagnostics may take closed-form KLs: under the ``analytic`` estimator,
        or where the guide declares itself mean-field (the bundled ones do); else Monte Carlo."""
        return self.analytic_kl or getattr(self.guide, "mean_field", None) is True

    @property
    def test_fields(self) -> dict[str, torch.Tensor]:
        """The held-out rows of the data fields the pair takes (``fields``), by name."""
        return self.data.batch_fields(slice(None), self.fields, "test")

    def evaluate(self, data: torch.Tensor, fields: dict[str, torch.Tensor] | None = None) -> dict:
        """Negative ELBO and its terms on ``data`` (and its rows of the pair's ``fields``; KL weight 1),
        nats per example, no optimiser step."""
        return evaluate(self.model, self.guide, data, self.analytic_kl, fields=fields)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "guide": self.guide.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "epoch": self.epoch, "step": self.step, "history": self.history, "unscored": self.unscored,
                "rng": rng_state(self.device), "config": asdict(self.config),
                "aggressive": [self.aggressive, self.best_information, self.information_misses]}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.guide.load_state_dict(state["guide"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]
        self.unscored = list(state.get("unscored", []))
        if "aggressive" in state:
            self.aggressive, self.best_information, self.information_misses = state["aggressive"]
        set_rng_state(state["rng"], self.device)

    def save(self, path: str | Path) -> None:
        save_tensors(path, self.state_dict())

    def load(self, path: str | Path) -> None:
        """Restore a checkpoint written by ``save``: training continues exactly where it stopped."""
        self.load_state_dict(load_tensors(path, self.device))


def _check_data(model, data) -> None:
    """Refuse data the model's likelihood cannot score: a Bernoulli likelihood (``needs_binary_data``)
    needs binary data (``data.binarize`` or 0/1 values), or its nats are not those of the literature;
    and data fields the model's own ``check_fields`` refuses (labels outside its classes), once here
    rather than in every step."""
    if getattr(getattr(model, "likelihood", None), "needs_binary_data", False) and not data.is_binary:
        raise ConfigError(f"a Bernoulli likelihood needs binary data, but {data.name!r} is not binary: "
                          "set data.binarize = \"dynamic\" or \"static\" (fit: binarize=\"dynamic\"), or use a "
                          "Gaussian likelihood")
    check_fields = getattr(model, "check_fields", None)
    if callable(check_fields):
        for split in ("train", "test"):
            check_fields(getattr(data, f"{split}_fields"), f"the {split} split of data {data.name!r}")
