"""Grid cells as Ray tasks: the same per-cell numbers as the sequential and ``--jobs`` runners, on a
local Ray instance and on a "cluster" of one head started with ``ray start --head`` on the
loopback address; without Ray, ``--ray`` is a clear error before any work."""

import csv
import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from experiment_text import TINY_EXPERIMENT

from ppl_vae import ConfigError
from ppl_vae.cli import main
from ppl_vae.experiment import CellsFailed, run

GRID = TINY_EXPERIMENT + """[train]
epochs = 3
batch_size = 0
threads = 1
[grid]
"train.seed" = [0, 1]
"model.hidden" = [[8], [16]]
"""


def rows(folder: Path) -> list[dict]:
    """results.csv without the wall time, which no two runs share."""
    with open(folder / "results.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_ray_missing_is_a_clear_error_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    with pytest.raises(ConfigError, match=r"--ray needs Ray, an optional extra: pip install -e '\.\[ray\]'"):
        run(path, tmp_path / "out", ray="", progress=False)
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--ray"]) == 2
    assert "pip install -e '.[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


requires_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                  reason="Ray is an optional extra (pip install -e '.[ray]'); CI installs it")


#: Ray >= 2.59 authenticates by token, and a process keeps the first token it reads: every Ray
#: instance these tests start, and this process, share one
TOKEN = secrets.token_hex(16)


@pytest.fixture(autouse=True)
def ray_token(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)


@pytest.fixture
def head():
    """A one-node Ray cluster on the loopback address, as ``ray start --head`` makes one; its address.
    (``ray stop`` at the end stops every Ray process of this machine.)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
    start = [command, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", "--disable-usage-stats"]
    subprocess.run(start, check=True, capture_output=True, timeout=120)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([command, "stop", "--force"], capture_output=True, timeout=120)


@requires_ray
def test_sequential_jobs_local_ray_and_a_ray_cluster_give_the_same_cells(tmp_path, head, capsys):
    path = tmp_path / "grid.toml"
    path.write_text(GRID)
    run(path, tmp_path / "sequential", progress=False)
    run(path, tmp_path / "jobs", jobs=2, progress=False)
    run(path, tmp_path / "local-ray", ray="", progress=True)
    assert main(["run", str(path), "--out", str(tmp_path / "cluster"), "--ray", head]) == 0
    printed = capsys.readouterr().out
    assert "[4/4]" in printed and "0 failed" in printed
    expected = rows(tmp_path / "sequential")
    assert len(expected) == 4
    for runner in ("jobs", "local-ray", "cluster"):
        assert rows(tmp_path / runner) == expected, runner
    # every cell's files came back from the Ray workers to the run folder
    for cell in (tmp_path / "sequential").iterdir():
        if cell.is_dir():
            shipped = {p.relative_to(tmp_path / "cluster") for p in (tmp_path / "cluster" / cell.name).rglob("*")}
            assert shipped == {p.relative_to(tmp_path / "sequential") for p in cell.rglob("*")}


@requires_ray
def test_a_failed_ray_cell_is_named_and_the_others_gathered(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text(GRID.replace('"model.hidden" = [[8], [16]]', '"train.lr" = [1e-3, 1e30]'))
    with pytest.raises(CellsFailed, match=r"2 of 4 cell\(s\) failed: seed=0__lr=1e\+30 \(") as error:
        run(path, tmp_path / "out", ray="", progress=False)
    assert {f.cell for f in error.value.failed} == {"seed=0__lr=1e+30", "seed=1__lr=1e+30"}
    assert [r["lr"] for r in rows(tmp_path / "out")] == ["0.001", "0.001"]
