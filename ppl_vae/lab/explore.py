"""Interpolations and latent traversals for any finished image run: ``ppl-vae explore FOLDER``.

For each cell of a run folder (or one cell folder) it restores the trained pair and writes,
into the cell's ``figures/``:

- ``interpolation.png``: a row per pair of held-out images, the codes on the straight line
  between theirs decoded (``latent_space.interpolation``); by default the first few held-out
  1s to 7s where the data have those labels (seed 003), else the first held-out images in pairs.
- ``traversal.png``: one held-out image with one latent dimension at a time moved over
  -2.5..2.5 (``collapse.latent_traversal``), a row per dimension, the dimensions with the most
  KL first (Higgins et al. 2017, Fig. 7).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ppl_vae.errors import ConfigError
from ppl_vae.evaluation.collapse import latent_traversal
from ppl_vae.evaluation.latent_space import interpolation
from ppl_vae.lab.cell import read, restore
from ppl_vae.lab.experiment_file import cells
from ppl_vae.viz import plots


def cell_folders(folder: str | Path, name: str | None = None) -> list[Path]:
    """The finished cell folders of a run folder (all, or the cell ``name``), or ``folder`` itself
    when it is one cell's folder."""
    folder = Path(folder)
    if (folder / "config.json").is_file() and (folder / "checkpoint.pt").is_file():
        return [folder]
    record = folder / "experiment.json"
    if not record.is_file():
        raise ConfigError(f"{folder} is neither a run folder (no experiment.json) nor a cell folder (no config.json "
                          "and checkpoint.pt): give the --out of a finished run")
    config = read(record, lambda p: json.loads(p.read_text()), "")["config"]
    found = [c for c in cells(config) if name in (None, c.name)]
    if not found:
        raise ConfigError(f"{folder} has no cell {name!r}; its cells: {', '.join(c.name for c in cells(config))}")
    finished = [c.folder(folder) for c in found if (c.folder(folder) / "checkpoint.pt").is_file()]
    if not finished:
        raise ConfigError(f"no cell of {folder} has a checkpoint yet: run it (or --resume it) first")
    return finished


def pairs_by_label(labels: torch.Tensor | None, between: tuple[int, int], rows: int) -> torch.Tensor:
    """Index pairs ``[rows, 2]``: the first ``rows`` held-out images labelled ``between[0]`` with the first
    labelled ``between[1]``; without those labels, the first ``2 * rows`` images in pairs."""
    if labels is not None:
        first, second = ((labels.cpu() == b).nonzero().squeeze(1)[:rows] for b in between)
        if len(first) and len(second):
            count = min(len(first), len(second))
            return torch.stack([first[:count], second[:count]], 1)
    return torch.arange(2 * rows).reshape(rows, 2)


def explore(folder: str | Path, cell: str | None = None, between: tuple[int, int] = (1, 7),
            pairs: list[tuple[int, int]] | None = None, rows: int = 4, steps: int = 10, example: int = 0,
            dims: int = 10, site: str | None = None) -> list[Path]:
    """Write ``interpolation.png`` and ``traversal.png`` for each finished cell; returns their paths.

    :param between: labels to interpolate between (held-out images with those labels).
    :param pairs: held-out index pairs instead of ``between``.
    :param rows: pairs drawn with ``between``.
    :param example: the held-out image that is traversed.
    :param dims: the traversal's rows: the dimensions with the most KL, at most this many.
    :param site: the latent site (default: the model's first, the top of a hierarchy).
    """
    written = []
    for path in cell_folders(folder, cell):
        data, model, guide = restore(path, device="cpu")
        if len(model.data_shape) != 3:
            raise ConfigError(f"{path}: explore draws images, but this run's data are vectors of shape "
                              f"{model.data_shape}")
        name = site or next(iter(model.latent_dims))
        if name not in model.latent_dims:
            raise ConfigError(f"{path}: no latent site {name!r}; the model's sites: {', '.join(model.latent_dims)}")
        x = data.test_eval
        chosen = torch.tensor(pairs) if pairs else pairs_by_label(data.test_labels, between, rows)
        if int(chosen.max()) >= len(x) or example >= len(x):
            raise ConfigError(f"{path}: held-out index out of range: the run holds out {len(x)} images")
        chosen = chosen.to(x.device)
        images = interpolation(model, guide, x[chosen[:, 0]], x[chosen[:, 1]], steps, name)
        written.append(plots.image_grid(images, path / "figures" / "interpolation.png", nrow=steps))
        order = _by_kl(path, name, model.latent_dims[name])[:dims]
        images = latent_traversal(model, guide, x[example:example + 1], name, order)
        written.append(plots.image_grid(images, path / "figures" / "traversal.png", nrow=len(images) // len(order)))
    return written


def _by_kl(path: Path, site: str, size: int) -> list[int]:
    """The site's dimensions, most KL first (from the cell's summary.json), else in order."""
    summary = path / "summary.json"
    if summary.is_file():
        per_dim = json.loads(summary.read_text()).get("kl_dims", {}).get(site)
        if per_dim and len(per_dim) == size:
            return sorted(range(size), key=lambda d: -per_dim[d])
    return list(range(size))
