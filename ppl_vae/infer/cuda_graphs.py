"""A captured training step replayed as a CUDA graph (``train.cuda_graphs``).

A replayed joint graph (``capture``) still launches each of its kernels from Python. For the small
pairs of a collapse study that is a few hundred launches a step of a few microseconds' work each, so
the GPU waits on the host. A CUDA graph records the launches once and replays them all with one call
(NVIDIA, *CUDA C++ Programming Guide*, "CUDA Graphs"; PyTorch's ``torch.cuda.CUDAGraph``).

A graph reads and writes fixed memory. ``GraphedStep`` records a step on buffers of its own (the
tensors the caller updates in place, such as the parameters, serve as their own), and each call
copies into them the inputs that are not already there before it replays. The gradients it returns
are the graph's own tensors, overwritten by the next replay (they are the parameters' ``.grad`` until
then); the loss it returns is a copy, which a caller may keep. Shapes are static within one graph:
``capture.TrainingLoss`` and ``restarts.Restarts`` keep a graph per batch shape.

Random draws are recorded too. A CUDA generator used while recording (torch's own, for a cell's
step; each restart's own, for a program's noise) is registered with the graph, which advances its
offset on each replay as the eager kernels would (PyTorch's graph-safe random state): a replay from
a random state draws what the eager step drew from it, and leaves the stream where the eager step
did, which the callers check after the first replay. (torch registers a generator of one's own as
it draws from torch 2.14 on; with an older torch a program's step cannot be recorded, and replays
as before, with a warning.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["GraphedStep", "CudaGraph", "available"]

#: eager runs of the step on the capture's stream before it is recorded: what a first call sets up
#: lazily (cuBLAS workspaces, Inductor's kernels) must not be recorded (PyTorch's CUDA-graph recipe)
WARMUP_RUNS = 3


def available(device: torch.device) -> bool:
    """Whether steps on ``device`` can be replayed as CUDA graphs (on the CPU, ``train.cuda_graphs`` is ignored)."""
    return device.type == "cuda"


class CudaGraph:
    """``torch.cuda.CUDAGraph`` behind the two calls ``GraphedStep`` makes: ``capture`` and ``replay``."""

    def capture(self, fn: Callable, inputs: Sequence[torch.Tensor], device: torch.device) -> Sequence[torch.Tensor]:
        """Run ``fn(*inputs)`` ``WARMUP_RUNS`` times on a side stream of ``device``, then record it there; its
        outputs, which each replay overwrites. (A graph records the current device's stream: on another
        device's it would record nothing.)"""
        with torch.cuda.device(device):
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            try:
                # this block puts the stream back even where a failed capture's own exit raises first
                with torch.cuda.stream(stream):
                    for _ in range(WARMUP_RUNS):
                        fn(*inputs)
                    self.graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(self.graph, stream=stream):
                        outputs = fn(*inputs)
            finally:  # what the side stream ran (the warm-ups, at least) is done before the caller goes on
                torch.cuda.current_stream(device).wait_stream(stream)
        self.device = device
        return outputs

    def replay(self) -> None:
        with torch.cuda.device(self.device):
            self.graph.replay()


class GraphedStep:
    """``fn`` (a joint graph: ``(loss, *grads)`` of its inputs) recorded once on static buffers and replayed.

    :param fn: the step; it must not read tensors back to the host (a captured graph does not).
    :param inputs: example inputs, of the shapes every call will give.
    :param in_place: the indices of the inputs the caller updates in place (parameters, buffers, the KL
        weight): they are their own buffers, and a call that gives the same tensor copies nothing. The
        others get buffers of their own, into which each call copies its inputs.
    :param graph: what records and replays (``CudaGraph``; tests give a stand-in with its semantics).

    Every input must be on one device: a graph reads a tensor of another device (a CPU scalar, say) once,
    when it is recorded, and never again (a ``ValueError`` says which). ``fn`` is kept: the graph reads
    the constants it holds (a traced graph's tensors) but keeps none of them alive. Recording runs the
    step (``WARMUP_RUNS``): what it changes in place is put back after, whether or not the recording
    succeeds, and what it draws from the random stream is for the callers to put back (they check the
    recorded step from the eager step's random state, then set the stream where the eager step left it).
    """

    def __init__(self, fn: Callable, inputs: Sequence[torch.Tensor], in_place: set[int], graph=None):
        device = inputs[0].device
        elsewhere = [i for i, t in enumerate(inputs) if t.device != device]
        if elsewhere:
            raise ValueError(f"the step's input {elsewhere[0]} is on {inputs[elsewhere[0]].device} and its first on "
                             f"{device}: a CUDA graph needs every input on one device")
        # detached aliases hold the memory the graph reads, even if a caller later moves its tensor (``.data =``);
        # the step is recorded on the caller's own tensors (a compiled step's guards know them as they are)
        self.buffers = [t.detach() if i in in_place else t.detach().clone() for i, t in enumerate(inputs)]
        recorded_on = [t if i in in_place else self.buffers[i] for i, t in enumerate(inputs)]
        before = {i: self.buffers[i].clone() for i in in_place}  # a step may update a buffer (running statistics)
        # a graph holds no reference to what it reads: the step's own constants (a traced graph's, a compiled
        # module's) live as long as the step, which is kept for as long as the graph is replayed
        self.fn, self.graph = fn, graph or CudaGraph()
        with torch.no_grad():
            try:
                self.outputs = list(self.graph.capture(fn, recorded_on, device))
            finally:  # recorded or not, the warm-ups' updates are undone
                for i, value in before.items():
                    self.buffers[i].copy_(value)

    @classmethod
    def of_training_step(cls, fn: Callable, state: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]):
        """A joint graph of the trainers' signature, ``fn(*state, x, weight, scale, release, *fields)``: the
        state (parameters, buffers) and the KL weight, scale and free-bits release are updated in place by
        the caller; the batch and its fields are copied in."""
        n = len(state)
        return cls(fn, (*state, *inputs), {*range(n), n + 1, n + 2, n + 3})

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """``fn(*inputs)``: the loss as a copy, the gradients as the graph's own tensors."""
        for buffer, t in zip(self.buffers, inputs, strict=True):
            if t.data_ptr() != buffer.data_ptr():
                buffer.copy_(t)
        self.graph.replay()
        loss, *grads = self.outputs
        return [loss.clone(), *grads]
