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
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch

from ppl_vae import tracing
from ppl_vae.errors import ConfigError
from ppl_vae.evaluation import collapse
from ppl_vae.infer.config import TrainConfig
from ppl_vae.infer.training import Trainer, cpu_threads
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
    device = torch.device(task.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # what the cell allocates on "cuda" lands on its own GPU
    with cpu_threads(task.threads):
        return _run_cell(task)


def _run_cell(task: CellTask) -> dict:
    folder, config = task.folder, task.cell.config
    summary_path, checkpoint = folder / "summary.json", folder / "checkpoint.pt"
    if task.resume and summary_path.exists():
        return json.loads(summary_path.read_text())
    start = time.time()
    data, model, guide, train = build(config)
    trainer = Trainer(model, guide, data, train, device=task.device, progress=task.progress)
    model, guide = trainer.model, trainer.guide  # a pair of Pyro code, as the trainer runs it (pairs.as_pair)
    if task.resume and checkpoint.exists():
        trainer.load(checkpoint)
    resumed_from = trainer.epoch  # 0 for a cell that starts afresh
    write_json(folder / "config.json", config)
    with board.writer(folder) if train.tensorboard else nullcontext() as tensorboard:

        def on_epoch(row: dict) -> None:
            write_text(folder / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in trainer.history))
            if tensorboard is not None:
                board.log_row(tensorboard, row)

        history = trainer.fit(checkpoint, on_epoch=on_epoch)
        last = history[-1]
        figures = folder / "figures"
        plots.loss_curves(history, figures / "loss.png")
        if len(data.data_shape) == 3:  # on the training device
            image_figures(model, guide, trainer.data.test_eval[:8], figures, tensorboard, trainer.epoch)
    found = collapse.diagnose(model, guide, trainer.data.test_eval, diagnostics_config(config),
                              trainer.diagnose_kl_in_closed_form, trainer.test_fields)
    panels = collapse.aggregate_posterior_panels(model, guide, trainer.data, FIGURE_ROWS, FIGURE_SAMPLES)
    if panels:  # only 1-D and 2-D latent sites can be drawn
        plots.aggregate_posterior(panels, figures / "aggregate_posterior.png")
    measure = study.find(config["report"]).measure if "report" in config else None
    measured = measure(model, guide, trainer.data, config) if measure else {}
    summary = {
        "experiment": task.experiment, "cell": task.cell.name, "data": data.name, "model": config["model"]["name"],
        "guide": config["guide"]["name"], "fields": list(trainer.fields), "estimator": train.estimator,
        "seed": train.seed, "epochs": trainer.epoch,
        "train_loss": last["train_loss"], "test_loss": last["test_loss"],
        **{k: v for k, v in found.items() if k not in ("rows",)},
        "diagnostics_rows": found["rows"], **measured, "seconds": round(time.time() - start, 2),
        "device": str(trainer.device), "threads": torch.get_num_threads(), "resumed_from_epoch": resumed_from,
    }
    write_json(summary_path, summary)
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
