"""Restarts of one pair trained together as one vectorised program (``train.vectorise``).

Studies of collapse are studies of restarts: one pair and one data set, R seeds (in a beta sweep, R
KL weights too). Trained one by one, a small pair's step is mostly Python and kernel launches.
``Restarts`` trains R ``Trainer``\\ s that differ only in ``seed`` and ``kl_weight`` as one:

- Their parameters, buffers and Adam moments are stacked along a leading restart dimension, and each
  trainer's own tensors become views of its slice: its history rows, checkpoints and diagnostics
  are those of its separate cell, without a copy.
- The first step of each batch shape runs every restart eagerly, as its separate cell does
  (``capture.TrainingLoss``). The first restart's captured joint graph, its Gaussian draws made inputs
  (``capture.noise_inputs``), is mapped over the restarts by ``torch.func.vmap`` into one graph
  (``capture.vectorised``), compiled under ``train.compile``, and checked against the R eager steps
  as a capture is. Every update, that first one included, is then a replay of it, so a program
  resumed from its checkpoints continues bit for bit. (A single restart's graph is its cell's own,
  and its first update the eager one, as in its separate cell.)
- Each restart draws its batches and its noise from a generator of its own, seeded as its separate
  cell seeds torch's and drawn from in the same order: every restart sees its separate cell's random
  numbers, so it follows that cell's numbers, to the rounding of batched kernels (bit for bit at R = 1).
- Adam is element-wise, so one fused Adam over the stacked tensors is R independent Adams (their
  step count, the same for all, is shared). ``grad_clip`` caps each restart's gradient norm, taken
  over its own slice of every parameter (``clip_per_restart``), never over the stack.
- Losses stay on the device between events (history rows, checkpoints, the end); at each, every
  restart's trainer ends the span itself (``Trainer.end_span``), on torch's random stream set to its own.
- A restart that goes wrong stops alone, and the others finish (no batched kernel mixes restarts).
  Each span starts from a snapshot (``nonfinite.EpochSnapshot``), as a cell's epochs do: where a
  restart's objective was not finite, the span is replayed checking its loss every step, and its
  error names its first non-finite step and sites (``step_error``). A restart whose own step raises
  (a batch shape's first, eager step, where Pyro's checks refuse NaN parameters, as in its separate
  cell) or whose scoring, saving or diagnostics raise fails alone with that error, its step noted.

What cannot be vectorised raises ``NotVectorised`` before anything is written (within the first
epoch, when a batch shape is first met); the grid runner then trains those cells separately, with a
``VectoriseWarning`` giving the reason: configurations that differ in more than seed and KL weight,
the aggressive schedule (its inner loops are the host's), input noise, capture off or refused, a
graph that draws other than Gaussian noise (a Bernoulli latent's sample), or one that vmap cannot
map.
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ppl_vae.infer import cuda_graphs
from ppl_vae.infer.capture import NoiseInput, _grad_mismatch, _reason, noise_inputs, set_grads, vectorised
from ppl_vae.infer.nonfinite import EpochSnapshot, step_error, unexplained_error
from ppl_vae.infer.random_state import generator_key, rng_state, set_rng_state
from ppl_vae.infer.training import Trainer, adam, cpu_threads

__all__ = ["Restarts", "NotVectorised", "VectoriseWarning", "PER_RESTART", "clip_per_restart"]

#: the ``[train]`` keys in which the restarts of one program may differ
PER_RESTART = ("seed", "kl_weight")


class NotVectorised(Exception):
    """These trainers cannot train as one program; the message says why. Raised before anything is
    written: at the start, or at the first step of a batch shape (in the first epoch)."""


class VectoriseWarning(UserWarning):
    """Cells asked to train vectorised ran separately (slower, the same numbers); the message says why."""


@dataclass
class VectorisedGraph:
    """A step of R restarts: ``graph(*stacked state, x, weights, scale, release, *fields, *noise)`` gives
    the R losses and the stacked gradients of the inputs ``grad_of``; ``draws``: the noise it takes,
    drawn each step into ``noise`` (``[R, *shape]`` each, filled in place). ``recorded``: on CUDA, the
    step and its draws as one CUDA graph (``cuda_graphs.GraphedStep``), where made."""

    graph: Callable
    draws: list[NoiseInput]
    grad_of: list[int]
    noise: list[torch.Tensor]
    recorded: Callable | None = None

    def draw(self, generators: list[torch.Generator]) -> list[torch.Tensor]:
        """Each restart's noise from its own generator, into its slice of ``noise``; returns ``noise``."""
        return _draw(self.draws, self.noise, generators)

    def drawing(self, generators: list[torch.Generator]) -> Callable:
        """The step and its draws as one function of ``(*state, *inputs)`` (what a CUDA graph records). It
        holds the graph and the buffers, not this object, which will hold its recording (no cycle)."""
        graph, draws, noise = self.graph, self.draws, self.noise
        return lambda *inputs: graph(*inputs, *_draw(draws, noise, generators))

    def __call__(self, state: list[torch.Tensor], inputs: tuple, generators: list[torch.Generator]) -> list:
        """The step on ``state`` and ``inputs`` (x, weights, scale, release, fields), each restart's noise
        drawn from its generator in ``generators`` (when recorded, from the generators it was recorded
        with, which ``Restarts`` always passes): the R losses and the stacked gradients."""
        with torch.no_grad():
            if self.recorded is not None:
                return self.recorded(*state, *inputs)
            return self.graph(*state, *inputs, *self.draw(generators))


def _draw(draws: list[NoiseInput], noise: list[torch.Tensor], generators: list[torch.Generator]) -> list[torch.Tensor]:
    for draw, buffer in zip(draws, noise):
        for r, generator in enumerate(generators):
            draw.draw(generator, out=buffer[r])
    return noise


def clip_per_restart(grads: list[torch.Tensor], max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` for each restart alone, on its slice of the stacked gradients
    ``grads`` (restart first), in place: each restart's norm over all of its gradients capped at
    ``max_norm``, with torch's own arithmetic, so a restart is clipped as its separate cell is."""
    totals = torch.stack([torch.nn.utils.get_total_norm([g[r] for g in grads]) for r in range(len(grads[0]))])
    coefficients = (max_norm / (totals + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coefficients.view(-1, *[1] * (g.dim() - 1)))


class Restarts:
    """R trainers of one pair on one data set, equal but for ``seed`` and ``kl_weight``, trained as
    one vectorised program; ``fit`` returns each one's history, or the error it stopped with.

    :param trainers: built as for separate cells (each pair seeded by its own ``train.seed``), on the
        same ``Dataset`` object, and each at the same step (loaded from its checkpoint to resume).
    :param streams: each trainer's random state where it was loaded from a checkpoint (``rng_state``
        just after ``Trainer.load``); at step 0 each stream is seeded with its ``train.seed`` instead.
    :param progress: show a progress bar over epochs.
    """

    def __init__(self, trainers: list[Trainer], streams: list[dict] | None = None, progress: bool = False):
        first = trainers[0]
        _check_alike(trainers)
        self.trainers, self.progress, self.R = trainers, progress, len(trainers)
        self.config, self.device, self.data = first.config, first.device, first.data
        self.step, self.epoch = first.step, first.epoch
        self.generators = [torch.Generator(self.device) for _ in trainers]
        self.cpu_streams = [torch.get_rng_state() for _ in trainers]  # on CUDA: the CPU part of each stream
        if streams:
            for r, stream in enumerate(streams):
                self._set_stream(r, stream)
        self.failed: list[Exception | None] = [None] * self.R
        #: while a span is replayed to explain a non-finite objective (else None): the restarts whose loss
        #: each step checks, and the errors found for them (``_explain``)
        self.checking: set[int] | None = None
        self.found: dict[int, Exception] = {}
        #: the step at which each restart's own step raised (in ``_first``), and what it raised
        self.raised_at: dict[int, tuple[int, Exception]] = {}
        self.graphs: dict[tuple, VectorisedGraph] = {}
        # the KL weight of each restart, the objective's scale, the free-bits release: as Trainer's
        self.weights, self.weight_values = torch.zeros(self.R, device=self.device), None
        self.scale = torch.ones((), device=self.device, dtype=self.data.train.dtype)
        self.release = torch.ones((), device=self.device, dtype=self.data.train.dtype)
        self._stack()

    def _stack(self) -> None:
        """Stack each parameter and buffer over the restarts and make each trainer's tensors views of its
        slice; one Adam and one schedule over the stacks, with the trainers' own state where resumed."""
        losses = [t.loss for t in self.trainers]
        self.state = []
        for i in range(len(losses[0].state)):
            stacked = torch.stack([loss.state[i].detach() for loss in losses])
            for r, loss in enumerate(losses):
                loss.state[i].data = stacked[r]
            self.state.append(stacked)
        self.trainable = losses[0].trainable
        self.names = [losses[0].names[i] for i in self.trainable]
        for i in self.trainable:
            self.state[i].requires_grad_()
        self.trainable_tensors = [self.state[i] for i in self.trainable]
        first = self.trainers[0]
        self.optimizer = adam(self.trainable_tensors, self.config.lr)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, first.scheduler.gamma)
        self.scheduler.load_state_dict(first.scheduler.state_dict())
        self.optimizer.param_groups[0]["lr"] = first.optimizer.param_groups[0]["lr"]
        for stacked, i in zip(self.trainable_tensors, self.trainable):
            states = [t.optimizer.state.get(loss.state[i]) for t, loss in zip(self.trainers, losses)]
            if all(states):  # resumed: each trainer's Adam moments, one step count
                self.optimizer.state[stacked] = {"step": states[0]["step"].clone(),
                                                 **{k: torch.stack([s[k] for s in states]) for k in states[0]
                                                    if k != "step"}}
        for trainer in self.trainers:  # a trainer's own snapshot follows its tensors into the stack
            trainer.snapshot.module_tensors = [t.detach() for t in trainer.loss.state]
        self.snapshot = EpochSnapshot([t.detach() for t in self.state], self.optimizer, self.scheduler, self.device)

    # random streams: a generator per restart, on the training device --------------------------------
    def _stream(self, r: int) -> dict[str, torch.Tensor]:
        """Restart ``r``'s random state as ``rng_state`` gives torch's: what its separate cell's would be."""
        if self.device.type == "cuda":
            return {"torch": self.cpu_streams[r], "cuda": self.generators[r].get_state()}
        return {"torch": self.generators[r].get_state()}

    def _set_stream(self, r: int, state: dict[str, torch.Tensor]) -> None:
        if self.device.type == "cuda":
            self.cpu_streams[r] = state["torch"].cpu()
            self.generators[r].set_state(state["cuda"].cpu())
        else:
            self.generators[r].set_state(state["torch"].cpu())

    def seed(self) -> None:
        """Each restart's stream seeded with its ``train.seed``, as ``Trainer.fit`` seeds torch's at step 0
        (``pyro.set_rng_seed``); ``fit`` does this at step 0."""
        for r, trainer in enumerate(self.trainers):
            self.generators[r].manual_seed(trainer.config.seed)
            self.cpu_streams[r] = torch.Generator().manual_seed(trainer.config.seed).get_state()

    def hand_over(self, r: int) -> Trainer:
        """Trainer ``r`` brought up to date (step, learning rate, schedule, Adam moments as views of its
        slice) and torch's random stream set to restart ``r``'s: it scores, saves and diagnoses as its
        separate cell would at this point."""
        trainer, loss = self.trainers[r], self.trainers[r].loss
        trainer.step = self.step
        trainer.scheduler.load_state_dict(self.scheduler.state_dict())
        trainer.optimizer.param_groups[0]["lr"] = self.optimizer.param_groups[0]["lr"]
        for stacked, i in zip(self.trainable_tensors, self.trainable):
            state = self.optimizer.state.get(stacked)
            if state:
                trainer.optimizer.state[loss.state[i]] = {k: v if k == "step" else v[r] for k, v in state.items()}
        set_rng_state(self._stream(r), self.device)
        return trainer

    # training --------------------------------------------------------------------------------------
    def fit(self, checkpoints: list[str | Path | None] | None = None,
            on_epoch: list[Callable[[dict], None] | None] | None = None) -> list[list[dict] | Exception]:
        """Train the remaining epochs (``Trainer.fit`` for every restart at once): each restart's history
        rows, checkpoints (``checkpoints[r]``) and ``on_epoch[r]`` calls are its separate cell's. Returns,
        per restart, its history or the error it stopped with (``NonFiniteLossError``, or what its own
        step, scoring, saving or ``on_epoch`` call raised: returned, not raised, as the others go on)."""
        checkpoints = checkpoints or [None] * self.R
        on_epoch = on_epoch or [None] * self.R
        with cpu_threads(self.config.threads):
            if self.step == 0:
                self.seed()
            bar = tqdm(desc=f"epochs ({self.R} restarts)", disable=not self.progress, initial=self.epoch,
                       total=self.config.epochs, leave=False)
            while self.epoch < self.config.epochs and not all(self.failed):
                live = next(r for r in range(self.R) if not self.failed[r])
                span = self.trainers[live]._epochs_to_next_event(checkpoints[live])
                objectives = self.train_epochs(span)
                for r in range(self.R):
                    if not self.failed[r]:
                        try:
                            self.hand_over(r).end_span([row[r] for row in objectives], checkpoints[r], on_epoch[r])
                        except Exception as error:  # noqa: BLE001 — as a separate cell's, its error is its own
                            self.failed[r] = self._alone(r, error)
                self.epoch += span
                bar.update(span)
            bar.close()
        return [self.failed[r] or t.history for r, t in enumerate(self.trainers)]

    def train_epochs(self, count: int) -> list[list[float]]:
        """``count`` passes of every restart over its shuffled training set (``Trainer.train_epochs`` for
        all at once); each pass's mean training objective per restart (``[pass][restart]``), read back
        once, after the last. A restart that failed in them, or whose objective was not finite, is marked
        failed with its error (``_explain``). ``self.epoch`` is left where it was (``fit`` advances it)."""
        live = [r for r in range(self.R) if not self.failed[r]]
        self.snapshot.take(self.step)
        streams = [self._stream(r) for r in range(self.R)]
        sums = torch.stack([self._run_epoch() for _ in range(count)]).tolist()
        objectives = [[total / len(self.data.train) for total in row] for row in sums]
        suspects = [r for r in live if self.failed[r] or not all(math.isfinite(row[r]) for row in objectives)]
        if suspects:
            self._explain(suspects, objectives, streams)
        return objectives

    def _explain(self, suspects: list[int], objectives: list[list[float]], streams: list[dict]) -> None:
        """Replay the span just trained from its snapshot (and each restart's stream ``streams``), checking
        the losses of the restarts ``suspects`` every step, so each one's error names its first non-finite
        step and sites as its separate cell's would (``step_error``); a restart whose replay stays finite
        keeps the error its step raised, if any, else gets ``unexplained_error``. The state at the span's
        end is put back after, so the others go on as they were."""
        end = EpochSnapshot(self.snapshot.module_tensors, self.optimizer, self.scheduler, self.device)
        end.take(self.step)
        ends = [self._stream(r) for r in range(self.R)]
        self.step = self.snapshot.restore()
        for r, stream in enumerate(streams):
            self._set_stream(r, stream)
        self.checking, self.found = set(suspects), {}
        try:
            for _ in objectives:
                if self.checking:
                    self._run_epoch()
        finally:
            self.checking = None
            self.step = end.restore()
            for r, stream in enumerate(ends):
                self._set_stream(r, stream)
        for r in suspects:
            bad = next((i for i, row in enumerate(objectives) if not math.isfinite(row[r])), None)
            error = self.found.get(r) or self.failed[r] or unexplained_error(objectives[bad][r], self.epoch + bad + 1)
            self.failed[r] = self._alone(r, error)

    def _alone(self, r: int, error: Exception, step: int | None = None) -> Exception:
        """``error`` (raised at ``step``, where given), noted as restart ``r``'s alone."""
        if self.R > 1 and not any("trained vectorised" in note for note in getattr(error, "__notes__", ())):
            at = "" if step is None else f"at step {step} (epoch {self._epoch_of(step)}) "
            error.add_note(f"(the restart with train.seed = {self.trainers[r].config.seed} {at}of a program trained "
                           f"vectorised with {self.R - 1} other(s), which went on; --resume --set "
                           "train.vectorise=false continues it alone from its last checkpoint)")
        return error

    def _epoch_of(self, step: int) -> int:
        return step // self.trainers[0].steps_per_epoch + 1

    def _check_step(self, loss: torch.Tensor, x: torch.Tensor, fields: dict, x_dim: int | None) -> None:
        """While ``_explain`` replays a span: the error of each restart checked whose step raised here
        (``raised_at``), or whose loss at this step (before its update) is not finite, named as a cell's by
        ``step_error``."""
        finite = torch.isfinite(loss).tolist()
        for r in sorted(self.checking):
            step, raised = self.raised_at.get(r, (None, None))
            if step == self.step:
                self.found[r] = raised
            elif not finite[r]:
                trainer = self.trainers[r]
                x_r, fields_r = (x[r], {k: v[r] for k, v in fields.items()}) if x_dim == 0 else (x, fields)
                try:
                    self.found[r] = step_error(trainer.model, trainer.guide, x_r, loss[r], self.step,
                                               self._epoch_of(self.step), fields_r)
                except Exception as error:  # noqa: BLE001 — whatever stops the explanation, it is the restart's
                    self.found[r] = error
            else:
                continue
            self.checking.discard(r)

    def _run_epoch(self) -> torch.Tensor:
        """One shuffled epoch of every restart, each in its own order; the summed objectives ``[R]``."""
        n = len(self.data.train)
        total = torch.zeros(self.R, device=self.device)
        batch_size = self.trainers[0].batch_size
        if batch_size == n:  # full batch, in place
            batches = [None]
        else:
            batches = torch.stack([torch.randperm(n, generator=g, device=self.device)
                                   for g in self.generators]).split(batch_size, dim=1)
        for index in batches:
            if (not self.checking) if self.checking is not None else all(self.failed):
                break  # every restart failed (training) or every one checked is explained (replaying)
            total += self._step(*self._batch(index)) * (n if index is None else index.shape[1])
        return total

    def _batch(self, index: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor], int | None]:
        """The restarts' batches (rows ``index[r]`` for restart r; None: the whole set) and their fields;
        shared by all (dimension None) where every restart has the same, else stacked (dimension 0)."""
        data, names = self.data, self.trainers[0].fields
        if index is None and data.binarize != "dynamic":
            return data.batch(slice(None)), data.batch_fields(slice(None), names), None
        rows = [slice(None)] * self.R if index is None else list(index)
        x = torch.stack([data.batch(i, g) for i, g in zip(rows, self.generators)])
        fields = {name: torch.stack([data.batch_fields(i, (name,))[name] for i in rows]) for name in names}
        return x, fields, 0

    def _step(self, x: torch.Tensor, fields: dict[str, torch.Tensor], x_dim: int | None) -> torch.Tensor:
        """One Adam step of every restart; their training objectives per example, ``[R]`` on the device."""
        batch = x.shape[1] if x_dim == 0 else x.shape[0]
        weights, scale, release = self.weights, self.scale, self.release  # inputs of the graph, filled in place
        values = [t.kl_schedule(self.step) for t in self.trainers]
        if values != self.weight_values:  # a constant weight is set once (no copy to the device a step)
            for r, value in enumerate(values):
                weights[r].fill_(value)
            self.weight_values = values
        scale.fill_(1 / batch)
        release.fill_(self.trainers[0].free_bits_release(self.step))
        shape = x.shape[1:] if x_dim == 0 else x.shape
        key = (tuple(shape), x.dtype, x_dim, *((name, tuple(t.shape), t.dtype) for name, t in fields.items()))
        for t in self.trainable_tensors:
            t.grad = None
        if key not in self.graphs:
            loss = self._first(key, x, weights, scale, release, fields, x_dim)
        else:
            step = self.graphs[key]
            loss, *grads = step(self.state, (x, weights, scale, release, *fields.values()), self.generators)
            set_grads(self.state, step.grad_of, grads)
        if self.checking:
            self._check_step(loss, x, fields, x_dim)
        grads = [t.grad for t in self.trainable_tensors if t.grad is not None]
        if self.config.grad_clip and grads:
            clip_per_restart(grads, self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss.detach()

    def _first(self, key, x, weights, scale, release, fields, x_dim) -> torch.Tensor:
        """The first step of a batch shape: each restart eagerly from its own stream, as its separate
        cell's first step (the first live one that succeeds captured), then the vectorised graph made and
        checked. A restart whose step raises fails alone with that error (its loss and gradients NaN)."""
        before = [self._stream(r) for r in range(self.R)]
        losses, grads, capturer, captured = [], [], None, None
        for r, trainer in enumerate(self.trainers):
            set_rng_state(before[r], self.device)
            loss_fn, x_r = trainer.loss, x[r] if x_dim == 0 else x
            fields_r = {k: v[r] for k, v in fields.items()} if x_dim == 0 else fields
            flags = loss_fn.capture, loss_fn.compile, loss_fn.cuda_graphs
            # one restart's step captured; the graph is vectorised, then compiled and recorded
            loss_fn.capture = capturer is None and not self.failed[r]
            loss_fn.compile = loss_fn.cuda_graphs = False
            try:
                losses.append(loss_fn.loss_and_grads(x_r, weights[r], scale, release, fields_r))
            except Warning:  # a warning made an error (-W error) is the program's, not a restart's
                raise
            except Exception as error:  # noqa: BLE001 — a restart gone wrong (NaN parameters, say) fails alone
                self.raised_at.setdefault(r, (self.step, error))
                self.failed[r] = self.failed[r] or self._alone(r, error, self.step)
                losses.append(torch.full((), math.nan, dtype=x.dtype, device=self.device))
                grads.append([None] * len(self.trainable_tensors))
            else:
                if loss_fn.capture:  # the key TrainingLoss files its captured graph under
                    capturer, captured = r, (tuple(x_r.shape), x_r.dtype, x_r.device,
                                             *((name, tuple(t.shape), t.dtype) for name, t in fields_r.items()))
                grads.append([t.grad for t in loss_fn.trainable_tensors])
            finally:
                loss_fn.capture, loss_fn.compile, loss_fn.cuda_graphs = flags
            self._set_stream(r, rng_state(self.device))
        after = [self._stream(r) for r in range(self.R)]
        loss = torch.stack(losses)
        if capturer is None:  # no live restart's step succeeded: nothing to vectorise
            return loss
        for j, stacked in enumerate(self.trainable_tensors):
            if grads[capturer][j] is not None:
                stacked.grad = torch.stack([torch.full_like(stacked[r], math.nan) if g[j] is None else g[j]
                                            for r, g in enumerate(grads)])
        inputs = (x, weights, scale, release, *fields.values())
        self.graphs[key] = step = self._vectorise(self.trainers[capturer].loss.graphs.get(captured), inputs, x_dim,
                                                  before, after, loss)
        if self.R > 1:  # the step replayed, so every update of the program is the graph's, resumed or not
            loss, *grads = self._replay(step, inputs, before)
            for t in self.trainable_tensors:
                t.grad = None
            set_grads(self.state, step.grad_of, grads)
        for r, stream in enumerate(after):  # each restart's stream where its eager step left it, whatever checked
            self._set_stream(r, stream)
        return loss

    def _replay(self, step: VectorisedGraph, inputs, streams: list[dict]) -> list[torch.Tensor]:
        """``step`` on ``inputs``, each restart's generator set to its state in ``streams`` first."""
        for g, state in zip(self.generators, streams):
            g.set_state(state[generator_key(self.device)].cpu())
        return step(self.state, inputs, self.generators)

    def _vectorise(self, joint, inputs, x_dim, before, after, loss) -> VectorisedGraph:
        """A restart's captured graph ``joint`` with its noise as inputs, vmapped over the restarts, checked
        from each restart's stream before the step against its eager loss and gradients (then compiled,
        and recorded as a CUDA graph, each checked alike)."""
        if joint is None:
            raise NotVectorised("the pair's training loss is not captured (see the CaptureWarning before), and only "
                                "a captured graph can be vectorised")
        fields = len(inputs) - 4
        try:
            plain = copy.deepcopy(joint.graph)
            draws = noise_inputs(plain)
            in_dims = (0,) * len(self.state) + (x_dim, 0, None, None) + (x_dim,) * fields + (0,) * len(draws)
            noise = [torch.empty(self.R, *d.shape, dtype=d.dtype, device=d.device) for d in draws]
            graph = (vectorised(plain, in_dims, (*self.state, *inputs, *noise)) if self.R > 1
                     else _one_restart(plain, in_dims))
        except Exception as error:  # noqa: BLE001 — whatever vmap or the rewrite refuses, the cells run separately
            raise NotVectorised(f"the captured training loss cannot be vectorised: {_reason(error)}") from error
        step = VectorisedGraph(graph, draws, joint.grad_of, noise)
        mismatch = self._mismatch(step, inputs, before, loss)
        if mismatch:
            raise NotVectorised(f"the vectorised training loss {mismatch} from the same random state")
        if self.config.compile:
            compiled = functools.partial(torch.compile, step.graph, backend="inductor", dynamic=False, fullgraph=True)
            self._improve(step, "graph", compiled, "could not be compiled", "uncompiled", inputs, before, loss)
        if self.config.cuda_graphs and cuda_graphs.available(self.device):
            def record():  # the draws into the noise buffers recorded too: each restart's generator, advanced
                return cuda_graphs.GraphedStep.of_training_step(step.drawing(self.generators), self.state, inputs)

            self._improve(step, "recorded", record, "could not be recorded as a CUDA graph", "without a CUDA graph",
                          inputs, before, loss, after)
        return step

    def _mismatch(self, step: VectorisedGraph, inputs, before, loss, after: list[dict] | None = None) -> str | None:
        """How ``step``, from the streams ``before``, differs from the eager losses ``loss`` and the
        stacked gradients now set, or (given ``after``) leaves a restart's stream elsewhere than its eager
        step did; None where it does not (the capture's tolerances). Restarts that failed, or whose eager
        loss is not finite, are not compared."""
        replayed, *grads = self._replay(step, inputs, before)
        scale = inputs[2].abs().item()
        healthy = [r for r, finite in enumerate(torch.isfinite(loss).tolist()) if finite and not self.failed[r]]
        if not torch.allclose(replayed[healthy], loss[healthy], rtol=1e-5, atol=1e-5 * scale):
            return f"gave {replayed.tolist()} where the restarts give {loss.tolist()}"
        key = generator_key(self.device)
        moved = [r for r in healthy if after and not torch.equal(self.generators[r].get_state(), after[r][key])]
        if moved:
            return (f"leaves restart {moved[0]}'s random stream elsewhere than its eager step (its draws would repeat "
                    "or skip)")
        by_input = dict(zip(step.grad_of, grads))
        for r in healthy:
            mismatch = _grad_mismatch(self.names, [by_input[i][r] if i in by_input else None for i in self.trainable],
                                      [None if t.grad is None else t.grad[r] for t in self.trainable_tensors])
            if mismatch:
                return f"gives restart {r} the pair's loss but not its gradients: {mismatch}"
        return None

    def _improve(self, step: VectorisedGraph, attribute: str, make: Callable, failed: str, instead: str, inputs,
                 before, loss, after: list[dict] | None = None) -> None:
        """``step.graph`` compiled or ``step.recorded`` made (``attribute``, set to ``make()``) where that can be
        made and passes ``_mismatch``; else left as it was, with a ``VectoriseWarning``."""
        was = getattr(step, attribute)
        try:
            setattr(step, attribute, make())
            mismatch = self._mismatch(step, inputs, before, loss, after)
        except Exception as error:  # noqa: BLE001 — a compiler or CUDA-graph failure leaves the plain replay
            mismatch = f"{failed} ({_reason(error)})"
        if mismatch:
            setattr(step, attribute, was)
            warnings.warn(f"the vectorised training loss {mismatch}; replaying it {instead}", VectoriseWarning,
                          stacklevel=6)


def _one_restart(graph: torch.fx.GraphModule, in_dims: tuple) -> Callable:
    """For R = 1 there is nothing to map: ``graph`` itself on the restart's slice of each input, its
    outputs given the restart dimension, so a single restart replays its separate cell's graph bit for bit
    (a vmapped one reduces over other dimensions, and rounds otherwise)."""

    def step(*inputs):
        outputs = graph(*[t[0] if dim == 0 else t for t, dim in zip(inputs, in_dims)])
        return [t.unsqueeze(0) for t in outputs]

    return step


def _check_alike(trainers: list[Trainer]) -> None:
    """``NotVectorised`` unless the trainers can train as one program (see the module's docstring)."""
    first = trainers[0]
    base = {k: v for k, v in asdict(first.config).items() if k not in PER_RESTART}
    for t in trainers[1:]:
        other = {k: v for k, v in asdict(t.config).items() if k not in PER_RESTART}
        differ = sorted(k for k in base if base[k] != other[k])
        if differ:
            raise NotVectorised(f"the restarts' [train] differ in {', '.join(differ)}, and only "
                                f"{' and '.join(PER_RESTART)} may differ within one program")
        if t.data.train is not first.data.train:
            raise NotVectorised("the restarts were given different Dataset objects: build them on one")
        if [tuple(s.shape) for s in t.loss.state] != [tuple(s.shape) for s in first.loss.state]:
            raise NotVectorised("the restarts' pairs have parameters of different shapes")
        if t.step != first.step:
            raise NotVectorised(f"the restarts stand at different steps ({first.step} and {t.step}): resume them "
                                "from checkpoints of one epoch, or separately")
    config = first.config
    refused = {"aggressive": config.aggressive, "input_noise": config.input_noise != "none",
               "capture = false": not config.capture}
    named = [k for k, v in refused.items() if v]
    if named:
        raise NotVectorised(f"[train] {', '.join(named)} cannot be vectorised (the aggressive schedule's inner loops "
                            "and input noise are the host's; a vectorised step replays a captured graph)")
    refusal = getattr(getattr(first.loss_fn, "elbo", None), "capture_refusal", None)
    if refusal:
        raise NotVectorised(refusal)
