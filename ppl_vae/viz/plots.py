"""Figures written into run folders (PNG, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from ppl_vae.io import atomic_write  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as a PNG (atomically) and close it."""
    fig.tight_layout()
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    finally:
        plt.close(fig)


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
    return _save(fig, path)


def image_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save ``[N, C, H, W]`` images in [0, 1] as one grid."""
    return atomic_write(path, lambda p: save_image(images.detach().cpu(), p, nrow=nrow, padding=2, pad_value=1.0,
                                                   format="png"))


def image_rows(rows: dict[str, torch.Tensor], path: str | Path, title: str = "") -> Path:
    """One labelled row per entry of ``rows``: ``[N, 1, H, W]`` images in [0, 1] side by side."""
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.0 + 0.45 * max(len(v) for v in rows.values()),
                                                    0.55 * len(rows) + 0.4), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows.items()):
        grid = make_grid(images.detach().cpu(), nrow=len(images), padding=1, pad_value=1.0)
        ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def aggregate_posterior(panels: list[tuple[str, torch.Tensor, torch.Tensor | None, torch.Tensor]],
                        path: str | Path) -> Path:
    """The aggregate posterior q(z) against the prior p(z), one panel per 1-D or 2-D latent site.

    Each panel is ``(title, draws [N, S, D], labels [N] or None, prior draws [M, D])``: draws of
    q(z | x_n) for N datapoints, pooled into q(z) and, where labels are given, split by label
    (the per-datapoint posteriors q(z | x) of each class). 1-D: densities; 2-D: scatter over the prior.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (title, draws, labels, prior) in zip(axes[0], panels):
        draws, prior = draws.detach().float().cpu(), prior.detach().float().cpu()
        groups = {} if labels is None else {f"q(z | x), {label}": draws[labels.cpu() == label]
                                           for label in labels.unique().tolist()}
        if draws.shape[-1] == 1:
            values = torch.cat([draws.reshape(-1), prior.reshape(-1)])
            bins = torch.linspace(values.quantile(0.001).item(), values.quantile(0.999).item(), 80).numpy()
            ax.hist(draws.reshape(-1).numpy(), bins, density=True, color="0.8", label="q(z) aggregate")
            for name, part in groups.items():  # each class's component of the mixture q(z), at its share
                density, _ = np.histogram(part.reshape(-1).numpy(), bins, density=True)
                ax.stairs(density * len(part) / len(draws), bins, label=name)
            ax.hist(prior.reshape(-1).numpy(), bins, density=True, histtype="step", color="k", lw=1.5, label="p(z)")
            ax.set(xlabel="z", ylabel="density")
        else:
            ax.scatter(*prior[:5000].T.numpy(), s=2, color="0.75", label="p(z)")
            for name, part in (groups or {"q(z)": draws}).items():
                pooled = part.reshape(-1, 2)[:2000]
                ax.scatter(*pooled.T.numpy(), s=2, alpha=0.5, label=name)
            ax.set(xlabel="z[0]", ylabel="z[1]")
        ax.set_title(title)
        ax.legend(fontsize=7, markerscale=3)
    return _save(fig, path)


def curves(x: list[float], series: dict[str, list[float]], path: str | Path, xlabel: str, ylabel: str,
           references: dict[str, list[float]] | None = None, logx: bool = False, logy: bool = False,
           title: str = "") -> Path:
    """One line per series against ``x``; ``references`` (e.g. ln 2) dashed in black and grey."""
    fig, ax = plt.subplots(figsize=(5.6, 4))
    for name, ys in series.items():
        ax.plot(x, ys, "o-", label=name)
    for (name, ys), style in zip((references or {}).items(), ("k--", "k:", "--", ":")):
        ax.plot(x, ys, style, lw=1, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, xscale="log" if logx else "linear",
           yscale="log" if logy else "linear")
    if logx:  # the measured x values as plain tick labels, not powers of ten
        ax.set_xticks(x, [f"{v:g}" for v in x], minor=False)
        ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def bars(groups: dict[str, list[float]], path: str | Path, xlabel: str, ylabel: str, title: str = "") -> Path:
    """One bar per value, the groups side by side (e.g. each beta's KL per latent dimension)."""
    fig, ax = plt.subplots(figsize=(5.6, 4))
    width = 0.8 / max(1, len(groups))
    for i, (name, values) in enumerate(groups.items()):
        ax.bar(np.arange(len(values)) + i * width, values, width, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _save(fig, path)


def code_maps(panels: dict[str, tuple[torch.Tensor, torch.Tensor]], path: str | Path) -> Path:
    """2-D codes side by side, one panel per ``{title: (codes [N, 2], labels [N])}``, coloured by label
    (the seed posts' latent maps of the digits)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.2), squeeze=False)
    for ax, (title, (code, labels)) in zip(axes[0], panels.items()):
        code, labels = code.detach().float().cpu().numpy(), labels.cpu().numpy()
        points = ax.scatter(code[:, 0], code[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=6)
        ax.set(title=title, xlabel="z[0]", ylabel="z[1]")
        ax.grid(alpha=0.3)
    fig.colorbar(points, ax=axes[0][-1], ticks=range(10), label="digit")
    return _save(fig, path)


def histogram_grid(panels: list[list[tuple[str, dict[str, np.ndarray]]]], path: str | Path) -> Path:
    """A grid of histograms, ``panels[row][column] = (title, {label: values})``: the groups of each
    panel overlaid as densities on shared bins (say, a score on normal against anomalous inputs)."""
    fig, axes = plt.subplots(len(panels), len(panels[0]), figsize=(3.2 * len(panels[0]), 1.9 * len(panels)),
                             squeeze=False)
    for line, row in zip(axes, panels):
        for ax, (title, groups) in zip(line, row):
            values = np.concatenate(list(groups.values()))
            bins = np.linspace(*np.quantile(values, [0.005, 0.995]), 40)
            for label, group in groups.items():
                ax.hist(group, bins, density=True, alpha=0.6, label=label)
            ax.set_title(title, fontsize=8)
            ax.tick_params(labelsize=6)
        line[0].legend(fontsize=6)
    return _save(fig, path)


def train_test_curves(series: dict[str, tuple[list[float], list[float], list[float]]], path: str | Path,
                      xlabel: str, ylabel: str, title: str = "") -> Path:
    """Per ``{name: (x, train, held-out)}``: the train values dashed and the held-out solid, one colour
    each, on a scale that is logarithmic above 10 (a memorised training set's loss goes to 0)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (name, (x, train, test)) in enumerate(series.items()):
        ax.plot(x, test, "-", color=f"C{i}", label=name)
        ax.plot(x, train, "--", color=f"C{i}")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_yscale("symlog", linthresh=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)
