"""Structured output prediction with the conditional VAE (Sohn, Lee & Yan 2015, their MNIST experiment,
and Pyro's CVAE example): shown 1, 2 or 3 quadrants of a digit, predict the others.

Each cell trains the ``cvae`` model (a prior network on the visible quadrants, the hidden pixels
scored) with a recognition network q(z | x) on the whole digit, and scores the conditional
log-likelihood of the hidden pixels on the held-out digits two ways: the bound (the negative ELBO,
as Pyro's table does) and the importance-weighted estimate (the paper's importance-sampled CLL,
``iw_samples`` draws from q). Beside it, the paper's baseline: a deterministic network of the same
widths from the visible to the hidden pixels, trained with the masked cross-entropy for the same
epochs (Pyro's ``BaselineNet`` and ``MaskedBCELoss``), whose single prediction is the mean of a
factorised Bernoulli. Reads the grid axes ``quadrants`` (named variants: how many are visible) and
``seed``.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pyro
import torch
from pyro import poutine
from torch import nn

from ppl_vae.lab import cell
from ppl_vae.lab.study import Study, by_axis, figure, margin_line, mean_sd
from ppl_vae.models.conditional import HIDDEN
from ppl_vae.networks import mlp
from ppl_vae.viz import plots

#: Pyro's CVAE example (tutorial/source/cvae.ipynb, "Evaluating the results"): per number of visible
#: quadrants, the NN baseline's masked cross-entropy and the CVAE's 10-particle negative ELBO, nats per
#: MNIST test digit on its grey pixels, after at most 50 epochs on the 60,000 training digits
PYRO_NN = {"1": 100.4, "2": 61.9, "3": 25.4}
PYRO_CVAE = {"1": 71.8, "2": 51.0, "3": 24.2}
#: held-out digits in the completions figure (columns), and CVAE draws per digit (rows)
INPUTS, DRAWS = 8, 5
COLUMNS = ("baseline_nll", "completion_spread")


def _masked_nll(network: nn.Module, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Per digit, -log p(x_hidden) under the Bernoulli means the network predicts from the visible
    pixels (the hidden ones marked as the CVAE's prior network sees them)."""
    logits = network(x.where(visible, HIDDEN).flatten(1)).view_as(x)
    nll = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return (nll * ~visible).flatten(1).sum(1)


def train_baseline(data, config: dict) -> nn.Module:
    """The NN baseline of Sohn et al. (2015) (Pyro's ``BaselineNet``): an MLP of the CVAE's
    widths from the visible pixels to every pixel, trained on the masked cross-entropy of the hidden
    ones with the cell's optimiser settings (Adam, learning rate, batch size, epochs) and seed, on the
    same dynamically binarised batches."""
    train, hidden = config["train"], list(config["model"].get("hidden", (500, 500)))
    n = data.train[0].numel()
    visible = data.train_fields["visible"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(train.get("seed", 0))
        network = mlp([n, *hidden, n]).to(data.train.device)
        optimiser = torch.optim.Adam(network.parameters(), lr=train.get("lr", 1e-3))
        for _ in range(train.get("epochs", 10)):
            for index in torch.randperm(len(data.train)).split(train.get("batch_size", 100) or len(data.train)):
                loss = _masked_nll(network, data.batch(index), visible[index]).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    return network.eval()


@torch.no_grad()
def completions(model, x: torch.Tensor, visible: torch.Tensor, draws: int) -> torch.Tensor:
    """``draws`` completions per digit ``[draws, N, *shape]``: z ~ p(z | x_visible), the hidden pixels
    the means of p(x | z), the visible ones as given."""
    with pyro.plate("draws", draws, dim=-2):
        trace = poutine.trace(model).get_trace(x, visible=visible)
    means = trace.nodes["x"]["fn"].mean.reshape(draws, *x.shape)
    return torch.where(visible, x, means)


def measure(model, guide, data, config: dict) -> dict:
    """The NN baseline's held-out -log p(x_hidden | x_visible) (``baseline_nll``), the CVAE's
    importance-weighted one (``cll_nll``, from the cell's diagnostics on the same digits), and how far
    apart the CVAE's completions of one digit lie (``completion_spread``: a pixel's standard deviation
    over draws, averaged over the hidden pixels; the baseline's is 0)."""
    x, visible = data.test_eval, data.test_fields["visible"]
    baseline = _masked_nll(train_baseline(data, config), x, visible)
    drawn = completions(model, x[:100], visible[:100], DRAWS)
    spread = drawn.std(0)[~visible[:100]].mean().item()
    return {"baseline_nll": baseline.mean().item(), "completion_spread": spread}


def report(out: Path, rows: list[dict], cells: list[dict]) -> str:
    """Held-out conditional NLL by visible quadrants, the CVAE beside the NN baseline and Pyro's
    table (mean +- sd over seeds), the completions figures, and the check that the CVAE predicts the
    hidden quadrants better than the baseline on every seed when one quadrant is visible."""
    for row in rows:
        row["cll_nll"] = -row["log_px_iw"]
    groups = by_axis(rows, "quadrants")
    order = sorted(groups)
    lines = ["# Conditional VAE: predicting the hidden quadrants of a digit", "",
             "Held-out -log p(x_hidden | x_visible), nats per digit, mean +- sd over seeds, on the embedded digits' "
             "500 held-out digits (binarised): the NN baseline's masked cross-entropy, the CVAE's negative ELBO "
             "(Pyro's measure) and its importance-weighted estimate (as Sohn et al. 2015 estimate the CLL). "
             "Pyro's CVAE example scored the grey pixels of MNIST's 10,000 test digits after up to 50 epochs on "
             "60,000: the same ordering is the finding to compare, not the values.", "",
             "| visible quadrants | seeds | NN baseline | CVAE -ELBO | CVAE (IS) | CVAE gain (IS) | "
             "NN (Pyro) | CVAE -ELBO (Pyro) | KL (nats) | active units |", "|" + "---|" * 10]
    for quadrants in order:
        group = groups[quadrants]
        lines.append(f"| {quadrants} | {len(group)} | {mean_sd([r['baseline_nll'] for r in group])} | "
                     f"{mean_sd([r['loss'] for r in group])} | {mean_sd([r['cll_nll'] for r in group])} | "
                     f"{mean_sd([r['baseline_nll'] - r['cll_nll'] for r in group])} | "
                     f"{PYRO_NN.get(quadrants, '')} | {PYRO_CVAE.get(quadrants, '')} | "
                     f"{mean_sd([r['kl'] for r in group])} | {mean_sd([r['active_units'] for r in group], digits=0)} |")
    lines += [""]
    for quadrants in order:
        first = min(groups[quadrants], key=lambda r: r["seed"])
        path = _figure(out, first, quadrants)
        lines += [figure(out, path, f"{quadrants} visible quadrant(s), seed {first['seed']}: each column a held-out "
                                    "digit; rows: what the pair sees (hidden pixels grey), the digit, the NN "
                                    f"baseline's prediction, then {DRAWS} CVAE completions, z ~ p(z | visible)"), ""]
    lines += ["## Checks", ""]
    fewest = sorted(groups[order[0]], key=lambda r: r["seed"])
    per_seed = ", ".join(f"seed {r['seed']}: {r['cll_nll']:.1f} against {r['baseline_nll']:.1f}" for r in fewest)
    lines.append(margin_line([r["cll_nll"] for r in fewest], [r["baseline_nll"] for r in fewest],
                             f"with {order[0]} visible quadrant(s) the CVAE's conditional NLL is below the NN "
                             f"baseline's on every seed ({per_seed}): the gain, in nats", digits=1))
    gains = [statistics.fmean(r["baseline_nll"] - r["cll_nll"] for r in groups[q]) for q in order]
    shrinks = gains == sorted(gains, reverse=True)
    lines.append(f"- observed: the CVAE's gain over the baseline by visible quadrants "
                 f"{', '.join(f'{q}: {g:.1f}' for q, g in zip(order, gains))} nats (Pyro's: "
                 f"{', '.join(f'{q}: {PYRO_NN[q] - PYRO_CVAE[q]:.1f}' for q in order if q in PYRO_NN)}); "
                 + ("it shrinks as more of the digit is shown, as in Pyro's table" if shrinks
                    else "it does not shrink steadily as more is shown"))
    lines.append(f"- observed: the CVAE's completions of one digit differ by "
                 f"{', '.join(mean_sd([r['completion_spread'] for r in groups[q]], digits=3) for q in order)} "
                 "(a hidden pixel's sd over draws, by visible quadrants); the baseline draws one mean")
    return "\n".join(lines) + "\n"


def _figure(out: Path, row: dict, quadrants: str) -> Path:
    """The completions figure of one cell: its digits, the baseline's prediction (retrained as the
    cell's ``measure`` trained it, the same seed and batches) and the CVAE's draws."""
    data, model, guide = cell.restore(out / row["cell"], device="cpu")
    config = json.loads((out / row["cell"] / "config.json").read_text())
    x, visible = data.test_eval[:INPUTS], data.test_fields["visible"][:INPUTS]
    baseline = train_baseline(data, config)
    with torch.no_grad():
        predicted = torch.sigmoid(baseline(x.where(visible, HIDDEN).flatten(1))).view_as(x)
    shown = torch.where(visible, x, torch.full_like(x, 0.5))
    rows = [shown, x, torch.where(visible, x, predicted), *completions(model, x, visible, DRAWS)]
    return plots.image_grid(torch.cat(rows), out / "figures" / f"completions-{quadrants}.png", nrow=INPUTS)


STUDY = Study(report, axes=("quadrants", "seed"), measure=measure, columns=COLUMNS)
