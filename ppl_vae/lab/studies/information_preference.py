"""The information preference (Chen et al. 2017, "Variational Lossy Autoencoder", Sec. 2.2) on Shu's
replicated bit: n copies of a fair bit, modelled by a 1-layer VAE whose decoder reads the ``window``
dimensions before each one (``likelihood = "bernoulli-autoregressive"``).

Closed forms: every row is all zeros or all ones, so the data's entropy is ln 2 nats per row. A
decoder that reads one dimension back can reach it with z unused: p(x_1) a fair coin, each later
copy read off the one before. The ELBO then prefers KL = 0, as any nat of KL costs without buying
anything (the optimum is -ELBO = ln 2 with q(z | x) = p(z)). A factorised decoder (window 0) with
z unused can do no better than n ln 2; it reaches ln 2 only if z carries the bit, I(x; z) = ln 2.
Reads the grid axes ``n`` and ``window`` (restarts: any other axis, e.g. ``train.seed``).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from ppl_vae.lab.study import Study, figure, margin_line, mean_sd
from ppl_vae.viz import plots

LN2 = math.log(2)
#: "z unused": a KL below this (nats); "z used": above USES_Z
IGNORES_Z, USES_Z = 0.01, 0.1
#: "at the optimum": -ELBO within this of ln 2 (nats per row)
AT_LN2 = 0.01


def report(out: Path, rows: list[dict], cells: list[dict]) -> str:
    """-ELBO, KL, I(x; z), active units and log p(x) per (n, window) over restarts, beside ln 2 and
    n ln 2; the check that a decoder reading back ignores z at ln 2 and a factorised one uses z."""
    keys = sorted({(int(r["n"]), int(r["window"])) for r in rows})
    group = {key: [r for r in rows if (int(r["n"]), int(r["window"])) == key] for key in keys}
    lines = ["# The information preference on the replicated bit", "",
             "Held-out nats per row, mean +- sd over restarts. ln 2 = 0.693 is the data's entropy: the -ELBO of a "
             "decoder that reads back with z unused, and of a factorised one whose z carries the bit; n ln 2 is the "
             "factorised decoder's with z unused.", "",
             "| n | window | restarts | -ELBO | KL | I(x; z) | active units | log p(x) IW | ln 2 | n ln 2 |",
             "|" + "---|" * 10]
    for n, window in keys:
        g = group[n, window]
        lines.append(f"| {n} | {window} | {len(g)} | {mean_sd([r['loss'] for r in g], digits=4)} | "
                     f"{mean_sd([r['kl'] for r in g], digits=4)} | {mean_sd([r['mi'] for r in g], digits=3)} | "
                     f"{mean_sd([r['active_units'] for r in g], digits=1)} | "
                     f"{mean_sd([r['log_px_iw'] for r in g], digits=4)} | {LN2:.4f} | {n * LN2:.2f} |")
    ns = sorted({n for n, _ in keys})
    windows = sorted({w for _, w in keys})
    mean = lambda n, w, key: statistics.fmean(r[key] for r in group[n, w])  # noqa: E731
    drawn = plots.curves(windows, {**{f"KL, n = {n}": [mean(n, w, "kl") for w in windows] for n in ns},
                                   **{f"I(x; z), n = {n}": [mean(n, w, "mi") for w in windows] for n in ns}},
                         out / "figures" / "kl_by_window.png", "window (dimensions before each that the decoder reads)",
                         "nats per row", references={"ln 2": [LN2] * len(windows)},
                         title="what z carries, by decoder window")
    lines += ["", figure(out, drawn, "KL(q(z | x) || p(z)) and I(x; z) against the decoder's window, mean over "
                                     "restarts: the bit is in z only when the decoder cannot read it back"),
              "", "## Checks", ""]
    back = [r for (n, w), g in group.items() if w > 0 for r in g]
    flat = [r for (n, w), g in group.items() if w == 0 for r in g]
    if back:
        lines.append(margin_line([r["kl"] for r in back], [IGNORES_Z] * len(back),
                                 f"window >= 1: every restart leaves z unused (KL < {IGNORES_Z} nats)", digits=4))
        lines.append(margin_line([abs(r["loss"] - LN2) for r in back], [AT_LN2] * len(back),
                                 f"window >= 1: every restart's -ELBO is within {AT_LN2} of ln 2", digits=4))
    if flat:
        lines.append(margin_line([USES_Z] * len(flat), [r["kl"] for r in flat],
                                 f"window 0 (factorised): every restart uses z (KL > {USES_Z} nats)", digits=3))
        lines.append(f"- observed: with window 0, I(x; z) = {mean_sd([r['mi'] for r in flat], digits=3)} nats "
                     f"(ln 2 = {LN2:.3f}: the bit) and -ELBO {mean_sd([r['loss'] for r in flat], digits=3)}")
    return "\n".join(lines) + "\n"


STUDY = Study(report, axes=("n", "window"))
