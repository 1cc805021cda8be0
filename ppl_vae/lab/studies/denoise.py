"""Denoising: an autoencoder trained to undo corruption against ones that never saw any.

Seed 003's denoising autoencoder (Vincent et al. 2008): the encoder is fed a corrupted digit
and the decoder is scored on the clean one (``[train] input_noise``, ``ppl_vae.data.corruption``).
Every trained model is then fed the same corrupted held-out digits, at several levels of each
noise, and scored by the squared error of its reconstruction to the clean digit. Reads the grid
axis ``method``; its variants ``ae`` and ``dae-*`` (one per noise trained on) are compared.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ppl_vae.data.corruption import corrupt
from ppl_vae.evaluation.latent_space import reconstruction_error
from ppl_vae.lab import cell
from ppl_vae.lab.study import Study, check_line, figure
from ppl_vae.tracing import reconstruct
from ppl_vae.viz import plots

#: the corruptions every model is scored on: Gaussian noise's standard deviation, masking's fraction
LEVELS = {"gaussian": (0.25, 0.5, 0.75), "masking": (0.25, 0.5, 0.75)}
#: the corrupted inputs are the same for every model: drawn from this seed
NOISE_SEED = 7
COLUMNS = ("mse_clean", *(f"mse_{kind}_{level}" for kind, levels in LEVELS.items() for level in levels))


def corrupted(x: torch.Tensor, kind: str, level: float) -> torch.Tensor:
    """The held-out inputs every model is fed at (``kind``, ``level``): the same draw for all."""
    generator = torch.Generator(device=x.device).manual_seed(NOISE_SEED)
    return corrupt(x, kind, level, generator)


def measure(model, guide, data, config: dict) -> dict:
    """Mean squared error to the clean digits of the reconstructions of clean and corrupted digits."""
    x, clean = data.test_eval, data.test
    found = {"mse_clean": reconstruction_error(model, guide, x, clean).mean().item()}
    for kind, levels in LEVELS.items():
        for level in levels:
            error = reconstruction_error(model, guide, corrupted(x, kind, level), clean)
            found[f"mse_{kind}_{level}"] = error.mean().item()
    return found


def _trained_on(row: dict, cells: dict) -> str:
    train = cells[row["cell"]]["train"]
    noise = train.get("input_noise", "none")
    return "clean" if noise == "none" else f"{noise} {train.get('noise_level', 0.5)}"


def report(out: Path, rows: list[dict], cells: list[dict]) -> str:
    """Error to the clean digit per noise and level (rows) and method (columns), the corrupted input's
    own error beside them; checks that each denoising AE beats the plain AE at every level of its
    noise; a before/after figure."""
    configs = {r["cell"]: c for r, c in zip(rows, cells)}
    data = cell.load_data(cells[0])
    x, clean = data.test_eval[: rows[0]["diagnostics_rows"]], data.test[: rows[0]["diagnostics_rows"]]
    methods = [r["method"] for r in rows]
    by = {r["method"]: r for r in rows}
    lines = ["# Denoising: error to the clean digit", "",
             "Mean squared pixel error between a model's reconstruction and the clean (grey) held-out digit, "
             "when fed the digit corrupted as the row says (every model gets the same corrupted digits). "
             "Gaussian: x + sigma eps, clipped to [0, 1]; masking: that fraction of the pixels set to 0. "
             "\"input\" is the corrupted digit's own error. Trained on: "
             + "; ".join(f"{m}: {_trained_on(by[m], configs)}" for m in methods) + ".", "",
             "| noise | level | input | " + " | ".join(methods) + " |", "|" + "---|" * (3 + len(methods))]
    settings = [("clean", 0.0, "mse_clean"),
                *((k, lv, f"mse_{k}_{lv}") for k, levels in LEVELS.items() for lv in levels)]
    for kind, level, key in settings:
        noisy = x if kind == "clean" else corrupted(x, kind, level)
        best = min(by[m][key] for m in methods)
        values = [f"**{by[m][key]:.4f}**" if by[m][key] == best else f"{by[m][key]:.4f}" for m in methods]
        lines.append(f"| {kind} | {level if kind != 'clean' else ''} | {(noisy - clean).pow(2).mean().item():.4f} | "
                     + " | ".join(values) + " |")
    lines += ["", "## Checks", ""]
    for method in methods:
        noise = configs[by[method]["cell"]]["train"].get("input_noise", "none")
        if noise == "none" or "ae" not in by:
            continue
        keys = [f"mse_{noise}_{lv}" for lv in LEVELS[noise]]
        lost = [k for k in keys if by[method][k] >= by["ae"][k]]
        lines.append(check_line(not lost, f"{method} beats the plain AE on {noise}-corrupted digits at every level "
                                          f"({', '.join(f'{by[method][k]:.4f} < {by['ae'][k]:.4f}' for k in keys)})"))
    figures = out / "figures"
    noisy = {kind: corrupted(x[:8], kind, levels[1]) for kind, levels in LEVELS.items()}
    strips = {kind: [clean[:8], inputs] for kind, inputs in noisy.items()}
    for r in rows:
        _, model, guide = cell.restore(out / r["cell"], device="cpu")
        for kind, inputs in noisy.items():
            strips[kind].append(reconstruct(model, guide, inputs))
    for kind, strip in strips.items():
        drawn = plots.image_grid(torch.cat(strip), figures / f"denoise_{kind}.png", nrow=8)
        lines += ["", figure(out, drawn, f"{kind.capitalize()} noise. Rows: the clean digits, the corrupted input at "
                                         f"the middle level, then each method's reconstruction: {', '.join(methods)}")]
    return "\n".join(lines) + "\n"


STUDY = Study(report, axes=("method",), variants={"method": ("ae",)}, measure=measure, columns=COLUMNS)
