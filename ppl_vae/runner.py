"""Grid runners: how a grid's cells are scheduled. A runner takes the cells' tasks and returns
their summaries in the same order; the cells themselves are independent runs (``cell.run_cell``).

- ``Sequential``: one after the other in this process, each with its own progress bar.
- ``LocalProcesses``: ``jobs`` at a time in fresh processes on this machine, the CPU threads
  shared out between them, a line printed as each cell finishes.

Another scheduler (a cluster's, say) is one more class with a ``run`` method.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from multiprocessing import get_context
from typing import Protocol

from ppl_vae.cell import CellTask, run_cell
from ppl_vae.registry import ConfigError


class GridRunner(Protocol):
    def run(self, tasks: list[CellTask], progress: bool = True) -> list[dict]:
        """Run every task; their summaries, in the order of ``tasks``."""


class Sequential:
    """Cells one after the other, in this process."""

    def run(self, tasks: list[CellTask], progress: bool = True) -> list[dict]:
        return [run_cell(replace(task, progress=progress)) for task in tasks]


class LocalProcesses:
    """Cells ``jobs`` at a time, each in a fresh (spawned) process with an equal share of the CPU threads."""

    def __init__(self, jobs: int):
        self.jobs = jobs

    def run(self, tasks: list[CellTask], progress: bool = True) -> list[dict]:
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        started = time.time()
        with ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn")) as pool:
            # the cells' own progress bars are off when several run at once: a line per finished cell instead
            futures = [pool.submit(run_cell, replace(task, progress=False, threads=threads)) for task in tasks]
            for done, future in enumerate(as_completed(futures), 1):
                if progress:
                    summary = future.result()
                    print(f"[{done}/{len(futures)}] {summary['cell']}: -ELBO {summary['loss']:.3f} "
                          f"in {summary['seconds']:.0f} s ({time.time() - started:.0f} s so far)", flush=True)
            return [future.result() for future in futures]


def runner_for(jobs: int) -> GridRunner:
    """``Sequential`` for one job, else ``LocalProcesses``."""
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: give at least 1")
    return Sequential() if jobs == 1 else LocalProcesses(jobs)
