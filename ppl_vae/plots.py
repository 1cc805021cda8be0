"""Figures written into run folders (PNG, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import save_image  # noqa: E402

from ppl_vae.io import atomic_write  # noqa: E402


def loss_curves(history: list[dict], path: str | Path) -> Path:
    """Negative ELBO, reconstruction and KL per epoch, train and held-out, in nats per example."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, term, title in zip(axes, ("loss", "recon", "kl"), ("-ELBO", "reconstruction", "KL")):
        for split, style in (("train", "--"), ("test", "-")):
            ax.plot(epochs, [row[f"{split}_{term}"] for row in history], style, label=f"{split}")
        ax.set(title=f"{title} (nats per example)", xlabel="epoch")
        ax.grid(alpha=0.3)
    axes[0].plot(epochs, [row["train_objective"] for row in history], ":", label="train objective")
    axes[0].legend()
    fig.tight_layout()
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    finally:
        plt.close(fig)


def image_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save ``[N, C, H, W]`` images in [0, 1] as one grid."""
    return atomic_write(path, lambda p: save_image(images.detach().cpu(), p, nrow=nrow, padding=2, pad_value=1.0,
                                                   format="png"))
