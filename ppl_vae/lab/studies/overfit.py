"""Memorisation against generalisation: the train/held-out gap against the training-set size.

Seed 000: with few training examples an autoencoder can give each its own code and memorise it,
reconstructing the training set far better than anything else; the VAE's noisy code and its
KL price make that harder. Each cell trains for many epochs on 100, 1,000 or all training digits
(the same held-out digits for all); the gap is held-out minus train loss at the end. Reads the
grid axes ``method`` (variants ``ae`` and ``vae``) and ``train_size``.
"""

from __future__ import annotations

from pathlib import Path

from ppl_vae.lab import cell
from ppl_vae.lab.study import Study, check_line, figure
from ppl_vae.viz import plots


def _size(row: dict) -> int:
    return int(row["train_size"]) if str(row["train_size"]).isdigit() else 10**9  # "all" last


def report(out: Path, rows: list[dict], cells: list[dict]) -> str:
    """Train and held-out reconstruction (and the VAE's -ELBO) at the last epoch per method and
    size, the gaps, loss curves; checks that the 100-digit AE memorises and the VAE's gap is smaller."""
    rows = sorted(rows, key=lambda r: (_size(r), r["method"]))
    lines = ["# Memorisation against generalisation", "",
             "Nats per image at the last epoch on the (statically binarised) training digits and the held-out "
             "digits; gap = held-out - train. The autoencoder's loss is its reconstruction; the VAE's is its "
             "-ELBO (its reconstruction beside it).", "",
             "| method | training digits | epochs | train recon | held-out recon | recon gap | train -ELBO "
             "| held-out -ELBO | -ELBO gap |", "|" + "---|" * 9]
    gaps, curves = {}, {}
    for r in rows:
        last = cell.history(out / r["cell"])[-1]
        recon_gap = last["test_recon"] - last["train_recon"]
        elbo_gap = last["test_loss"] - last["train_loss"]
        gaps[(r["method"], str(r["train_size"]))] = recon_gap if r["method"] == "ae" else elbo_gap
        vae = r["method"] != "ae"
        lines.append(f"| {r['method'].upper()} | {r['train_size']} | {r['epochs']} | {last['train_recon']:.2f} | "
                     f"{last['test_recon']:.2f} | {recon_gap:.2f} | "
                     + (f"{last['train_loss']:.2f} | {last['test_loss']:.2f} | {elbo_gap:.2f} |" if vae else "| | |"))
        curves[f"{r['method'].upper()}, {r['train_size']}"] = cell.history(out / r["cell"])
    drawn = _curves(curves, out / "figures" / "train_vs_held_out.png")
    lines += ["", figure(out, drawn, "Train (dashed) and held-out (solid): the AE's reconstruction, the VAE's -ELBO, "
                                     "against the share of the run"), "", "## Checks", ""]
    smallest = str(rows[0]["train_size"])
    if ("ae", smallest) in gaps and ("vae", smallest) in gaps:
        ae, vae = gaps[("ae", smallest)], gaps[("vae", smallest)]
        row = next(r for r in rows if r["method"] == "ae" and str(r["train_size"]) == smallest)
        last = cell.history(out / row["cell"])[-1]
        lines.append(check_line(last["train_recon"] < 0.5 * last["test_recon"],
                                f"the AE on {smallest} digits memorises: train reconstruction "
                                f"{last['train_recon']:.2f} nats, under half its held-out {last['test_recon']:.2f}"))
        lines.append(check_line(vae < ae, f"on {smallest} digits the VAE's gap is smaller than the AE's "
                                          f"({vae:.2f} against {ae:.2f} nats)"))
    for method in ("ae", "vae"):
        series = [gaps[(m, s)] for (m, s) in gaps if m == method]
        if len(series) > 1:
            lines.append(f"- observed: the {method.upper()}'s gap by training-set size: "
                         + ", ".join(f"{s}: {gaps[(m, s)]:.2f}" for (m, s) in gaps if m == method))
    return "\n".join(lines) + "\n"


def _curves(histories: dict[str, list[dict]], path: Path) -> Path:
    """Each cell's train and held-out loss against the share of its run done."""
    series = {}
    for name, history in histories.items():
        key = "recon" if name.startswith("AE") else "loss"
        series[name] = ([row["epoch"] / history[-1]["epoch"] for row in history],
                        [row[f"train_{key}"] for row in history], [row[f"test_{key}"] for row in history])
    return plots.train_test_curves(series, path, "share of the run", "nats per image",
                                   title="Train (dashed) against held-out (solid)")


STUDY = Study(report, axes=("method", "train_size"), variants={"method": ("ae", "vae")})
