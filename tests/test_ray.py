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
from types import SimpleNamespace

import pytest
from experiment_text import TINY_EXPERIMENT

from ppl_vae import ConfigError
from ppl_vae.cli import main
from ppl_vae.lab.experiment import CellsFailed, run
from ppl_vae.lab.ray_runner import RayCells
from ppl_vae.lab.runner import CellFailure

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


class ScriptedRay:
    """A stand-in for the ``ray`` module that drives ``RayCells.run``'s driver loop through a script:
    at the r-th ``ray.wait``, the letters ``script[r][0]`` (``(cell, files)``, in posting order) are in
    the mailbox and the task of ``script[r][1]`` (a cell's name, with its ``(result, files)`` or the
    error its ``ray.get`` raises), if any, has ended. A task's reference is its cell's name."""

    class exceptions:
        class RayError(Exception):
            pass

        class AuthenticationError(RayError):
            pass

    def __init__(self, script):
        self.script, self.letters, self.outcomes = list(script), [], {}

    def init(self, **options):
        pass

    def shutdown(self):
        pass

    def remote(self, function=None, **options):
        if function is None:  # ray.remote(num_cpus=0)(Mailbox).remote(): the mailbox actor's handle
            collect = SimpleNamespace(remote=lambda: "collect")
            return lambda actor: SimpleNamespace(remote=lambda: SimpleNamespace(collect=collect))
        launch = SimpleNamespace(remote=lambda task, files, mailbox: task.cell.name)
        return SimpleNamespace(options=lambda **resources: launch)

    def wait(self, waiting, num_returns, timeout):
        letters, ended = self.script.pop(0)
        self.letters += letters
        if ended:
            self.outcomes[ended[0]] = ended[1]
        return [r for r in waiting if r in self.outcomes], [r for r in waiting if r not in self.outcomes]

    def get(self, reference):
        if reference == "collect":
            letters, self.letters = self.letters, []
            return letters
        if isinstance(self.outcomes[reference], Exception):
            raise self.outcomes[reference]
        return self.outcomes[reference]


def test_the_driver_writes_each_cells_checkpoints_oldest_first_and_its_final_files_last(tmp_path, monkeypatch):
    """Two cells' posted checkpoints reach the run folder in the order they were saved, so a cell
    whose worker dies keeps its newest (and ``--resume`` continues from it); a cell that ends has its
    final files written after the last checkpoint it posted, which they replace."""
    def checkpoint(cell, epoch):
        return cell, {"checkpoint.pt": f"{cell} epoch {epoch}".encode()}

    summary = {"cell": "ended", "loss": 1.0, "seconds": 0.0}
    final = {"checkpoint.pt": b"ended epoch 3", "summary.json": b"{}"}
    script = [([checkpoint("killed", 1), checkpoint("killed", 2), checkpoint("ended", 1)], None),
              ([checkpoint("ended", 2)], ("ended", (summary, final))),  # its last post lands before it returns
              ([], ("killed", ScriptedRay.exceptions.RayError("the worker died")))]
    monkeypatch.setattr("ppl_vae.lab.ray_runner.import_ray", lambda: ScriptedRay(script))
    tasks = [SimpleNamespace(cell=SimpleNamespace(name=name), folder=tmp_path / name, device="cpu", resume=False,
                             threads=1) for name in ("killed", "ended")]
    killed, ended = RayCells().run(tasks, progress=False)
    assert isinstance(killed, CellFailure) and "rerun with --resume" in killed.error and ended == summary
    assert (tmp_path / "killed" / "checkpoint.pt").read_bytes() == b"killed epoch 2"
    assert {p.name: p.read_bytes() for p in (tmp_path / "ended").iterdir()} == final


class UnreachableRay(ScriptedRay):
    """A stand-in whose ``ray.init`` fails as Ray 2.60's does: ``ConnectionError`` for a cluster it cannot
    reach with this shell's token, ``AuthenticationError`` where token authentication is on but no token set."""

    def __init__(self, error):
        super().__init__([])
        self.error = error

    def init(self, **options):
        raise self.error


@pytest.mark.parametrize("token", [None, TOKEN], ids=["token-unset", "token-set"])
@pytest.mark.parametrize("refusal", [ConnectionError("Failed to connect to Ray cluster at 10.0.0.7:6379."),
                                   ScriptedRay.exceptions.AuthenticationError("Failed to connect: no token found")],
                         ids=["connection", "authentication"])
def test_a_cluster_that_cannot_be_reached_names_the_token_and_the_exports(monkeypatch, token, refusal):
    monkeypatch.setattr("ppl_vae.lab.ray_runner.import_ray", lambda: UnreachableRay(refusal))
    if token is None:
        monkeypatch.delenv("RAY_AUTH_TOKEN")
        monkeypatch.delenv("RAY_AUTH_MODE")
    with pytest.raises(ConfigError) as error:
        RayCells("10.0.0.7:6379").run([], progress=False)
    said = str(error.value)
    assert said.startswith("--ray 10.0.0.7:6379: cannot connect to the Ray cluster (Failed to connect")
    assert ("RAY_AUTH_MODE is not set and RAY_AUTH_TOKEN is not set" if token is None else
            "RAY_AUTH_MODE is 'token' and RAY_AUTH_TOKEN is set") in said
    assert "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=" in said and TOKEN not in said  # never prints the secret
