"""Encoder and decoder networks (plain ``torch.nn``), shared by models and guides.

Every network accepts any number of leading batch dimensions, so the same
module serves a mini-batch ``[B, ...]`` and vectorised particles ``[K, B, ...]``.
Data are ``[B, *data_shape]``: ``data_shape`` is ``(n,)`` for vectors and
``(C, H, W)`` for images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

Network = Literal["mlp", "conv"]
Activation = Literal["relu", "tanh", "elu"]
Head = Literal["scale", "variance"]
#: the nonlinearity between fully connected layers: ReLU by default, tanh as in Burda et al. (2016), Sec. 5,
#: ELU (Clevert et al. 2016) as in Shu's "Autoencoding a Single Bit"
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


@dataclass(frozen=True)
class NetworkConfig:
    """The encoder widths, network kind and activation a model's decoder mirrors; guides built for
    the model take them as their defaults, so a pair is symmetric unless told otherwise."""

    hidden: tuple[int, ...] = (256,)  # encoder widths, input side first
    network: Network = "mlp"  # "mlp", or "conv" for images
    activation: Activation = "relu"  # between the fully connected layers (conv stacks keep ReLU)
    head: Head = "scale"  # what a Gaussian head's softplus outputs: the standard deviation, or the variance
    top_hidden: tuple[int, ...] | None = None  # widths of the networks between two latent layers; None = (hidden[-1],)


def mlp(sizes: list[int], final_activation: bool = False, activation: Activation = "relu") -> nn.Sequential:
    """Linear layers of the given widths with ``activation`` (``ACTIVATIONS``) between them."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or final_activation:
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


#: channels of the stride-2 convolutions (4x4 kernels): two for small images (28 x 28 digits), four
#: for sides divisible by 16 (64 x 64 shapes), the encoder of Higgins et al. (2017) and Locatello
#: et al. (2019, Table 1); the decoder mirrors them with transposed convolutions
CONV_CHANNELS = {2: (32, 64), 4: (32, 32, 64, 64)}


def _conv_layout(data_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int, int]:
    """The conv channels for images of ``data_shape`` and the feature grid (h, w) they leave."""
    if len(data_shape) != 3 or data_shape[1] % 4 or data_shape[2] % 4:
        raise ValueError(
            f"network='conv' needs images of shape (C, H, W) with H and W divisible by 4, "
            f"got data shape {data_shape}; use network='mlp' for this data"
        )
    layers = 4 if data_shape[1] % 16 == 0 and data_shape[2] % 16 == 0 else 2
    return CONV_CHANNELS[layers], data_shape[1] >> layers, data_shape[2] >> layers


def _stride2(convolution: type, channels: list[int], last_activation: bool) -> list[nn.Module]:
    """4x4 stride-2 (transposed) convolutions between successive ``channels``, ReLU between them."""
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
        layers.append(convolution(c_in, c_out, 4, stride=2, padding=1))
        if i < len(channels) - 2 or last_activation:
            layers.append(nn.ReLU())
    return layers


class Encoder(nn.Module):
    """x ``[..., *data_shape]`` -> features ``[..., hidden[-1]]`` (MLP, or stride-2 convs first:
    ``CONV_CHANNELS``); ``activation`` between the fully connected layers."""

    def __init__(self, data_shape: tuple[int, ...], hidden: list[int], network: Network = "mlp",
                 activation: Activation = "relu"):
        super().__init__()
        self.data_shape = tuple(data_shape)
        if network == "conv":
            channels, h, w = _conv_layout(self.data_shape)
            self.conv = nn.Sequential(*_stride2(nn.Conv2d, [self.data_shape[0], *channels], True), nn.Flatten())
            n_in = channels[-1] * h * w
        else:
            self.conv = nn.Flatten()
            n_in = math.prod(self.data_shape)
        self.mlp = mlp([n_in, *hidden], final_activation=True, activation=activation)
        self.out_features = hidden[-1] if hidden else n_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[: x.dim() - len(self.data_shape)]
        h = self.conv(x.reshape(-1, *self.data_shape))
        return self.mlp(h).reshape(*batch, -1)


class Decoder(nn.Module):
    """z ``[..., latent_dim]`` -> likelihood parameters ``[..., *data_shape]`` (MLP, or the encoder's
    convs mirrored as transposed convs last); ``activation`` between the fully connected layers."""

    def __init__(self, latent_dim: int, hidden: list[int], data_shape: tuple[int, ...], network: Network = "mlp",
                 activation: Activation = "relu"):
        super().__init__()
        self.data_shape = tuple(data_shape)
        if network == "conv":
            channels, h, w = _conv_layout(self.data_shape)
            self.grid = (channels[-1], h, w)
            self.mlp = mlp([latent_dim, *hidden, math.prod(self.grid)], final_activation=True, activation=activation)
            self.deconv = nn.Sequential(*_stride2(nn.ConvTranspose2d, [*reversed(channels), self.data_shape[0]], False))
        else:
            self.grid = None
            self.mlp = mlp([latent_dim, *hidden, math.prod(self.data_shape)], activation=activation)
            self.deconv = nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = self.mlp(z.reshape(-1, z.shape[-1]))
        if self.grid is not None:
            h = self.deconv(h.reshape(-1, *self.grid))
        return h.reshape(*batch, *self.data_shape)


def joined(*parts: torch.Tensor) -> torch.Tensor:
    """The tensors concatenated on their last dimension, their leading (batch, enumeration) dimensions
    broadcast first: under parallel enumeration a class has a dimension of its own on the left."""
    batch = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
    return torch.cat([p.expand(*batch, p.shape[-1]) for p in parts], -1)


class GaussianHead(nn.Module):
    """features -> (loc, scale) of a diagonal Gaussian. ``head = "scale"``: scale = softplus(.) +
    min_scale; ``"variance"``: scale = sqrt(softplus(.) + min_scale^2), the softplus giving the
    variance (as Shu's single-bit code does): at the same output the two differ, and with them
    the scale a fresh network starts from (softplus(0) = 0.69 is a standard deviation of 0.69
    or 0.83) and how fast it can shrink."""

    def __init__(self, in_features: int, out_features: int, min_scale: float = 1e-4, head: Head = "scale"):
        super().__init__()
        if head not in ("scale", "variance"):
            raise ValueError(f"head {head!r} is not a Gaussian head: use 'scale' or 'variance'")
        self.linear = nn.Linear(in_features, 2 * out_features)
        self.min_scale, self.head = min_scale, head

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw = self.linear(h).chunk(2, dim=-1)
        if self.head == "variance":
            return loc, (F.softplus(raw) + self.min_scale ** 2).sqrt()
        return loc, F.softplus(raw) + self.min_scale
