"""The ``mnist-loglik`` study (Burda et al. 2016, Table 1): its experiment files, a smoke run on the
embedded digits, its report's comparison with the paper, and the tanh networks it asks for."""

import csv
import re

import pytest
import torch
from torch import nn

from ppl_vae import GUIDES, MODELS
from ppl_vae.lab.experiment import run
from ppl_vae.lab.experiment_file import cells, find, load, validate
from ppl_vae.lab.studies.mnist_loglik import PAPER_NLL, report
from ppl_vae.networks import Decoder, Encoder

FILES = ("mnist-loglik", "mnist-loglik-cpu")
DIGITS = 'data={name = "digits", binarize = "dynamic"}'  # the embedded digits for MNIST
#: a few steps per cell: the eager loss is quicker than capturing it (``ppl_vae.infer.capture``, tested elsewhere)
SMOKE = ["train.capture=false"]


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine, the smoke run's small operations run several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", FILES)
def test_bundled_files_load_and_validate(name):
    _, config = load(name)
    grid = cells(config)
    for cell in grid:
        validate(cell.config)
    assert [tuple(c.values.values()) for c in grid] == [("1", "vae"), ("1", "iwae"), ("2", "vae"), ("2", "iwae")]
    assert config["data"] == {**config["data"], "name": "mnist", "binarize": "dynamic"}
    assert config["model"]["hidden"] == [200, 200] and config["model"]["activation"] == "tanh"
    assert [(c.config["train"]["estimator"], c.config["train"]["num_particles"]) for c in grid] == [
        ("mc", 1), ("iw", 50)] * 2
    assert [(c.config["model"]["name"], c.config["guide"]["name"], c.config["model"]["latent_dim"],
             c.config["model"].get("top_latent_dim")) for c in grid[::2]] == [
        ("vae", "gaussian", 50, None), ("dlgm", "structured", 100, 50)]
    if name == "mnist-loglik":  # the paper's budget and protocol
        assert config["diagnostics"] == {**config["diagnostics"], "rows": 10000, "iw_samples": 5000}
        assert config["train"] == {**config["train"], "epochs": 3280, "batch_size": 20, "lr": 1e-3, "lr_final": 1e-4}


def test_study_runs_end_to_end_on_the_digits(tmp_path, one_thread):
    path = find("mnist-loglik-cpu")
    out = tmp_path / "run"
    summaries = run(path, out, [DIGITS, *SMOKE], quick_run=True, progress=False)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {"log_px_iw", "log_px_iw_stderr", "activations"} <= set(rows[0])
    assert all(s["log_px_iw_stderr"] > 0 and s["data"] == "digits" for s in summaries)
    assert [set(s["active_units_sites"]) for s in summaries] == [{"z"}, {"z"}, {"z1", "z2"}, {"z1", "z2"}]
    markdown = (out / "report.md").read_text()
    assert "NOT comparable with the paper" in markdown and "`digits`" in markdown
    assert all(f"{nll:.2f}" in markdown for nll in PAPER_NLL.values())
    assert len(re.findall(r"^- \[[x ]\] (PASS|FAIL): \d layers?: IWAE", markdown, re.M)) == 2
    assert (out / "figures" / "log_px.png").is_file()


def _row(model: str, log_px: float, **summary) -> dict:
    dims = {"z": 50} if model == "vae" else {"z2": 50, "z1": 100}
    return {"data": "mnist", "model": model, "log_px_iw": log_px, "log_px_iw_stderr": 0.3, "loss": -log_px + 3,
            "active_units_sites": {s: 10 for s in dims}, "latent_dims": dims, "activations": "model tanh, guide tanh",
            "diagnostics_rows": 10000, "iw_samples": 5000, **summary}


def _cell(model: str, estimator: str, k: int) -> dict:
    return {"data": {"name": "mnist"}, "model": {"name": model, "hidden": [200, 200], "activation": "tanh"},
            "train": {"epochs": 3280, "batch_size": 20, "estimator": estimator, "num_particles": k}}


def test_report_compares_with_table_1_and_checks_iwae_against_vae(tmp_path):
    grid = [("vae", "mc", 1), ("vae", "iw", 50), ("dlgm", "mc", 1), ("dlgm", "iw", 50)]
    log_px = [-87.0, -85.0, -85.0, -85.5]  # IWAE ahead at 1 layer, behind at 2
    markdown = report(tmp_path, [_row(m, v) for (m, _, _), v in zip(grid, log_px)], [_cell(*g) for g in grid])
    assert "MNIST with the paper's protocol" in markdown and "comparable" not in markdown
    assert "| 1 | VAE | 1 | -87.00 +- 0.30 | 87.00 | 86.76 |" in markdown
    assert "| 2 | IWAE | 50 | -85.50 +- 0.30 | 85.50 | 82.90 |" in markdown
    assert "- [x] PASS: 1 layer: IWAE (k = 50)" in markdown and "- [ ] FAIL: 2 layers: IWAE (k = 50)" in markdown
    assert "x-200-200-z1 (100)-100-100-z2 (50) against x-200-200-z1 (100)-200-z2 (50), tanh" in markdown
    short = report(tmp_path, [_row(m, v, iw_samples=1000) for (m, _, _), v in zip(grid, log_px)],
                   [_cell(*g) for g in grid])
    assert "not comparable with Table 1: K = 1,000 importance samples per image, not 5,000" in short


def _activations(module: nn.Module) -> set[type]:
    return {type(m) for m in module.modules() if isinstance(m, (nn.ReLU, nn.Tanh))}


@pytest.mark.parametrize("name", ["vae", "dlgm"])
def test_tanh_option_builds_tanh_networks_and_relu_stays_the_default(name):
    tanh = MODELS[name]((1, 28, 28), latent_dim=4, hidden=[8, 8], activation="tanh")
    default = MODELS[name]((1, 28, 28), latent_dim=4, hidden=[8, 8])
    assert _activations(tanh) == {nn.Tanh} and _activations(default) == {nn.ReLU}  # decoder, and p(z1 | z2)
    assert tanh.network_config.activation == "tanh" and default.network_config.activation == "relu"
    assert _activations(Encoder((1, 28, 28), [8, 8], activation="tanh")) == {nn.Tanh}
    assert _activations(Decoder(4, [8, 8], (1, 28, 28), activation="tanh")) == {nn.Tanh}
    assert _activations(Encoder((1, 28, 28), [8, 8])) == _activations(GUIDES["gaussian"](default)) == {nn.ReLU}


@pytest.mark.parametrize("name, guide", [("vae", "gaussian"), ("dlgm", "structured")])
def test_guides_follow_the_models_activation(name, guide):
    model = MODELS[name]((1, 28, 28), latent_dim=4, hidden=[8, 8], activation="tanh")
    assert _activations(GUIDES[guide](model)) == {nn.Tanh}
