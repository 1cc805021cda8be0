"""Grid runners: how a grid's cells are scheduled. A runner takes the cells' tasks and returns, in
the same order, each cell's summary or, for a cell that raised, its ``CellFailure``: one failed
cell does not stop the others. The cells themselves are independent runs (``cell.run_cell``).

- ``Sequential``: one after the other in this process, each with its own progress bar.
- ``LocalProcesses``: ``jobs`` at a time in fresh processes on this machine; on CUDA with G GPUs,
  cell i runs on GPU i mod G.

A cell's CPU threads are its own ``train.threads`` under every runner, so its numbers do not
depend on how the grid was scheduled.

All print a line as each cell ends: cells done, running, failed and left, and the time left at
the mean pace so far. ``ray_runner.RayCells`` hands the cells to Ray, on this machine or a
cluster: another scheduler is one more class with a ``run`` method.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from multiprocessing import active_children, get_context
from typing import Protocol

import torch
from tqdm.auto import tqdm

from ppl_vae.lab.cell import CellTask, run_cell


@dataclass(frozen=True)
class CellFailure:
    """A cell that raised (or whose process died): its name, the error's first line and its traceback."""

    cell: str
    error: str
    traceback: str = ""


def attempt(task: CellTask) -> dict | CellFailure:
    """``run_cell(task)``, with an error turned into a ``CellFailure`` (picklable, so a worker
    process returns it like a summary). Ctrl-C and exits still stop the run."""
    try:
        return run_cell(task)
    except Exception as error:  # noqa: BLE001 — whatever one cell raises, the grid goes on
        first = (str(error).strip().splitlines() or [""])[0]
        return CellFailure(task.cell.name, f"{type(error).__name__}: {first}", traceback.format_exc())


class Progress:
    """The line printed as each cell ends: ``[done/total] cell: result | running, failed, left, time left``."""

    def __init__(self, total: int, show: bool):
        # one cell (an experiment without a grid) has its own bar and summary table instead
        self.total, self.show, self.started, self.ended, self.failed = total, show and total > 1, time.time(), 0, 0

    def ended_cell(self, result: dict | CellFailure, running: int) -> None:
        self.ended += 1
        self.failed += isinstance(result, CellFailure)
        if not self.show:
            return
        elapsed = time.time() - self.started
        left = self.total - self.ended
        what = (f"FAILED ({result.error})" if isinstance(result, CellFailure)
                else f"-ELBO {result['loss']:.3f} in {result['seconds']:.0f} s")
        estimate = f", about {_duration(elapsed / self.ended * left)} left" if left else ""
        name = result.cell if isinstance(result, CellFailure) else result["cell"]
        print(f"[{self.ended}/{self.total}] {name}: "
              f"{what} | {running} running, {self.failed} failed, {left - running} waiting; "
              f"{_duration(elapsed)} so far{estimate}", flush=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class GridRunner(Protocol):
    def run(self, tasks: list[CellTask], progress: bool = True) -> list[dict | CellFailure]:
        """Run every task; their summaries (or failures), in the order of ``tasks``."""


class Sequential:
    """Cells one after the other, in this process."""

    def run(self, tasks: list[CellTask], progress: bool = True) -> list[dict | CellFailure]:
        line, results = Progress(len(tasks), progress), []
        for task in tasks:
            results.append(attempt(replace(task, progress=progress)))
            line.ended_cell(results[-1], running=0)
        return results


def _die_with_driver(driver: int) -> None:
    """In a worker process: exit as soon as the driver is gone (killed, say), so that no cell of a
    stopped run is still writing into its folder when the run is resumed. Ctrl-C (SIGINT to the
    terminal's process group) is the driver's to act on: it stops the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())  # not tqdm's default semaphore, which a stopped worker would leave behind

    def watch() -> None:
        while os.getppid() == driver:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def spread_over_gpus(tasks: list[CellTask]) -> list[CellTask]:
    """Tasks on ``cuda`` with several GPUs visible: task i on GPU i mod G (``cuda:i``); else as they are."""
    gpus = torch.cuda.device_count() if any(t.device == "cuda" for t in tasks) else 0
    if gpus < 2:
        return tasks
    return [replace(t, device=f"cuda:{i % gpus}") if t.device == "cuda" else t for i, t in enumerate(tasks)]


class LocalProcesses:
    """Cells ``jobs`` at a time, each in a fresh (spawned) process."""

    def __init__(self, jobs: int):
        self.jobs = jobs

    def run(self, tasks: list[CellTask], progress: bool = True) -> list[dict | CellFailure]:
        unset = [t.cell.name for t in tasks if not t.threads]
        cores = os.cpu_count() or 1
        if progress and unset and cores > 1:
            print(f"note: {len(unset)} cell(s) leave train.threads at 0, so each of the {self.jobs} jobs uses "
                  f"torch's default threads (up to {cores}) and they compete for the {cores} cores; "
                  f"--set train.threads={max(1, cores // self.jobs)} shares them out", flush=True)
        line, others = Progress(len(tasks), progress), set(active_children())
        with ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn"), initializer=_die_with_driver,
                                 initargs=(os.getpid(),)) as pool:
            # the cells' own progress bars are off when several run at once: a line per ended cell instead
            futures = {pool.submit(attempt, replace(task, progress=False)): task for task in spread_over_gpus(tasks)}
            results = {}
            try:
                for future in as_completed(futures):
                    try:
                        results[future] = future.result()
                    except BrokenProcessPool as error:  # a worker was killed: its cell, and those queued, end here
                        results[future] = CellFailure(futures[future].cell.name,
                                                      f"its worker process died ({error}); rerun with --resume")
                    line.ended_cell(results[future], running=min(self.jobs, len(tasks) - line.ended - 1))
            except KeyboardInterrupt:  # Ctrl-C: stop now, not after the queued cells; checkpoints are whole
                pool.shutdown(wait=False, cancel_futures=True)
                for worker in set(active_children()) - others:
                    worker.terminate()
                    worker.join()
                raise
            return [results[future] for future in futures]
