"""Run an experiment file into a run folder, and write a finished run's study report.

The pieces: ``experiment_file`` (the grammar: load, ``--set``, quick mode, grid, validation),
``cell`` (one cell: build, train, diagnose, restore), ``runner`` (how the cells are scheduled)
and ``study``/``studies`` (a study report, one module each). Run folder: ``experiment.json`` (the config as
run, the command line, the device), ``results.csv`` over cells (one column per grid axis, then
the summary's numbers), a folder per cell (``cell``; the run folder itself without a grid), and,
with a ``report``, ``report.md`` and its figures.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ppl_vae.errors import ConfigError, Fault
from ppl_vae.infer.training import resolve_device
from ppl_vae.io import write_json, write_text
from ppl_vae.lab import study
from ppl_vae.lab.cell import CellTask, RunFolderError, check_resumable, preflight, read
from ppl_vae.lab.experiment_file import Cell, apply_overrides, bundled, cells, load, quick, validate
from ppl_vae.lab.runner import CellFailure, GridRunner, LocalProcesses, Sequential

__all__ = ["run", "report", "write_results", "bundled", "load", "RunFolderError", "CellsFailed"]

SUMMARY_COLUMNS = ("experiment", "cell", "data", "model", "guide", "estimator", "seed", "epochs", "train_loss",
                   "test_loss", "loss", "recon", "recon_per_dim", "kl", "log_px_iw", "gap", "khat_share",
                   "active_units", "mi", "marginal_kl", "seconds", "device")


class CellsFailed(Fault):
    """Cells of a grid raised; the others finished and are in ``results.csv``. The message names
    each failed cell and its error; ``experiment.json`` keeps them with their tracebacks."""

    def __init__(self, failed: list[CellFailure], total: int, out: Path):
        self.failed = failed
        named = "; ".join(f"{f.cell or 'the run'} ({f.error})" for f in failed)
        super().__init__(f"{len(failed)} of {total} cell(s) failed: {named}. The others finished"
                         f"{' and are in ' + str(out / 'results.csv') if len(failed) < total else ''}; "
                         f"tracebacks are in {out / 'experiment.json'}. Fix the cause, then rerun with "
                         "--resume: finished cells are kept, the failed ones continue from their checkpoints")


def write_results(out: Path, grid: list[Cell], summaries: list[dict], columns: tuple[str, ...] = ()) -> list[dict]:
    """``results.csv``: a row per cell, its grid values then its summary's numbers (and the study's
    ``columns``); returns the rows."""
    rows = [{**cell.values, **{k: s[k] for k in (*SUMMARY_COLUMNS, *columns)}} for cell, s in zip(grid, summaries)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "results.csv", buffer.getvalue())
    return rows


def runner_for(jobs: int, ray: str | None = None, gpus_per_cell: float = 1.0) -> GridRunner:
    """``Sequential`` for one job, ``LocalProcesses`` for more; ``ray`` (an address, or "" for a new
    local instance): ``ray_runner.RayCells``."""
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: give at least 1")
    if ray is not None:
        if jobs != 1:
            raise ConfigError(f"--jobs {jobs} with --ray: Ray decides how many cells run at once; drop --jobs")
        from ppl_vae.lab.ray_runner import RayCells  # Ray is an optional extra

        return RayCells(ray or None, gpus_per_cell)
    return Sequential() if jobs == 1 else LocalProcesses(jobs)


def report(out: str | Path) -> str:
    """Write the ``report.md`` (and figures) of a finished run folder whose experiment names a
    ``report``, from its cells' summaries; returns the Markdown. Re-running it re-renders the report."""
    out = Path(out)
    try:
        config = read(out / "experiment.json", lambda p: json.loads(p.read_text()), "")["config"]
    except FileNotFoundError as error:
        raise ConfigError(f"{out} is not a run folder (no experiment.json): give the --out of a finished "
                          "run") from error
    if "report" not in config:
        raise ConfigError(f"the experiment of {out} has no report; bundled reports: {', '.join(study.bundled())}")
    grid = cells(config)
    missing = [str(c.folder(out)) for c in grid if not (c.folder(out) / "summary.json").is_file()]
    if missing:
        raise ConfigError(f"{len(missing)} cell(s) of {out} have not finished (no summary.json in {missing[0]}, ...): "
                          "continue the run with --resume first")
    rows = [{**c.values, **read(c.folder(out) / "summary.json", lambda p: json.loads(p.read_text()), c.name)}
            for c in grid]
    text = study.find(config["report"]).report(out, rows, [c.config for c in grid])
    write_text(out / "report.md", text)
    return text


def run(experiment: str | Path, out: str | Path | None = None, overrides: list[str] = (), device: str = "auto",
        quick_run: bool = False, force: bool = False, resume: bool = False, jobs: int = 1,
        progress: bool = True, runner: GridRunner | None = None, ray: str | None = None,
        gpus_per_cell: float = 1.0) -> list[dict]:
    """Validate every cell, then run them into ``out``; returns the summaries. A cell that raises
    does not stop the others: they finish and are gathered, then ``CellsFailed`` names the failures.

    ``out`` defaults to ``runs/<experiment>``. An existing non-empty folder is an error unless
    ``force`` (start afresh) or ``resume`` (finished cells are kept, the others continue from
    their checkpoints; a file that cannot be read stops the run before anything is written).
    ``device``: ``auto`` (CUDA when there is a GPU), ``cpu`` or ``cuda``. ``runner`` schedules the
    cells (default: ``runner_for(jobs, ray, gpus_per_cell)``; ``ray``: a Ray cluster's address,
    or "" for a new local Ray instance).
    """
    runner = runner or runner_for(jobs, ray, gpus_per_cell)  # a missing Ray stops the run before any work
    name, config = load(experiment)
    apply_overrides(config, list(overrides))
    if quick_run:
        config = quick(config)
    grid = cells(config)
    for cell in grid:
        validate(cell.config)
    preflight([cell.config for cell in grid])
    device = str(resolve_device(device))
    out = Path(out or Path("runs") / name)
    if out.exists() and any(out.iterdir()) and not resume:
        if not force:
            raise ConfigError(f"run folder {out} exists and is not empty: pass --force to overwrite it, "
                              "--resume to continue it, or --out for another folder")
        shutil.rmtree(out)
    tasks = [CellTask(name, cell, cell.folder(out), device, progress, resume) for cell in grid]
    if resume:
        for task in tasks:
            check_resumable(task)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    record = {"experiment": name, "config": config, "argv": sys.argv[1:], "jobs": jobs, "device": device}
    write_json(out / "experiment.json", record)
    if progress:
        print(f"{name}: {len(grid)} cell(s) on {device}, into {out}", flush=True)
    results = runner.run(tasks, progress)
    failed = [r for r in results if isinstance(r, CellFailure)]
    done = [i for i, r in enumerate(results) if not isinstance(r, CellFailure)]
    if done:  # results.csv holds the finished cells, whatever else failed
        write_results(out, [grid[i] for i in done], [results[i] for i in done],
                      study.find(config["report"]).columns if "report" in config else ())
    write_json(out / "experiment.json", {**record, "wall_seconds": round(time.time() - started, 1),
                                         "failed": [asdict(f) for f in failed]})
    if failed:
        raise CellsFailed(failed, len(grid), out)
    if "report" in config:
        text = report(out)
        if progress:
            print(text)
    return results
