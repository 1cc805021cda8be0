"""Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", Table 1: the held-out
log-likelihood of the VAE (k = 1) and the IWAE (k = 50) with one and two stochastic layers on MNIST.

Reads the grid axes ``layers`` (named variants ``1``: the ``vae`` with the ``gaussian`` guide;
``2``: the ``dlgm`` with the ``structured`` guide) and ``objective`` (``vae``: estimator ``mc``,
one particle; ``iwae``: estimator ``iw``, k = 50; their Eq. 8). Each trained cell's log p(x) is
the importance-weighted estimate of Eq. 8 with K = ``[diagnostics] iw_samples`` (the paper: 5,000)
on the first ``rows`` held-out images (the paper: all 10,000 test images), with its standard error
over those images.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from torch import nn

from ppl_vae.lab.study import Study, check_line, figure
from ppl_vae.networks import ACTIVATIONS
from ppl_vae.viz import plots

#: Burda et al. (2016), Table 1, MNIST: test NLL in nats by (stochastic layers, objective, k); the
#: only entries this report prints
PAPER_NLL = {(1, "VAE", 1): 86.76, (2, "VAE", 1): 85.33, (1, "IWAE", 50): 84.78, (2, "IWAE", 50): 82.90}
#: the paper's protocol: its data, training passes (3^0 + ... + 3^7), test images and samples per image
PAPER_DATA, PAPER_EPOCHS, PAPER_TEST_ROWS, PAPER_IW_SAMPLES = "mnist", 3280, 10_000, 5000
#: the registered models, by their number of stochastic layers
LAYERS = {"vae": 1, "dlgm": 2}
#: Burda et al. (2016), Sec. 5: the inference networks, by stochastic layers
PAPER_NETWORKS = {1: "x-200-200-z (50)", 2: "x-200-200-z1 (100)-100-100-z2 (50)"}
COLUMNS = ("log_px_iw_stderr", "activations")


def _activations(module: nn.Module) -> str:
    """The nonlinearities (``ACTIVATIONS``) found in a module's layers, e.g. ``tanh``."""
    found = [name for name, kind in ACTIVATIONS.items() if any(isinstance(m, kind) for m in module.modules())]
    return "+".join(found) or "none"


def measure(model, guide, data, config: dict) -> dict:
    """The nonlinearities the trained model and guide use (log p(x) and its standard error over the
    held-out images are ``collapse.diagnose``'s ``log_px_iw`` and ``log_px_iw_stderr``)."""
    return {"activations": f"model {_activations(model)}, guide {_activations(guide)}"}


def _depth(layers) -> str:
    """``1 layer``, ``2 layers``."""
    return f"{layers} layer" + ("" if layers == 1 else "s")


def _network(row: dict, model: dict) -> str:
    """A cell's inference network as ``PAPER_NETWORKS`` writes it, from its latent sizes and ``hidden``
    (the experiment files set ``hidden``; without it the widths show as ``?``)."""
    hidden, dims = [str(w) for w in model.get("hidden", ["?"])], row["latent_dims"]
    if set(dims) == {"z1", "z2"}:  # the dlgm: z1 -> z2 through one hidden layer of hidden[-1] units
        return f"x-{'-'.join(hidden)}-z1 ({dims['z1']})-{hidden[-1]}-z2 ({dims['z2']})"
    return f"x-{'-'.join(hidden)}-" + "-".join(f"{site} ({n})" for site, n in dims.items())


def _objective(cell: dict) -> tuple[str, int]:
    """("IWAE" or "VAE", k) of a cell's ``[train]``."""
    train = cell.get("train", {})
    return "IWAE" if train.get("estimator", "mc") == "iw" else "VAE", train.get("num_particles", 1)


def _schedule(train: dict) -> str:
    """A cell's learning rate schedule in words."""
    lr, final = train.get("lr", 1e-3), train.get("lr_final")
    return (f"decays the learning rate exponentially from {lr:g} to {final:g}" if final
            else f"keeps the learning rate at {lr:g}")


def _departures(rows: list[dict], cells: list[dict]) -> list[str]:
    """Where the run's protocol falls short of the paper's (beyond the data)."""
    first, data, train = rows[0], cells[0]["data"], cells[0].get("train", {})
    found = []
    if "limit" in data:
        found.append(f"the first {data['limit']} training images only (data.limit), not all 60,000")
    if train.get("epochs", 20) < PAPER_EPOCHS:
        found.append(f"{train.get('epochs', 20)} passes over the training set, not {PAPER_EPOCHS:,}")
    if first["diagnostics_rows"] < PAPER_TEST_ROWS:
        found.append(f"log p(x) on {first['diagnostics_rows']:,} held-out images, not all {PAPER_TEST_ROWS:,}")
    if first["iw_samples"] < PAPER_IW_SAMPLES:
        found.append(f"K = {first['iw_samples']:,} importance samples per image, not {PAPER_IW_SAMPLES:,} "
                     "(a smaller K gives a lower estimate: Burda et al., Theorem 1)")
    return found


def report(out: Path, rows: list[dict], cells: list[dict]) -> str:
    """The grid's held-out log p(x) (mean +- standard error over the images), -ELBO and active units
    beside Table 1's NLL; whether the data and protocol are the paper's; the check that IWAE (k = 50)
    scores at least as high as the VAE at each depth; log p(x) by depth as a figure."""
    data, train = rows[0]["data"], cells[0].get("train", {})
    keys = [(LAYERS.get(r["model"], r["model"]), *_objective(c)) for r, c in zip(rows, cells)]
    lines = ["# Held-out log-likelihood of VAE and IWAE, 1 and 2 stochastic layers (Burda et al. 2016, Table 1)", ""]
    if data != PAPER_DATA:
        lines.append(f"**NOT comparable with the paper: this run used the `{data}` data, not MNIST.** The paper's "
                     "numbers are printed for reference only.")
    elif departures := _departures(rows, cells):
        lines.append("MNIST, but not the paper's protocol, so the numbers are not comparable with Table 1: "
                     + "; ".join(departures) + ".")
    else:
        lines.append(f"MNIST with the paper's protocol: {PAPER_EPOCHS:,} passes, log p(x) on all "
                     f"{PAPER_TEST_ROWS:,} test images (one fixed Bernoulli draw of each) with "
                     f"K = {PAPER_IW_SAMPLES:,}.")
    lines += ["", f"log p(x): Eq. 8 of Burda et al. with K = {rows[0]['iw_samples']:,} per image on "
              f"{rows[0]['diagnostics_rows']:,} held-out images, mean +- standard error over the images; NLL = "
              "-log p(x). -ELBO and active units (Cov_x E_q[u | x] > 0.01, per latent site) as in "
              "`collapse.diagnose`. Nats per image.", "",
              "| layers | objective | k | log p(x) +- s.e. | NLL | paper NLL (Table 1) | -ELBO | active units "
              "| nonlinearities |", "|" + "---|" * 9]
    for (layers, objective, k), row in zip(keys, rows):
        units = ", ".join(f"{site} {n} / {row['latent_dims'][site]}" for site, n in row["active_units_sites"].items())
        paper = PAPER_NLL.get((layers, objective, k))
        lines.append(f"| {layers} | {objective} | {k} | {row['log_px_iw']:.2f} +- {row['log_px_iw_stderr']:.2f} | "
                     f"{-row['log_px_iw']:.2f} | {'' if paper is None else f'{paper:.2f}'} | {row['loss']:.2f} | "
                     f"{units} | {row['activations']} |")
    lines += ["", "Networks (Sec. 5 of the paper: tanh units, the generative side mirroring the inference side), "
              "the paper's against this run's:", ""]
    first = {}  # a row and config per depth
    for (layers, _, _), row, cell in zip(keys, rows, cells):
        first.setdefault(layers, (row, cell))
    for layers, (row, cell) in sorted(first.items(), key=lambda item: str(item[0])):
        lines.append(f"- {_depth(layers)}: {PAPER_NETWORKS.get(layers, 'not in the paper')} against "
                     f"{_network(row, cell['model'])}, {cell['model'].get('activation', 'relu')}")
    lines += ["", "Our z1 <-> z2 networks (p(z1 | z2) of the `dlgm` model, q(z2 | z1) of the `structured` guide) "
              "have one hidden layer as wide as the last of `hidden` where the paper's have two of 100 units. The "
              "`nonlinearities` column shows what the trained networks use. The paper trains 3^i passes at "
              "learning rate 1e-3 * 10^(-i/7) for i = 0..7 (3,280 passes) in batches of 20, with Adam's epsilon "
              "1e-4; this run "
              f"{_schedule(train)} over {train.get('epochs', 20):,} passes in batches of "
              f"{train.get('batch_size', 128)}, with torch's epsilon, 1e-8."]

    lines += ["", "## Checks", ""]
    mean = {key: statistics.fmean(r["log_px_iw"] for r, k in zip(rows, keys) if k == key) for key in set(keys)}
    depths = sorted({layers for layers, _, _ in keys}, key=str)
    for layers in depths:
        vae, iwae = mean.get((layers, "VAE", 1)), mean.get((layers, "IWAE", 50))
        if vae is not None and iwae is not None:
            paper = (f"; Table 1: {PAPER_NLL[layers, 'VAE', 1] - PAPER_NLL[layers, 'IWAE', 50]:.2f} nats higher"
                     if (layers, "IWAE", 50) in PAPER_NLL else "")
            lines.append(check_line(iwae >= vae, f"{_depth(layers)}: IWAE (k = 50) has a held-out log p(x) at least "
                                    f"as high as the VAE's (k = 1): {iwae:.2f} against {vae:.2f} nats "
                                    f"({iwae - vae:+.2f}{paper})"))

    objectives = list(dict.fromkeys(key[1:] for key in keys))
    series = {f"{o} (k = {k})": [mean.get((d, o, k), math.nan) for d in depths] for o, k in objectives}
    references = ({f"paper {o} (k = {k})": [-PAPER_NLL.get((d, o, k), math.nan) for d in depths] for o, k in objectives}
                  if data == PAPER_DATA else None)
    drawn = plots.curves(depths, series, out / "figures" / "log_px.png", "stochastic layers",
                         "held-out log p(x) (nats)", references=references,
                         title="Held-out log p(x) by depth and objective")
    lines += ["", figure(out, drawn, "Held-out log p(x) by depth, per objective"
                         + (", the paper's Table 1 dashed" if references else ""))]
    return "\n".join(lines) + "\n"


STUDY = Study(report, variants={"layers": ("1", "2"), "objective": ("vae", "iwae")}, measure=measure,
              columns=COLUMNS)
