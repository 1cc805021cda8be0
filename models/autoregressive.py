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

#: channels of the causal network's layers (by default), and its gated layers after the masked one
CHANNELS, LAYERS = 32, 2


class CausalNetwork(nn.Module):
    """(x, c) -> a logit offset per dimension of x that reads only the ``window`` dimensions before it,
    and the decoder's logits c at every layer. For ``data_shape`` (n,) or (1, H, W).

    The first layer is a masked convolution, written as a dense layer over the causal neighbourhood
    (the positions its mask keeps, gathered by shifting x); the gated layers after it are 1 x 1
    convolutions, dense layers per position. Channels last: far faster on a CPU than convolutions
    of a few channels.
    """

    def __init__(self, data_shape: tuple[int, ...], window: int, channels: int = CHANNELS, layers: int = LAYERS):
        super().__init__()
        if len(data_shape) not in (1, 3) or (len(data_shape) == 3 and data_shape[0] != 1):
            raise ConfigError(f"an autoregressive likelihood needs vectors (n,) or one-channel images (1, H, W), "
                              f"not data of shape {list(data_shape)}: use likelihood 'bernoulli'")
        self.data_shape, self.window = tuple(data_shape), window
        self.offsets = _causal_offsets(len(data_shape) == 3, window)
        self.first = nn.Linear(len(self.offsets), 2 * channels) if self.offsets else None  # window 0: none
        self.gated = nn.ModuleList(nn.Linear(channels, 2 * channels) for _ in range(layers))
        self.condition = nn.ModuleList(nn.Linear(1, 2 * channels) for _ in range(layers + 1))
        self.out = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        spatial = self.data_shape[1:] if len(self.data_shape) == 3 else self.data_shape
        x, context = x.reshape(-1, *spatial), context.reshape(-1, math.prod(spatial), 1)
        h = _gate(self.first(self._neighbourhood(x)) if self.first is not None else 0.0, self.condition[0](context))
        for layer, condition in zip(self.gated, self.condition[1:]):
            h = h + _gate(layer(h), condition(context))  # per position: no new position enters
        return self.out(h).reshape(shape)

    def _neighbourhood(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, positions, offsets]``: at each position, x at each causal offset (0 beyond the edges)."""
        w = self.window
        if x.dim() == 2:  # vectors: x_{i - 1}, ..., x_{i - w}
            padded = F.pad(x, (w, 0))
            parts = [padded[:, w - back:w - back + x.shape[1]] for (back,) in self.offsets]
        else:  # images: (rows up, columns across) within the window, raster order before the pixel
            height, width = x.shape[1:]
            padded = F.pad(x, (w, w, w, 0))
            parts = [padded[:, w - up:w - up + height, w + across:w + across + width] for up, across in self.offsets]
        return torch.stack(parts, -1).reshape(len(x), -1, len(self.offsets))


def _causal_offsets(image: bool, window: int) -> list[tuple[int, ...]]:
    """The positions before a dimension that it reads: ``(back,)`` for vectors, 1 .. window; ``(up,
    across)`` for images, the ``window`` rows above (columns -window .. window) and the ``window``
    pixels to the left in its row: a (2 window + 1)^2 kernel's "mask A"."""
    if not image:
        return [(back,) for back in range(1, window + 1)]
    above = [(up, across) for up in range(window, 0, -1) for across in range(-window, window + 1)]
    return above + [(0, across) for across in range(-window, 0)]


def _gate(pre: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """tanh(a) * sigmoid(b) of the pre-activations plus the conditioning (van den Oord et al. 2016, Eq. 4)."""
    a, b = (pre + condition).chunk(2, dim=-1)
    return torch.tanh(a) * torch.sigmoid(b)


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

    def __init__(self, data_shape: tuple[int, ...], window: int, channels: int = CHANNELS):
        super().__init__()
        if window < 0:
            raise ConfigError(f"window = {window}: give how many dimensions before each one it may read (0 = none)")
        if channels < 1:
            raise ConfigError(f"ar_channels = {channels}: the causal network needs at least 1 channel")
        self.window = window
        self.network = CausalNetwork(data_shape, window, channels)

    def forward(self, logits: torch.Tensor, event_dim: int) -> AutoregressiveBernoulli:
        return AutoregressiveBernoulli(logits, self.network, event_dim)
