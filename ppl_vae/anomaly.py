"""Anomaly scores of a trained pair: how unlike its training data an input is, per input.

A pair trained on normal data scores an input by how badly it reconstructs it (seed 003), by
its negative ELBO, or by its importance-weighted -log p(x) (Burda et al. 2016). Likelihoods
are known to favour simple inputs whatever they show (Nalisnick et al. 2019, "Do deep
generative models know what they don't know?"); Serra et al. (2020), "Input complexity and
out-of-distribution detection with likelihood-based generative models", Eq. 2, subtract the
input's complexity, its length under a generic compressor, which ``complexity_corrected`` does.
Every score is higher for a more anomalous input; ``roc_auc`` reads them against the truth.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from ppl_vae.diagnostics import elbo_terms, importance_log_likelihood

#: what each score is, for tables
SCORES = {"recon": "reconstruction error -E_q log p(x | z)", "neg_elbo": "-ELBO",
          "neg_log_px": "-log p(x), importance-weighted",
          "complexity_corrected": "-log p(x) - L(x), L = PNG length (Serra et al. 2020)"}


@torch.no_grad()
def reconstruction_score(model, guide, x: torch.Tensor, particles: int = 10, batch_size: int = 500) -> torch.Tensor:
    """-E_q[log p(x | z)] per input, averaged over ``particles`` draws z ~ q(z | x), in nats ``[N]``."""
    parts = []
    for chunk in x.split(batch_size):
        terms = elbo_terms(model, guide, chunk.repeat(particles, *[1] * (chunk.dim() - 1)))
        parts.append(terms.recon.reshape(particles, len(chunk)).mean(0))
    return torch.cat(parts)


def png_nats(images: torch.Tensor) -> torch.Tensor:
    """Each image's length as a losslessly compressed 8-bit PNG (Pillow, best compression), in nats:
    Serra et al.'s complexity L(x), which the file format's constant overhead shifts alike for all."""
    from PIL import Image

    pixels = (images.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    lengths = []
    for image in pixels.reshape(len(pixels), *pixels.shape[-2:]):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", optimize=True)
        lengths.append(8 * len(buffer.getvalue()) * math.log(2))
    return torch.tensor(lengths)


def scores(model, guide, x: torch.Tensor, iw_samples: int = 100) -> dict[str, torch.Tensor]:
    """Every score of ``SCORES`` for each input of ``x``, ``{name: [N]}``, on the CPU."""
    estimate = importance_log_likelihood(model, guide, x, iw_samples)
    neg_log_px = -estimate.log_px.cpu()
    return {"recon": reconstruction_score(model, guide, x).cpu(), "neg_elbo": -estimate.elbo.cpu(),
            "neg_log_px": neg_log_px, "complexity_corrected": neg_log_px - png_nats(x)}


def roc_auc(score: torch.Tensor, anomalous: torch.Tensor) -> float:
    """Area under the ROC curve of ``score`` for telling anomalous inputs from normal ones (scikit-learn):
    1 separates them perfectly, 0.5 is chance, below 0.5 ranks the normal inputs as the stranger."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(anomalous.cpu()), np.asarray(score.cpu())))
