"""The networks' layouts: conv stacks as published, any number of leading batch dimensions."""

import pytest
import torch
from torch import nn

from ppl_vae import GUIDES, MODELS
from ppl_vae.networks import Decoder, Encoder


def layers(module: nn.Module, kind: type) -> list[tuple[int, int, int, int]]:
    return [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]) for m in module.modules()
            if isinstance(m, kind)]


def test_64x64_conv_networks_are_those_of_higgins_and_locatello():
    """Locatello et al. (2019), Table 1 (as Higgins et al. 2017): four 4x4 stride-2 convs with 32, 32,
    64, 64 channels, FC 256; the decoder FC 256, FC 4*4*64 and the transposed convs back to 1 channel."""
    encoder, decoder = Encoder((1, 64, 64), [256], "conv"), Decoder(10, [256], (1, 64, 64), "conv")
    assert layers(encoder, nn.Conv2d) == [(1, 32, 4, 2), (32, 32, 4, 2), (32, 64, 4, 2), (64, 64, 4, 2)]
    assert [(m.in_features, m.out_features) for m in encoder.mlp if isinstance(m, nn.Linear)] == [(1024, 256)]
    linear = [(m.in_features, m.out_features) for m in decoder.mlp if isinstance(m, nn.Linear)]
    assert linear == [(10, 256), (256, 1024)]
    assert layers(decoder, nn.ConvTranspose2d) == [(64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 2), (32, 1, 4, 2)]
    z = torch.zeros(2, 3, 10)  # particles x batch
    assert decoder(z).shape == (2, 3, 1, 64, 64) and encoder(torch.zeros(2, 3, 1, 64, 64)).shape == (2, 3, 256)


def test_28x28_digits_keep_two_conv_layers():
    assert layers(Encoder((1, 28, 28), [64], "conv"), nn.Conv2d) == [(1, 32, 4, 2), (32, 64, 4, 2)]
    assert layers(Decoder(4, [64], (1, 28, 28), "conv"), nn.ConvTranspose2d) == [(64, 32, 4, 2), (32, 1, 4, 2)]


def test_every_pair_takes_the_64x64_conv_networks():
    model = MODELS["vae"]((1, 64, 64), latent_dim=10, hidden=[256], network="conv")
    guide = GUIDES["gaussian"](model)
    assert layers(guide.encoder, nn.Conv2d)[-1] == (64, 64, 4, 2)


def test_conv_needs_image_sides_divisible_by_4():
    with pytest.raises(ValueError, match="divisible by 4"):
        Encoder((1, 30, 30), [8], "conv")
