"""The training loss of a pair, captured once per batch shape as a graph of tensor operations.

Each step, Pyro runs the model/guide pair in Python: sample statements pass through the handler
stack, distribution objects are built and their log-densities summed. For the 784-512-512-32
VAE at batch 128 that is about 1 ms of Python in a 10 ms step on a CPU (``benchmarks/bench.py``).
``TrainingLoss`` traces the loss **and its backward pass** with ``make_fx`` (PyTorch's
dispatcher-level tracer) on fake tensors, once per batch shape, and replays that joint graph:
random draws and the KL weight stay live, and the Pyro program is not re-run. On CUDA the replay
can be one CUDA graph (``cuda_graphs``).

The backward pass is traced, not left to autograd at replay time, because ``make_fx`` records
the forward below autograd: there ``detach()`` is a plain alias and a custom
``torch.autograd.Function`` is its forward alone, so a replayed forward would lose every
stop-gradient — the score-function surrogate ``surrogate - surrogate.detach()`` of Pyro's ELBOs
among them — and silently train a discrete latent on zero gradients. Tracing
``torch.autograd.grad`` records the gradient that autograd itself computes, and the replay sets
the graph's gradient outputs as the parameters' ``.grad`` directly.

This is what Pyro's ``JitTrace_ELBO`` does with the deprecated ``torch.jit.trace``, under its
condition: the pair's structure must not depend on data values. Tracing on fake tensors
enforces that — a pair that branches on a value (``if z.sum() > 0``) cannot be traced — and
the first replay must reproduce the eager loss **and every parameter's gradient** from the same
random state. A pair that fails either check is run eagerly, with a ``CaptureWarning`` saying
why. Plain Python numbers that a pair reads (a temperature held as a float attribute, say), and
tensors it holds outside its parameters and buffers (a prior's location made once, in a Pyro
user's ``PyroSample``), are frozen at capture: change them and the replay does not see it; set
``train.capture = false`` for such pairs.
"""

from __future__ import annotations

import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass

import pyro
import torch
from torch import nn
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx

from ppl_vae.infer import cuda_graphs
from ppl_vae.infer.handlers import FreeBits, GlobalShare, KLWeight
from ppl_vae.infer.random_state import generator_key, rng_state, set_rng_state

#: a replayed gradient passes when ||replayed - eager|| <= GRAD_RTOL * ||eager|| + GRAD_ATOL, per parameter
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-6


class CaptureWarning(UserWarning):
    """The pair could not be captured and runs eagerly (slower, otherwise the same)."""


def _reason(error: BaseException) -> str:
    """The first line of the first exception in the chain that has a message."""
    while error is not None:
        lines = str(error).strip().splitlines()
        if lines:
            return f"{type(error).__name__}: {lines[0]}"
        error = error.__cause__ or error.__context__
    return "unknown error"


@dataclass
class JointGraph:
    """A traced ``(loss, *grads)`` graph; ``grad_of[i]`` is the input whose gradient is output ``1 + i``."""

    graph: torch.fx.GraphModule
    grad_of: list[int]


def _grad_mismatch(names: list[str], replayed: list[torch.Tensor | None],
                   eager: list[torch.Tensor | None]) -> str | None:
    """The first parameter whose replayed gradient differs from the eager one, described; else None."""
    for name, a, b in zip(names, replayed, eager):
        if a is None and b is None:
            continue
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        if (a.device, a.dtype, a.shape) != (b.device, b.dtype, b.shape):  # the optimiser needs the parameter's own
            return (f"gradient of {name!r} is {a.dtype} {tuple(a.shape)} on {a.device} in the replay and "
                    f"{b.dtype} {tuple(b.shape)} on {b.device} eagerly")
        same = (a == b) | (a.isnan() & b.isnan())  # equal infinities and NaNs agree
        difference = torch.where(same, 0.0, a - b).norm()
        if not difference <= GRAD_RTOL * b.nan_to_num(0.0, 0.0, 0.0).norm() + GRAD_ATOL:  # a NaN fails too
            return (f"gradient of {name!r} has norm {a.norm().item():.6g} in the replay and {b.norm().item():.6g} "
                    f"eagerly (difference {difference.item():.3g})")
    return None


def functional_noise(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``graph`` with each Gaussian draw made functional: ``make_fx`` records a reparameterised sample
    as ``empty`` followed by an in-place ``normal_``, which ``torch.func.vmap(randomness="different")``
    refuses (an in-place draw into a tensor that is not batched); ``randn`` of the same size, times the
    scale plus the mean, is what it takes. The same generator state gives the same numbers as before
    (``randn`` fills its tensor as ``normal_`` does), so a vmapped graph over one restart replays the
    plain one bit for bit. Other in-place draws are left as they are (vmap then refuses the graph).
    Rewrites ``graph`` in place and returns it."""
    aten, nodes = torch.ops.aten, graph.graph
    for node in list(nodes.nodes):
        if node.op != "call_function" or node.target is not aten.normal_.default:
            continue
        empty = node.args[0]
        if getattr(empty, "target", None) is not aten.empty.memory_format:
            continue  # a draw into a tensor made otherwise: left in place
        given = {**dict(zip(("mean", "std"), node.args[1:])), **node.kwargs}
        mean, std = given.get("mean", 0.0), given.get("std", 1.0)
        options = {k: v for k, v in empty.kwargs.items() if k in ("dtype", "layout", "device", "pin_memory")}
        with nodes.inserting_before(node):
            draw = nodes.call_function(aten.randn.default, (empty.args[0],), options)
            if std != 1.0:
                draw = nodes.call_function(aten.mul.Tensor, (draw, std))
            if mean != 0.0:
                draw = nodes.call_function(aten.add.Tensor, (draw, mean))
        node.replace_all_uses_with(draw)
        nodes.erase_node(node)
        empty.replace_all_uses_with(draw)  # reads of the filled tensor through its first name
        nodes.erase_node(empty)
    nodes.lint()
    graph.recompile()
    return graph


@dataclass(frozen=True)
class NoiseInput:
    """A standard-normal draw that a graph takes as an input (``noise_inputs``)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    def draw(self, generator: torch.Generator | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """The draw from ``generator`` (torch's own by default): the numbers the graph drew before; into
        ``out`` (of this shape) where given, as ``randn`` fills a tensor of its own."""
        if out is not None:
            return out.normal_(generator=generator)
        return torch.randn(self.shape, generator=generator, dtype=self.dtype, device=self.device)


def noise_inputs(graph: torch.fx.GraphModule) -> list[NoiseInput]:
    """Make each Gaussian draw of ``graph`` an input after its others (``functional_noise`` first), in the
    order the graph draws them; returns what each is. Given ``[d.draw() for d in draws]`` from one random
    state, the graph computes what it did from that state; given each restart's draws from its own
    generator, a vectorised graph (``vectorised``) follows each restart's own stream. A graph that draws
    otherwise (a Bernoulli latent's sample, say) is refused with a ``ValueError`` naming the operations.
    Rewrites ``graph`` in place."""
    functional_noise(graph)
    nodes, aten = graph.graph, torch.ops.aten
    last = [node for node in nodes.nodes if node.op == "placeholder"][-1]
    draws = []
    for node in list(nodes.nodes):
        if node.op == "call_function" and node.target is aten.randn.default:
            with nodes.inserting_after(last):
                last = nodes.placeholder(f"noise_{len(draws)}")
            draws.append(NoiseInput(tuple(node.args[0]), node.kwargs.get("dtype") or torch.get_default_dtype(),
                                    torch.device(node.kwargs.get("device") or "cpu")))
            node.replace_all_uses_with(last)
            nodes.erase_node(node)
    seeded = sorted({str(node.target) for node in nodes.nodes if node.op == "call_function"
                     and torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ())})
    if seeded:
        raise ValueError(f"the captured graph also draws with {', '.join(seeded)}; only Gaussian draws "
                         "(reparameterised samples) can be given to each restart from its own stream")
    nodes.lint()
    graph.recompile()
    return draws


def vectorised(graph: torch.fx.GraphModule, in_dims: tuple, inputs: tuple) -> torch.fx.GraphModule:
    """``graph`` mapped over a leading restart dimension of the inputs whose ``in_dims`` entry is 0 (None:
    shared by every restart) with ``torch.func.vmap``, traced into one graph of batched operations
    (``make_fx``), so a step of R restarts is one replay; every output gains the restart dimension.
    ``inputs``: example inputs of the batched shapes (fake tensors are traced, nothing is computed).
    The graph's views become reshapes first: a batched tensor's layout may not allow a view that the
    unbatched one did (a reshape is the same view where it can be, a copy where not). Rewrites ``graph``."""
    views = (torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default)
    for node in graph.graph.nodes:
        if node.op == "call_function" and node.target in views:
            node.target = torch.ops.aten.reshape.default
    graph.recompile()
    graph = make_fx(torch.func.vmap(graph, in_dims=in_dims), tracing_mode="fake",
                    _allow_non_fake_inputs=True)(*inputs)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def set_grads(state: list[torch.Tensor], inputs: list[int], grads) -> None:
    """Each gradient as the ``.grad`` of ``state[i]`` for ``i`` in ``inputs``, in that tensor's memory layout
    (as autograd's accumulation lays it out): the fused Adam refuses a gradient strided otherwise, and a
    compiled graph may return one (Inductor picks its outputs' layouts)."""
    for i, g in zip(inputs, grads):
        p = state[i]
        if g is not None and g.stride() != p.stride():
            g = torch.empty_strided(p.shape, p.stride(), dtype=g.dtype, device=g.device).copy_(g)
        p.grad = g


class TrainingLoss:
    """``loss_and_grads(x, weight, scale, release)``: the estimator's loss on a batch with KL weight
    ``weight`` (a 0-dim tensor) and the ``free_bits`` floors times ``release``, times ``scale``, with
    its gradient set as each parameter's ``.grad`` (None where the loss does not depend on the
    parameter), as Pyro's ``ELBO.loss_and_grads`` does.

    The first batch of each shape runs eagerly with Pyro's validation as the caller has it (on by
    default), which checks the pair's shapes, supports and parameters; later batches replay the
    captured graph, or run eagerly without validation where capture is off or failed. The
    gradients of a replay are the graph's own outputs, set without a copy: no autograd at all.

    :param loss_fn: an ``ELBOModule`` (``estimator(model, guide)``).
    :param capture: trace and replay; ``False`` runs every step eagerly.
    :param free_bits: free-bits nats per dimension by latent site (``handlers.FreeBits``).
    :param global_sites: latent sites shared by all data, whose log-densities a batch of B rows out
        of ``data_size`` scales by B / ``data_size`` (``handlers.GlobalShare``).
    :param kl_weighted: apply the KL weight (``handlers.KLWeight``); ``False`` for an estimator that
        needs every site at one scale (``enum``: TraceEnum_ELBO reads each site's scale as a number).
    :param compile: compile each captured graph with Inductor (``torch.compile``), which fuses its
        element-wise operations into a few loops; a graph that fails to compile, or whose first
        compiled step differs from the eager one, is replayed uncompiled with a ``CaptureWarning``.
        ``compile_seconds`` adds up the time spent compiling (Inductor caches compiled graphs on
        disk, so a second identical cell, in any process, compiles in a fraction of it).
    :param cuda_graphs: on CUDA, replay each captured (and compiled) graph as a CUDA graph
        (``cuda_graphs.GraphedStep``), checked like the capture; one that cannot be recorded, or
        whose first replay differs from the eager step, is replayed as before with a ``CaptureWarning``.
        The graph reads the ``weight``, ``scale`` and ``release`` it was recorded with in place: pass the
        same tensors each step, filled anew, as ``Trainer`` does (another tensor is copied into them).
    """

    def __init__(self, loss_fn: nn.Module, capture: bool = True, free_bits: dict[str, float] | None = None,
                 compile: bool = False, global_sites: tuple[str, ...] = (), data_size: int = 0,
                 kl_weighted: bool = True, cuda_graphs: bool = False):
        self.loss_fn, self.capture, self.free_bits = loss_fn, capture, dict(free_bits or {})
        self.kl_weighted, self.cuda_graphs = kl_weighted, cuda_graphs
        self.global_sites, self.data_size = tuple(global_sites), data_size
        self.compile, self.compile_seconds = compile, 0.0
        self.graphs: dict[tuple, JointGraph | None] = {}  # batch (shape, dtype, device) -> graph
        # the graph's inputs: the pair's parameters and buffers (updated in place by optimiser and
        # load_state_dict, so the same tensors every step)
        self.names = [n for n, _ in loss_fn.named_parameters()] + [n for n, _ in loss_fn.named_buffers()]
        self.state = [*loss_fn.parameters(), *loss_fn.buffers()]
        self.trainable = [i for i, t in enumerate(self.state) if t.requires_grad]
        self.trainable_tensors = [self.state[i] for i in self.trainable]

    def loss_and_grads(self, x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
                       release: torch.Tensor | None = None, fields: dict[str, torch.Tensor] | None = None
                       ) -> torch.Tensor:
        """``scale`` times the loss, detached; each parameter's ``.grad`` is set to its gradient.

        :param scale: a 0-dim tensor (1 by default), e.g. 1 / batch size for a per-example objective.
        :param release: a 0-dim tensor (1 by default) that multiplies the free-bits floors.
        :param fields: the batch's data fields the pair takes as keywords (labels, a mask), inputs of
            the captured graph like ``x``.
        """
        scale = torch.ones((), dtype=x.dtype, device=x.device) if scale is None else scale
        release = torch.ones((), dtype=x.dtype, device=x.device) if release is None else release
        for t in self.trainable_tensors:  # free the last step's gradients first: their memory serves this step
            t.grad = None
        fields = fields or {}
        key = (tuple(x.shape), x.dtype, x.device, *((name, tuple(t.shape), t.dtype) for name, t in fields.items()))
        if key not in self.graphs:
            return self._first(x, weight, scale, release, fields, key)
        joint = self.graphs[key]
        if joint is None:
            with pyro.validation_enabled(False):
                loss = self._eager(x, weight, release, fields) * scale
            set_grads(self.state, self.trainable, torch.autograd.grad(loss, self.trainable_tensors, allow_unused=True))
            return loss.detach()
        with torch.no_grad():
            loss, *grads = joint.graph(*self.state, x, weight, scale, release, *fields.values())
        set_grads(self.state, joint.grad_of, grads)
        return loss

    def _handlers(self, x: torch.Tensor, weight: torch.Tensor, release: torch.Tensor) -> ExitStack:
        """The KL weight, the free-bits floors and the global sites' share of the batch, as handlers."""
        stack = ExitStack()
        if self.kl_weighted:
            stack.enter_context(KLWeight(weight))
        stack.enter_context(FreeBits(self.free_bits, release))
        if self.global_sites:  # a pair with latents shared by all data (none for the bundled pairs)
            stack.enter_context(GlobalShare(self.global_sites, len(x) / self.data_size))
        return stack

    def _eager(self, x: torch.Tensor, weight: torch.Tensor, release: torch.Tensor, fields: dict) -> torch.Tensor:
        with self._handlers(x, weight, release):
            return self.loss_fn(x, **fields)

    def _first(self, x, weight, scale, release, fields: dict, key: tuple) -> torch.Tensor:
        before = rng_state(x.device)
        loss = self._eager(x, weight, release, fields) * scale
        grads = torch.autograd.grad(loss, self.trainable_tensors, allow_unused=True) if loss.requires_grad else ()
        set_grads(self.state, self.trainable, grads)
        self.graphs[key] = None
        refusal = getattr(getattr(self.loss_fn, "elbo", None), "capture_refusal", None)  # an estimator's own reason
        if self.capture and grads and refusal:
            self._eagerly(refusal)
        elif self.capture and grads:
            self.graphs[key] = self._capture((x, weight, scale, release, *fields.values()), tuple(fields),
                                             loss.detach(), grads, before)
        return loss.detach()

    def _capture(self, inputs, field_names: tuple[str, ...], loss, grads, rng_before) -> JointGraph | None:
        trainable, grad_of = self.trainable, []
        x, n = inputs[0], len(self.state)

        def joint(*tensors):
            state, (x, weight, scale, release, *values) = tensors[:n], tensors[n:]
            with self._handlers(x, weight, release):
                value = functional_call(self.loss_fn, dict(zip(self.names, state)), (x,),
                                        dict(zip(field_names, values))) * scale
            grads = torch.autograd.grad(value, [state[i] for i in trainable], allow_unused=True)
            grad_of[:] = [i for i, g in zip(trainable, grads) if g is not None]  # unused parameters get none
            # each gradient in its parameter's memory layout, as autograd's accumulation would give it
            return value, *[g if g.stride() == state[i].stride() else g.contiguous() for i, g in zip(trainable, grads)
                            if g is not None]

        try:
            with pyro.validation_enabled(False):
                graph = make_fx(joint, tracing_mode="fake", _allow_non_fake_inputs=True)(*self.state, *inputs)
        except Exception as error:  # noqa: BLE001 — whatever stops the tracer, the pair still runs eagerly
            return self._eagerly(f"the training loss could not be captured and runs eagerly: {_reason(error)}")
        graph.graph.eliminate_dead_code()
        graph.recompile()
        rng_after = rng_state(x.device)
        mismatch = self._mismatch(graph, inputs, loss, grads, grad_of, rng_before)
        if mismatch:
            set_rng_state(rng_after, x.device)
            return self._eagerly(f"the captured training loss {mismatch} from the same random state; running eagerly")
        checks = (inputs, loss, grads, grad_of, rng_before)
        if self.compile:
            started = time.perf_counter()
            graph = self._checked(graph, self._compile, "could not be compiled", "uncompiled", *checks)
            self.compile_seconds += time.perf_counter() - started
        if self.cuda_graphs and cuda_graphs.available(x.device):
            graph = self._checked(graph, lambda g: cuda_graphs.GraphedStep.of_training_step(g, self.state, inputs),
                                  "could not be recorded as a CUDA graph", "without a CUDA graph", *checks,
                                  rng_after=rng_after)
        set_rng_state(rng_after, x.device)
        return JointGraph(graph, grad_of)

    def _mismatch(self, graph, inputs, loss, grads, grad_of, rng_before, rng_after=None) -> str | None:
        """Run ``graph`` from the random state the eager step started from; how its loss or a
        gradient differs from the eager step's, or (given ``rng_after``) how it leaves the training
        device's random stream elsewhere than the eager step did; or None."""
        x, scale = inputs[0], inputs[2]
        set_rng_state(rng_before, x.device)
        with torch.no_grad():
            replayed, *replayed_grads = graph(*self.state, *inputs)
        if not torch.allclose(replayed, loss, rtol=1e-5, atol=1e-5 * scale.abs().item(), equal_nan=True):
            return f"gave {replayed.item()} where the pair gives {loss.item()}"
        stream = generator_key(x.device)
        if rng_after is not None and not torch.equal(rng_state(x.device)[stream], rng_after[stream]):
            return "leaves the random stream elsewhere than the eager step (its draws would repeat or skip)"
        replayed_by_input = dict(zip(grad_of, replayed_grads))
        mismatch = _grad_mismatch([self.names[i] for i in self.trainable],
                                  [replayed_by_input.get(i) for i in self.trainable], list(grads))
        return f"gives the pair's loss but not its gradients: {mismatch}" if mismatch else None

    @staticmethod
    def _compile(graph):
        """``graph`` compiled by Inductor, drawing its random numbers from torch's generator as the eager
        step does (``fallback_random``)."""
        return torch.compile(graph, backend="inductor", dynamic=False, fullgraph=True,
                             options={"fallback_random": True})

    def _checked(self, graph, make, failed: str, instead: str, inputs, loss, grads, grad_of, rng_before,
                 rng_after=None):
        """``make(graph)`` (compiled, recorded as a CUDA graph), checked like the capture (and, given
        ``rng_after``, for where it leaves the random stream); where it cannot be made or its step differs
        from the eager one, ``graph`` with a ``CaptureWarning``."""
        try:
            made = make(graph)
            mismatch = self._mismatch(made, inputs, loss, grads, grad_of, rng_before, rng_after)
        except Exception as error:  # noqa: BLE001 — a compiler or CUDA-graph failure leaves the plain replay
            mismatch = f"{failed} ({_reason(error)})"
        if mismatch:
            warnings.warn(f"the captured training loss {mismatch}; replaying it {instead}", CaptureWarning,
                          stacklevel=5)
            return graph
        return made

    @staticmethod
    def _eagerly(reason: str) -> None:
        warnings.warn(reason, CaptureWarning, stacklevel=5)
        return None
