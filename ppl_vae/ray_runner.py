"""Grid cells as Ray tasks (``ppl-vae run EXPERIMENT --ray [ADDRESS]``): one more ``GridRunner``.

The toolkit does not schedule: Ray does. Each cell is a task that asks for its own ``train.threads``
CPUs (1 when left at 0) and, on CUDA, ``gpus_per_cell`` of a GPU (a fraction lets small cells
share one). A cell runs in a temporary folder on whichever node Ray picks: the task takes the
cell folder's files with it (a resumed cell's checkpoint) and returns every file it wrote, which
the driver writes atomically into the run folder. So results come back whether or not the
nodes share a file system, and ``results.csv`` is gathered as for the other runners.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from ppl_vae.cell import CellTask
from ppl_vae.io import atomic_write
from ppl_vae.registry import ConfigError
from ppl_vae.runner import CellFailure, Progress, attempt

#: what to tell a user whose Python lacks Ray
INSTALL = "--ray needs Ray, an optional extra: pip install -e '.[ray]' (or pip install 'ray==2.60.0')"


def import_ray():
    """The ``ray`` module, or a ``ConfigError`` that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise ConfigError(INSTALL) from error
    return ray


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, by its path relative to it."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} \
        if folder.is_dir() else {}


def run_shipped(task: CellTask, files: dict[str, bytes]) -> tuple[dict | CellFailure, dict[str, bytes]]:
    """On a Ray worker: the cell in a temporary folder holding ``files``; its result and every file it wrote."""
    with tempfile.TemporaryDirectory(prefix="ppl-vae-cell-") as tmp:
        folder = Path(tmp)
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        result = attempt(replace(task, folder=folder, progress=False))
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
        ray.init(address=self.address or "local", log_to_driver=False, configure_logging=False)
        try:
            remote = ray.remote(run_shipped)
            pending = {}
            for task in tasks:
                gpus = self.gpus_per_cell if task.device.startswith("cuda") else 0
                files = folder_files(task.folder) if task.resume else {}
                options = remote.options(num_cpus=task.threads or 1, num_gpus=gpus, max_retries=0)
                pending[options.remote(task, files)] = task
            results, line, waiting = {}, Progress(len(tasks), progress), list(pending)
            while waiting:
                (ref,), waiting = ray.wait(waiting, num_returns=1)
                task = pending[ref]
                try:
                    result, files = ray.get(ref)
                except ray.exceptions.RayError as error:  # the worker or its node died
                    result, files = CellFailure(task.cell.name, f"its Ray task failed ({type(error).__name__}); "
                                                "rerun with --resume"), {}
                for name, data in files.items():
                    atomic_write(task.folder / name, lambda p, data=data: p.write_bytes(data))
                results[task.cell.name] = result
                line.ended_cell(result, running=len(waiting))  # "running": handed to Ray, which queues them
            return [results[task.cell.name] for task in tasks]
        finally:
            ray.shutdown()
