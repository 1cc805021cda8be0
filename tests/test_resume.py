"""A grid run stopped midway, then rerun with ``--resume``, finishes: finished cells are kept byte for
byte, interrupted cells continue from their checkpoints (none is trained from scratch twice), and
the results equal those of a run that was never stopped. Stopped: one worker process of
``--jobs 2`` killed, and separately the driver (its workers must not outlive it), and Ctrl-C
(SIGINT to the run's process group, as a terminal sends it); the busy Ray workers of ``--ray``
killed (their cells' checkpoints reached the run folder through the driver)."""

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from experiment_text import TINY_EXPERIMENT

from ppl_vae.io import load_tensors
from ppl_vae.lab.experiment import run

GRID = TINY_EXPERIMENT + """[train]
epochs = 300
batch_size = 0
checkpoint_every = 1
eval_every = 50
threads = 1
[diagnostics]
rows = 20
particles = 10
iw_samples = 25
mean_samples = 20
[grid]
"train.seed" = [0, 1, 2, 3]
"""


def processes(parent: int | None, command: bytes) -> list[int]:
    """The processes whose command line holds ``command`` (and whose parent is ``parent``, if given)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            line = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if (parent is None or ppid == parent) and command in line:
            found.append(int(stat.parent.name))
    return found


def workers(runner: str, driver: int) -> list[int]:
    """The processes running the cells: for ``--jobs``, the driver's children that run cells (not the
    resource tracker); for ``--ray``, Ray's workers while they run a cell (Ray names them so)."""
    return processes(driver, b"spawn_main") if runner == "jobs" else processes(None, b"ray::run_shipped")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def results(folder: Path) -> list[dict]:
    with open(folder / "results.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def never_stopped(tmp_path_factory) -> list[dict]:
    """The grid's results from a run that was not stopped."""
    folder = tmp_path_factory.mktemp("never-stopped")
    (folder / "grid.toml").write_text(GRID)
    run(folder / "grid.toml", folder / "out", jobs=2, progress=False)
    return results(folder / "out")


RUNNERS = {"jobs": ["--jobs", "2"], "ray": ["--ray"]}
ray_missing = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                 reason="Ray is an optional extra (pip install -e '.[ray]'); CI installs it")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes through /proc (Linux)")
@pytest.mark.parametrize("runner, stop", [("jobs", "kill worker"), ("jobs", "kill driver"), ("jobs", "ctrl-c"),
                                          pytest.param("ray", "kill worker", marks=ray_missing)])
def test_a_stopped_grid_resumes_without_training_a_cell_from_scratch_twice(tmp_path, runner, stop, never_stopped):
    path, out = tmp_path / "grid.toml", tmp_path / "out"
    path.write_text(GRID)
    command = [sys.executable, "-m", "ppl_vae.cli", "run", str(path), "--out", str(out), *RUNNERS[runner]]
    # a session of its own, so that Ctrl-C can be sent to the run's process group alone
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as stderr:
        driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    cells = [out / f"seed={s}" for s in range(4)]
    def early(cell: Path) -> bool:  # part-way through its first half: a checkpoint, and far from its summary
        try:
            return not (cell / "summary.json").exists() and load_tensors(cell / "checkpoint.pt")["epoch"] <= 150
        except (OSError, RuntimeError, KeyError):  # not written yet
            return False

    # stop it once one cell has finished and another is early in its training
    wait_for(lambda: any((c / "summary.json").exists() for c in cells) and any(early(c) for c in cells), 300,
             "a finished cell and one early in its training")
    running = wait_for(lambda: workers(runner, driver.pid), 30, "the processes running cells")
    if stop == "kill worker":
        # --jobs: one worker, which breaks the pool and stops every running cell. --ray: every busy worker,
        # so the early cell's is among them (a Ray worker cannot be told by its cell, and one picked at
        # random may run a cell that has not posted a checkpoint yet, leaving no cell midway)
        for pid in running[:1] if runner == "jobs" else running:
            os.kill(pid, signal.SIGKILL)
        assert driver.wait(timeout=120) == 1  # the other cells are reported failed, not lost
    elif stop == "kill driver":
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    else:
        os.killpg(driver.pid, signal.SIGINT)
        assert driver.wait(timeout=30) == 130  # at once, not after the cells still queued
        assert "interrupted. Finished cells and checkpoints are kept" in errors.read_text()
    wait_for(lambda: not any(alive(w) for w in running), 30, "the workers to end with the run")

    finished = {c: {p: p.read_bytes() for p in c.rglob("*") if p.is_file()}
                for c in cells if (c / "summary.json").exists()}
    midway = {c: load_tensors(c / "checkpoint.pt")["epoch"] for c in cells
              if (c / "checkpoint.pt").exists() and c not in finished}
    assert finished and midway and all(0 < epoch <= 300 for epoch in midway.values())

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for files in finished.values():  # kept byte for byte
        assert {p: p.read_bytes() for p in files} == files
    for cell, epoch in midway.items():  # continued from its checkpoint
        assert json.loads((cell / "summary.json").read_text())["resumed_from_epoch"] == epoch
    for cell in set(cells) - set(finished) - set(midway):  # not started before the stop
        assert json.loads((cell / "summary.json").read_text())["resumed_from_epoch"] == 0
    assert results(out) == never_stopped
