"""Autoencoder against VAE with a small code: the latent map, the gaps between codes, and clusters.

The seed posts (000, 001, 003) show it in pictures: an autoencoder's 2-D code of the digits is
scattered in streaks with gaps whose decoded images are no digit, while a VAE's code fills the
prior's disc and its in-between points decode to digits. Here each is a number. Reads the grid
axes ``method`` (named variants; the study compares ``ae`` and ``vae``) and ``latent_dim``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ppl_vae import cell, plots
from ppl_vae.diagnostics import decode
from ppl_vae.latent_space import (cluster_scores, codes, in_between_distance, interpolation, nearest_distance, plane,
                                  reconstruction_error)
from ppl_vae.study import Study, check_line

#: pairs of held-out digits of different classes whose in-between codes are decoded, and points per line
PAIRS, STEPS = 200, 5
#: the decoded plane: POINTS x POINTS codes
POINTS = 15
#: k-means clusters (the ten digits)
CLUSTERS = 10
COLUMNS = ("ari", "nmi", "midpoint_distance", "inner_distance", "ends_distance", "plane_distance", "plane_share",
           "recon_mse")


def _is_autoencoder(config: dict) -> bool:
    """Trained without the KL term: the prior played no part, so the code has no prior to read."""
    return config.get("train", {}).get("kl_weight", 1.0) == 0


def measure(model, guide, data, config: dict) -> dict:
    """Clusters of the held-out codes, distances of decoded in-between and plane points to the nearest
    held-out digit, and the held-out reconstruction error."""
    x, reference, labels = data.test_eval, data.test, data.test_labels
    code = codes(guide, x)
    between = in_between_distance(model, guide, x, reference, labels, PAIRS, STEPS, seed=config["train"].get("seed", 0))
    found = {**cluster_scores(code, labels, CLUSTERS), **{f"{k}_distance": v for k, v in between.items()},
             "recon_mse": reconstruction_error(model, guide, x, reference).mean().item(),
             "plane_distance": None, "plane_share": None}
    if code.shape[1] == 2:
        grid = plane(POINTS, code if _is_autoencoder(config) else None).to(x.device)
        distance = nearest_distance(decode(model, {"z": grid}), reference)
        # a plane point "decodes to a digit" when it is as near a real digit as the typical reconstruction
        found["plane_distance"] = distance.mean().item()
        found["plane_share"] = (distance <= between["ends"]).float().mean().item()
    return found


def _figures(out: Path, rows: list[dict]) -> list[str]:
    """Code maps and decoded planes of the 2-D cells; 1 -> 7 interpolations of every cell."""
    figures, maps, written, strips = out / "figures", {}, [], []
    for row in rows:
        data, model, guide = cell.restore(out / row["cell"])
        x, labels = data.test_eval, data.test_labels
        name = f"{row['method'].upper()}, {row['latent_dim']}-D"
        if row["latent_dim"] == 2:
            code = codes(guide, x)
            maps[name] = (code, labels)
            grid = plane(POINTS, code if row["method"] == "ae" else None)
            plots.image_grid(decode(model, {"z": grid}), figures / f"plane_{row['method']}.png", nrow=POINTS)
            written.append(f"`figures/plane_{row['method']}.png`")
        one, seven = (labels == 1).nonzero()[0], (labels == 7).nonzero()[0]
        strips.append(interpolation(model, guide, x[one], x[seven], 10))
    if maps:
        plots.code_maps(maps, figures / "code_maps.png")
        written.insert(0, "`figures/code_maps.png`")
    plots.image_grid(torch.cat(strips), figures / "interpolation_1_to_7.png", nrow=10)
    return [*written, "`figures/interpolation_1_to_7.png` (a row per cell, in the table's order)"]


def _fmt(value, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def report(out: Path, rows: list[dict], cells: list[dict]) -> str:
    """The AE/VAE table per code size and the checks: the VAE's in-between points are nearer real
    digits than the autoencoder's, and so is more of its decoded plane."""
    lines = ["# Autoencoder against VAE: the code as a map", "",
             f"Held-out digits ({rows[0]['diagnostics_rows']} scored rows). Distances are root-mean-square pixel "
             "distances from a decoded image to the nearest held-out digit (0 to 1; the pair's own two digits "
             f"excluded), for {PAIRS} random pairs of digits of different classes: at the midpoint of the line "
             f"between their codes, over its {STEPS - 2} inner points, and at its ends (the reconstructions). "
             f"Plane: a {POINTS} x {POINTS} grid over the 2-D code (VAE: the prior's 5%-95% quantiles; AE: its "
             "codes' 5%-95% range), its mean distance and the share of its images as near a digit as the "
             "method's reconstructions are on average. k-means with k = 10 on the held-out codes against the "
             "digit labels: adjusted Rand index and normalised mutual information.", "",
             "| method | code | -ELBO | recon | recon MSE | midpoint dist. | inner dist. | ends dist. | plane dist. "
             "| plane share | k-means ARI | k-means NMI |", "|" + "---|" * 12]
    for r in sorted(rows, key=lambda r: (r["latent_dim"], r["method"])):
        elbo = f"{r['loss']:.2f}" if r["method"] != "ae" else "(no KL)"
        lines.append(f"| {r['method'].upper()} | {r['latent_dim']} | {elbo} | {r['recon']:.2f} | {r['recon_mse']:.4f} | "
                     f"{r['midpoint_distance']:.3f} | {r['inner_distance']:.3f} | {r['ends_distance']:.3f} | "
                     f"{_fmt(r['plane_distance'])} | {_fmt(r['plane_share'], 2)} | {r['ari']:.3f} | {r['nmi']:.3f} |")
    lines += ["", "## Checks", ""]
    for size in sorted({r["latent_dim"] for r in rows}):
        by = {r["method"]: r for r in rows if r["latent_dim"] == size}
        if {"ae", "vae"} <= set(by):
            ae, vae = by["ae"], by["vae"]
            lines.append(check_line(vae["inner_distance"] < ae["inner_distance"],
                                    f"{size}-D code: the VAE's in-between points are nearer real digits than the "
                                    f"autoencoder's ({vae['inner_distance']:.3f} against {ae['inner_distance']:.3f})"))
            if ae["plane_share"] is not None:
                lines.append(check_line(vae["plane_share"] > ae["plane_share"],
                                        f"{size}-D code: more of the VAE's decoded plane looks like its digits "
                                        f"({vae['plane_share']:.0%} against {ae['plane_share']:.0%})"))
            lines.append(f"- observed: {size}-D code: k-means ARI {vae['ari']:.3f} (VAE) against {ae['ari']:.3f} (AE), "
                         f"NMI {vae['nmi']:.3f} against {ae['nmi']:.3f}")
    lines += ["", "Figures: " + ", ".join(_figures(out, rows)) + "."]
    return "\n".join(lines) + "\n"


STUDY = Study(report, axes=("method", "latent_dim"), variants={"method": ("ae", "vae")}, measure=measure,
              columns=COLUMNS)
