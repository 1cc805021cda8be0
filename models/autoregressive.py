"""Autoregressive likelihoods p(x | z) = prod_i p(x_i | x_<i, z): decoders that can model x without z.

A factorised decoder needs z for every dependence between dimensions; an autoregressive one can
model them from x itself, and then the ELBO prefers to leave z unused (the information preference
of Chen et al. 2017, "Variational Lossy Autoencoder", Sec. 2.2). Here each dimension's logit is
the decoder's output for it (from z) plus a causal network of the ``window`` dimensions before it,
in raster order:

- vectors: masked 1-D convolutions (a MADE-style mask over a sliding window, Germain et al. 2015);
- images: a small gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with
  PixelCNN Decoders", Eq. 2-5: masked convolutions, gated units, the decoder's map of z added to
  every layer as a location-dependent bias), its first layer a (2 window + 1)^2 masked kernel: the
  local receptive field of VLAE's decoders (Chen et al. 2017, Sec. 3).

Only the first layer looks at other positions, so a dimension sees exactly the ``window`` before it
(on an image, ``window`` rows above and columns either side, and the pixels left of it in its row).
``window = 0`` is the factorised decoder. The log-density is one pass; sampling is exact and
sequential, one pass per dimension.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from torch import nn
from torch.distributions import constraints
from torch.distributions.utils import _sum_rightmost
from torch.nn import functional as F

from ppl_vae.errors import ConfigError

#: channels of the causal network's layers, and its gated layers after the masked one
CHANNELS, LAYERS = 32, 2


class CausalNetwork(nn.Module):
    """(x, c) -> a logit offset per dimension of x that reads only the ``window`` dimensions before it,
    and the decoder's logits c at every layer. For ``data_shape`` (n,) or (1, H, W)."""

    def __init__(self, data_shape: tuple[int, ...], window: int, channels: int = CHANNELS, layers: int = LAYERS):
        super().__init__()
        if len(data_shape) not in (1, 3) or (len(data_shape) == 3 and data_shape[0] != 1):
            raise ConfigError(f"an autoregressive likelihood needs vectors (n,) or one-channel images (1, H, W), "
                              f"not data of shape {list(data_shape)}: use likelihood 'bernoulli'")
        self.data_shape, self.window = tuple(data_shape), window
        conv = nn.Conv1d if len(data_shape) == 1 else nn.Conv2d
        size = 2 * window + 1
        self.first = conv(1, 2 * channels, size, padding=window)
        self.register_buffer("mask", _causal_mask(len(data_shape) - 1 or 1, size))  # 1-D or 2-D kernel
        self.gated = nn.ModuleList(conv(channels, 2 * channels, 1) for _ in range(layers))
        self.condition = nn.ModuleList(conv(1, 2 * channels, 1) for _ in range(layers + 1))
        self.out = conv(channels, 1, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x, context = (t.reshape(-1, 1, *self.data_shape[1:] or self.data_shape) for t in (x, context))
        h = _gate(self.first._conv_forward(x, self.first.weight * self.mask, self.first.bias),
                  self.condition[0](context))
        for layer, condition in zip(self.gated, self.condition[1:]):
            h = h + _gate(layer(h), condition(context))  # 1 x 1: no new position enters
        return self.out(h).reshape(shape)


def _gate(pre: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """tanh(a) * sigmoid(b) of the pre-activations plus the conditioning (van den Oord et al. 2016, Eq. 4)."""
    a, b = (pre + condition).chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def _causal_mask(dims: int, size: int) -> torch.Tensor:
    """A kernel mask that keeps the positions before the centre in raster order ("mask A")."""
    centre = size // 2
    if dims == 1:
        return (torch.arange(size) < centre).float()
    rows, columns = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((rows < centre) | ((rows == centre) & (columns < centre))).float()


class AutoregressiveBernoulli(TorchDistribution):
    """prod_i Bernoulli(x_i; sigmoid(logits_i + f_i(x_<i, logits))) over the last ``event_dims``
    dimensions, f the causal ``network``; ``logits`` come from z (the decoder's output).

    ``mean`` is the probability of each dimension given an exact draw of the ones before it (the
    mean of p(x | z) has no closed form): a picture of what the decoder makes of z.
    """

    arg_constraints = {"logits": constraints.real}
    has_rsample = False

    def __init__(self, logits: torch.Tensor, network: CausalNetwork, event_dims: int, validate_args=None):
        self.logits, self.network, self.event_dims = logits, network, event_dims
        split = logits.dim() - event_dims
        super().__init__(logits.shape[:split], logits.shape[split:], validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return constraints.independent(constraints.boolean, self.event_dims)

    def expand(self, batch_shape, _instance=None):
        return AutoregressiveBernoulli(self.logits.expand(*batch_shape, *self.event_shape), self.network,
                                       self.event_dims, self._validate_args)

    def _all_logits(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, value = torch.broadcast_tensors(self.logits, value)
        return logits + self.network(value, logits), value

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = self._all_logits(value)
        return -_sum_rightmost(F.binary_cross_entropy_with_logits(logits, value, reduction="none"), self.event_dims)

    @torch.no_grad()
    def sample(self, sample_shape=()) -> torch.Tensor:
        """Exact ancestral sampling, one dimension at a time in raster order."""
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        x = torch.zeros(shape, dtype=self.logits.dtype, device=self.logits.device)
        flat = x.view(*shape[:len(shape) - self.event_dims], -1)
        for i in range(math.prod(self.event_shape)):
            logits = self._all_logits(x)[0].reshape(flat.shape)
            flat[..., i] = torch.bernoulli(torch.sigmoid(logits[..., i]))
        return x

    @property
    def mean(self) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(self._all_logits(self.sample())[0])


class AutoregressiveBernoulliLikelihood(nn.Module):
    """The likelihood module (``likelihood = "bernoulli-autoregressive"``): decoder logits -> an
    ``AutoregressiveBernoulli`` whose causal network (``window`` dimensions back) it owns."""

    needs_binary_data = True

    def __init__(self, data_shape: tuple[int, ...], window: int):
        super().__init__()
        if window < 0:
            raise ConfigError(f"window = {window}: give how many dimensions before each one it may read (0 = none)")
        self.window = window
        self.network = CausalNetwork(data_shape, window)

    def forward(self, logits: torch.Tensor, event_dim: int) -> AutoregressiveBernoulli:
        return AutoregressiveBernoulli(logits, self.network, event_dim)
