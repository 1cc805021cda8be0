"""Restarts trained as one vectorised program (``ppl_vae.infer.restarts``, ``train.vectorise``): each
restart gives its separate cell's numbers (bit for bit alone), fails alone, checkpoints and resumes
exactly; the pairs that cannot be vectorised fall back to separate cells with a warning."""

from __future__ import annotations

import json
import math
import warnings

import pyro
import pytest
import torch
from same_runs import assert_same

from ppl_vae import DATASETS, GUIDES, MODELS, TrainConfig, Trainer
from ppl_vae.data.datasets import Dataset
from ppl_vae.infer.capture import CaptureWarning
from ppl_vae.infer.nonfinite import NonFiniteLossError
from ppl_vae.infer.random_state import rng_state
from ppl_vae.infer.restarts import NotVectorised, Restarts, VectoriseWarning, clip_per_restart
from ppl_vae.io import load_tensors
from ppl_vae.lab.experiment import CellsFailed, run

BITS = DATASETS["bits"](n=5, rows=100)  # 80 training rows of a bit replicated 5 times
#: the single-bit study's 2-layer cell in small: free bits released over the run, a decaying learning rate
SINGLE_BIT = {"epochs": 12, "batch_size": 0, "lr": 5e-3, "lr_final": 1e-3, "eval_every": 4,
              "free_bits_sites": {"z2": 0.5}, "free_bits_release": 0.8, "grad_clip": 1.0}


def dlgm(seed: int, data: Dataset = BITS, **config) -> Trainer:
    """The single-bit study's 2-layer DLGM in small, seeded as a cell seeds it (``cell.build``)."""
    pyro.set_rng_seed(seed)
    model = MODELS["dlgm"](data.data_shape, latent_dim=1, top_latent_dim=1, hidden=[10], top_hidden=[10])
    return Trainer(model, GUIDES["structured"](model), data, TrainConfig(**{**SINGLE_BIT, "seed": seed, **config}))


def separate(seed: int, data: Dataset = BITS, **config) -> Trainer:
    trainer = dlgm(seed, data, **config)
    trainer.fit()
    return trainer


@pytest.mark.parametrize("config", [{}, {"batch_size": 16, "lr_final": None}],
                         ids=["full batch", "shuffled batches"])
def test_one_restart_gives_its_separate_cells_numbers_bit_for_bit(config):
    """R = 1: the same history rows and parameters as Trainer.fit, to the last bit, with the gradient
    cap active (grad_clip 1), the free-bits floor released and the learning rate decaying; with
    shuffled batches each restart's order comes from its own stream, as the cell's from torch's."""
    alone = separate(0, **config)
    (restart,) = trainers = [dlgm(0, **config)]
    Restarts(trainers).fit()
    assert_same(restart, alone, exact=True)
    assert restart.step == alone.step and restart.epoch == alone.epoch


def test_restarts_with_their_own_seeds_and_kl_weights_follow_their_separate_cells():
    """Three restarts, each with its own seed and KL weight (a beta sweep's cells), trained as one: each
    ends where its separate cell does (vmapped kernels round differently, nothing more), and the
    step replayed is one vmapped graph over the three."""
    cells = [(0, 1.0), (1, 1.0), (2, 4.0)]
    alone = [separate(seed, kl_weight=beta) for seed, beta in cells]
    trainers = [dlgm(seed, kl_weight=beta) for seed, beta in cells]
    restarts = Restarts(trainers)
    histories = restarts.fit()
    assert histories == [t.history for t in trainers]
    for restart, cell in zip(trainers, alone):
        assert_same(restart, cell, exact=False)
    assert histories[0][-1]["test_loss"] != histories[1][-1]["test_loss"]  # their own draws
    (step,) = restarts.graphs.values()
    assert isinstance(step.graph, torch.fx.GraphModule) and len(step.draws) == 2  # z1 and z2, drawn per restart
    loss_shapes = [n.meta["val"].shape for n in step.graph.graph.find_nodes(op="output")[0].args[0][:1]]
    assert loss_shapes == [(3,)]


def test_a_restart_whose_loss_turns_nan_fails_alone_and_names_its_step():
    """A NaN put into restart 1's parameters after epoch 4: the span is replayed from its snapshot and
    the error names step 4 (epoch 5), as its separate cell's would, and the fix; it writes nothing
    more. Restart 0 trains on to the numbers of the same program unpoisoned, bit for bit."""
    rows = []
    trainers = [dlgm(0), dlgm(1)]

    def poison(row):
        rows.append(row)
        if row["epoch"] == 4:
            next(trainers[1].loss_fn.parameters()).data.fill_(math.nan)

    results = Restarts(trainers).fit(on_epoch=[None, poison])
    assert isinstance(results[1], NonFiniteLossError)
    assert "at step 4 (epoch 5)" in str(results[1]) and "its parameters are not finite" in str(results[1])
    assert any("--set train.vectorise=false" in note for note in results[1].__notes__)
    assert [row["epoch"] for row in rows] == [4] and results[0] == trainers[0].history
    healthy = [dlgm(0), dlgm(1)]
    Restarts(healthy).fit()
    assert_same(trainers[0], healthy[0], exact=True)


@pytest.mark.parametrize("poisoned, at_step", [(0, 0), (1, 1)],
                         ids=["restart 0 before training", "restart 1 after step 0"])
def test_a_restart_whose_first_step_of_a_shape_raises_fails_alone(monkeypatch, poisoned, at_step):
    """Batches of 32 of 80 rows: steps of 32, 32 and 16, the first of each shape run eagerly for every
    restart, where Pyro's checks refuse NaN parameters (as a separate cell's first step does). Made NaN
    before training, restart 0 fails alone with Pyro's error, its step noted, and restart 1's step is
    captured instead; made NaN after step 0, restart 1 raises at step 2 (the short batch's first) and
    fails alone, its error naming step 1, its first non-finite loss. Either way the other trains to its
    numbers in the healthy program, bit for bit."""
    config = {"batch_size": 32, "lr_final": None, "epochs": 4}
    trainers = [dlgm(0, **config), dlgm(1, **config)]
    original = Restarts._step

    def step(self, *args):
        if self.step == at_step:
            next(trainers[poisoned].loss_fn.parameters()).data.fill_(math.nan)
        return original(self, *args)

    monkeypatch.setattr(Restarts, "_step", step)
    program = Restarts(trainers)
    results = program.fit()
    monkeypatch.setattr(Restarts, "_step", original)
    error = results[poisoned]
    assert program.raised_at[poisoned][0] == (0 if at_step == 0 else 2)  # a first step of a shape raised
    if at_step == 0:
        assert isinstance(error, ValueError) and "Expected parameter" in str(error)
        assert any("at step 0 (epoch 1)" in note for note in error.__notes__)
    else:
        assert isinstance(error, NonFiniteLossError) and "at step 1 (epoch 1)" in str(error)
        assert "its parameters are not finite (an earlier step's update left them so)" in str(error)
    healthy = [dlgm(0, **config), dlgm(1, **config)]
    Restarts(healthy).fit()
    assert results[1 - poisoned] == trainers[1 - poisoned].history
    assert_same(trainers[1 - poisoned], healthy[1 - poisoned], exact=True)


def test_a_program_whose_every_restart_fails_stops_there():
    """Every restart NaN before training: each fails with its own error at step 0, and the program stops
    after that step instead of running the span's others (whose first steps would all raise again)."""
    trainers = [dlgm(0), dlgm(1)]
    for trainer in trainers:
        next(trainer.loss_fn.parameters()).data.fill_(math.nan)
    program = Restarts(trainers)
    results = program.fit()
    assert all(isinstance(error, ValueError) for error in results) and results[0] is not results[1]
    assert program.step == 1 and all(t.history == [] for t in trainers)


def test_a_restart_whose_checkpoint_or_on_epoch_call_raises_fails_alone(tmp_path):
    """What a restart's own end of span raises, a checkpoint that cannot be written (a full disk) or its
    on_epoch call, is its error alone; the other restart finishes."""

    def full_disk(path):
        raise OSError("No space left on device")

    def broken(row):
        raise RuntimeError("the row could not be logged")

    for fail in ("save", "on_epoch"):
        trainers = [dlgm(0, checkpoint_every=4), dlgm(1, checkpoint_every=4)]
        if fail == "save":
            trainers[1].save = full_disk
        results = Restarts(trainers).fit([tmp_path / f"{fail}0.pt", tmp_path / f"{fail}1.pt"],
                                         [None, broken if fail == "on_epoch" else None])
        assert isinstance(results[1], OSError if fail == "save" else RuntimeError) and trainers[1].epoch == 4
        assert results[0] == trainers[0].history and trainers[0].epoch == 12


def test_a_program_reads_back_once_per_span_not_per_step(host_reads):
    """As a cell's (test_capture's test_no_host_reads_per_step): two restarts' epochs of 8 shuffled batches,
    the gradient capped per restart, read back to the host as often as epochs of 2, once per span."""
    reads = host_reads

    def reads_per_epoch(rows):
        data = DATASETS["bits"](n=5, rows=rows)  # 80% of the rows to train on, in batches of 8
        program = Restarts([dlgm(seed, data, batch_size=8, lr_final=None) for seed in (0, 1)])
        program.seed()
        program.train_epochs(1)  # the first batch of a shape is run eagerly and checked: reads allowed
        reads.clear()
        program.train_epochs(1)
        return len(reads)

    assert reads_per_epoch(20) == reads_per_epoch(80) == 1  # train_epochs' one tolist()


@pytest.mark.slow
def test_one_compiled_restart_gives_its_separate_cells_numbers_bit_for_bit():
    """R = 1 compiled (the single-bit study's setting): its graph, the noise an input, compiles to its
    separate cell's numbers, bit for bit."""
    alone = separate(0, compile=True)
    (restart,) = trainers = [dlgm(0, compile=True)]
    Restarts(trainers).fit()
    assert_same(restart, alone, exact=True)


def test_checkpoints_are_the_separate_cells_and_resume_exactly(tmp_path):
    """A restart's checkpoint holds its own slice (not the stack) and is its separate cell's: loaded by
    a separate Trainer it continues to the numbers of the uninterrupted program; and restarts loaded
    from their checkpoints (with their random streams) continue as one program, bit for bit."""
    config = {"checkpoint_every": 4}
    whole = [dlgm(0, **config), dlgm(1, **config)]
    Restarts(whole).fit()
    paths = [tmp_path / f"{seed}.pt" for seed in (0, 1)]

    def stop(row):
        if row["epoch"] == 4:  # after both restarts' epoch-4 checkpoints
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Restarts([dlgm(0, **config), dlgm(1, **config)]).fit(paths, [None, stop])
    state = load_tensors(paths[0])
    weight = state["model"][next(iter(state["model"]))]
    assert weight.untyped_storage().nbytes() == weight.numel() * weight.element_size()  # its slice alone
    resumed, streams = [dlgm(0, **config), dlgm(1, **config)], []
    for t, path in zip(resumed, paths):
        t.load(path)
        streams.append(rng_state(t.device))
    Restarts(resumed, streams).fit()
    for a, b in zip(resumed, whole):
        assert_same(a, b, exact=True)
    alone = dlgm(1, **config)
    alone.load(paths[1])
    alone.fit()
    assert_same(alone, whole[1], exact=False)


def test_clip_per_restart_is_torchs_clip_on_each_restarts_slice():
    """Each restart's gradients scaled to a norm of at most max_norm over its own slice, as
    clip_grad_norm_ scales a separate cell's: one restart clipped, the other (norm 0.5) left alone."""
    grads = [torch.tensor([[3.0, 4.0], [0.3, 0.4]]), torch.tensor([[[12.0]], [[0.0]]])]  # norms 13 and 0.5
    clip_per_restart(grads, 1.0)
    for r, expected in ((0, [[3.0, 4.0], [[12.0]]]), (1, [[0.3, 0.4], [[0.0]]])):
        separate_grads = [torch.tensor(e) for e in expected]
        params = [torch.zeros_like(g, requires_grad=True) for g in separate_grads]
        for p, g in zip(params, separate_grads):
            p.grad = g
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        assert all(torch.equal(g[r], p.grad) for g, p in zip(grads, params))
    assert torch.linalg.vector_norm(torch.cat([g[0].flatten() for g in grads])) == pytest.approx(1.0, rel=1e-5)


def test_restarts_that_differ_in_more_than_seed_and_kl_weight_are_refused():
    with pytest.raises(NotVectorised, match="differ in lr"):
        Restarts([dlgm(0), dlgm(1, lr=1e-3)])
    with pytest.raises(NotVectorised, match="aggressive"):
        Restarts([dlgm(0, aggressive=True), dlgm(1, aggressive=True)])
    with pytest.raises(NotVectorised, match="different Dataset"):
        Restarts([dlgm(0), dlgm(1, data=DATASETS["bits"](n=5, rows=100))])


def _restarts_or_refusal(combination, seeds=(0, 1)) -> str | None:
    """Two restarts of a registered pair x estimator trained as one program for three full-batch epochs and checked
    against their separate runs; the reason it was refused, or None."""

    def make(seed):
        pyro.set_rng_seed(seed)
        model, guide = combination.build()
        config = TrainConfig(epochs=3, batch_size=0, lr=1e-2, estimator=combination.estimator, seed=seed)
        return Trainer(model, guide, data, config)

    pyro.set_rng_seed(0)
    x = combination.data(40)
    data = Dataset("t", x[:30], x[30:])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CaptureWarning)  # a pair the capture refuses is refused here too
            trainers = [make(seed) for seed in seeds]
            Restarts(trainers).fit()
    except NotVectorised as refusal:
        return str(refusal)
    for seed, trainer in zip(seeds, trainers):
        alone = make(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CaptureWarning)
            alone.fit()
        # batched convolutions round otherwise, and Adam turns a rounding in a near-zero gradient into up to
        # a step of lr: the parameters agree within a hundredth of one (1e-2)
        assert_same(trainer, alone, exact=False, rtol=1e-4, atol=1e-4)
    return None


#: the pairs that fall back to separate cells, and why: a discrete latent's draw (not Gaussian noise)
#: or an estimator that is not captured
NOT_VECTORISED = {"bernoulli": "bernoulli", "m2": "draws with", "enum": "enum"}


def expected_refusal(combination) -> str | None:
    return NOT_VECTORISED.get(combination.estimator) or NOT_VECTORISED.get(combination.guide)


def test_every_registered_pair_is_vectorised_or_refused_by_name(compatible_pair):
    """The pair matrix (estimator mc): vectorised to its separate runs' numbers, or refused (a runner
    then trains it separately, with a VectoriseWarning) for the reason the table gives."""
    combination = type(compatible_pair)(*[getattr(compatible_pair, f) for f in ("model", "options", "data_shape",
                                                                              "guide")], estimator="mc")
    refusal, expected = _restarts_or_refusal(combination), expected_refusal(combination)
    assert (refusal is None) == (expected is None), refusal
    if expected:
        assert expected in refusal


@pytest.mark.slow
def test_every_registered_pair_and_estimator_is_vectorised_or_refused_by_name(compatible_pair_and_estimator):
    combination = compatible_pair_and_estimator
    refusal, expected = _restarts_or_refusal(combination), expected_refusal(combination)
    assert (refusal is None) == (expected is None), refusal
    if expected:
        assert expected in refusal


GRID = """
[data]
name = "bits"
rows = 100
n = 5
[model]
name = "dlgm"
latent_dim = 1
top_latent_dim = 1
hidden = [10]
top_hidden = [10]
[guide]
name = "structured"
[train]
epochs = 6
batch_size = 0
lr = 5e-3
eval_every = 2
checkpoint_every = 2
vectorise = true
[diagnostics]
rows = 20
particles = 10
iw_samples = 25
[grid]
"train.seed" = [0, 1, 2]
"""


def test_a_vectorised_grid_writes_each_cells_folder_and_resumes_exactly(tmp_path, monkeypatch):
    """``train.vectorise``: the grid's three seeds run as one program, each into its own folder with its
    own summary and results row, the separate cells' numbers; stopped after its epoch-2 checkpoints,
    ``--resume`` continues it to the uninterrupted run's numbers."""
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    together = run(path, tmp_path / "together", progress=False)
    apart = run(path, tmp_path / "apart", ["train.vectorise=false"], progress=False)
    assert [s["vectorised_restarts"] for s in together] == [3, 3, 3]
    assert [s["vectorised_restarts"] for s in apart] == [0, 0, 0]
    for a, b in zip(together, apart):
        assert a["cell"] == b["cell"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert (tmp_path / "together" / a["cell"] / "metrics.jsonl").read_text().count("\n") == 3
    saves = []
    original = Trainer.save

    def save_then_stop(self, path):
        original(self, path)
        saves.append(path)
        if len(saves) == 3:  # every restart's epoch-2 checkpoint written
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(path, tmp_path / "stopped", progress=False)
    monkeypatch.setattr(Trainer, "save", original)
    resumed = run(path, tmp_path / "stopped", progress=False, resume=True)
    assert [s["resumed_from_epoch"] for s in resumed] == [2, 2, 2]
    assert [s["loss"] for s in resumed] == [s["loss"] for s in together]
    rows = (tmp_path / "stopped" / "results.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("seed,")


def test_a_vectorised_cell_whose_diagnostics_raise_fails_alone(tmp_path, monkeypatch):
    """A restart whose figures, diagnostics or summary raise is that cell's failure alone: the others
    of its program are finished, with their summaries and results rows."""
    from ppl_vae.lab import cell

    original = cell._finish

    def finish(task, *args, **kwargs):
        if task.cell.config["train"]["seed"] == 1:
            raise RuntimeError("a figure could not be drawn")
        return original(task, *args, **kwargs)

    monkeypatch.setattr(cell, "_finish", finish)
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    failure = "1 of 3 cell\\(s\\) failed: .*seed.1.*RuntimeError: a figure could not"
    with pytest.raises(CellsFailed, match=failure) as failed:
        run(path, tmp_path / "out", progress=False)
    assert len(failed.value.failed) == 1
    rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and [r.split(",")[0] for r in rows[1:]] == ["0", "2"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_grid_whose_pair_cannot_be_vectorised_runs_its_cells_separately_with_a_warning(tmp_path, jobs):
    """The refusal comes back to the runner, which warns and schedules each cell alone (over both
    workers under --jobs 2)."""
    path = tmp_path / "grid.toml"
    path.write_text(GRID.replace("vectorise = true", "vectorise = true\ncapture = false"))
    with pytest.warns(VectoriseWarning, match="3 cell\\(s\\).*train separately: \\[train\\] capture = false"):
        summaries = run(path, tmp_path / "out", progress=False, jobs=jobs)
    assert [s["vectorised_restarts"] for s in summaries] == [0, 0, 0]
    assert all(json.loads((tmp_path / "out" / s["cell"] / "summary.json").read_text()) == s for s in summaries)
