"""Declarative experiments: read a TOML file, validate it, run each grid cell, write a run folder.

An experiment file has the sections ``[data]``, ``[model]``, ``[guide]`` (each a registered
``name`` plus that factory's keyword arguments), ``[train]`` (the fields of ``TrainConfig``),
and optionally ``[grid]`` (dotted keys -> lists of values; each combination is one independent
cell), ``description`` and ``imports`` (modules to import first, e.g. ones registering new pairs).

Run folder: ``results.csv`` over cells and, per cell (the folder itself when there is no grid),
``config.json``, ``metrics.jsonl``, ``summary.json``, ``checkpoint.pt`` and ``figures/*.png``.
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
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pyro
import torch

from ppl_vae import diagnostics, plots
from ppl_vae.io import write_json, write_text
from ppl_vae.registry import DATASETS, GUIDES, MODELS, ConfigError, check_kwargs
from ppl_vae.training import TrainConfig, Trainer

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"
SECTIONS = ("data", "model", "guide", "train")
TOP_LEVEL = {"description", "imports", "grid", *SECTIONS}
QUICK = {"epochs": 2, "limit": 256, "width": 64, "grid_values": 2}  # what --quick shrinks to
SUMMARY_COLUMNS = ("experiment", "cell", "data", "model", "guide", "estimator", "seed", "epochs", "train_loss",
                   "test_loss", "recon", "kl", "seconds", "device")


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


def quick(config: dict) -> dict:
    """Shrink any experiment to smoke size: few epochs, few examples, narrow networks, two values per grid axis."""
    config = copy.deepcopy(config)
    config.setdefault("train", {})["epochs"] = min(config["train"].get("epochs", QUICK["epochs"]), QUICK["epochs"])
    config.setdefault("data", {})["limit"] = QUICK["limit"]
    for section in ("model", "guide"):
        if "hidden" in config.get(section, {}):
            config[section]["hidden"] = [min(w, QUICK["width"]) for w in config[section]["hidden"]]
    config["grid"] = {k: v[: QUICK["grid_values"]] for k, v in config.get("grid", {}).items()}
    return config


def cells(config: dict) -> list[tuple[str, dict, dict]]:
    """Expand ``[grid]`` into (cell name, grid values, cell config); one unnamed cell without a grid."""
    grid = config.get("grid", {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"[grid] {key} must be a non-empty list of values, got {values!r}")
    out = []
    for combo in itertools.product(*grid.values()):
        cell = copy.deepcopy({k: v for k, v in config.items() if k != "grid"})
        values = dict(zip(grid, combo))
        for key, value in values.items():
            set_key(cell, key, value)
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
    return TrainConfig(**train)


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
        x = trainer.data.test_eval[:8]  # on the training device
        plots.image_grid(torch.cat([x, diagnostics.reconstruct(model, guide, x)]), figures / "reconstructions.png")
        plots.image_grid(diagnostics.sample_prior(model, 64, trainer.device), figures / "samples.png")
    summary = {
        "experiment": experiment, "cell": cell_name, "data": data.name, "model": cell["model"]["name"],
        "guide": cell["guide"]["name"], "estimator": train.estimator, "seed": train.seed, "epochs": trainer.epoch,
        "train_loss": last["train_loss"], "test_loss": last["test_loss"], "recon": last["test_recon"],
        "kl": last["test_kl"], "kl_sites": last["test_kl_sites"], "kl_dims": last["test_kl_dims"],
        "seconds": round(time.time() - start, 2), "device": str(trainer.device),
    }
    write_json(summary_path, summary)
    return summary


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
        set_key(config, key.strip(), parse_value(value.strip()))
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
    write_json(out / "experiment.json", {"experiment": name, "config": config, "argv": sys.argv[1:]})
    single = len(grid) == 1 and not config.get("grid")
    tasks = [(name, cell_name, cell, out if single else out / cell_name, device, progress and jobs == 1, resume)
             for cell_name, _, cell in grid]
    if jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            summaries = list(pool.map(_run_cell_worker, [task + (threads,) for task in tasks]))
    else:
        summaries = [run_cell(*task) for task in tasks]
    rows = [{**values, **{k: s[k] for k in SUMMARY_COLUMNS}} for (_, values, _), s in zip(grid, summaries)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "results.csv", buffer.getvalue())
    return summaries
