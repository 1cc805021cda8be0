"""Input corruption: what a denoising autoencoder is trained on, and what it is tested against.

The denoising criterion (Vincent et al. 2008, Sec. 2.3; for the VAE, Im et al. 2017, Eq. 5):
the encoder sees a corrupted x~ ~ C(x~ | x) and the decoder is scored on the clean x. In Pyro
terms the guide is run on ``corrupt(x)`` while the model observes ``x``; ``corrupted_inputs``
does that for any ``nn.Module`` guide, with a forward pre-hook, so no training loop changes
(``[train] input_noise`` turns it on in ``Trainer``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from ppl_vae.errors import ConfigError

Noise = Literal["none", "gaussian", "masking"]


def check(kind: str, level: float) -> None:
    """Raise ``ConfigError`` unless ``kind`` is a known noise and ``level`` fits it."""
    if kind not in ("none", "gaussian", "masking"):
        raise ConfigError(f"input noise {kind!r} is not one of none, gaussian, masking")
    if kind == "gaussian" and level < 0 or kind == "masking" and not 0 <= level < 1:
        raise ConfigError(f"noise level {level} is out of range for {kind} noise: a standard deviation >= 0, "
                          "or a masked fraction in [0, 1)")


def corrupt(x: torch.Tensor, kind: Noise, level: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A corrupted copy of images ``x`` in [0, 1]: ``gaussian``, x + level * eps clipped to [0, 1];
    ``masking``, a random fraction ``level`` of the pixels set to 0 (Vincent et al. 2010, Sec. 4.2)."""
    check(kind, level)
    if kind == "none" or level == 0:
        return x
    if kind == "gaussian":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + level * noise).clamp(0, 1)
    keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) >= level
    return x * keep


@contextmanager
def corrupted_inputs(guide: nn.Module, kind: Noise, level: float) -> Iterator[None]:
    """Within the block, ``guide(x, ...)`` sees ``corrupt(x)``; the model still observes ``x``.

    A training loss captured inside the block keeps the corruption (its draws stay random), so
    ``Trainer`` enters it for training steps only and scores on clean inputs.
    """
    check(kind, level)
    if kind == "none" or level == 0:
        yield
        return
    handle = guide.register_forward_pre_hook(lambda _, args: (corrupt(args[0], kind, level), *args[1:]))
    try:
        yield
    finally:
        handle.remove()
