"""TensorBoard logs of a run folder: ``train.tensorboard = true`` (the optional extra ``[tensorboard]``).

Each cell writes into its folder's ``tensorboard/`` the numbers of every history row at its epoch
(training objective; train and held-out -ELBO, reconstruction and KL; KL per latent site and per
dimension; KL weight; learning rate) and, for images, the reconstruction and sample grids of
its figures, so ``tensorboard --logdir runs/EXPERIMENT`` shows every cell of a grid side by side.
Off by default: nothing is imported or written then.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ppl_vae.errors import ConfigError

INSTALL = "train.tensorboard = true needs TensorBoard, an optional extra: pip install -e '.[tensorboard]'"


def require() -> None:
    """A ``ConfigError`` naming the install command where TensorBoard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as error:
        raise ConfigError(INSTALL) from error


def writer(folder: Path):
    """A ``SummaryWriter`` for the cell folder ``folder``."""
    require()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(Path(folder) / "tensorboard"))


def scalars(row: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    """A history row's numbers as (tag, value): nested sites and dimensions become
    ``test_kl_sites/z1`` and ``test_kl_dims/z1/0``."""
    for key, value in row.items():
        tag = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from scalars(value, f"{tag}/")
        elif isinstance(value, (list, tuple)):
            yield from scalars({str(i): v for i, v in enumerate(value)}, f"{tag}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "step"):
            yield tag, float(value)


def log_row(board: Any, row: dict) -> None:
    """Write a history row's numbers at its epoch."""
    for tag, value in scalars(row):
        board.add_scalar(tag, value, row["epoch"])
    board.flush()
