"""A training loss that turns NaN or infinite, found and named without slowing healthy epochs.

Losses stay on the device during an epoch and are read back once, at its end. When that sum is
not finite, the trainer puts the epoch's starting state back (``EpochSnapshot``) and replays the
epoch checking every step, so ``NonFiniteLossError`` names the first bad step and the sites whose
log-density was not finite as that step saw them (``step_error``).
"""

from __future__ import annotations

import torch

from ppl_vae.errors import Fault
from ppl_vae.infer.random_state import rng_state, set_rng_state
from ppl_vae.tracing import trace_pair


class NonFiniteLossError(Fault, FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the sites."""


def nonfinite_sites(model, guide, x: torch.Tensor, fields: dict | None = None) -> list[str]:
    """Sample sites of the pair (guide first) whose log-density on ``x`` (and ``fields``) is not finite."""
    with torch.no_grad():
        model_trace, guide_trace = trace_pair(model, guide, x, **(fields or {}))
    bad = []
    for where, trace in (("guide", guide_trace), ("model", model_trace)):
        for name, site in trace.nodes.items():
            if site["type"] == "sample" and not torch.isfinite(site["fn"].log_prob(site["value"])).all():
                bad.append(f"{name!r} ({where})")
    return bad


def step_error(model, guide, x: torch.Tensor, loss: torch.Tensor, step: int, epoch: int,
               fields: dict | None = None) -> NonFiniteLossError:
    """The error for a step whose loss is not finite, naming the sites at fault (or, where Pyro's checks
    refuse the pair's distributions, the parameters an earlier step's gradient made NaN)."""
    try:
        where = "non-finite log-density at " + (", ".join(nonfinite_sites(model, guide, x, fields))
                                                or "no single site (check the gradients)")
    except ValueError as error:  # Pyro's checks refuse a distribution's parameters (NaN ones, say)
        where = f"the pair cannot be traced ({(str(error).splitlines() or [''])[0]})"
        parameters = [p for m in (model, guide) if isinstance(m, torch.nn.Module) for p in m.parameters()]
        if not all(torch.isfinite(p).all() for p in parameters):
            where += ": its parameters are not finite" + (" (an earlier step's update left them so)" if step else "")
    return NonFiniteLossError(f"the training loss is {loss.item()} at step {step} (epoch {epoch}); {where}. "
                              "Lower train.lr, or check the data and the likelihood scale.")


def unexplained_error(objective: float, epoch: int) -> NonFiniteLossError:
    """The error for an epoch whose sum was not finite although its replay was."""
    return NonFiniteLossError(f"the training objective of epoch {epoch} was {objective}, but a "
                              "replay of the epoch stayed finite: the run is not deterministic here")


class EpochSnapshot:
    """The training state at the start of an epoch: parameters, buffers, optimiser and scheduler
    state, learning rates, step and random state, copied into buffers kept from epoch to epoch (no allocation
    once warm), so an epoch can be replayed exactly.

    :param module_tensors: the pair's parameters and buffers (detached views).
    """

    def __init__(self, module_tensors: list[torch.Tensor], optimizer: torch.optim.Optimizer, scheduler,
                 device: torch.device):
        self.module_tensors, self.optimizer, self.scheduler, self.device = module_tensors, optimizer, scheduler, device
        self.saved: list[torch.Tensor] = []

    def _live(self) -> list[torch.Tensor]:
        """What a training step changes in place: parameters, buffers and optimiser state."""
        state = [v.detach() for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        return [*self.module_tensors, *state]

    def take(self, step: int) -> None:
        live = self._live()
        if [t.shape for t in self.saved] != [t.shape for t in live]:
            self.saved = [t.clone() for t in live]
        else:
            torch._foreach_copy_(self.saved, live)
        self.meta = (step, self.scheduler.state_dict(), rng_state(self.device), len(self.optimizer.state),
                     [group["lr"] for group in self.optimizer.param_groups])

    def restore(self) -> int:
        """Put the state back; returns the step it was taken at."""
        step, scheduler, rng, optimizer_states, rates = self.meta
        if not optimizer_states:  # taken before the first step: Adam had no state yet
            self.optimizer.state.clear()
        with torch.no_grad():
            torch._foreach_copy_(self._live(), self.saved)
        self.scheduler.load_state_dict(scheduler)  # the schedule's state; the rates it set, as they were
        for group, lr in zip(self.optimizer.param_groups, rates):
            group["lr"] = lr
        set_rng_state(rng, self.device)
        return step
