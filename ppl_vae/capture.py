"""The training loss of a pair, captured once per batch shape as a graph of tensor operations.

Each step, Pyro runs the model/guide pair in Python: sample statements pass through the handler
stack, distribution objects are built and their log-densities summed. For the 784-512-512-32
VAE at batch 128 that is about 1 ms of Python in a 10 ms step on a CPU (``ppl-vae bench``).
``TrainingLoss`` traces the loss with ``make_fx`` (PyTorch's dispatcher-level tracer) on fake
tensors, once per batch shape, and replays the graph: gradients, random draws and the KL weight
stay live, and the Pyro program is not re-run.

This is what Pyro's ``JitTrace_ELBO`` does with the deprecated ``torch.jit.trace``, under its
condition: the pair's structure must not depend on data values. Tracing on fake tensors
enforces that — a pair that branches on a value (``if z.sum() > 0``) cannot be traced — and the
first replay must reproduce the eager loss from the same random state. A pair that fails either
check is run eagerly, with a ``CaptureWarning`` saying why. Plain Python numbers that a pair
reads (a temperature held as a float attribute, say) are frozen at capture: change them and the
replay does not see it; set ``train.capture = false`` for such pairs.
"""

from __future__ import annotations

import warnings

import pyro
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx
from torch.func import functional_call

from ppl_vae.handlers import KLWeight


class CaptureWarning(UserWarning):
    """The pair could not be captured and runs eagerly (slower, otherwise the same)."""


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """torch's random state, and the GPU's when ``device`` is one (as tensors: checkpoints keep it)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _reason(error: BaseException) -> str:
    """The first line of the first exception in the chain that has a message."""
    while error is not None:
        lines = str(error).strip().splitlines()
        if lines:
            return f"{type(error).__name__}: {lines[0]}"
        error = error.__cause__ or error.__context__
    return "unknown error"


class TrainingLoss:
    """``loss(x, weight)``: the estimator's loss on a batch with KL weight ``weight`` (a 0-dim tensor).

    The first batch of each shape runs eagerly with Pyro's validation as the caller has it (on by
    default), which checks the pair's shapes, supports and parameters; later batches replay the
    captured graph, or run eagerly without validation where capture is off or failed.

    :param loss_fn: an ``ELBOModule`` (``estimator(model, guide)``).
    :param capture: trace and replay; ``False`` runs every step eagerly.
    """

    def __init__(self, loss_fn: nn.Module, capture: bool = True):
        self.loss_fn, self.capture = loss_fn, capture
        self.graphs: dict[tuple, torch.fx.GraphModule | None] = {}  # batch (shape, dtype, device) -> graph
        # the graph's inputs: the pair's parameters and buffers (updated in place by optimiser and
        # load_state_dict, so the same tensors every step)
        self.names = [n for n, _ in loss_fn.named_parameters()] + [n for n, _ in loss_fn.named_buffers()]
        self.state = [*loss_fn.parameters(), *loss_fn.buffers()]

    def _eager(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        with KLWeight(weight):
            return self.loss_fn(x)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device)
        if key not in self.graphs:
            return self._first(x, weight, key)
        graph = self.graphs[key]
        if graph is None:
            with pyro.validation_enabled(False):
                return self._eager(x, weight)
        return graph(*self.state, x, weight)

    def _first(self, x: torch.Tensor, weight: torch.Tensor, key: tuple) -> torch.Tensor:
        before = rng_state(x.device)
        loss = self._eager(x, weight)
        self.graphs[key] = self._capture(x, weight, loss.detach(), before) if self.capture else None
        return loss

    def _capture(self, x, weight, expected: torch.Tensor, rng_before) -> torch.fx.GraphModule | None:
        def loss(*tensors):
            *state, x, weight = tensors
            with KLWeight(weight):
                return functional_call(self.loss_fn, dict(zip(self.names, state)), (x,))

        try:
            with pyro.validation_enabled(False):
                graph = make_fx(loss, tracing_mode="fake")(*self.state, x, weight)
        except Exception as error:  # noqa: BLE001 — whatever stops the tracer, the pair still runs eagerly
            warnings.warn(f"the training loss could not be captured and runs eagerly: {_reason(error)}",
                          CaptureWarning, stacklevel=4)
            return None
        graph.graph.eliminate_dead_code()
        graph.recompile()
        rng_after = rng_state(x.device)
        set_rng_state(rng_before, x.device)
        with torch.no_grad():
            replayed = graph(*self.state, x, weight)
        set_rng_state(rng_after, x.device)
        if not torch.allclose(replayed, expected, rtol=1e-5, atol=1e-5, equal_nan=True):
            warnings.warn(f"the captured training loss gave {replayed.item()} where the pair gives "
                          f"{expected.item()} from the same random state; running eagerly", CaptureWarning,
                          stacklevel=4)
            return None
        return graph
