"""Shu, "Autoencoding a Single Bit" (2017): the bit replicated n times, by model family.

Reads the grid axes ``n`` and ``family`` (restarts: any other axis, e.g. ``train.seed``); the
claim about depth compares the ``gaussian`` and ``dlgm`` families.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from ppl_vae.evaluation import collapse
from ppl_vae.lab import cell
from ppl_vae.lab.study import Study, best_per_cell, check_line, figure
from ppl_vae.viz import plots

LN2 = math.log(2)
#: what the post reports for one bit (n = 1): the VAE ignores z
SEED_N1 = {"recon": 0.693, "kl": 0.0}
#: the post's 2-layer VAE loss (nats per row), read from its figure: 0.722-0.724 at n = 5, 10 and 100
#: (its upper end is given for each), 0.751 at n = 1000
POST_DLGM = {5: 0.724, 10: 0.724, 100: 0.724, 1000: 0.751}
#: the bar this study sets its best 2-layer restart: below the post at every n
DLGM_TARGET = {5: 0.72, 10: 0.72, 100: 0.72, 1000: 0.745}
#: the share of 2-layer restarts that must find the 2-layer solution at every n >= 5
FOUND_SHARE = 0.75
#: the IAF guide's best restart at the largest n must end below this (a spline flow can bend q(z|x)
#: into the truncated Gaussian the true posterior is)
IAF_TARGET = 0.80
#: n = 1: a family "ignores z" below this KL and "matches ln 2" within this (the post: KL 0, loss ln 2)
IGNORES_Z = 0.01
#: n >= 5: a family "uses z" above this KL: a tenth of a nat, ten times the n = 1 tolerance
USES_Z = 0.1
#: n >= 100: the post's claim that depth helps, as the nats by which the 2-layer DLGM must end
#: closer to ln 2 than the 1-layer VAE
DEPTH_GAIN = 0.3
#: held-out draws per example in the aggregate-posterior figure
FIGURE_SAMPLES = 50


def found_threshold(losses_1layer: list[float]) -> float:
    """A restart "found the 2-layer solution" when its -ELBO ends below this: halfway between the
    true entropy ln 2 and the 1-layer Gaussian VAE's median restart at the same n, which is where a
    2-layer model whose z2 collapsed onto its prior ends (it is then the 1-layer model)."""
    return (LN2 + statistics.median(losses_1layer)) / 2


def found_counts(restarts: dict[tuple, list[float]]) -> dict[tuple, int]:
    """(n, family) -> restarts that found the 2-layer solution (``found_threshold``), for every
    family other than the 1-layer ``gaussian`` baseline, at each n >= 5 the baseline was run at."""
    found = {}
    for (n, family), losses in restarts.items():
        if n >= 5 and family != "gaussian" and (n, "gaussian") in restarts:
            threshold = found_threshold(restarts[n, "gaussian"])
            found[n, family] = sum(v < threshold for v in losses)
    return found


def checks(best: dict[tuple, dict], restarts: dict[tuple, list[float]]) -> list[str]:
    """The post's claims and this study's bars, as checklist lines."""
    ns = sorted({n for n, _ in best})
    found, lines = found_counts(restarts), []
    if 1 in ns:
        ok = all(r["kl"] < IGNORES_Z and abs(r["loss"] - LN2) < IGNORES_Z for (n, _), r in best.items() if n == 1)
        lines.append(check_line(ok, f"n = 1: every family ignores z (KL < {IGNORES_Z}) and its loss is within "
                                    f"{IGNORES_Z} of ln 2"))
    above = [n for n in ns if n >= 5]
    if above:
        ok = all(r["kl"] > USES_Z and r["loss"] < n * LN2 for (n, _), r in best.items() if n >= 5)
        lines.append(check_line(ok, f"n in {above}: every family uses z (KL > {USES_Z}) and beats the no-latent "
                                    "n ln 2"))
    n = ns[-1]
    if (n, "gaussian") in best and (n, "dlgm") in best and n >= 100:
        gain = (best[n, "gaussian"]["loss"] - LN2) - (best[n, "dlgm"]["loss"] - LN2)
        lines.append(check_line(gain >= DEPTH_GAIN, f"n = {n}: the 2-layer DLGM ends {gain:.3f} nats closer to ln 2 "
                                                    f"than the 1-layer Gaussian VAE (at least {DEPTH_GAIN})"))
    targets = {n: DLGM_TARGET[n] for n in ns if n in DLGM_TARGET and (n, "dlgm") in best}
    if targets:
        ok = all(best[n, "dlgm"]["loss"] <= t for n, t in targets.items())
        lines.append(check_line(ok, "the best 2-layer DLGM restart ends below the post's 2-layer loss: " + ", ".join(
            f"n = {n}: {best[n, 'dlgm']['loss']:.3f} (at most {t})" for n, t in targets.items())))
    shares = {n: found[n, f] / len(restarts[n, f]) for n, f in sorted(found) if f == "dlgm"}
    if shares:
        lines.append(check_line(all(v >= FOUND_SHARE for v in shares.values()),
                                f"at least {FOUND_SHARE:.0%} of the 2-layer restarts find the 2-layer solution at "
                                "every n >= 5: " + ", ".join(f"n = {n}: {v:.0%}" for n, v in shares.items())))
    if (ns[-1], "iaf") in best and ns[-1] >= 100:
        loss = best[ns[-1], "iaf"]["loss"]
        lines.append(check_line(loss <= IAF_TARGET, f"n = {ns[-1]}: the IAF guide's best restart ends at {loss:.3f} "
                                                    f"(at most {IAF_TARGET})"))
    return lines


def restarts_table(best: dict[tuple, dict], restarts: dict[tuple, list[float]]) -> list[str]:
    """Per family (a row) and n >= 5 (a column): restarts that found the 2-layer solution, best and
    median -ELBO: the ablation table when the families are changes to the 2-layer model."""
    ns = sorted({n for n, f in best if n >= 5})
    found = found_counts(restarts)
    lines = ["| family | " + " | ".join(f"n = {n}: found, best, median" for n in ns) + " |",
             "|---|" + "---|" * len(ns)]
    for family in dict.fromkeys(f for _, f in best):
        cells = []
        for n in ns:
            losses = restarts.get((n, family))
            if not losses:
                cells.append("")
                continue
            share = f"{found[n, family]}/{len(losses)}, " if (n, family) in found else ""
            cells.append(f"{share}{min(losses):.3f}, {statistics.median(losses):.3f}")
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return lines


def report(out: Path, rows: list[dict], cells: list[dict]) -> str:
    """Best and median restart per (n, family) beside ln 2, n ln 2 and the post; how many restarts
    found the 2-layer solution; the post's claims and this study's bars checked; recon per dimension
    and loss against n; the aggregate posterior of the top latent against the prior at the largest
    n, per family."""
    ns = sorted({r["n"] for r in rows})
    families = list(dict.fromkeys(r["family"] for r in rows))
    best = best_per_cell(rows, ("n", "family"))
    restarts = {key: [r["loss"] for r in rows if (r["n"], r["family"]) == key] for key in best}
    found = found_counts(restarts)
    count = len(restarts[ns[-1], families[0]])
    lines = [f"# Autoencoding a single bit: {count} restart(s) per cell", "",
             "Nats per row on held-out rows (-ELBO = recon + KL); `log p(x) IW` is the importance-weighted "
             "estimate; the columns from `recon` on are the best restart's. `found` counts the restarts "
             "that found the 2-layer solution: an -ELBO below halfway between ln 2 and the 1-layer "
             "Gaussian VAE's median restart at that n (a 2-layer model whose z2 collapsed ends at the "
             "1-layer loss). Reference: the true entropy ln 2 = 0.693 for every n; a model without a "
             "latent scores n ln 2; the post: n = 1 recon 0.693, KL 0; its 2-layer VAE "
             "0.722-0.724 at n = 5, 10, 100 and 0.751 at n = 1000.", "",
             "Free bits on z2 (where a family sets `free_bits_sites`) change the objective only while "
             "they are released: the floor falls linearly to 0 by `free_bits_release` of the steps, and "
             "the steps after that optimise the plain ELBO, so the losses compare with the post's.", "",
             "| n | family | best -ELBO | median | found | recon | recon/dim | KL | log p(x) IW | active units "
             "| I(x;z) | ln 2 | n ln 2 | post |", "|" + "---|" * 14]
    for n in ns:
        for f in families:
            r, losses = best[n, f], restarts[n, f]
            post = (f"recon {SEED_N1['recon']}, KL {SEED_N1['kl']}" if n == 1
                    else f"{POST_DLGM[n]}" if f == "dlgm" and n in POST_DLGM else "")
            share = f"{found[n, f]}/{len(losses)}" if (n, f) in found else ""
            lines.append(f"| {n} | {f} | {r['loss']:.3f} | {statistics.median(losses):.3f} | {share} | "
                         f"{r['recon']:.3f} | {r['recon_per_dim']:.4f} | {r['kl']:.3f} | {r['log_px_iw']:.3f} | "
                         f"{r['active_units']} | {r['mi']:.3f} | {LN2:.3f} | {n * LN2:.3f} | {post} |")
    if found:
        lines += ["", "## Restarts per family", ""] + restarts_table(best, restarts)
    lines += ["", "## Claims of the post, and this study's bars", ""] + checks(best, restarts)
    figures = out / "figures"
    series = lambda key: {f: [best[n, f][key] for n in ns] for f in families}  # noqa: E731
    recon = plots.curves(ns, series("recon_per_dim"), figures / "recon_per_dim.png", "n (bits per row)",
                 "reconstruction per dimension (nats)", {"no latent: ln 2": [LN2] * len(ns),
                                                         "true density, all in z: ln 2 / n": [LN2 / n for n in ns]},
                 logx=True, logy=True, title="Reconstruction cost per dimension")
    loss = plots.curves(ns, series("loss"), figures / "loss.png", "n (bits per row)", "-ELBO (nats per row)",
                        {"true entropy ln 2": [LN2] * len(ns)}, logx=True, title="Loss against n (best seed per cell)")
    lines += ["", "## Figures", "",
              figure(out, recon, "Reconstruction cost per dimension against n, best seed per cell"), "",
              figure(out, loss, "-ELBO against n, best seed per cell; the true entropy ln 2 dashed")]
    panels = []
    for row in (best[ns[-1], f] for f in families):  # q(z) of each family's top latent (z, or the DLGM's z2)
        data, model, guide = cell.restore(out / row["cell"], device="cpu")
        top = next(iter(model.latent_dims))
        panels += collapse.aggregate_posterior_panels(
            model, guide, data, samples=FIGURE_SAMPLES, sites=[top],
            title=f"{row['family']}, n = {row['n']}: q({{site}}) vs p({{site}})")
    drawn = plots.aggregate_posterior(panels, figures / f"aggregate_posterior_n{ns[-1]}.png")
    lines += ["", figure(out, drawn, f"n = {ns[-1]}: each family's aggregate posterior q(z) of its top latent against "
                                     "the prior p(z)")]
    return "\n".join(lines) + "\n"


STUDY = Study(report, axes=("n", "family"), variants={"family": ("gaussian", "dlgm")})
