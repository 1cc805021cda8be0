"""Autoencoder against VAE with a small code: the latent map, the gaps between codes, and clusters.

The seed posts (000, 001, 003) show it in pictures: an autoencoder's 2-D code of the digits is
scattered in streaks with gaps whose decoded images are no digit, while a VAE's code fills the
prior's disc and its in-between points decode to digits. Here each is a number. Reads the grid
axes ``method`` (named variants; the study compares ``ae`` and ``vae``) and ``latent_dim``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from ppl_vae.evaluation.latent_space import (
    cluster_scores,
    codes,
    gaussian_draws,
    in_between_distance,
    interpolation,
    nearest_distance,
    plane,
    reconstruction_error,
)
from ppl_vae.lab import cell
from ppl_vae.lab.study import Study, check_line, figure, mean_sd
from ppl_vae.tracing import decode, prior_draws
from ppl_vae.viz import plots

#: pairs of held-out digits of different classes whose in-between codes are decoded, and points per line
PAIRS, STEPS = 200, 5
#: the decoded plane: POINTS x POINTS codes
POINTS = 15
#: k-means clusters (the ten digits)
CLUSTERS = 10
#: codes drawn at random and decoded (the VAE's from its prior, the AE's from a Gaussian fitted to its codes)
DRAWS = 500
COLUMNS = ("ari", "nmi", "midpoint_distance", "inner_distance", "ends_distance", "sample_distance", "plane_distance",
           "plane_share", "recon_mse")


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
    seed = config["train"].get("seed", 0)
    if _is_autoencoder(config):
        drawn = gaussian_draws(code, DRAWS, seed)
    else:
        with torch.random.fork_rng(devices=[] if x.device.type == "cpu" else [x.device]):
            torch.manual_seed(seed)
            drawn = prior_draws(model, DRAWS, x.device)["z"]
    found["sample_distance"] = nearest_distance(decode(model, {"z": drawn}), reference).mean().item()
    if code.shape[1] == 2:
        grid = plane(POINTS, code if _is_autoencoder(config) else None).to(x.device)
        distance = nearest_distance(decode(model, {"z": grid}), reference)
        # a plane point "decodes to a digit" when it is as near a real digit as the typical reconstruction
        found["plane_distance"] = distance.mean().item()
        found["plane_share"] = (distance <= between["ends"]).float().mean().item()
    return found


def _figures(out: Path, rows: list[dict], configs: dict[str, dict]) -> list[str]:
    """Code maps and decoded planes of the 2-D cells; 1 -> 7 interpolations of every cell."""
    figures, maps, written, strips = out / "figures", {}, [], []
    for row in rows:
        data, model, guide = cell.restore(out / row["cell"], device="cpu")
        x, labels = data.test_eval, data.test_labels
        name = f"{row['method'].upper()}, {row['latent_dim']}-D"
        if row["latent_dim"] == 2:
            code = codes(guide, x)
            maps[name] = (code, labels)
            grid = plane(POINTS, code if _is_autoencoder(configs[row["cell"]]) else None)
            drawn = plots.image_grid(decode(model, {"z": grid}), figures / f"plane_{row['method']}.png", nrow=POINTS)
            written.append(figure(out, drawn, f"{name}: the decoded plane of codes"))
        one, seven = (labels == 1).nonzero()[0], (labels == 7).nonzero()[0]
        strips.append(interpolation(model, guide, x[one], x[seven], 10))
    if maps:
        drawn = plots.code_maps(maps, figures / "code_maps.png")
        written.insert(0, figure(out, drawn, "The held-out codes of the 2-D cells, by digit"))
    drawn = plots.image_grid(torch.cat(strips), figures / "interpolation_1_to_7.png", nrow=10)
    return [*written, figure(out, drawn, "From a 1 to a 7: a row per cell, in the table's order")]


def _mean_sd(rows: list[dict], key: str, digits: int = 3) -> str:
    """``mean +- sd`` of ``key`` over rows (seeds); blank where it was not measured."""
    return mean_sd([r[key] for r in rows if r.get(key) is not None], digits=digits)


def report(out: Path, rows: list[dict], cells: list[dict]) -> str:
    """The AE/VAE table per code size (mean +- sd over seeds) and the check at the largest code
    size: the VAE's in-between points are nearer real digits than the autoencoder's."""
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["latent_dim"], r["method"])):
        groups.setdefault((r["latent_dim"], r["method"]), []).append(r)
    seeds = sorted({r["seed"] for r in rows})
    lines = ["# Autoencoder against VAE: the code as a map", "",
             f"Held-out digits ({rows[0]['diagnostics_rows']} scored rows); mean +- sd over seeds {seeds}. "
             "Distances are root-mean-square pixel distances from a decoded image to the nearest held-out digit "
             f"(0 to 1; the pair's own two digits excluded), for {PAIRS} random pairs of digits of different "
             f"classes: at the midpoint of the line between their codes, over its {STEPS - 2} inner points, and "
             f"at its ends (the reconstructions). Sampled: {DRAWS} random codes decoded, the VAE's drawn from its "
             "prior, the AE's from a Gaussian fitted to its held-out codes (it has no prior). Plane: a "
             f"{POINTS} x {POINTS} grid over the 2-D code (VAE: the prior's 5%-95% quantiles; AE: its codes' "
             "5%-95% range), its mean distance and the share of its images as near a digit as the method's "
             "reconstructions are on average. k-means with k = 10 on the "
             "held-out codes against the digit labels: adjusted Rand index and normalised mutual information.", "",
             "| method | code | -ELBO | recon | recon MSE | midpoint dist. | inner dist. | ends dist. | sampled dist. "
             "| plane dist. | plane share | k-means ARI | k-means NMI |", "|" + "---|" * 13]
    for (size, method), group in groups.items():
        elbo = _mean_sd(group, "loss", 2) if method != "ae" else "(no KL)"
        lines.append(f"| {method.upper()} | {size} | {elbo} | {_mean_sd(group, 'recon', 2)} | "
                     f"{_mean_sd(group, 'recon_mse', 4)} | "
                     + " | ".join(_mean_sd(group, k, 3 if "share" not in k else 2) for k in
                                  ("midpoint_distance", "inner_distance", "ends_distance", "sample_distance",
                                   "plane_distance", "plane_share", "ari", "nmi")) + " |")
    mean = lambda size, method, key: statistics.fmean(r[key] for r in groups[(size, method)])  # noqa: E731
    sizes = sorted({size for size, method in groups if {(size, "ae"), (size, "vae")} <= set(groups)})
    lines += ["", "## Checks", ""]
    if sizes:
        size = sizes[-1]
        vae, ae = mean(size, "vae", "inner_distance"), mean(size, "ae", "inner_distance")
        lines.append(check_line(vae < ae, f"{size}-D code: the VAE's in-between points are nearer real digits "
                                          f"than the autoencoder's ({vae:.3f} against {ae:.3f}, seed mean)"))
        vae, ae = mean(size, "vae", "sample_distance"), mean(size, "ae", "sample_distance")
        lines.append(check_line(vae < ae, f"{size}-D code: random codes decode to images nearer real digits for the "
                                          f"VAE (from its prior) than for the AE (from a Gaussian fitted to its "
                                          f"codes): {vae:.3f} against {ae:.3f}, seed mean"))
    for size in sizes:
        found = [f"in-between distance {mean(size, 'vae', 'inner_distance'):.3f} (VAE) against "
                 f"{mean(size, 'ae', 'inner_distance'):.3f} (AE)",
                 f"sampled {mean(size, 'vae', 'sample_distance'):.3f} against "
                 f"{mean(size, 'ae', 'sample_distance'):.3f}",
                 f"k-means ARI {mean(size, 'vae', 'ari'):.3f} against {mean(size, 'ae', 'ari'):.3f}",
                 f"NMI {mean(size, 'vae', 'nmi'):.3f} against {mean(size, 'ae', 'nmi'):.3f}"]
        if groups[(size, "ae")][0]["plane_share"] is not None:
            found.append(f"plane share {mean(size, 'vae', 'plane_share'):.0%} against "
                         f"{mean(size, 'ae', 'plane_share'):.0%}")
        lines.append(f"- observed, {size}-D code: " + "; ".join(found))
    first = [group[0] for group in groups.values()]
    configs = {r["cell"]: c for r, c in zip(rows, cells)}
    lines += ["", f"## Figures (seed {first[0]['seed']})"]
    lines += [line for drawn in _figures(out, first, configs) for line in ("", drawn)]
    return "\n".join(lines) + "\n"


STUDY = Study(report, axes=("method", "latent_dim"), variants={"method": ("ae", "vae")}, measure=measure,
              columns=COLUMNS)
