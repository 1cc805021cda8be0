"""Posterior collapse on images and its remedies: one row per ``remedy`` variant.

Reads the grid axis ``remedy``: the variant ``none`` is the collapsing pair, ``free-bits`` the
remedy the study claims; any other variant is reported as found.
"""

from __future__ import annotations

from pathlib import Path

from ppl_vae.lab.study import Study, check_line, figure
from ppl_vae.viz import plots

#: without a remedy the latent has "collapsed" when no unit is active and its KL is below this
#: (nats per image; a used 32-D code carries tens of nats)
COLLAPSED_KL = 0.1


def report(out: Path, rows: list[dict], cells: list[dict]) -> str:
    """The remedies' table (KL, active units, I(x;z), log p(x)), each unit's KL as a figure, and
    the checks: without a remedy the latent collapses; free bits raise the active units."""
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
    drawn = plots.curves(list(range(1, width + 1)), per_unit, out / "figures" / "kl_per_unit.png",
                         "latent unit (sorted by its KL)", "KL per unit (nats)", title="Which units carry information")
    lines += ["", figure(out, drawn, "Each unit's KL, sorted, per remedy"), "", "## Checks", ""]
    if "none" in by_remedy:
        base = by_remedy["none"]
        lines.append(check_line(base["active_units"] == 0 and base["kl"] < COLLAPSED_KL,
                                f"without a remedy the latent collapses: {base['active_units']} active units, "
                                f"KL {base['kl']:.3f} nats"))
        for name, row in by_remedy.items():
            if name == "free-bits":  # the remedy the study claims; the others are reported as found
                lines.append(check_line(row["active_units"] > base["active_units"], "free bits raise the active "
                                        f"units from {base['active_units']} to {row['active_units']}"))
            elif name != "none":
                lines.append(f"- observed: {name}: {row['active_units']} active units, KL {row['kl']:.3f} nats")
    return "\n".join(lines) + "\n"


STUDY = Study(report, axes=("remedy",), variants={"remedy": ("none", "free-bits")})
