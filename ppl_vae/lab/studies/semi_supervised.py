"""Semi-supervised learning with M2 (Kingma, Rezende, Mohamed & Welling 2014, Table 1): how well does
q(y | x) classify when only a few of the training digits carry their label?

Each cell trains M2 (model and guide ``m2``, the class summed out by estimator ``enum``) on the
embedded digits with ``data.labelled`` of their labels (the others unseen), and scores the
held-out error of argmax_y q(y | x) beside a classifier of the same shape (scikit-learn's
``MLPClassifier``) trained on the labelled digits alone: the baseline M2 must beat for the
unlabelled digits to have helped. Reads the grid axes ``labels`` (named variants, the number of
labels; ``all`` is the ceiling) and ``seed``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from pyro import poutine
from sklearn.neural_network import MLPClassifier

from ppl_vae.evaluation.collapse import posterior_means
from ppl_vae.lab import cell
from ppl_vae.lab.study import Study, by_axis, figure, margin_line, mean_sd
from ppl_vae.tracing import decode
from ppl_vae.viz import plots

#: Kingma et al. (2014), Table 1: M2's test error (%) on MNIST by number of labels
PAPER_M2 = {"100": 11.97, "1000": 3.60}
#: held-out digits whose style z the analogies figure holds (rows), each decoded with every class (columns)
STYLES = 8
COLUMNS = ("error", "baseline_error", "baseline_grey_error", "labels_seen")


def _class_site(model) -> str:
    return next(name for name in model.latent_dims if name != "z")


def measure(model, guide, data, config: dict) -> dict:
    """Held-out error of argmax_y q(y | x) and of the labelled-only classifier (same widths, trained
    by scikit-learn on the labelled training digits alone): on the binarised digits M2 sees, and on
    the grey ones; and how many labels the cell saw."""
    probs = posterior_means(guide, data.test_eval)[_class_site(model)]
    error = (probs.argmax(1) != data.test_labels).float().mean().item()
    known = data.train_fields["labelled"]
    hidden = tuple(config["model"].get("hidden", (500,)))
    found = {"error": error, "labels_seen": int(known.sum())}
    # the same inputs as M2's q(y | x) (the fixed binarised draws), and the grey digits, which it never sees
    for key, train, test in (("baseline_error", data.train_eval, data.test_eval),
                             ("baseline_grey_error", data.train, data.test)):
        baseline = MLPClassifier(hidden_layer_sizes=hidden, max_iter=500, random_state=config["train"].get("seed", 0))
        baseline.fit(train[known].flatten(1).cpu().numpy(), data.train_labels[known].cpu().numpy())
        found[key] = float(1 - baseline.score(test.flatten(1).cpu().numpy(), data.test_labels.cpu().numpy()))
    return found


def _order(labels: str) -> int:
    return int(labels) if str(labels).isdigit() else 10**9  # "all" last


def report(out: Path, rows: list[dict], cells: list[dict]) -> str:
    """Held-out error by number of labels, M2 beside the labelled-only classifier and the paper's M2
    (mean +- sd over seeds), the analogies figure, and the check that M2 beats the baseline on every
    seed at the fewest labels."""
    groups = by_axis(rows, "labels")
    order = sorted(groups, key=_order)
    lines = ["# Semi-supervised learning with M2", "",
             "Held-out error (%) of argmax_y q(y | x) on the embedded digits' held-out split, mean +- sd over seeds; "
             "the baseline is a classifier of the same widths trained on the labelled training digits alone, on "
             "the binarised digits M2's q(y | x) sees (the check's) and on the grey ones. "
             "Kingma et al. (2014), Table 1, trained M2 on MNIST's 50,000 training digits; here there are 4,500, "
             "and far fewer steps.", "",
             "| labels | seeds | M2 error | labelled-only error | labelled-only, grey digits | "
             "M2 (Kingma et al., MNIST) | held-out -ELBO | active units (z) |", "|" + "---|" * 8]
    for labels in order:
        group = groups[labels]
        paper = PAPER_M2.get(labels)
        lines.append(f"| {labels} | {len(group)} | {mean_sd([r['error'] for r in group], 100)} | "
                     f"{mean_sd([r['baseline_error'] for r in group], 100)} | "
                     f"{mean_sd([r['baseline_grey_error'] for r in group], 100)} | "
                     f"{'' if paper is None else f'{paper:.2f}'} | "
                     f"{mean_sd([r['loss'] for r in group])} | "
                     f"{mean_sd([r['active_units_sites'].get('z', 0) for r in group])} |")
    fewest = groups[order[0]]
    best = min(fewest, key=lambda r: r["error"])
    drawn, class_effect, style_effect = _analogies(out, best)
    lines += ["", figure(out, drawn, f"Analogies ({order[0]} labels, seed {best['seed']}): each row holds the style z "
                                     "of one held-out digit (its posterior mean given its predicted class), each "
                                     "column decodes it with the class 0, 1, ..., 9 (Kingma et al., Fig. 1)"),
              "", "## Checks", ""]
    by_seed = {r["seed"]: r for r in fewest}
    # paired by seed (the seed picks the split and the labelled digits, which M2 and the baseline share)
    gains = [r["baseline_error"] - r["error"] for r in by_seed.values()]
    per_seed = ", ".join(f"seed {s}: {100 * r['error']:.1f} against {100 * r['baseline_error']:.1f} %"
                         for s, r in sorted(by_seed.items()))
    lines.append(margin_line([0.0], gains, f"with {order[0]} labels M2 classifies the held-out digits better than the "
                                           f"labelled-only classifier on every seed ({per_seed}): the improvement, "
                                           "in points", scale=100, digits=1))
    lines.append(f"- observed: in the analogies the decoded pixels move {class_effect:.3f} on average as the class "
                 f"changes (a row's spread) and {style_effect:.3f} as the style does (a column's): "
                 + ("the decoder reads y" if class_effect > 0.5 * style_effect else
                    "the decoder draws much the same digit whatever y says: z carries the class"))
    if len(order) > 1:
        ceiling = statistics.fmean(r["error"] for r in groups[order[-1]])
        lines.append(f"- observed: with {order[-1]} labels M2 reaches {100 * ceiling:.1f} % (this budget's ceiling)")
    return "\n".join(lines) + "\n"


def _analogies(out: Path, row: dict) -> tuple[Path, float, float]:
    """A row per held-out digit's style z, a column per class: the decoded means of p(x | y, z); and how
    much a pixel moves across a row (the class's effect) and across a column (the style's), on average."""
    data, model, guide = cell.restore(out / row["cell"], device="cpu")
    x = data.test_eval[:STYLES]
    site = _class_site(model)
    guessed = posterior_means(guide, x)[site].argmax(1)
    classes = torch.arange(model.classes)
    # z's posterior mean given each digit's predicted class: the guide conditioned on it
    trace = poutine.trace(poutine.condition(guide, {site: guessed})).get_trace(x)
    style = trace.nodes["z"]["fn"].mean  # [STYLES, D]
    z = style.repeat_interleave(len(classes), 0)
    images = decode(model, {"z": z, site: classes.repeat(len(x))})
    grid = images.reshape(len(x), len(classes), -1)  # [style, class, pixel]
    class_effect, style_effect = grid.std(1).mean().item(), grid.std(0).mean().item()
    return plots.image_grid(images, out / "figures" / "analogies.png", nrow=len(classes)), class_effect, style_effect


STUDY = Study(report, axes=("labels", "seed"), measure=measure, columns=COLUMNS)
