"""Study reports: a finished grid's results beside the published numbers, as ``report.md`` and figures.

A report is registered by name and named by an experiment file's ``report`` key; it gets the run
folder, one row per cell (its grid values and its ``summary.json``) and the cell configs, and
returns Markdown; ``ppl_vae.experiment.report`` writes it to ``report.md``.
"""

from __future__ import annotations

import math
from pathlib import Path

from ppl_vae import collapse, diagnostics, plots
from ppl_vae.registry import REPORTS

LN2 = math.log(2)
#: what Shu, "Autoencoding a Single Bit" (2017) reports for one bit (n = 1): the VAE ignores z
SEED_N1 = {"recon": 0.693, "kl": 0.0}
#: a seed that ends within this of ln 2 at the largest n counts as having found the true density
NEAR_LN2 = 0.1


def best_per_cell(rows: list[dict], keys: tuple[str, ...], score: str = "loss") -> dict[tuple, dict]:
    """The row with the lowest ``score`` for each combination of ``keys`` (the best restart)."""
    best: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        if key not in best or row[score] < best[key][score]:
            best[key] = row
    return best


def _check(ok: bool, text: str) -> str:
    return f"- [{'x' if ok else ' '}] {'PASS' if ok else 'FAIL'}: {text}"


@REPORTS.register("single-bit")
def single_bit(out: Path, rows: list[dict], cells: list[dict]) -> str:
    """Shu (2017), "Autoencoding a Single Bit": best restart per (n, family) beside ln 2, n ln 2 and
    the post's n = 1 result; the study's claims checked; recon per dimension and loss against n; the
    aggregate posterior of the top latent against the prior at the largest n, per family."""
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
        ok = all(best[1, f]["kl"] < 0.01 and abs(best[1, f]["loss"] - LN2) < 0.01 for f in families)
        lines.append(_check(ok, "n = 1: every family ignores z (KL < 0.01) and its loss is within 0.01 of ln 2"))
    above = [n for n in ns if n >= 5]
    if above:
        ok = all(best[n, f]["kl"] > 0.1 and best[n, f]["loss"] < n * LN2 for n in above for f in families)
        lines.append(_check(ok, f"n in {above}: every family uses z (KL > 0.1) and beats the no-latent n ln 2"))
    if {"gaussian", "dlgm"} <= set(families) and ns[-1] >= 100:
        n = ns[-1]
        gain = (best[n, "gaussian"]["loss"] - LN2) - (best[n, "dlgm"]["loss"] - LN2)
        lines.append(_check(gain >= 0.3, f"n = {n}: the 2-layer DLGM ends {gain:.3f} nats closer to ln 2 than "
                                         "the 1-layer Gaussian VAE (at least 0.3)"))
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
    _aggregate_posteriors(out, [best[ns[-1], f] for f in families], figures / f"aggregate_posterior_n{ns[-1]}.png")
    return "\n".join(lines) + "\n"


def _aggregate_posteriors(out: Path, rows: list[dict], path: Path) -> Path:
    """One panel per row's cell: q(z) of the model's top latent site (z, or z2 of the DLGM) against p(z)."""
    from ppl_vae.experiment import restore

    panels = []
    for row in rows:
        data, model, guide = restore(out / row["cell"])
        x, labels = data.test_eval, data.test_labels
        draws = collapse.posterior_draws(guide, x, 50)
        prior = diagnostics.prior_draws(model, 20_000, x.device)
        top = next(iter(prior))  # the first latent site the model samples: its top layer
        panels.append((f"{row['family']}, n = {row['n']}: q({top}) vs p({top})", draws[top], labels, prior[top]))
    return plots.aggregate_posterior(panels, path)


@REPORTS.register("digits-collapse")
def digits_collapse(out: Path, rows: list[dict], cells: list[dict]) -> str:
    """Posterior collapse on images and its remedies: one row per ``remedy`` variant, ``none`` the
    collapsing pair; checks that it collapses and that ``free-bits`` raises the active units; any
    other remedy is reported as found."""
    latent = {c["model"].get("latent_dim") for c in cells}
    lines = ["# Posterior collapse on the embedded digits", "",
             "Held-out nats per image. Active units: Cov_x E_q[z_d | x] > 0.01 (Burda et al. 2016); "
             "KL = I(x;z) + KL(q(z) || p(z)) (Hoffman & Johnson 2016).", "",
             "| remedy | KL weight | free bits | schedule | -ELBO | recon | KL | active units | I(x;z) "
             "| KL(q(z) \\|\\| p(z)) | log p(x) IW |", "|" + "---|" * 11]
    for row, cell in zip(rows, cells):
        train = cell["train"]
        lines.append(f"| {row['remedy']} | {train.get('kl_weight', 1.0)} | {train.get('free_bits', 0.0)} | "
                     f"{train.get('kl_schedule', 'constant')} | {row['loss']:.2f} | {row['recon']:.2f} | "
                     f"{row['kl']:.3f} | {row['active_units']} / {', '.join(map(str, latent))} | {row['mi']:.3f} | "
                     f"{row['marginal_kl']:.3f} | {row['log_px_iw']:.2f} |")
    by_remedy = {row["remedy"]: row for row in rows}
    per_unit = {name: sorted((kl for dims in row["kl_dims"].values() for kl in dims), reverse=True)
                for name, row in by_remedy.items()}
    width = max(map(len, per_unit.values()))
    plots.curves(list(range(1, width + 1)), per_unit, out / "figures" / "kl_per_unit.png",
                 "latent unit (sorted by its KL)", "KL per unit (nats)", title="Which units carry information")
    lines += ["", "Figure: `figures/kl_per_unit.png` (each unit's KL, sorted, per remedy).", "", "## Checks", ""]
    if "none" in by_remedy:
        base = by_remedy["none"]
        lines.append(_check(base["active_units"] == 0 and base["kl"] < 0.1,
                            f"without a remedy the latent collapses: {base['active_units']} active units, "
                            f"KL {base['kl']:.3f} nats"))
        for name, row in by_remedy.items():
            if name == "free-bits":  # the remedy the study claims; the others are reported as found
                lines.append(_check(row["active_units"] > base["active_units"], "free bits raise the active units "
                                    f"from {base['active_units']} to {row['active_units']}"))
            elif name != "none":
                lines.append(f"- observed: {name}: {row['active_units']} active units, KL {row['kl']:.3f} nats")
    return "\n".join(lines) + "\n"
