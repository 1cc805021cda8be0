"""Anomaly scores of a trained pair: how unlike its training data an input is, per input.

A pair trained on normal data scores an input by how badly it reconstructs it (seed 003), by
its negative ELBO, or by its importance-weighted -log p(x) (Burda et al. 2016). Likelihoods
are known to favour simple inputs whatever they show (Nalisnick et al. 2019, "Do deep
generative models know what they don't know?"); Serra et al. (2020), "Input complexity and
out-of-distribution detection with likelihood-based generative models", Eq. 2, subtract the
input's complexity, its length under a generic compressor, which ``complexity_corrected`` does;
Schirrmeister et al. (2020), "Understanding anomaly detection with deep invertible networks
through hierarchies of distributions and features", Sec. 5, divide the likelihood by that of a
model of local pixel statistics alone (``LocalPixelModel``), which ``likelihood_ratio`` does.
Every score is higher for a more anomalous input; ``roc_auc`` reads them against the truth.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from ppl_vae.infer.bounds import elbo_terms, importance_log_likelihood

#: what each score is, for tables
SCORES = {"recon": "reconstruction error -E_q log p(x | z)", "neg_elbo": "-ELBO",
          "neg_log_px": "-log p(x), importance-weighted",
          "complexity_corrected": "-log p(x) - L(x), L = PNG length (Serra et al. 2020)",
          "likelihood_ratio": "-log p(x) + log p_local(x), a local pixel model (Schirrmeister et al. 2020)"}


class LocalPixelModel:
    """p(x) = prod_ij p(x_ij | its left, upper-left, upper and upper-right neighbours) for binary
    images: local stroke statistics and nothing more, the same at every position, fitted by counting
    (add-one-half smoothing). What it finds likely, any image model finds likely; the likelihood
    ratio against it keeps what the deep model knows beyond local statistics."""

    #: the causal neighbours, (row, column) offsets
    NEIGHBOURS = ((0, -1), (-1, -1), (-1, 0), (-1, 1))

    def __init__(self, train: torch.Tensor):
        context, pixels = self._contexts(train), train.reshape(len(train), *train.shape[-2:]).cpu()
        size = 2 ** len(self.NEIGHBOURS)
        ones = torch.bincount(context.flatten(), pixels.flatten(), size)
        seen = torch.bincount(context.flatten(), minlength=size).to(ones.dtype)
        self.p_one = (ones + 0.5) / (seen + 1)

    def _contexts(self, x: torch.Tensor) -> torch.Tensor:
        """Each pixel's neighbours as a binary number, ``[N, H, W]`` (outside the image: 0)."""
        v = x.reshape(len(x), *x.shape[-2:]).cpu().round().long()
        h, w = v.shape[-2:]
        padded = torch.nn.functional.pad(v, (1, 1, 1, 0))
        return sum(padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] << i for i, (dy, dx) in enumerate(self.NEIGHBOURS))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) of each binary image, in nats ``[N]``."""
        p, v = self.p_one[self._contexts(x)], x.reshape(len(x), *x.shape[-2:]).cpu()
        return (v * p.log() + (1 - v) * (1 - p).log()).flatten(1).sum(1)


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


def scores(model, guide, x: torch.Tensor, train: torch.Tensor, iw_samples: int = 100) -> dict[str, torch.Tensor]:
    """Every score of ``SCORES`` for each binary input of ``x``, ``{name: [N]}``, on the CPU; ``train``:
    the binary images the pair was trained on (for the local pixel model)."""
    estimate = importance_log_likelihood(model, guide, x, iw_samples)
    neg_log_px = -estimate.log_px.cpu()
    return {"recon": reconstruction_score(model, guide, x).cpu(), "neg_elbo": -estimate.elbo.cpu(),
            "neg_log_px": neg_log_px, "complexity_corrected": neg_log_px - png_nats(x),
            "likelihood_ratio": neg_log_px + LocalPixelModel(train).log_prob(x)}


def roc_auc(score: torch.Tensor, anomalous: torch.Tensor) -> float:
    """Area under the ROC curve of ``score`` for telling anomalous inputs from normal ones (scikit-learn):
    1 separates them perfectly, 0.5 is chance, below 0.5 ranks the normal inputs as the stranger."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(anomalous.cpu()), np.asarray(score.cpu())))
