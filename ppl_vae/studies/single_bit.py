"""Shu, "Autoencoding a Single Bit" (2017): the bit replicated n times, by model family.

Reads the grid axes ``n`` and ``family`` (restarts: any other axis, e.g. ``train.seed``); the
claim about depth compares the ``gaussian`` and ``dlgm`` families.
"""

from __future__ import annotations

import math
from pathlib import Path

from ppl_vae import cell, collapse, plots
from ppl_vae.study import Study, best_per_cell, check_line

LN2 = math.log(2)
#: what the post reports for one bit (n = 1): the VAE ignores z
SEED_N1 = {"recon": 0.693, "kl": 0.0}
#: a seed that ends within this of ln 2 at the largest n counts as having found the true density
NEAR_LN2 = 0.1
#: n = 1: a family "ignores z" below this KL and "matches ln 2" within this (the post: KL 0, loss ln 2)
IGNORES_Z = 0.01
#: n >= 5: a family "uses z" above this KL: a tenth of a nat, ten times the n = 1 tolerance
USES_Z = 0.1
#: n >= 100: the post's claim that depth helps, as the nats by which the 2-layer DLGM must end
#: closer to ln 2 than the 1-layer VAE
DEPTH_GAIN = 0.3
#: held-out draws per example in the aggregate-posterior figure
FIGURE_SAMPLES = 50


def report(out: Path, rows: list[dict], cells: list[dict]) -> str:
    """Best restart per (n, family) beside ln 2, n ln 2 and the post's n = 1 result; the post's
    claims checked; recon per dimension and loss against n; the aggregate posterior of the top
    latent against the prior at the largest n, per family."""
    ns = sorted({r["n"] for r in rows})
    families = list(dict.fromkeys(r["family"] for r in rows))
    best = best_per_cell(rows, ("n", "family"))
    restarts = {key: [r["loss"] for r in rows if (r["n"], r["family"]) == key] for key in best}
    near = {f: sum(abs(loss - LN2) < NEAR_LN2 for loss in restarts[ns[-1], f]) for f in families}

    lines = [f"# Autoencoding a single bit: best of {len(restarts[ns[-1], families[0]])} seed(s) per cell", "",
             "Nats per row on held-out rows (-ELBO = recon + KL); `log p(x) IW` is the importance-weighted "
             "estimate; `seeds` gives the -ELBO range over the restarts and how many ended within "
             f"{NEAR_LN2} of ln 2. Reference: the true entropy ln 2 = 0.693 for every n; a model without a "
             "latent scores n ln 2; the post's n = 1 result is recon 0.693, KL 0.", "",
             "| n | family | seed | -ELBO | recon | recon/dim | KL | log p(x) IW | active units | I(x;z) "
             "| seeds: range, near ln 2 | ln 2 | n ln 2 | post (n=1) |", "|" + "---|" * 14]
    for n in ns:
        for f in families:
            r, losses = best[n, f], restarts[n, f]
            post = f"recon {SEED_N1['recon']}, KL {SEED_N1['kl']}" if n == 1 else ""
            spread = f"{min(losses):.3f}-{max(losses):.3f}, {sum(abs(v - LN2) < NEAR_LN2 for v in losses)}/{len(losses)}"
            lines.append(f"| {n} | {f} | {r['seed']} | {r['loss']:.3f} | {r['recon']:.3f} | "
                         f"{r['recon_per_dim']:.4f} | {r['kl']:.3f} | {r['log_px_iw']:.3f} | "
                         f"{r['active_units']} | {r['mi']:.3f} | {spread} | {LN2:.3f} | {n * LN2:.3f} | {post} |")
    lines += ["", f"Seeds within {NEAR_LN2} nats of ln 2 at n = {ns[-1]}: " +
              ", ".join(f"{f} {near[f]}/{len(restarts[ns[-1], f])}" for f in families), "",
              "## Claims of the post", ""]
    if 1 in ns:
        ok = all(best[1, f]["kl"] < IGNORES_Z and abs(best[1, f]["loss"] - LN2) < IGNORES_Z for f in families)
        lines.append(check_line(ok, f"n = 1: every family ignores z (KL < {IGNORES_Z}) and its loss is within "
                                    f"{IGNORES_Z} of ln 2"))
    above = [n for n in ns if n >= 5]
    if above:
        ok = all(best[n, f]["kl"] > USES_Z and best[n, f]["loss"] < n * LN2 for n in above for f in families)
        lines.append(check_line(ok, f"n in {above}: every family uses z (KL > {USES_Z}) and beats the no-latent n ln 2"))
    if {"gaussian", "dlgm"} <= set(families) and ns[-1] >= 100:
        n = ns[-1]
        gain = (best[n, "gaussian"]["loss"] - LN2) - (best[n, "dlgm"]["loss"] - LN2)
        lines.append(check_line(gain >= DEPTH_GAIN, f"n = {n}: the 2-layer DLGM ends {gain:.3f} nats closer to ln 2 "
                                                    f"than the 1-layer Gaussian VAE (at least {DEPTH_GAIN})"))
    figures = out / "figures"
    series = lambda key: {f: [best[n, f][key] for n in ns] for f in families}  # noqa: E731
    plots.curves(ns, series("recon_per_dim"), figures / "recon_per_dim.png", "n (bits per row)",
                 "reconstruction per dimension (nats)", {"no latent: ln 2": [LN2] * len(ns),
                                                         "true density, all in z: ln 2 / n": [LN2 / n for n in ns]},
                 logx=True, logy=True, title="Reconstruction cost per dimension")
    plots.curves(ns, series("loss"), figures / "loss.png", "n (bits per row)", "-ELBO (nats per row)",
                 {"true entropy ln 2": [LN2] * len(ns)}, logx=True, title="Loss against n (best seed per cell)")
    lines += ["", f"Figures: `figures/recon_per_dim.png`, `figures/loss.png`, "
                  f"`figures/aggregate_posterior_n{ns[-1]}.png`."]
    panels = []
    for row in (best[ns[-1], f] for f in families):  # q(z) of each family's top latent (z, or the DLGM's z2)
        data, model, guide = cell.restore(out / row["cell"])
        top = next(iter(model.latent_dims))
        panels += collapse.aggregate_posterior_panels(
            model, guide, data, samples=FIGURE_SAMPLES, sites=[top],
            title=f"{row['family']}, n = {row['n']}: q({{site}}) vs p({{site}})")
    plots.aggregate_posterior(panels, figures / f"aggregate_posterior_n{ns[-1]}.png")
    return "\n".join(lines) + "\n"


STUDY = Study(report, axes=("n", "family"), variants={"family": ("gaussian", "dlgm")})
