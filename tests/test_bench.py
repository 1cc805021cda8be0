"""The benchmark's baseline and plumbing (never its timings: speed goals live in ``benchmarks/bench.py``)."""

import json

import bench
import pyro
import pytest
import torch
from recorded_graphs import stand_in

from ppl_vae import ESTIMATORS, GUIDES, MODELS


def _vae():
    model = MODELS["vae"]((12,), latent_dim=3, hidden=[16, 8])
    guide = GUIDES["gaussian"](model)
    return (model, guide, bench.HandWrittenVAE, torch.bernoulli(torch.full((5, 12), 0.3)),
            [guide.encoder, guide.heads["z"], model.decoder])


def _dlgm():
    """The single-bit cell's 2-layer pair: ELU, variance heads, a wider top."""
    model = MODELS["dlgm"]((6,), latent_dim=1, top_latent_dim=1, hidden=[10, 10], activation="elu",
                           head="variance", top_hidden=[20, 20])
    guide = GUIDES["structured"](model)
    return (model, guide, bench.HandWrittenDLGM, torch.bernoulli(torch.full((7, 6), 0.5)),
            [guide.encoder, guide.q_z1, guide.q_z2, model.conditional, model.decoder])


@pytest.mark.parametrize("make", [_vae, _dlgm], ids=["vae", "dlgm"])
def test_hand_written_copy_computes_the_toolkit_loss(make):
    """From the same parameters and noise, the hand-written loss and its gradients are the mc estimator's.
    ``make`` gives the pair, the hand-written class, a batch and the pair's modules in the copy's order."""
    model, guide, hand_class, x, modules = make()
    hand = hand_class.copy_of(model, guide)
    results = []
    for loss_fn, held in ((lambda: ESTIMATORS["mc"]()(model, guide)(x), modules),
                          (lambda: hand(x), list(hand.children()))):
        pyro.set_rng_seed(4)
        loss = loss_fn()
        results.append([loss.detach(), *torch.autograd.grad(loss, [p for m in held for p in m.parameters()])])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(*results))


def test_the_single_bit_cell_bench_times_the_bundled_cell():
    result = bench.bench_single_bit(5, rounds=1, device=torch.device("cpu"), steps=2, compile=False,
                                    log=lambda *_: None)
    assert result["rows"] == 1000 and set(result["steps_per_s"]) == {"pytorch", "toolkit", "toolkit-one-read"}
    assert result["one_read_ratio"] > 0
    assert bench.single_bit_cell(5)["model"]["name"] == "dlgm"


def test_the_restarts_bench_times_one_program_against_separate_cells():
    """Both sides train the same restarts of the bundled cell: after a round, the program's restarts and
    the separate cells stand at the same step with the same parameters (to float rounding)."""
    result = bench.bench_restarts(5, rounds=1, device=torch.device("cpu"), restarts=2, steps=2, compile=False,
                                  log=lambda *_: None)
    assert set(result["ms_per_restart_step"]) == {"separate", "vectorised"} and result["speed_up"] > 0
    assert result["restarts"] == 2 and result["steps_per_round"] == 2
    assert result["same_step"] and result["max_parameter_difference"] < 1e-5


@pytest.mark.slow
def test_the_compiled_variants_are_timed_beside_the_eager_ones():
    result = bench.bench_train(128, rows=256, rounds=1, device=torch.device("cpu"), hidden=[16], latent=2,
                               log=lambda *_: None)
    assert {"pytorch-compiled", "toolkit-compiled"} <= set(result["ms_per_step"])
    assert result["compiled_step_ratio"] > 0 and result["compile_s"]["toolkit"] > 0


def test_quick_training_bench_checks_losses():
    result = bench.bench_train(128, rows=256, rounds=1, device=torch.device("cpu"), hidden=[16], latent=2,
                               log=lambda *_: None, compile=False)
    assert result["loss_check"]["equal"] and result["loss_check"]["max_rel_diff"] < 1e-5
    assert set(result["ms_per_step"]) == {"pytorch", "toolkit", "toolkit-eager"} and result["steps_per_round"] == 2


def test_the_64x64_conv_bench_checks_losses_too():
    """The hand-written copy of a conv pair computes the toolkit's loss on 64 x 64 images."""
    result = bench.bench_train(64, rows=128, rounds=1, device=torch.device("cpu"), hidden=[16], latent=2,
                               network="conv", data="dsprites", log=lambda *_: None, compile=False)
    assert result["loss_check"]["equal"] and (result["network"], result["data"]) == ("conv", "dsprites-like")


def test_the_generator_bench_times_the_whole_set():
    result = bench.bench_generator(32, rounds=1, log=lambda *_: None)
    assert result["images"] == 737_280 and result["packed_mib"] == 737_280 * 32 * 32 / 8 / 2**20


@pytest.mark.slow
def test_quick_bench_writes_its_results(tmp_path):
    out = tmp_path / "bench.json"
    bench.run(out, quick=True, log=lambda *_: None)
    result = json.loads(out.read_text())
    assert {"step_ratio_b128", "step_ratio_b1024", "step_ratio_conv_b64", "machine", "train", "single_bit", "iw",
            "generator", "restarts"} <= set(result)
    assert [r["chunk_size"] for r in result["iw"]] == [50, 100]


def test_a_device_torch_lacks_ends_the_benchmark_with_one_line(tmp_path, capsys):
    argv = ["--device", "tpu", "--out", str(tmp_path / "b.json")]
    if not torch.cuda.is_available():
        argv[1] = "cuda"
    with pytest.raises(SystemExit) as stop:
        bench.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert err.startswith("python benchmarks/bench.py: error: device ")
    assert not (tmp_path / "b.json").exists()


def test_the_cuda_graph_bench_times_each_step_with_and_without_its_graph(monkeypatch):
    """Through a CUDA graph's semantics on the CPU (``recorded_graphs.RecordedGraph``), the bench's two
    sides of each pair, a cell and a program of restarts, train the same steps to the same parameters."""
    stand_in(monkeypatch)
    result = bench.bench_cuda_graphs(5, rounds=1, device=torch.device("cpu"), restarts=2, steps=2, compile=False,
                                     log=lambda *_: None)
    assert result["graphed"] == {"cell": True, "program": True}
    assert result["max_parameter_difference"] == {"cell": 0.0, "program": 0.0}
    assert set(result["ms_per_step"]) == {"cell", "cell, CUDA graph", "program", "program, CUDA graph"}
    assert set(result["speed_up"]) == {"cell", "program"} and result["steps_per_round"] == 2


@pytest.mark.slow
def test_the_dsprites_program_bench_times_the_six_cells_and_projects_the_protocol():
    """dsprites-beta-gpu's six cells (2 betas x 3 seeds) as one program against separate cells, on 128
    images (2 steps of 64): both sides end at the same step and parameters (to rounding), and the
    per-10,000-step and protocol times follow from the measured restart-steps (27 epochs of 11,364
    steps of all six cells)."""
    result = bench.bench_dsprites_program(rounds=1, device=torch.device("cpu"), rows=128, log=lambda *_: None)
    assert result["restarts"] == 6 and result["steps_per_round"] == 2 and result["protocol_steps"] == 27 * 11_364
    # batched convolutions round otherwise, and Adam can turn that into up to a step of lr (1e-4) a step:
    # 4 steps (the untimed round and the timed one), with room to spare
    assert result["same_step"] and result["max_parameter_difference"] < 2 * 4 * 1e-4
    ms = result["ms_per_restart_step"]["vectorised"]
    assert result["s_per_10000_steps"]["vectorised"] == pytest.approx(ms * 6 * 10)
    assert result["protocol_hours"]["vectorised"] == pytest.approx(ms * 6 / 1000 * 27 * 11_364 / 3600)
