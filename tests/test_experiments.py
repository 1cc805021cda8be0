"""Experiment files and the ``ppl-vae`` command: every bundled experiment runs end to end in the
quick setting; bad files fail before any work and write nothing; run folders are never clobbered."""

import csv
import json
import math
import re
from dataclasses import replace

import pytest
import torch
from experiment_text import TINY_EXPERIMENT

from ppl_vae import ConfigError
from ppl_vae.cli import first_sentence, main
from ppl_vae.evaluation.disentanglement import NonFiniteCodesError
from ppl_vae.lab import experiment_file
from ppl_vae.lab.cell import CellTask, RunFolderError
from ppl_vae.lab.experiment import CellsFailed, run
from ppl_vae.lab.experiment_file import Cell, bundled, find, load
from ppl_vae.lab.runner import spread_over_gpus, units

GOOD = TINY_EXPERIMENT + """[train]
epochs = 2
batch_size = 0
"""


def results(folder):
    with open(folder / "results.csv") as f:
        return list(csv.DictReader(f))


#: bundled experiments whose smoke run still takes minutes on 2 CPU cores (64 x 64 conv metrics): kept out of
#: the default run
SLOW_QUICK = {"dsprites-beta-gpu"}


#: per image study: a header of its report's table, columns of results.csv, figures of the run folder
STUDY_OUTPUT = {
    "latent2d": ("| k-means ARI | k-means NMI |", ("ari", "nmi", "inner_distance", "sample_distance", "plane_share"),
                 ("code_maps.png", "plane_vae.png", "interpolation_1_to_7.png")),
    "code-size": ("| code size | AE recon |", ("recon_mse",), ("code_size.png",)),
    "denoise": ("| noise | level | input |", ("mse_clean", "mse_gaussian_0.5", "mse_masking_0.75"),
                ("denoise_gaussian.png", "denoise_masking.png")),
    "anomaly": ("| left-out digit |", ("auc_recon", "auc_neg_elbo", "auc_neg_log_px", "auc_complexity_corrected",
                                      "auc_likelihood_ratio"),
                ("score_histograms.png",)),
    "overfit": ("| recon gap |", (), ("train_vs_held_out.png",)),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_QUICK else n
                                  for n in sorted(bundled())])
def test_bundled_experiment_runs_quick(name, tmp_path, fake_mnist):
    overrides = [f'data.root="{fake_mnist}"'] if name.startswith("mnist") else []
    out = tmp_path / "run"
    summaries = run(name, out, overrides, quick_run=True, progress=False)
    assert len(results(out)) == len(summaries) >= 1
    assert (out / "report.md").is_file() == ("report" in load(name)[1])  # a study's table, even at smoke size
    # a report shows its own figures: Markdown images linked relative to it, each file there
    linked = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", (out / "report.md").read_text()) if "report" in load(name)[1] else []
    assert all((out / link).is_file() for link in linked) and (linked or "report" not in load(name)[1])
    for s in summaries:
        assert s["epochs"] == 2
        # a pair with global latents has no per-datapoint importance-weighted log p(x) (NaN by design)
        per_datapoint = () if "kl_global" in s else ("log_px_iw", "gap", "khat_share")
        assert all(math.isfinite(s[key]) for key in ("train_loss", "test_loss", "loss", "recon", "kl", *per_datapoint,
                                                     "mi", "marginal_kl"))
        assert s["loss"] == pytest.approx(s["recon"] + s["kl"], rel=1e-4, abs=1e-5)
        assert all(math.isnan(s[key]) for key in {"log_px_iw", "gap", "khat_share"} - set(per_datapoint))
        assert 0 <= s["khat_share"] <= 1 or "kl_global" in s
        assert 0 <= s["active_units"] <= sum(s["latent_dims"].values())
        assert s["diagnostics_rows"] == (8 if name.startswith("mnist") else 64)  # quick: 64 rows, or all 8 held out
        folder = out / s["cell"] if s["cell"] else out
        for file in ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "figures/loss.png"):
            assert (folder / file).is_file(), file
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2
        images = not s["data"].startswith("bits")
        assert (folder / "figures" / "samples.png").is_file() == images
        assert (folder / "figures" / "reconstructions.png").is_file() == images
        small = min(s["latent_dims"].values()) <= 2  # a 1-D or 2-D latent site
        assert (folder / "figures" / "aggregate_posterior.png").is_file() == small
    if name in STUDY_OUTPUT:  # the study's table, its measured columns and its figures
        table, columns, figures = STUDY_OUTPUT[name]
        assert table in (out / "report.md").read_text() and "## Checks" in (out / "report.md").read_text()
        assert set(columns) <= set(results(out)[0])
        assert {f"figures/{f}" for f in figures} <= set(linked)
    if name == "anomaly":  # the ROC-AUC table in long form: a row per left-out digit and score
        lines = (out / "roc_auc.csv").read_text().splitlines()
        assert lines[0] == "held_out_digit,score,roc_auc" and len(lines) == 1 + 2 * 5
        assert all(0 <= float(line.split(",")[2]) <= 1 for line in lines[1:])
    if name == "dsprites-beta":  # the study's measure reaches summary.json and results.csv; baselines in scores.csv
        assert {"method", "beta_vae_score", "factor_vae_score", "mig"} <= set(results(out)[0])
        assert all(0 <= s[k] <= 1 for s in summaries for k in ("beta_vae_score", "factor_vae_score", "mig"))
        methods = [line.split(",")[0] for line in (out / "scores.csv").read_text().splitlines()[1:]]
        assert methods[-4:] == ["raw pixels", "PCA", "ICA", "VAE untrained"] and len(methods) == len(summaries) + 4
        assert (out / "figures" / "traversal_beta4.png").is_file() and (out / "figures" / "kl_per_dim.png").is_file()


def test_grid_cells_are_independent_runs(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GOOD + '\n[grid]\n"data.n" = [1, 3]\n"train.seed" = [0, 1]\n')
    summaries = run(path, tmp_path / "out", progress=False)
    rows = results(tmp_path / "out")
    assert [(r["n"], r["seed"]) for r in rows] == [("1", "0"), ("1", "1"), ("3", "0"), ("3", "1")]
    assert {s["data"] for s in summaries} == {"bits-1", "bits-3"}
    # a cell alone, from its own config, reproduces its grid result: cells share nothing
    cell = json.loads((tmp_path / "out" / "n=3__seed=1" / "config.json").read_text())
    alone = tmp_path / "alone.toml"
    alone.write_text("\n".join(f"[{k}]\n" + "\n".join(f"{kk} = {json.dumps(vv)}" for kk, vv in v.items())
                               for k, v in cell.items() if isinstance(v, dict)))
    (single,) = run(alone, tmp_path / "alone", progress=False)
    assert single["test_loss"] == summaries[3]["test_loss"]


def test_named_variants_set_several_keys_together(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GOOD + """
[grid]
"data.n" = [2]
[grid.family.flat]
"model.name" = "vae"
"guide.name" = "gaussian"
[grid.family.deep]
"model.name" = "dlgm"
"model.top_latent_dim" = 1
"guide.name" = "structured"
""")
    run(path, tmp_path / "out", progress=False)
    rows = results(tmp_path / "out")
    assert [(r["n"], r["family"], r["model"], r["guide"]) for r in rows] == [
        ("2", "flat", "vae", "gaussian"), ("2", "deep", "dlgm", "structured")]
    config = json.loads((tmp_path / "out" / "n=2__family=deep" / "config.json").read_text())
    assert config["model"] == {"name": "dlgm", "latent_dim": 1, "hidden": [8], "top_latent_dim": 1}
    # --set grid.AXIS picks variants by name, or replaces a list axis
    run(path, tmp_path / "picked", ["grid.family=[\"deep\"]", "grid.data.n=[1, 3]"], progress=False)
    assert [(r["n"], r["family"]) for r in results(tmp_path / "picked")] == [("1", "deep"), ("3", "deep")]
    with pytest.raises(ConfigError, match=r"no variant\(s\) \['wide'\]; \[grid.family\] has flat, deep"):
        run(path, tmp_path / "bad", ["grid.family=wide"], progress=False)


def test_set_overrides_a_key_that_a_variant_sets():
    """The command line wins over the file: --set train.epochs=3 shortens a variant with its own epochs."""
    config = {"train": {"epochs": 50}, "grid": {"family": {"short": {"model.name": "vae"},
                                                           "long": {"model.name": "vae", "train.epochs": 100}}}}
    assert [c.config["train"]["epochs"] for c in experiment_file.cells(config)] == [50, 100]
    experiment_file.apply_overrides(config, ["train.epochs=3"])
    assert [c.config["train"]["epochs"] for c in experiment_file.cells(config)] == [3, 3]


def test_set_replaces_a_whole_section_with_an_inline_table():
    """--set 'data={...}' swaps a study's data set: the section's other keys (mnist's root) go with it."""
    config = {"data": {"name": "mnist", "root": "data", "download": False}, "train": {"epochs": 2}}
    experiment_file.apply_overrides(config, ['data={name = "digits", binarize = "dynamic"}'])
    assert config["data"] == {"name": "digits", "binarize": "dynamic"}
    for bad in ("data=3", "grid={}", "nodata={name = 'x'}"):
        with pytest.raises(ConfigError, match="SECTION="):
            experiment_file.apply_overrides(config, [bad])


def test_parallel_jobs_give_the_same_results(tmp_path, capsys):
    """A cell's CPU threads are its train.threads in this process and in a worker alike."""
    path = tmp_path / "grid.toml"
    path.write_text(GOOD + 'threads = 1\n[grid]\n"train.seed" = [0, 1]\n')
    before = torch.get_num_threads()
    serial = run(path, tmp_path / "serial", progress=False)
    assert torch.get_num_threads() == before  # restored after each cell
    parallel = run(path, tmp_path / "parallel", jobs=2, progress=True)
    assert [s["test_loss"] for s in serial] == [s["test_loss"] for s in parallel]
    assert [s["threads"] for s in serial + parallel] == [1] * 4
    printed = capsys.readouterr().out  # a line per finished cell, as the cells' own bars are off
    assert "[1/2] seed=" in printed and "[2/2] seed=" in printed and "0 failed" in printed
    assert "train.threads at 0" not in printed  # the note is for grids that leave the threads to torch



@pytest.mark.parametrize("jobs", [1, 2])
def test_a_cell_that_raises_leaves_the_others_gathered(tmp_path, capsys, jobs):
    """One cell diverges (learning rate 1e30): the other two finish and are in results.csv, the
    failure is named in the terminal, in experiment.json (with its traceback) and in the error,
    and the command exits 1; the same from one process and from two."""
    path, out = tmp_path / "grid.toml", tmp_path / "out"
    path.write_text(GOOD + '\n[grid]\n"train.lr" = [1e-3, 1e30, 2e-3]\n')
    failed = r"1 of 3 cell\(s\) failed: lr=1e\+30 \((NonFiniteLossError|ValueError): "
    with pytest.raises(CellsFailed, match=failed) as error:
        run(path, out, jobs=jobs, progress=True)
    assert [f.cell for f in error.value.failed] == ["lr=1e+30"]
    assert [r["lr"] for r in results(out)] == ["0.001", "0.002"]
    (failure,) = json.loads((out / "experiment.json").read_text())["failed"]
    assert failure["cell"] == "lr=1e+30" and "Traceback" in failure["traceback"]
    printed = capsys.readouterr().out
    assert "lr=1e+30: FAILED (" in printed and "[3/3]" in printed and "1 failed" in printed
    assert main(["run", str(path), "--out", str(out), "--resume", "--jobs", str(jobs)]) == 1
    err = capsys.readouterr().err
    assert "ppl-vae: error: 1 of 3 cell(s) failed: lr=1e+30" in err and "--resume" in err


@pytest.mark.parametrize("raised, code", [
    (NonFiniteCodesError("the representation returned 3 non-finite codes"), 1),  # a Fault: the work failed
    (ConfigError("[train] lr = -1 is out of range"), 2),  # the input is wrong
])
def test_the_command_exits_1_for_a_fault_and_2_for_bad_input(monkeypatch, capsys, raised, code):
    def fail(*args, **kwargs):
        raise raised

    monkeypatch.setattr("ppl_vae.lab.experiment.run", fail)
    assert main(["run", "digits-vae"]) == code
    assert capsys.readouterr().err == f"ppl-vae: error: {raised}\n"


BAD = [
    ("[model]\nlatent_dims = 2", "unknown key 'latent_dims'"),
    ("[model]\nlatent_dim = 'two'", "latent_dim = 'two' is invalid"),
    ("[model]\nlikelihood = 'poisson'", "likelihood = 'poisson' is invalid"),
    ("[train]\nepochs = 0", "epochs = 0 is out of range"),
    ("[train]\nthreads = -1", "threads = -1 is out of range"),
    ("[train]\nlearning_rate = 0.1", "unknown key(s) ['learning_rate']"),
    ("[guide]\nname = 'structured'", "needs a model with latent sites z1 and z2"),
    ("[data]\nname = 'cifar'", "unknown dataset 'cifar'"),
    ("[data]\nn = 0", "n >= 1"),
    ("[grid]\n'train.seed' = 3", "must be a non-empty list"),
    ("[grid]\n'optimizer.lr' = [1]", "keys look like SECTION.KEY"),
    ("colour = 'blue'", "unknown top-level key"),
    ("report = 'nope'", "unknown report 'nope'"),
    ("[diagnostics]\niw_samples = 0", "iw_samples = 0 is out of range"),
    ("[diagnostics]\niw_samples = 20", "PSIS k-hat needs at least 25 importance samples"),
    ("[diagnostics]\nsamples = 10", "[diagnostics] has unknown key(s) ['samples']"),
]


@pytest.mark.parametrize("change, message", BAD, ids=[m for _, m in BAD])
def test_bad_experiment_is_a_clear_error_and_writes_nothing(tmp_path, change, message):
    import tomllib

    config = tomllib.loads(GOOD)
    for key, value in tomllib.loads(change).items():
        if isinstance(value, dict) and key in config:
            config[key].update(value)
        else:
            config[key] = value
    path = tmp_path / "bad.toml"
    path.write_text(toml_dumps(config))
    with pytest.raises(ConfigError) as error:
        run(path, tmp_path / "out", progress=False)
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()


def toml_dumps(config: dict) -> str:
    top = [f"{k} = {json.dumps(v)}" for k, v in config.items() if not isinstance(v, dict)]
    sections = [f"[{k}]\n" + "\n".join(f"{json.dumps(kk)} = {json.dumps(vv)}" for kk, vv in v.items())
                for k, v in config.items() if isinstance(v, dict)]
    return "\n".join(top + sections) + "\n"


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[model\nname = 'vae'")
    with pytest.raises(ConfigError, match="broken.toml is not valid TOML"):
        run(path, tmp_path / "out", progress=False)


def test_existing_run_folder_is_kept_unless_forced(tmp_path):
    path, out = tmp_path / "e.toml", tmp_path / "out"
    path.write_text(GOOD)
    run(path, out, progress=False)
    summary = (out / "summary.json").read_text()
    with pytest.raises(ConfigError, match="--force"):
        run(path, out, ["train.seed=4"], progress=False)
    assert (out / "summary.json").read_text() == summary
    run(path, out, ["train.seed=4"], force=True, progress=False)
    assert json.loads((out / "summary.json").read_text())["seed"] == 4


def test_resume_continues_from_the_checkpoint(tmp_path):
    path, out = tmp_path / "e.toml", tmp_path / "out"
    path.write_text(GOOD)
    (full,) = run(path, tmp_path / "full", ["train.epochs=4", "train.checkpoint_every=2"], progress=False)
    (partial,) = run(path, out, ["train.epochs=2"], progress=False)
    (out / "summary.json").unlink()  # as if stopped after its checkpoint
    (resumed,) = run(path, out, ["train.epochs=4", "train.checkpoint_every=2"], resume=True, progress=False)
    assert resumed["epochs"] == 4 and resumed["test_loss"] == full["test_loss"]


def test_cli_list_and_errors(tmp_path, capsys):
    assert main(["list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("digits-vae", "vae", "dlgm", "structured", "analytic", "digits"))
    assert main(["run", "no-such-experiment", "--out", str(tmp_path / "x")]) == 2
    assert "no experiment 'no-such-experiment'" in capsys.readouterr().err
    assert main(["run", "digits-vae", "--set", "train.epochs", "--out", str(tmp_path / "x")]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="only meaningful without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text(GOOD)
    with pytest.raises(ConfigError, match="no CUDA device"):
        run(path, tmp_path / "out", device="cuda", progress=False)


def test_run_report_and_explore_share_one_user_error(tmp_path, capsys):
    """The same kind of mistake ends each command the same way: one line on stderr, exit code 2."""
    commands = [["report", str(tmp_path)], ["explore", str(tmp_path)], ["run", str(tmp_path / "none.toml")],
                ["run", "digits-vae", "--device", "tpu", "--out", str(tmp_path / "out")]]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("ppl-vae: error: ") and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "out").exists()


def test_cli_runs_an_experiment(tmp_path, capsys):
    path = tmp_path / "e.toml"
    path.write_text(GOOD)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--set", "train.epochs=1"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["epochs"] == 1 and "-ELBO" in printed
    assert f"{summary['loss']:>9.3f} {summary['recon']:>8.3f} {summary['kl']:>7.3f}" in printed


def test_a_damaged_checkpoint_stops_resume_with_a_named_error_and_changes_nothing(tmp_path, capsys):
    """``--resume`` over a cell whose checkpoint is truncated: exit 2, one line naming the cell, the
    file and the fix, no traceback, and every file of the run folder as it was."""
    path, out = tmp_path / "grid.toml", tmp_path / "out"
    path.write_text(GOOD + '\n[grid]\n"train.seed" = [0, 1]\n')
    run(path, out, progress=False)
    damaged = out / "seed=1" / "checkpoint.pt"
    (out / "seed=1" / "summary.json").unlink()  # as if stopped before it finished
    damaged.write_bytes(damaged.read_bytes()[:100])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["run", str(path), "--out", str(out), "--resume"]) == 2
    printed = capsys.readouterr()
    assert printed.err.count("\n") == 1 and "Traceback" not in printed.err
    assert "cell 'seed=1'" in printed.err and str(damaged) in printed.err and "--force" in printed.err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(RunFolderError, match="cannot be read"):
        run(path, out, resume=True, progress=False)


def test_a_report_whose_axis_is_missing_fails_at_load_time(tmp_path):
    """The single-bit report reads the axes n and family; a file without ``family`` (renamed, say)
    fails when it is loaded, naming the axis, before any cell trains or any folder is made."""
    path = tmp_path / "renamed.toml"
    text = find("single-bit").read_text()
    path.write_text(text.replace("grid.family.", "grid.model-family."))
    with pytest.raises(ConfigError, match="report 'single-bit' reads grid axis 'family', which \\[grid\\] lacks"):
        run(path, tmp_path / "out", quick_run=True, progress=False)
    assert not (tmp_path / "out").exists()
    path.write_text(text.replace("grid.family.dlgm", "grid.family.two-layer"))
    with pytest.raises(ConfigError, match="compares variant\\(s\\) dlgm of grid axis 'family'"):
        load(path)


def test_list_shows_each_experiments_first_sentence(capsys):
    assert main(["list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    for name, path in bundled().items():
        assert f"  {name:<18} {first_sentence(load(path)[1]['description'])}" in listed
    assert any(line.split()[:1] == ["single-bit"] for line in listed[listed.index("reports:"):])


def test_a_first_sentence_is_whole_however_it_is_wrapped():
    text = """A VAE (Kingma et al. 2014, Eq. 7) on
              digits, e.g. MNIST, in 2-D.  The rest is detail."""
    assert first_sentence(text) == "A VAE (Kingma et al. 2014, Eq. 7) on digits, e.g. MNIST, in 2-D."
    assert first_sentence("No full stop") == "No full stop" and first_sentence(None) == ""


def test_the_device_defaults_to_auto_and_is_recorded(tmp_path, monkeypatch):
    """``auto`` is the default of ``run`` and of the CLI, picks CUDA where torch sees it, and the device
    used is written into experiment.json and summary.json."""
    import inspect

    from ppl_vae.infer.training import resolve_device

    assert inspect.signature(run).parameters["device"].default == "auto"
    seen = []
    with monkeypatch.context() as patch:  # what the CLI passes when --device is not given
        patch.setattr("ppl_vae.lab.experiment.run", lambda *args, **kwargs: seen.append(args[3]) or [])
        assert main(["run", "digits-vae"]) == 0 and seen == ["auto"]
    with monkeypatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: True)
        assert resolve_device("auto").type == "cuda"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    path = tmp_path / "e.toml"
    path.write_text(GOOD)
    (summary,) = run(path, tmp_path / "out", ["train.epochs=1"], progress=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert summary["device"].startswith(expected)
    assert json.loads((tmp_path / "out" / "experiment.json").read_text())["device"].startswith(expected)


def test_jobs_on_cuda_spread_the_units_over_the_gpus(monkeypatch, tmp_path):
    """--jobs N --device cuda with G GPUs: unit i runs on GPU i mod G; one GPU or the CPU: as asked. A
    unit is a cell, or the restarts that train.vectorise trains as one program, which share a GPU."""
    tasks = [CellTask("e", Cell(f"c{i}", {}, {}), tmp_path / f"c{i}", device="cuda") for i in range(5)]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert [[t.device for t in u] for u in spread_over_gpus(units(tasks))] == [[f"cuda:{i}"] for i in (0, 1, 2, 0, 1)]
    restarts = [CellTask("e", Cell(f"s{seed}", {}, {"train": {"vectorise": True, "seed": seed}}), tmp_path,
                         device="cuda") for seed in range(3)]
    assert [[t.device for t in u] for u in spread_over_gpus(units([*restarts, *tasks[:2]]))] == [
        ["cuda:0"] * 3, ["cuda:1"], ["cuda:2"]]
    on_cpu = units([replace(t, device="cpu") for t in tasks])
    assert spread_over_gpus(on_cpu) == on_cpu
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert spread_over_gpus(units(tasks)) == units(tasks)


def test_a_margin_is_the_worst_seeds_distance_beside_the_seed_spread():
    from ppl_vae.lab.study import Margin, margin_line

    clear = Margin.of([1.0, 2.0], [5.0, 6.0])  # worst pair: 2 against 5; sd of either side: 0.707
    assert (clear.worst, clear.spread) == (3.0, pytest.approx(math.sqrt(0.5))) and clear.holds
    inside = Margin.of([1.0, 4.0], [5.0, 9.0])  # every seed clears it, by less than the spread of 2.83
    assert inside.worst == 1.0 and inside.spread == pytest.approx(math.sqrt(8)) and not inside.holds
    assert Margin.of([3.0], [1.0, 2.0]).worst == -2.0 and not Margin.of([3.0], [1.0, 2.0]).holds
    assert Margin.of([0.2], [0.25]).spread == 0.0  # a threshold and one seed: no spread to beat
    noisy = Margin.of([0.80, 0.80], [0.82, 0.82], noise=0.025)  # seeds agree, by less than the score's noise
    assert noisy.spread == 0.025 and not noisy.holds
    assert margin_line([0.2], [0.81, 0.83], "scores above 20%", scale=100, digits=1) == (
        "- [x] PASS: scores above 20%; margin 61.0 on the worst seed against a spread of 1.4")
