"""Grid cells as Ray tasks (``ppl-vae run EXPERIMENT --ray [ADDRESS]``): one more ``GridRunner``.

The toolkit does not schedule: Ray does. Each cell is a task that asks for its own ``train.threads``
CPUs (1 when left at 0) and, on CUDA, ``gpus_per_cell`` of a GPU (a fraction lets small cells
share one). A cell runs in a temporary folder on whichever node Ray picks, so no shared file system
is needed: the task takes the cell folder's files with it (a resumed cell's checkpoint); each
checkpoint it saves is posted, with the folder's other files, to a ``Mailbox`` actor that the
driver empties into the run folder as it waits; and the task returns every file it wrote. The
driver writes all of them atomically. So a killed worker or node costs a cell the epochs since its
last checkpoint, which ``--resume`` continues from, and ``results.csv`` is gathered as for the
other runners.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from ppl_vae.errors import ConfigError
from ppl_vae.io import atomic_write
from ppl_vae.lab.cell import CellTask
from ppl_vae.lab.runner import CellFailure, Progress, attempt

#: what to tell a user whose Python lacks Ray
INSTALL = "--ray needs Ray, an optional extra: pip install -e '.[ray]' (or pip install 'ray==2.60.0')"

#: seconds between a worker's looks for a new checkpoint, and between the driver's looks in the mailbox
POLL = 0.25


def import_ray():
    """The ``ray`` module, or a ``ConfigError`` that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ConfigError(INSTALL) from error
    return ray


def connection_error(address: str, error: Exception) -> ConfigError:
    """What to tell a user whose ``--ray ADDRESS`` cannot connect: Ray's own error names neither its
    token authentication nor the fix, so say whether ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN`` are set here."""
    mode, token = os.environ.get("RAY_AUTH_MODE"), os.environ.get("RAY_AUTH_TOKEN")
    here = (f"RAY_AUTH_MODE is {mode!r}" if mode else "RAY_AUTH_MODE is not set") + " and " + (
        "RAY_AUTH_TOKEN is set" if token else "RAY_AUTH_TOKEN is not set")
    said = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError(
        f"--ray {address}: cannot connect to the Ray cluster ({said}). In this shell {here}. A cluster started "
        "with token authentication takes only its own token: export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<the "
        "cluster's token> (the one its nodes were started with), then rerun. If the token is right, check that "
        f"the head is up at that address: ray status --address {address}")


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by its path relative to it, but for ``atomic_write``'s temporary
    files (written while a cell runs: half a file)."""
    paths = sorted(folder.rglob("*")) if folder.is_dir() else []
    return {str(p.relative_to(folder)): p.read_bytes() for p in paths
            if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp"))}


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    """``files`` (from ``folder_files``) into ``folder``, each atomically."""
    for name, data in files.items():
        atomic_write(folder / name, lambda p, data=data: p.write_bytes(data))


class Mailbox:
    """A Ray actor that holds the checkpoints posted by running cells until the driver collects them."""

    def __init__(self):
        self.letters: list[tuple[str, dict[str, bytes]]] = []

    def post(self, cell: str, files: dict[str, bytes]) -> None:
        self.letters.append((cell, files))

    def collect(self) -> list[tuple[str, dict[str, bytes]]]:
        letters, self.letters = self.letters, []
        return letters


def post_checkpoints(folder: Path, cell: str, mailbox, stop: threading.Event) -> None:
    """Until ``stop``: each time ``folder/checkpoint.pt`` changes, post the folder's files to ``mailbox``
    and wait for the post to land (so every post is in before the task returns)."""
    checkpoint, seen = folder / "checkpoint.pt", None
    while not stop.wait(POLL):
        try:
            stamp = checkpoint.stat().st_mtime_ns  # written atomically: a checkpoint that exists is whole
            if stamp != seen:
                seen = stamp
                import_ray().get(mailbox.post.remote(cell, folder_files(folder)))
        except FileNotFoundError:
            continue
        except Exception:  # noqa: BLE001 — the driver, and its mailbox, are gone: the task ends with it
            return


def run_shipped(task: CellTask, files: dict[str, bytes], mailbox) -> tuple[dict | CellFailure, dict[str, bytes]]:
    """On a Ray worker: the cell in a temporary folder holding ``files``, its checkpoints posted to
    ``mailbox`` as they are saved; its result and every file it wrote."""
    with tempfile.TemporaryDirectory(prefix="ppl-vae-cell-") as tmp:
        folder = Path(tmp)
        write_files(folder, files)
        stop = threading.Event()
        poster = threading.Thread(target=post_checkpoints, args=(folder, task.cell.name, mailbox, stop), daemon=True)
        poster.start()
        try:
            result = attempt(replace(task, folder=folder, progress=False))
        finally:
            stop.set()
            poster.join()
        return result, folder_files(folder)


class RayCells:
    """Cells as Ray tasks on a new local Ray instance (``address`` None) or an existing cluster
    (``"auto"``, ``"HOST:PORT"`` or ``"ray://HOST:PORT"``, started with ``ray start --head``).

    :param gpus_per_cell: the share of a GPU each cell asks for on CUDA (0.25: four cells a GPU).
    """

    def __init__(self, address: str | None = None, gpus_per_cell: float = 1.0):
        if not (0 < gpus_per_cell <= 1 or (gpus_per_cell > 1 and gpus_per_cell == int(gpus_per_cell))):
            raise ConfigError(f"--gpus-per-cell {gpus_per_cell}: give a fraction in (0, 1] or a whole number")
        self.address, self.gpus_per_cell = address, gpus_per_cell
        self.ray = import_ray()  # before any work: a missing Ray stops the run here

    def run(self, tasks: list[CellTask], progress: bool = True) -> list[dict | CellFailure]:
        ray = self.ray
        refused = (ConnectionError, ray.exceptions.AuthenticationError)  # a cluster that is down, or not our token
        try:
            ray.init(address=self.address or "local", log_to_driver=False, configure_logging=False)
        except refused as error:  # Ray's own errors name neither the token nor the fix
            raise connection_error(self.address or "local", error) from error
        try:
            mailbox = ray.remote(num_cpus=0)(Mailbox).remote()
            remote = ray.remote(run_shipped)
            pending = {}
            for task in tasks:
                gpus = self.gpus_per_cell if task.device.startswith("cuda") else 0
                files = folder_files(task.folder) if task.resume else {}
                options = remote.options(num_cpus=task.threads or 1, num_gpus=gpus, max_retries=0)
                pending[options.remote(task, files, mailbox)] = task
            folders = {task.cell.name: task.folder for task in tasks}
            results, line, waiting = {}, Progress(len(tasks), progress), list(pending)
            while waiting:
                ended, waiting = ray.wait(waiting, num_returns=1, timeout=POLL)
                # checkpoints first: an ended cell's last posts are in, and its final files come after them
                for cell, files in ray.get(mailbox.collect.remote()):
                    write_files(folders[cell], files)
                for ref in ended:
                    task = pending[ref]
                    try:
                        result, files = ray.get(ref)
                    except ray.exceptions.RayError as error:  # the worker or its node died
                        result, files = CellFailure(task.cell.name, f"its Ray task failed ({type(error).__name__}); "
                                                    "rerun with --resume"), {}
                    write_files(task.folder, files)
                    results[task.cell.name] = result
                    line.ended_cell(result, running=len(waiting))  # "running": handed to Ray, which queues them
            return [results[task.cell.name] for task in tasks]
        finally:
            ray.shutdown()
