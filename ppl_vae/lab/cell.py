"""One grid cell: build its data and pair, train it into its folder, diagnose it, restore it.

A cell's folder holds ``config.json``, ``metrics.jsonl`` (a history row per scored epoch),
``checkpoint.pt``, ``summary.json`` (the last row's losses and ``collapse.diagnose`` on held-out
data) and ``figures/*.png``. Cells share nothing: any cell rerun alone from its ``config.json``
gives its numbers again.
"""

from __future__ import annotations

import functools
import inspect
import json
import pickle
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch

from ppl_vae import tracing
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation import collapse
from ppl_vae.infer.config import TrainConfig
from ppl_vae.infer.random_state import rng_state
from ppl_vae.infer.restarts import Restarts
from ppl_vae.infer.training import Trainer, cpu_threads, resolve_device
from ppl_vae.io import load_tensors, write_json, write_text
from ppl_vae.lab import study
from ppl_vae.lab.experiment_file import SECTIONS, Cell, diagnostics_config, import_plugins, pair_reference
from ppl_vae.registry import DATASETS, GUIDES, MODELS
from ppl_vae.viz import board, plots

#: held-out examples and draws per example in a cell's aggregate-posterior figure
FIGURE_ROWS, FIGURE_SAMPLES = 500, 20


class RunFolderError(ConfigError):
    """A file of a run folder cannot be read (damaged, truncated, or not this toolkit's); the
    message names the cell, the file and what to do."""


@dataclass(frozen=True)
class CellTask:
    """Everything a runner needs to run one cell, in any process."""

    experiment: str
    cell: Cell
    folder: Path
    device: str = "cpu"
    progress: bool = True
    resume: bool = False

    @property
    def threads(self) -> int:
        """The cell's ``train.threads``: torch's CPU threads for it (0: torch's own count)."""
        return self.cell.config.get("train", {}).get("threads", 0)


def load_data(config: dict):
    options = dict(config["data"])
    return DATASETS[options.pop("name")](**options)


def build(config: dict, data=None):
    """Data, model, guide and TrainConfig of a validated cell config; the pair is seeded by ``train.seed``.
    A ``[model]`` or ``[guide]`` may name Pyro code instead of a registered name
    (``experiment_file.PairReference``)."""
    import_plugins(config)
    train = TrainConfig(**config.get("train", {}))
    data = data or load_data(config)
    pyro.set_rng_seed(train.seed)
    made: dict[Any, Any] = {}  # a factory's product, shared by the model and the guide that name it
    model = make("model", config["model"], MODELS, (data.data_shape,), made, data.data_shape)
    guide = make("guide", config["guide"], GUIDES, (model,), made, data.data_shape)
    return data, model, guide, train


def make(section: str, options: dict, registry, args: tuple, made: dict, data_shape: tuple):
    """The ``[model]`` or ``[guide]`` of a cell: a registered factory called with ``args`` and the
    section's options, or the Pyro code its name refers to."""
    options = dict(options)
    name = options.pop("name")
    reference = pair_reference(name, section)
    if reference is None:
        return registry[name](*args, **options)
    if reference.kind == "callable":
        return reference.target
    if reference.kind == "autoguide":
        return reference.target(*args, **options)
    if reference.target in made and options:
        raise ConfigError(f"[{section}] {name!r}: the {reference.target.__name__} that [model] made serves the "
                          f"guide too; give its options ({', '.join(sorted(options))}) in [model] alone")
    if reference.target not in made:
        takes_shape = "data_shape" in inspect.signature(reference.target).parameters
        made[reference.target] = reference.target(**options, **({"data_shape": data_shape} if takes_shape else {}))
    return functools.reduce(getattr, reference.attribute.split("."), made[reference.target])


def preflight(configs: list[dict]) -> None:
    """Build every cell's data, pair and trainer on the CPU, so a bad value fails before any work."""
    loaded: dict[str, Any] = {}
    for config in configs:
        key = json.dumps(config["data"], sort_keys=True)
        try:
            loaded[key] = loaded.get(key) or load_data(config)
            data, model, guide, train = build(config, loaded[key])
            if train.tensorboard:
                board.require()  # missing TensorBoard: a ConfigError before any work
            Trainer(model, guide, data, train, device="cpu")
        except ConfigError:
            raise
        except ValueError as error:  # a value a constructor refused
            raise ConfigError(f"{error} (in {json.dumps({k: config[k] for k in SECTIONS if k in config})})") from error


def read(path: Path, reader: Callable[[Path], Any], cell: str) -> Any:
    """``reader(path)``, with a file that cannot be read turned into a ``RunFolderError``."""
    try:
        return reader(path)
    except FileNotFoundError:
        raise
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        where = f"cell {cell!r}" if cell else "the run"
        raise RunFolderError(
            f"{where}: {path} cannot be read ({type(error).__name__}: {str(error).strip().splitlines()[0]}); "
            f"nothing was changed. Start afresh with --force, or delete {path.parent} and --resume "
            "to rerun that cell alone") from error


def history(folder: Path) -> list[dict]:
    """A finished cell's history rows, as ``fit`` wrote them to its ``metrics.jsonl``."""
    return read(folder / "metrics.jsonl", lambda p: [json.loads(line) for line in p.read_text().splitlines()],
                folder.name)


def check_resumable(task: CellTask) -> None:
    """Read what ``--resume`` will read of the cell's folder (its summary, else its checkpoint), so a
    damaged file stops the run before anything is written."""
    summary, checkpoint = task.folder / "summary.json", task.folder / "checkpoint.pt"
    if summary.exists():
        read(summary, lambda p: json.loads(p.read_text()), task.cell.name)
    elif checkpoint.exists():
        read(checkpoint, load_tensors, task.cell.name)


def run_cell(task: CellTask) -> dict:
    """Train one cell into ``task.folder`` and write its metrics, checkpoint, figures and summary,
    with the CPU threads of its ``train.threads``."""
    with _on_device(task), cpu_threads(task.threads):
        if task.resume and (task.folder / "summary.json").exists():
            return json.loads((task.folder / "summary.json").read_text())
        start = time.time()
        trainer, _ = _start(task)
        resumed_from = trainer.epoch  # 0 for a cell that starts afresh
        with board.writer(task.folder) if trainer.config.tensorboard else nullcontext() as tensorboard:
            trainer.fit(task.folder / "checkpoint.pt", on_epoch=_recorder(task.folder, trainer, tensorboard))
            return _finish(task, trainer, resumed_from, tensorboard, lambda: time.time() - start)


def run_restarts(tasks: list[CellTask]) -> list[dict | Exception]:
    """Train the cells ``tasks``, equal but for ``train.seed`` and ``train.kl_weight``, as one vectorised
    program (``infer.restarts.Restarts``), each into its own folder as ``run_cell`` would; returns each
    one's summary, or the error it stopped with (the others go on). Finished cells of a resumed run are
    kept. Cells that cannot be vectorised raise ``NotVectorised`` before anything is written."""
    task = tasks[0]
    with _on_device(task), cpu_threads(task.threads):
        done = {t.cell.name: json.loads((t.folder / "summary.json").read_text()) for t in tasks
                if t.resume and (t.folder / "summary.json").exists()}
        pending = [t for t in tasks if t.cell.name not in done]
        if not pending:
            return [done[t.cell.name] for t in tasks]
        start = time.time()
        data = load_data(task.cell.config).to(resolve_device(task.device))  # one copy for every restart
        started = [_start(t, data) for t in pending]
        trainers = [trainer for trainer, _ in started]
        resumed = [trainer.epoch for trainer in trainers]
        streams = [stream for _, stream in started] if trainers[0].step else None
        with ExitStack() as stack:
            boards = [stack.enter_context(board.writer(t.folder)) if trainer.config.tensorboard else None
                      for t, trainer in zip(pending, trainers)]
            restarts = Restarts(trainers, streams, progress=task.progress)
            recorders = [_recorder(t.folder, trainer, b) for t, trainer, b in zip(pending, trainers, boards)]
            outcomes = restarts.fit([t.folder / "checkpoint.pt" for t in pending], recorders)
            trained = time.time() - start
            for r, (t, outcome) in enumerate(zip(pending, outcomes)):
                if isinstance(outcome, Exception):
                    done[t.cell.name] = outcome
                    continue
                finishing = time.time()
                restarts.hand_over(r)  # torch's random stream where the restart's own ended
                try:
                    done[t.cell.name] = _finish(t, trainers[r], resumed[r], boards[r],
                                                lambda since=finishing: trained / len(pending) + time.time() - since,
                                                vectorised=len(pending))
                except Exception as error:  # noqa: BLE001 — as a separate cell's, its failure is its own
                    done[t.cell.name] = error
    return [done[t.cell.name] for t in tasks]


def _on_device(task: CellTask):
    """On ``cuda:i``, what the cell allocates on "cuda" lands on its own GPU."""
    device = torch.device(task.device)
    return torch.cuda.device(device) if device.type == "cuda" and device.index is not None else nullcontext()


def _start(task: CellTask, data=None) -> tuple[Trainer, dict | None]:
    """The cell's trainer (on ``data`` where given), loaded from its checkpoint where resumed, with its
    ``config.json`` written; and the random state the checkpoint held (None for a fresh start)."""
    config, checkpoint = task.cell.config, task.folder / "checkpoint.pt"
    data, model, guide, train = build(config, data)
    trainer = Trainer(model, guide, data, train, device=task.device, progress=task.progress)
    stream = None
    if task.resume and checkpoint.exists():
        trainer.load(checkpoint)
        stream = rng_state(trainer.device)
    write_json(task.folder / "config.json", config)
    return trainer, stream


def _recorder(folder: Path, trainer: Trainer, tensorboard) -> Callable[[dict], None]:
    """``on_epoch`` for ``Trainer.fit``: the history so far to ``metrics.jsonl`` (and the row to TensorBoard)."""

    def on_epoch(row: dict) -> None:
        write_text(folder / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in trainer.history))
        if tensorboard is not None:
            board.log_row(tensorboard, row)

    return on_epoch


def _finish(task: CellTask, trainer: Trainer, resumed_from: int, tensorboard, seconds: Callable[[], float],
            vectorised: int = 0) -> dict:
    """A trained cell's figures, diagnostics, study measures and ``summary.json``; returns the summary.
    ``seconds``: the cell's wall time when called (a vectorised restart's: its share of the program's).
    ``vectorised``: the restarts of the program it trained in (0: alone)."""
    folder, config, train = task.folder, task.cell.config, trainer.config
    model, guide, data = trainer.model, trainer.guide, trainer.data  # a pair of Pyro code as the trainer runs it
    history, figures = trainer.history, folder / "figures"
    last = history[-1]
    plots.loss_curves(history, figures / "loss.png")
    if len(data.data_shape) == 3:  # on the training device
        image_figures(model, guide, data.test_eval[:8], figures, tensorboard, trainer.epoch)
    found = collapse.diagnose(model, guide, data.test_eval, diagnostics_config(config),
                              trainer.diagnose_kl_in_closed_form, trainer.test_fields)
    panels = collapse.aggregate_posterior_panels(model, guide, data, FIGURE_ROWS, FIGURE_SAMPLES)
    if panels:  # only 1-D and 2-D latent sites can be drawn
        plots.aggregate_posterior(panels, figures / "aggregate_posterior.png")
    measure = study.find(config["report"]).measure if "report" in config else None
    measured = measure(model, guide, data, config) if measure else {}
    summary = {
        "experiment": task.experiment, "cell": task.cell.name, "data": data.name, "model": config["model"]["name"],
        "guide": config["guide"]["name"], "fields": list(trainer.fields), "estimator": train.estimator,
        "seed": train.seed, "epochs": trainer.epoch,
        "train_loss": last["train_loss"], "test_loss": last["test_loss"],
        **{k: v for k, v in found.items() if k not in ("rows",)},
        "diagnostics_rows": found["rows"], **measured, "seconds": round(seconds(), 2),
        "device": str(trainer.device), "threads": torch.get_num_threads(), "resumed_from_epoch": resumed_from,
        "vectorised_restarts": vectorised,
    }
    write_json(folder / "summary.json", summary)
    return summary


def image_figures(model, guide, x: torch.Tensor, figures: Path, tensorboard=None, epoch: int = 0) -> None:
    """``reconstructions.png``: the images ``x`` over their reconstructions (the mean of p(x | z) at
    z ~ q(z | x)); ``samples.png``: the means of p(x | z) for 64 draws z ~ p(z). Both also go to
    ``tensorboard`` (a ``SummaryWriter``) at ``epoch`` where one is given."""
    grids = {"reconstructions": torch.cat([x, tracing.reconstruct(model, guide, x)]),
             "samples": tracing.sample_prior(model, 64, x.device)}
    for name, images in grids.items():
        plots.image_grid(images, figures / f"{name}.png")
        if tensorboard is not None:
            tensorboard.add_images(name, images.detach().cpu(), epoch)


def restore(folder: str | Path, device: str = "auto"):
    """The trained data, model and guide of a finished cell folder (its config.json and checkpoint.pt),
    on ``device`` (``"auto"``: CUDA where torch sees a GPU; the reports restore on the CPU)."""
    folder = Path(folder)
    config = read(folder / "config.json", lambda p: json.loads(p.read_text()), folder.name)
    data, model, guide, train = build(config)
    trainer = Trainer(model, guide, data, train, device=device)
    trainer.load_state_dict(read(folder / "checkpoint.pt", lambda p: load_tensors(p, trainer.device), folder.name))
    return trainer.data, trainer.model, trainer.guide
