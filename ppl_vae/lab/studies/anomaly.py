"""Anomaly detection by reconstruction and likelihood: train on all digits but one, score them all.

Seed 003 flags an input the autoencoder reconstructs badly. Each cell trains on the digits
without one (``data.exclude_labels``) and scores the held-out digits plus the left-out digit's
unseen training images with every score of ``ppl_vae.evaluation.anomaly``; a score's ROC-AUC says how
well it ranks the left-out digit above the others. Reads the grid axis ``exclude_labels``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch

from ppl_vae.evaluation.anomaly import SCORES, roc_auc, scores
from ppl_vae.io import write_text
from ppl_vae.lab import cell
from ppl_vae.lab.experiment_file import diagnostics_config
from ppl_vae.lab.study import Study, check_line, figure
from ppl_vae.viz import plots

#: a score "works" for a left-out digit above this ROC-AUC, and "fails" below FAILS
WORKS, FAILS = 0.9, 0.7
COLUMNS = tuple(f"auc_{name}" for name in SCORES)


def scored_inputs(data, config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs scored and whether each is anomalous: every held-out digit, and the left-out
    digit's training images (never trained on), each as its fixed binarised draw."""
    digit = config["data"]["exclude_labels"]
    full = cell.load_data({**config, "data": {**config["data"], "exclude_labels": []}})
    left_out = full.train_eval[full.train_labels == digit].to(data.test_eval.device)
    x = torch.cat([data.test_eval, left_out])
    anomalous = torch.cat([data.test_labels.cpu() == digit, torch.ones(len(left_out), dtype=torch.bool)])
    return x, anomalous


def measure(model, guide, data, config: dict) -> dict:
    """ROC-AUC of every score, and the scores themselves (for the histograms)."""
    x, anomalous = scored_inputs(data, config)
    found = scores(model, guide, x, data.train_eval, diagnostics_config(config).iw_samples)
    return {**{f"auc_{name}": roc_auc(s, anomalous) for name, s in found.items()},
            "anomaly_scores": {name: [round(v, 3) for v in s.tolist()] for name, s in found.items()},
            "anomalous": anomalous.int().tolist()}


def _histograms(rows: list[dict], path: Path) -> Path:
    """A panel per left-out digit (rows) and score (columns): the score on the other digits against the left-out one."""
    panels = []
    for row in rows:
        anomalous = np.array(row["anomalous"], dtype=bool)
        values = {name: np.array(row["anomaly_scores"][name]) for name in SCORES}
        panels.append([(f"left out {row['exclude_labels']}: {name}, AUC {row[f'auc_{name}']:.2f}",
                        {"other digits": v[~anomalous], f"digit {row['exclude_labels']}": v[anomalous]})
                       for name, v in values.items()])
    return plots.histogram_grid(panels, path)


def report(out: Path, rows: list[dict], cells: list[dict]) -> str:
    """ROC-AUC per left-out digit and score, their means, which score wins and where each fails;
    checks the best score's ROC-AUC against 0.9."""
    rows = sorted(rows, key=lambda r: r["exclude_labels"])
    names = list(SCORES)
    lines = ["# Anomaly detection: ROC-AUC per left-out digit", "",
             "Each row's VAE is trained on the digits without one; it scores the held-out digits and the left-out "
             "digit's unused training images (anomalous: the left-out digit). Scores, higher = more anomalous: "
             + "; ".join(f"`{n}`: {d}" for n, d in SCORES.items()) + ".", "",
             "| left-out digit | anomalous / scored | " + " | ".join(names) + " |", "|" + "---|" * (2 + len(names))]
    for r in rows:
        best = max(r[f"auc_{n}"] for n in names)
        aucs = [f"**{r[f'auc_{n}']:.3f}**" if r[f"auc_{n}"] == best else f"{r[f'auc_{n}']:.3f}" for n in names]
        lines.append(f"| {r['exclude_labels']} | {sum(r['anomalous'])} / {len(r['anomalous'])} | "
                     + " | ".join(aucs) + " |")
    means = {n: statistics.fmean(r[f"auc_{n}"] for r in rows) for n in names}
    lines.append("| mean | | " + " | ".join(f"{means[n]:.3f}" for n in names) + " |")
    winner = max(means, key=means.get)
    lines += ["", f"On average `{winner}` wins (mean ROC-AUC {means[winner]:.3f}).", ""]
    for n in names:
        failed = [f"{r['exclude_labels']} ({r[f'auc_{n}']:.2f})" for r in rows if r[f"auc_{n}"] < FAILS]
        lines.append(f"- `{n}` fails (ROC-AUC below {FAILS}) for left-out digit(s): {', '.join(failed) or 'none'}")
    likelihood, corrected = means["neg_log_px"], means["complexity_corrected"]
    simple = [r for r in rows if r["auc_neg_log_px"] < 0.5]
    if simple:
        lines.append("- the likelihood ranks the left-out digit as *more* normal than the trained ones for "
                     + ", ".join(f"digit {r['exclude_labels']} (ROC-AUC {r['auc_neg_log_px']:.2f})" for r in simple)
                     + ": Nalisnick et al.'s (2019) effect, a simple image is likely under any model")
    lines.append(f"- the corrections move the mean ROC-AUC of -log p(x) from {likelihood:.3f} to {corrected:.3f} "
                 f"(PNG complexity) and to {means['likelihood_ratio']:.3f} (ratio to the local pixel model)")
    best_per_digit = [max(r[f"auc_{n}"] for n in names) for r in rows]
    lines += ["", "## Checks", "",
              check_line(sum(a > WORKS for a in best_per_digit) >= len(rows) / 2,
                         f"the best score exceeds ROC-AUC {WORKS} for {sum(a > WORKS for a in best_per_digit)} of "
                         f"{len(rows)} left-out digits (at least half asked for)")]
    histograms = _histograms(rows, out / "figures" / "score_histograms.png")
    write_text(out / "roc_auc.csv", "held_out_digit,score,roc_auc\n" + "".join(
        f"{r['exclude_labels']},{n},{r[f'auc_{n}']:.4f}\n" for r in rows for n in names))
    lines += ["", figure(out, histograms, "Each score's histogram on the held-out digits, the left-out digit's "
                                          "apart: a row per left-out digit, a column per score"),
              "", "`roc_auc.csv`: the table as rows of held_out_digit, score, roc_auc."]
    return "\n".join(lines) + "\n"


STUDY = Study(report, axes=("exclude_labels",), measure=measure, columns=COLUMNS)
