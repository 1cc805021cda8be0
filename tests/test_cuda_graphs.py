"""Captured steps replayed as CUDA graphs (``ppl_vae.infer.cuda_graphs``, ``train.cuda_graphs``).

A CUDA graph cannot run on the CPU, so most of these tests give ``GraphedStep`` a stand-in with a CUDA
graph's semantics (``recorded_graphs.RecordedGraph``): recording runs the warm-ups and leaves the
outputs unwritten, each replay reruns the recorded step on the memory it was recorded on, drawing
from the random stream as it stands and overwriting the same output tensors, and nothing is kept
alive by the graph. Through it, a trainer and a vectorised program train exactly as without graphs,
and the fallbacks warn. The tests marked ``cuda`` run the real thing where torch sees a GPU.
"""

from __future__ import annotations

import math
import warnings

import pyro
import pytest
import torch
from recorded_graphs import NeverReplayed, RecordedGraph, Unrecordable, stand_in
from same_runs import assert_same

from ppl_vae import DATASETS, GUIDES, MODELS, TrainConfig, Trainer
from ppl_vae.infer import cuda_graphs
from ppl_vae.infer.capture import CaptureWarning
from ppl_vae.infer.restarts import Restarts, VectoriseWarning

BITS = DATASETS["bits"](n=5, rows=100)  # 80 training rows
#: the single-bit study's 2-layer cell in small (its free bits released, its gradient capped)
CELL = {"epochs": 6, "batch_size": 0, "lr": 5e-3, "lr_final": 1e-3, "eval_every": 3,
        "free_bits_sites": {"z2": 0.5}, "free_bits_release": 0.8, "grad_clip": 1.0}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: a CUDA graph records GPU kernels")


def dlgm(seed: int = 0, device: str = "cpu", **config) -> Trainer:
    pyro.set_rng_seed(seed)
    model = MODELS["dlgm"](BITS.data_shape, latent_dim=1, top_latent_dim=1, hidden=[10], top_hidden=[10])
    return Trainer(model, GUIDES["structured"](model), BITS, TrainConfig(**{**CELL, "seed": seed, **config}),
                   device=device)


@pytest.mark.parametrize("batch_size", [0, 24], ids=["full batch", "batches of 24 and 8"])
def test_a_recorded_step_trains_exactly_as_the_plain_replay(monkeypatch, batch_size):
    """Through a CUDA graph's semantics, every step after the first of each batch shape is one replay of
    its recorded graph, and the run's history and parameters are the plain replay's to the last bit:
    the batch is copied into the graph's buffer, the loss kept is a copy, the random stream is left as the
    eager step left it."""
    plain = dlgm(batch_size=batch_size)
    plain.fit()
    made = stand_in(monkeypatch)
    graphed = dlgm(batch_size=batch_size, cuda_graphs=True)
    graphed.fit()
    assert_same(graphed, plain, exact=True)
    shapes = 1 if batch_size == 0 else 2  # 80 rows: three batches of 24 and one of 8
    assert len(made) == shapes
    assert all(isinstance(joint.graph, cuda_graphs.GraphedStep) for joint in graphed.loss.graphs.values())
    # each shape's first step is eager and its graph's check one replay: every step is one replay
    assert sum(graph.replays for graph in made) == graphed.step


def test_restarts_replay_their_vectorised_step_and_its_draws_as_one_recorded_graph(monkeypatch):
    """Two restarts trained as one program: with the step recorded, each restart's noise draws included,
    the same numbers to the last bit as the vectorised replay, and each restart's random stream ends
    where the replay's does."""
    plain = Restarts([dlgm(seed) for seed in (0, 1)])
    plain.fit()
    made = stand_in(monkeypatch)
    program = Restarts([dlgm(seed, cuda_graphs=True) for seed in (0, 1)])
    program.fit()
    for a, b in zip(program.trainers, plain.trainers):
        assert_same(a, b, exact=True)
    assert all(torch.equal(g.get_state(), h.get_state()) for g, h in zip(program.generators, plain.generators))
    (step,) = program.graphs.values()
    assert isinstance(step.recorded, cuda_graphs.GraphedStep)
    (graph,) = made
    assert graph.replays == program.step + 1  # the check, then every update (of R > 1, the first one too)


def test_a_graphed_step_copies_only_what_moved_and_returns_a_loss_to_keep():
    """Inputs updated in place are the graph's own memory; others are copied in at each call; a caller
    that moves an in-place input to new memory still gets its values; the loss returned survives the
    next replay, the gradients are the graph's own."""
    w, x = torch.ones(3), torch.tensor([1.0, 2.0, 3.0])

    def step(w, x):
        return (w * x).sum(), w * x

    graphed = cuda_graphs.GraphedStep(step, (w, x), {0}, graph=RecordedGraph())
    assert graphed.buffers[0].data_ptr() == w.data_ptr() and graphed.buffers[1].data_ptr() != x.data_ptr()
    first, grad = graphed(w, x)
    assert first.item() == 6.0
    w.add_(1.0)  # in place: no copy needed
    second, grad_again = graphed(w, torch.tensor([2.0, 2.0, 2.0]))
    assert (first.item(), second.item()) == (6.0, 12.0)  # the first loss kept its value
    assert grad_again is grad and grad.tolist() == [4.0, 4.0, 4.0]
    moved = torch.full((3,), 3.0)
    third, _ = graphed(moved, torch.ones(3))
    assert third.item() == 9.0 and w.tolist() == [3.0, 3.0, 3.0]  # copied into the memory recorded on


def test_recording_puts_back_what_the_step_changes_in_place_and_refuses_inputs_elsewhere():
    """The warm-up runs of a step that updates an input in place (running statistics, say) leave no trace,
    whether or not the step is then recorded; a step with an input on another device (read once, at
    recording, by a CUDA graph) is refused by name."""
    count, x = torch.zeros(()), torch.ones(2)

    def step(count, x):
        count.add_(1.0)
        return (count * x).sum(), x

    graphed = cuda_graphs.GraphedStep(step, (count, x), {0}, graph=RecordedGraph())
    assert count.item() == 0.0
    loss, _ = graphed(count, x)
    assert (loss.item(), count.item()) == (2.0, 1.0)  # one replay, one update, as the eager step
    with pytest.raises(RuntimeError, match="not permitted when stream is capturing"):
        cuda_graphs.GraphedStep(step, (count, x), {0}, graph=Unrecordable())
    assert count.item() == 1.0  # a recording that fails after its warm-ups leaves no trace either
    with pytest.raises(ValueError, match="input 1 is on meta and its first on cpu: a CUDA graph needs every input"):
        cuda_graphs.GraphedStep(step, (count, torch.ones(2, device="meta")), {0}, graph=RecordedGraph())


@pytest.mark.parametrize("kind, reason", [(Unrecordable, "could not be recorded as a CUDA graph"),
                                          (NeverReplayed, "gave nan where the pair gives")],
                         ids=["cannot be recorded", "replay differs"])
def test_a_step_that_cannot_be_graphed_warns_and_trains_as_before(monkeypatch, kind, reason):
    """A step that cannot be recorded, or whose first replay differs from the eager step, is replayed
    without a CUDA graph, with a warning saying why; the run is the plain one."""
    plain = dlgm()
    plain.fit()
    stand_in(monkeypatch, kind)
    graphed = dlgm(cuda_graphs=True)
    with pytest.warns(CaptureWarning, match=f"{reason}.*replaying it without a CUDA graph"):
        graphed.fit()
    assert_same(graphed, plain, exact=True)
    assert not any(isinstance(joint.graph, cuda_graphs.GraphedStep) for joint in graphed.loss.graphs.values())


def test_a_recorded_step_that_leaves_the_random_stream_behind_is_not_kept(monkeypatch):
    """A graph whose replays drew from a stream they did not advance would draw the same numbers every
    step, and its first replay would still pass: where the check's replay leaves the stream is checked too."""

    class FrozenStream(RecordedGraph):
        def replay(self):
            state = torch.get_rng_state()
            super().replay()
            torch.set_rng_state(state)

    plain = dlgm()
    plain.fit()
    stand_in(monkeypatch, FrozenStream)
    graphed = dlgm(cuda_graphs=True)
    with pytest.warns(CaptureWarning, match="leaves the random stream elsewhere than the eager step"):
        graphed.fit()
    assert_same(graphed, plain, exact=True)


@pytest.mark.parametrize("frozen", [False, True], ids=["replay differs", "a stream left behind"])
def test_restarts_whose_step_cannot_be_graphed_warn_and_train_as_before(monkeypatch, frozen):
    plain = [dlgm(seed) for seed in (0, 1)]
    Restarts(plain).fit()
    program = Restarts([dlgm(seed, cuda_graphs=True) for seed in (0, 1)])

    class FrozenStreams(RecordedGraph):
        def replay(self):
            states = [g.get_state() for g in program.generators]
            super().replay()
            for g, state in zip(program.generators, states):
                g.set_state(state)

    stand_in(monkeypatch, FrozenStreams if frozen else NeverReplayed)
    reason = "leaves restart 0's random stream elsewhere than its eager step" if frozen else "gave \\[nan, nan\\]"
    with pytest.warns(VectoriseWarning, match=f"{reason}.*replaying it without a CUDA graph"):
        program.fit()
    for a, b in zip(program.trainers, plain):
        assert_same(a, b, exact=True)
    assert all(step.recorded is None for step in program.graphs.values())


def test_on_the_cpu_cuda_graphs_are_ignored():
    """``train.cuda_graphs`` changes nothing where there is no CUDA: no graph, no warning."""
    assert not cuda_graphs.available(torch.device("cpu"))
    plain, asked = dlgm(), dlgm(cuda_graphs=True)
    plain.fit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        asked.fit()
    assert_same(asked, plain, exact=True)
    assert all(isinstance(joint.graph, torch.fx.GraphModule) for joint in asked.loss.graphs.values())


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices: one not current")


@cuda
@pytest.mark.parametrize("device, compile", [("cuda", False), ("cuda", True),
                                             pytest.param("cuda:1", False, marks=two_gpus)],
                         ids=["replayed", "compiled", "on the device not current"])
def test_on_cuda_a_recorded_step_trains_as_the_plain_replay(device, compile):
    """The real CUDA graph: the same history and parameters as the step replayed kernel by kernel (the
    same kernels, so equal to float rounding at most), also on a device that is not the current one
    (a graph records the current device's stream)."""
    plain = dlgm(device=device, compile=compile)
    plain.fit()
    graphed = dlgm(device=device, compile=compile, cuda_graphs=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptureWarning)
        graphed.fit()
    assert all(isinstance(joint.graph, cuda_graphs.GraphedStep) for joint in graphed.loss.graphs.values())
    assert_same(graphed, plain, exact=False)


@cuda
def test_on_cuda_a_step_that_cannot_be_recorded_falls_back_on_the_stream_it_came_from():
    """A capture that fails (a read back to the host is not allowed while recording) raises, and leaves the
    default stream current: training after the fallback does not run on the capture's side stream."""
    w = torch.ones(3, device="cuda")

    def step(w):
        return w.sum() * w.sum().item(), w

    with pytest.raises(RuntimeError, match="(?i)captur"):  # CUDA refuses the read while capturing
        cuda_graphs.GraphedStep(step, (w,), {0})
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    assert torch.randn(3, device="cuda").isfinite().all()  # the generator draws eagerly again
    trainer = dlgm(device="cuda", epochs=2)
    trainer.fit()
    assert trainer.step == 2 and all(math.isfinite(row["test_loss"]) for row in trainer.history)


@cuda
def test_on_cuda_restarts_replay_one_recorded_graph():
    plain = [dlgm(seed, device="cuda") for seed in (0, 1, 2)]
    Restarts(plain).fit()
    graphed = [dlgm(seed, device="cuda", cuda_graphs=True) for seed in (0, 1, 2)]
    program = Restarts(graphed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VectoriseWarning)
        program.fit()
    assert all(isinstance(step.recorded, cuda_graphs.GraphedStep) for step in program.graphs.values())
    for a, b in zip(graphed, plain):
        assert_same(a, b, exact=False)
