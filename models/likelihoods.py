"""Likelihoods p(x | z): modules mapping decoder outputs to a distribution over x.

``forward(params, event_dim)`` returns a distribution whose event covers the
``event_dim`` data dimensions, so one likelihood serves vectors and images.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions.utils import _sum_rightmost, broadcast_all
from torch.nn import functional as F

from ppl_vae.errors import ConfigError


class FactorisedBernoulli(dist.Independent):
    """``Bernoulli(logits).to_event(n)`` whose ``log_prob`` sums the per-pixel cross-entropy
    before negating it: the same values, one pass over the pixels fewer forward and backward
    (about 2% of a training step at batch 1,024; ``benchmarks/bench.py``).

    >>> d = FactorisedBernoulli(dist.Bernoulli(logits=torch.zeros(2, 3)), 1)
    >>> d.log_prob(torch.ones(2, 3))
    tensor([-2.0794, -2.0794])
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.base_dist.logits, value)
        nll = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
        return -_sum_rightmost(nll, self.reinterpreted_batch_ndims)


class Bernoulli(nn.Module):
    """Factorised Bernoulli on logits; needs binary data (binarise images first)."""

    needs_binary_data = True

    def forward(self, logits: torch.Tensor, event_dim: int) -> dist.Distribution:
        return FactorisedBernoulli(dist.Bernoulli(logits=logits), event_dim)


class Gaussian(nn.Module):
    """Factorised Gaussian with mean = decoder output and one scale, fixed or learned."""

    needs_binary_data = False

    def __init__(self, scale: float = 0.1, learn_scale: bool = False):
        super().__init__()
        if scale <= 0:
            raise ValueError(f"the Gaussian likelihood needs scale > 0, got {scale}")
        log_scale = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self, loc: torch.Tensor, event_dim: int) -> dist.Distribution:
        return dist.Normal(loc, self.log_scale.exp()).to_event(event_dim)


#: name -> factory(scale); ``scale`` is used by the Gaussian likelihoods only.
LIKELIHOODS = {
    "bernoulli": lambda scale: Bernoulli(),
    "gaussian": lambda scale: Gaussian(scale, learn_scale=False),
    "gaussian-learned": lambda scale: Gaussian(scale, learn_scale=True),
}


def masked_pixels(likelihood: dist.Independent, mask: torch.Tensor) -> dist.Distribution:
    """``likelihood`` (a distribution with ``to_event`` over the data's dimensions) scoring only the
    pixels where ``mask`` is True: log p sums over those alone, the others count 0."""
    return likelihood.base_dist.mask(mask).to_event(likelihood.reinterpreted_batch_ndims)


#: how far back an autoregressive likelihood reads by default (a 7 x 7 causal neighbourhood on images)
DEFAULT_WINDOW = 3


def make_likelihood(name: str, data_shape: tuple[int, ...], scale: float = 0.1, window: int | None = None,
                    channels: int = 32) -> nn.Module:
    """The likelihood module ``name``: one of ``LIKELIHOODS`` (``scale`` for the Gaussian ones), or
    ``"bernoulli-autoregressive"``, whose causal network of ``channels`` reads ``window`` dimensions
    back (``models.autoregressive``)."""
    if name == "bernoulli-autoregressive":
        from ppl_vae.models.autoregressive import AutoregressiveBernoulliLikelihood

        return AutoregressiveBernoulliLikelihood(data_shape, DEFAULT_WINDOW if window is None else window, channels)
    if window is not None:
        raise ConfigError(f"window = {window} applies to likelihood 'bernoulli-autoregressive' only, not {name!r}: "
                          "drop it, or set likelihood = \"bernoulli-autoregressive\"")
    return LIKELIHOODS[name](scale)
