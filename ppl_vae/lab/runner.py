"""Grid runners: how a grid's cells are scheduled. A runner takes the cells' tasks and returns, in
the same order, each cell's summary or, for a cell that raised, its ``CellFailure``: one failed
cell does not stop the others. The cells themselves are independent runs (``cell.run_cell``), but
for the restarts of one cell under ``train.vectorise``, which run as one unit (``units``,
``cell.run_restarts``).

- ``Sequential``: one unit after the other in this process, each with its own progress bar.
- ``LocalProcesses``: ``jobs`` units at a time in fresh processes on this machine; on CUDA with G
  GPUs, unit i runs on GPU i mod G.

A cell's CPU threads are its own ``train.threads`` under every runner, so its numbers do not
depend on how the grid was scheduled.

All print a line as each cell ends: cells done, running, failed and left, and the time left at
the mean pace so far. ``ray_runner.RayCells`` hands the cells to Ray, on this machine or a
cluster: another scheduler is one more class with a ``run`` method (Ray runs every cell as a task of
its own, vectorised or not).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from multiprocessing import active_children, get_context
from typing import Protocol

import torch
from tqdm.auto import tqdm

from ppl_vae.infer.restarts import PER_RESTART, NotVectorised, VectoriseWarning
from ppl_vae.lab.cell import CellTask, run_cell, run_restarts


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
        return failure(task, error)


def failure(task: CellTask, error: BaseException) -> CellFailure:
    first = (str(error).strip().splitlines() or [""])[0]
    return CellFailure(task.cell.name, f"{type(error).__name__}: {first}", "".join(traceback.format_exception(error)))


def units(tasks: list[CellTask]) -> list[list[CellTask]]:
    """The tasks as runners schedule them: the cells with ``train.vectorise`` that differ only in
    ``train.seed`` and ``train.kl_weight`` (``infer.restarts.PER_RESTART``) as one unit, in the order of
    its first cell; every other cell a unit of its own."""
    grouped: dict = {}
    for task in tasks:
        config = task.cell.config
        train = config.get("train", {})
        if train.get("vectorise"):
            shared = {**config, "train": {k: v for k, v in train.items() if k not in PER_RESTART}}
            key = (json.dumps(shared, sort_keys=True, default=str), task.device)
        else:
            key = id(task)
        grouped.setdefault(key, []).append(task)
    return list(grouped.values())


def attempt_unit(unit: list[CellTask], vectorise: bool = True) -> list[dict | CellFailure] | NotVectorised:
    """A unit's summaries or failures, in its order: a cell alone by ``attempt``; restarts as one
    vectorised program (``cell.run_restarts``). Where they cannot be, the ``NotVectorised`` saying why,
    before anything is written: the runner then schedules each cell alone (``vectorise = False``), with a warning
    (``separately``)."""
    if not vectorise or (len(unit) == 1 and not unit[0].cell.config.get("train", {}).get("vectorise")):
        return [attempt(task) for task in unit]
    try:
        outcomes = run_restarts(unit)
    except NotVectorised as reason:
        return reason
    except Exception as error:  # noqa: BLE001 — the program's error is each of its cells'
        return [failure(task, error) for task in unit]
    return [failure(task, o) if isinstance(o, Exception) else o for task, o in zip(unit, outcomes)]


def separately(unit: list[CellTask], reason: NotVectorised) -> list[list[CellTask]]:
    """The cells of a unit that could not be vectorised, each a unit of its own, with a ``VectoriseWarning``."""
    warnings.warn(f"{len(unit)} cell(s) from {unit[0].cell.name or 'the run'} on train separately: {reason}",
                  VectoriseWarning, stacklevel=3)
    return [[task] for task in unit]


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
        line, results, queue = Progress(len(tasks), progress), {}, [(unit, True) for unit in units(tasks)]
        while queue:
            unit, vectorise = queue.pop(0)
            ended = attempt_unit([replace(task, progress=progress) for task in unit], vectorise)
            if isinstance(ended, NotVectorised):
                queue[:0] = [(cell, False) for cell in separately(unit, ended)]
                continue
            for task, result in zip(unit, ended):
                results[task.cell.name] = result
                line.ended_cell(result, running=0)
        return [results[task.cell.name] for task in tasks]


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


def spread_over_gpus(grouped: list[list[CellTask]]) -> list[list[CellTask]]:
    """Units (``units``) on ``cuda`` with several GPUs visible: unit i on GPU i mod G (``cuda:i``); else
    as they are."""
    gpus = torch.cuda.device_count() if any(t.device == "cuda" for unit in grouped for t in unit) else 0
    if gpus < 2:
        return grouped
    return [[replace(t, device=f"cuda:{i % gpus}") if t.device == "cuda" else t for t in unit]
            for i, unit in enumerate(grouped)]


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
            def submit(unit: list[CellTask], vectorise: bool = True):
                return pool.submit(attempt_unit, [replace(task, progress=False) for task in unit], vectorise)

            pending = {submit(unit): unit for unit in spread_over_gpus(units(tasks))}
            results = {}
            try:
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        unit = pending.pop(future)
                        try:
                            ended = future.result()
                        except BrokenProcessPool as error:  # a worker was killed: its cells, and those queued, end
                            ended = [CellFailure(task.cell.name, f"its worker process died ({error}); rerun with "
                                                 "--resume") for task in unit]
                        if isinstance(ended, NotVectorised):  # its cells queued again, each alone
                            pending |= {submit(cell, False): cell for cell in separately(unit, ended)}
                            continue
                        for task, result in zip(unit, ended):
                            results[task.cell.name] = result
                            line.ended_cell(result, running=min(self.jobs, len(tasks) - line.ended - 1))
            except KeyboardInterrupt:  # Ctrl-C: stop now, not after the queued cells; checkpoints are whole
                pool.shutdown(wait=False, cancel_futures=True)
                for worker in set(active_children()) - others:
                    worker.terminate()
                    worker.join()
                raise
            return [results[task.cell.name] for task in tasks]
