"""A CUDA graph's semantics on the CPU, for the tests of ``ppl_vae.infer.cuda_graphs`` and of the bench:
``stand_in(monkeypatch)`` makes ``GraphedStep`` record and replay with ``RecordedGraph`` on any device."""

from __future__ import annotations

from ppl_vae.infer import cuda_graphs


class RecordedGraph:
    """A CUDA graph's semantics on the CPU: recording leaves the outputs unwritten (NaN here); each
    replay runs the step again on the tensors it was recorded on, drawing from the random stream as it
    stands, and writes into the same output tensors."""

    def capture(self, fn, inputs, device):
        self.fn, self.inputs, self.replays = fn, inputs, 0
        self.outputs = [t.clone().fill_(float("nan")) for t in fn(*inputs)]
        return self.outputs

    def replay(self):
        self.replays += 1
        for out, value in zip(self.outputs, self.fn(*self.inputs), strict=True):
            out.copy_(value)


class Unrecordable(RecordedGraph):
    def capture(self, fn, inputs, device):
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
