"""Declarative experiments: read a TOML file, validate it, run each grid cell, write a run folder.

An experiment file has the sections ``[data]``, ``[model]``, ``[guide]`` (each a registered
``name`` plus that factory's keyword arguments), ``[train]`` (the fields of ``TrainConfig``),
and optionally ``[diagnostics]`` (the fields of ``collapse.DiagnosticsConfig``), ``[grid]``,
``report`` (a registered study report, ``ppl_vae.reports``), ``description`` and ``imports``
(modules to import first, e.g. ones registering new pairs).

``[grid]`` axes are crossed; each combination is one independent cell. An axis is a dotted key
with a list of values (``"data.n" = [1, 5]``), or named variants, each a table of dotted keys
set together::

    [grid.family.dlgm]
    "model.name" = "dlgm"
    "guide.name" = "structured"

Run folder: ``results.csv`` over cells (one column per axis, named by the key's last part) and,
per cell (the folder itself when there is no grid), ``config.json``, ``metrics.jsonl``,
``summary.json`` (final ELBO terms and the collapse diagnostics of ``collapse.diagnose``),
``checkpoint.pt`` and ``figures/*.png``; with a ``report``, also ``report.md`` and its figures.
"""

from __future__ import annotations

import copy
import csv
import importlib
import io
import itertools
import json
import os
import shutil
import sys
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import fields
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pyro
import torch

from ppl_vae import collapse, diagnostics, plots, reports  # noqa: F401  (reports: registers the bundled ones)
from ppl_vae.io import write_json, write_text
from ppl_vae.registry import DATASETS, GUIDES, MODELS, REPORTS, ConfigError, check_kwargs
from ppl_vae.training import TrainConfig, Trainer

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
SECTIONS = ("data", "model", "guide", "train", "diagnostics")
TOP_LEVEL = {"description", "imports", "grid", "report", *SECTIONS}
QUICK = {"epochs": 2, "limit": 256, "width": 64, "grid_values": 2,
         "diagnostics": {"rows": 64, "particles": 10, "iw_samples": 50, "mean_samples": 50}}
SUMMARY_COLUMNS = ("experiment", "cell", "data", "model", "guide", "estimator", "seed", "epochs", "train_loss",
                   "test_loss", "loss", "recon", "recon_per_dim", "kl", "log_px_iw", "gap", "khat_share",
                   "active_units", "mi", "marginal_kl", "seconds", "device")


def bundled() -> dict[str, Path]:
    """Experiment files shipped in ``experiments/``, by name."""
    return {p.stem: p for p in sorted(EXPERIMENTS_DIR.glob("*.toml"))}


def find(experiment: str | Path) -> Path:
    """An experiment named by path, or by bare name from ``experiments/``."""
    path = Path(experiment)
    if path.is_file():
        return path
    if str(experiment) in bundled():
        return bundled()[str(experiment)]
    raise ConfigError(f"no experiment {str(experiment)!r}: not a file, nor one of {', '.join(bundled())}")


def load(experiment: str | Path) -> tuple[str, dict]:
    """Parse an experiment file; returns (name, raw config)."""
    path = find(experiment)
    try:
        return path.stem, tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from error


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (``3``, ``1e-3``, ``true``, ``[64, 32]``, ``"x"``), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_key(config: dict, dotted: str, value: Any) -> None:
    section, _, key = dotted.partition(".")
    if section not in SECTIONS or not key:
        raise ConfigError(f"cannot set {dotted!r}: keys look like SECTION.KEY with SECTION one of {', '.join(SECTIONS)}")
    config.setdefault(section, {})[key] = value


def override(config: dict, dotted: str, value: Any) -> None:
    """``--set``: SECTION.KEY, or ``grid.AXIS`` to replace an axis's values (for named variants:
    a list of the names to keep, e.g. ``grid.family=["dlgm"]``)."""
    if not dotted.startswith("grid."):
        return set_key(config, dotted, value)
    grid, axis = config.setdefault("grid", {}), dotted.removeprefix("grid.")
    if isinstance(grid.get(axis), dict):
        values = value if isinstance(value, list) else [value]
        unknown = [v for v in values if v not in grid[axis]]
        if unknown:
            raise ConfigError(f"--set {dotted}: no variant(s) {unknown}; [grid.{axis}] has {', '.join(grid[axis])}")
        grid[axis] = {name: grid[axis][name] for name in values}
    else:
        set_key({}, axis, None)  # the same check of the key's form as elsewhere
        grid[axis] = value if isinstance(value, list) else [value]


def quick(config: dict) -> dict:
    """Shrink any experiment to smoke size: few epochs, few examples, narrow networks, two values per grid axis."""
    config = copy.deepcopy(config)
    config.setdefault("train", {})["epochs"] = min(config["train"].get("epochs", QUICK["epochs"]), QUICK["epochs"])
    config["train"]["eval_every"] = 1
    config.setdefault("data", {})["limit"] = QUICK["limit"]
    for section in ("model", "guide"):
        if "hidden" in config.get(section, {}):
            config[section]["hidden"] = [min(w, QUICK["width"]) for w in config[section]["hidden"]]
    config["grid"] = {k: dict(list(v.items())[: QUICK["grid_values"]]) if isinstance(v, dict) else v[: QUICK["grid_values"]]
                      for k, v in config.get("grid", {}).items()}
    config["diagnostics"] = {**config.get("diagnostics", {}), **QUICK["diagnostics"]}
    return config


def grid_axes(grid: dict) -> list[tuple[str, list[tuple[Any, dict]]]]:
    """``[grid]`` as (column, [(value, {dotted key: value to set})]) per axis; the column is the key's
    last part (``data.n`` -> ``n``) unless two axes share it."""
    axes = []
    for key, values in grid.items():
        if isinstance(values, dict) and values and all(isinstance(v, dict) for v in values.values()):
            axes.append((key, list(values.items())))  # named variants
        elif isinstance(values, list) and values:
            axes.append((key, [(v, {key: v}) for v in values]))
        else:
            raise ConfigError(f"[grid] {key} must be a non-empty list of values, or named variants "
                              f"([grid.{key}.NAME] tables of SECTION.KEY = value), got {values!r}")
    short = [key.rpartition(".")[2] for key, _ in axes]
    return [(name if short.count(name) == 1 else key, options) for (key, options), name in zip(axes, short)]


def cells(config: dict) -> list[tuple[str, dict, dict]]:
    """Expand ``[grid]`` into (cell name, {column: value}, cell config); one unnamed cell without a grid."""
    axes = grid_axes(config.get("grid", {}))
    out = []
    for combo in itertools.product(*(options for _, options in axes)):
        cell = copy.deepcopy({k: v for k, v in config.items() if k != "grid"})
        for _, overrides in combo:
            for key, value in overrides.items():
                set_key(cell, key, value)
        values = {column: value for (column, _), (value, _) in zip(axes, combo)}
        name = "__".join(f"{k}={v}" for k, v in values.items()).replace("/", "-").replace(" ", "")
        out.append((name, values, cell))
    return out


def validate(cell: dict) -> TrainConfig:
    """Check keys, names, types and ranges of one cell before any work; returns its TrainConfig."""
    unknown = set(cell) - TOP_LEVEL
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(TOP_LEVEL)}")
    _import_plugins(cell)
    for section, registry in (("data", DATASETS), ("model", MODELS), ("guide", GUIDES)):
        options = dict(cell.get(section, {}))
        if "name" not in options:
            raise ConfigError(f"[{section}] needs a name; registered: {', '.join(sorted(registry))}")
        name = options.pop("name")
        check_kwargs(registry[name], options, section, skip=("data_shape", "model"))
    train = cell.get("train", {})
    known = {f.name for f in fields(TrainConfig)}
    if set(train) - known:
        raise ConfigError(f"[train] has unknown key(s) {sorted(set(train) - known)}; it accepts: {', '.join(sorted(known))}")
    check_kwargs(TrainConfig, train, "train")
    diagnostics_config(cell)
    if "report" in cell:
        REPORTS[cell["report"]]
    return TrainConfig(**train)


def diagnostics_config(cell: dict) -> collapse.DiagnosticsConfig:
    """The cell's ``[diagnostics]`` section, checked."""
    options = cell.get("diagnostics", {})
    known = {f.name for f in fields(collapse.DiagnosticsConfig)}
    if set(options) - known:
        raise ConfigError(f"[diagnostics] has unknown key(s) {sorted(set(options) - known)}; "
                          f"it accepts: {', '.join(sorted(known))}")
    check_kwargs(collapse.DiagnosticsConfig, options, "diagnostics")
    try:
        return collapse.DiagnosticsConfig(**options)
    except ValueError as error:
        raise ConfigError(str(error)) from error


def _import_plugins(cell: dict) -> None:
    """Import the modules named by ``imports`` (from the working directory too): they register new pairs."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in cell.get("imports", []):
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(f"imports: cannot import {module!r} ({error}); run from the folder that holds it") from error


def load_data(cell: dict):
    options = dict(cell["data"])
    return DATASETS[options.pop("name")](**options)


def build(cell: dict, data=None):
    """Data, model, guide and TrainConfig of a validated cell; the pair is seeded by ``train.seed``."""
    _import_plugins(cell)
    train = TrainConfig(**cell.get("train", {}))
    options = {s: dict(cell[s]) for s in ("model", "guide")}
    data = data or load_data(cell)
    pyro.set_rng_seed(train.seed)
    model = MODELS[options["model"].pop("name")](data.data_shape, **options["model"])
    guide = GUIDES[options["guide"].pop("name")](model, **options["guide"])
    return data, model, guide, train


def preflight(cell_configs: list[dict]) -> None:
    """Build every cell's data, pair and trainer on the CPU, so a bad value fails before any work."""
    loaded: dict[str, Any] = {}
    for cell in cell_configs:
        key = json.dumps(cell["data"], sort_keys=True)
        try:
            loaded[key] = loaded.get(key) or load_data(cell)
            data, model, guide, train = build(cell, loaded[key])
            Trainer(model, guide, data, train)
        except ConfigError:
            raise
        except ValueError as error:  # a value a constructor refused
            raise ConfigError(f"{error} (in {json.dumps({k: cell[k] for k in SECTIONS if k in cell})})") from error


def run_cell(experiment: str, cell_name: str, cell: dict, folder: Path, device: str = "cpu",
             progress: bool = True, resume: bool = False) -> dict:
    """Train one cell into ``folder`` and write its metrics, checkpoint, figures and summary."""
    summary_path, checkpoint = folder / "summary.json", folder / "checkpoint.pt"
    if resume and summary_path.exists():
        return json.loads(summary_path.read_text())
    start = time.time()
    data, model, guide, train = build(cell)
    trainer = Trainer(model, guide, data, train, device=device, progress=progress)
    if resume and checkpoint.exists():
        trainer.load(checkpoint)
    write_json(folder / "config.json", cell)
    history = trainer.fit(checkpoint, on_epoch=lambda _: write_text(
        folder / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in trainer.history)))
    last = history[-1]
    figures = folder / "figures"
    plots.loss_curves(history, figures / "loss.png")
    if len(data.data_shape) == 3:
        image_figures(model, guide, trainer.data.test_eval[:8], figures)  # on the training device
    # closed-form KLs where the guide declares itself mean-field (the bundled ones do), else Monte Carlo
    analytic = trainer.analytic_kl or getattr(guide, "mean_field", None) is True
    found = collapse.diagnose(model, guide, trainer.data.test_eval, diagnostics_config(cell), analytic)
    aggregate_posterior_figure(model, guide, trainer.data, figures / "aggregate_posterior.png")
    summary = {
        "experiment": experiment, "cell": cell_name, "data": data.name, "model": cell["model"]["name"],
        "guide": cell["guide"]["name"], "estimator": train.estimator, "seed": train.seed, "epochs": trainer.epoch,
        "train_loss": last["train_loss"], "test_loss": last["test_loss"],
        **{k: v for k, v in found.items() if k not in ("rows",)},
        "diagnostics_rows": found["rows"], "seconds": round(time.time() - start, 2), "device": str(trainer.device),
    }
    write_json(summary_path, summary)
    return summary


def image_figures(model, guide, x: torch.Tensor, figures: Path) -> None:
    """``reconstructions.png``: the images ``x`` over their reconstructions (the mean of p(x | z) at
    z ~ q(z | x)); ``samples.png``: the means of p(x | z) for 64 draws z ~ p(z)."""
    plots.image_grid(torch.cat([x, diagnostics.reconstruct(model, guide, x)]), figures / "reconstructions.png")
    plots.image_grid(diagnostics.sample_prior(model, 64, x.device), figures / "samples.png")


def aggregate_posterior_figure(model, guide, data, path: Path, rows: int = 500, samples: int = 20) -> Path | None:
    """q(z) against p(z) for every 1-D or 2-D latent site, held-out draws split by label; None when
    no site is that small."""
    x, labels = data.test_eval[:rows], None if data.test_labels is None else data.test_labels[:rows]
    draws = collapse.posterior_draws(guide, x, samples)
    prior = diagnostics.prior_draws(model, 20_000, x.device)
    panels = [(f"{site}: aggregate posterior vs prior", d, labels, prior[site])
              for site, d in draws.items() if d.shape[-1] <= 2]
    return plots.aggregate_posterior(panels, path) if panels else None


def restore(folder: str | Path, device: str = "cpu"):
    """The trained data, model and guide of a finished cell folder (its config.json and checkpoint.pt)."""
    folder = Path(folder)
    cell = json.loads((folder / "config.json").read_text())
    data, model, guide, train = build(cell)
    trainer = Trainer(model, guide, data, train, device=device)
    trainer.load(folder / "checkpoint.pt")
    return trainer.data, trainer.model, trainer.guide


def write_results(out: Path, grid: list[tuple[str, dict, dict]], summaries: list[dict]) -> list[dict]:
    """``results.csv``: a row per cell, its grid values then its summary's numbers; returns the rows."""
    rows = [{**values, **{k: s[k] for k in SUMMARY_COLUMNS}} for (_, values, _), s in zip(grid, summaries)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "results.csv", buffer.getvalue())
    return rows


def report(out: str | Path) -> str:
    """Write the ``report.md`` (and figures) of a finished run folder whose experiment names a
    ``report``, from its cells' summaries; returns the Markdown. Re-running it re-renders the report."""
    out = Path(out)
    try:
        config = json.loads((out / "experiment.json").read_text())["config"]
    except FileNotFoundError as error:
        raise ConfigError(f"{out} is not a run folder (no experiment.json): give the --out of a finished run") from error
    if "report" not in config:
        raise ConfigError(f"the experiment of {out} has no report; reports: {', '.join(sorted(REPORTS))}")
    grid = cells(config)
    folders = [out / name if config.get("grid") else out for name, _, _ in grid]
    missing = [str(f) for f in folders if not (f / "summary.json").is_file()]
    if missing:
        raise ConfigError(f"{len(missing)} cell(s) of {out} have not finished (no summary.json in {missing[0]}, ...): "
                          "continue the run with --resume first")
    rows = [{**values, **json.loads((f / "summary.json").read_text())} for (_, values, _), f in zip(grid, folders)]
    text = REPORTS[config["report"]](out, rows, [cell for _, _, cell in grid])
    write_text(out / "report.md", text)
    return text


def _run_cell_worker(args: tuple) -> dict:
    torch.set_num_threads(args[-1])
    return run_cell(*args[:-1])


def run(experiment: str | Path, out: str | Path | None = None, overrides: list[str] = (), device: str = "cpu",
        quick_run: bool = False, force: bool = False, resume: bool = False, jobs: int = 1,
        progress: bool = True) -> list[dict]:
    """Validate every cell, then run them (``jobs`` at a time) into ``out``; returns the summaries.

    ``out`` defaults to ``runs/<experiment>``. An existing non-empty folder is an error unless
    ``force`` (start afresh) or ``resume`` (finished cells are kept, the others continue from
    their checkpoints).
    """
    name, config = load(experiment)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
        override(config, key.strip(), parse_value(value.strip()))
    if quick_run:
        config = quick(config)
    grid = cells(config)
    for _, _, cell in grid:
        validate(cell)
    preflight([cell for _, _, cell in grid])
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device: use --device cpu")
    out = Path(out or Path("runs") / name)
    if out.exists() and any(out.iterdir()) and not resume:
        if not force:
            raise ConfigError(f"run folder {out} exists and is not empty: pass --force to overwrite it, "
                              "--resume to continue it, or --out for another folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    record = {"experiment": name, "config": config, "argv": sys.argv[1:], "jobs": jobs, "device": device}
    write_json(out / "experiment.json", record)
    single = len(grid) == 1 and not config.get("grid")
    tasks = [(name, cell_name, cell, out if single else out / cell_name, device, progress and jobs == 1, resume)
             for cell_name, _, cell in grid]
    if jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_run_cell_worker, task + (threads,)) for task in tasks]
            for done, future in enumerate(as_completed(futures), 1):
                if progress:  # the cells' own progress bars are off when several run at once
                    summary = future.result()
                    print(f"[{done}/{len(futures)}] {summary['cell']}: -ELBO {summary['loss']:.3f} "
                          f"in {summary['seconds']:.0f} s ({time.time() - started:.0f} s so far)", flush=True)
            summaries = [future.result() for future in futures]
    else:
        summaries = [run_cell(*task) for task in tasks]
    write_results(out, grid, summaries)
    write_json(out / "experiment.json", {**record, "wall_seconds": round(time.time() - started, 1)})
    if "report" in config:
        text = report(out)
        if progress:
            print(text)
    return summaries
