"""A CUDA graph's semantics on the CPU, for the tests of ``ppl_vae.infer.cuda_graphs`` and of the bench:
``stand_in(monkeypatch)`` makes ``GraphedStep`` record and replay with ``RecordedGraph`` on any device."""

from __future__ import annotations

import gc
import weakref

from ppl_vae.infer import cuda_graphs


class RecordedGraph:
    """A CUDA graph's semantics on the CPU: recording runs the warm-ups and leaves the outputs unwritten
    (NaN here); each replay runs the step again on the tensors it was recorded on, drawing from the
    random stream as it stands, and writes into the same output tensors. Like a CUDA graph it keeps
    nothing alive: a step freed after recording (and its constants with it) fails the next replay."""

    def capture(self, fn, inputs, device):
        for _ in range(cuda_graphs.WARMUP_RUNS):
            fn(*inputs)
        self.fn, self.inputs, self.replays = weakref.ref(fn), inputs, 0
        self.outputs = [t.clone().fill_(float("nan")) for t in fn(*inputs)]
        return self.outputs

    def replay(self):
        self.replays += 1
        if self.replays == 2:  # after the callers' check: a traced graph, cyclic garbage, freed where unkept
            gc.collect()
        fn = self.fn()
        if fn is None:
            raise RuntimeError("the recorded step was freed: a CUDA graph would read freed memory")
        for out, value in zip(self.outputs, fn(*self.inputs), strict=True):
            out.copy_(value)


class Unrecordable(RecordedGraph):
    """Fails as a capture does: after the warm-ups."""

    def capture(self, fn, inputs, device):
        for _ in range(cuda_graphs.WARMUP_RUNS):
            fn(*inputs)
        raise RuntimeError("operation not permitted when stream is capturing")


class NeverReplayed(RecordedGraph):
    def replay(self):
        self.replays += 1  # the outputs stay as recorded: unwritten


def stand_in(monkeypatch, kind=RecordedGraph) -> list[RecordedGraph]:
    """CUDA graphs on the CPU, recorded and replayed by ``kind``; returns the graphs made."""
    made = []

    def make():
        made.append(kind())
        return made[-1]

    monkeypatch.setattr(cuda_graphs, "available", lambda device: True)
    monkeypatch.setattr(cuda_graphs, "CudaGraph", make)
    return made
