"""One- and two-layer latent-variable models p(x, z) as Pyro programs.

The contract every model keeps (and every guide relies on): ``forward(x)``
samples its latents inside ``pyro.plate("data", len(x))`` and observes ``x``
at the site ``"x"``; ``latent_dims`` maps latent site names, in model order,
to their sizes; ``data_shape`` is the shape of one example.

Models and guides are plain ``torch.nn.Module`` instances: a ``PyroModule`` issues a Pyro ``param``
statement for every parameter each time it is touched, which costs more per step than the
rest of Pyro's machinery (``benchmarks/bench.py``). Subclass ``PyroModule`` where you need
``PyroParam`` or ``PyroSample``; the toolkit accepts either.
"""

from __future__ import annotations

from typing import Literal

import pyro
import pyro.distributions as dist
from torch import nn

from ppl_vae.models.likelihoods import make_likelihood
from ppl_vae.models.priors import PRIORS, StandardNormal
from ppl_vae.networks import Activation, Decoder, GaussianHead, Head, Network, NetworkConfig, mlp
from ppl_vae.registry import MODELS

Prior = Literal["normal", "mixture", "bernoulli"]
#: likelihoods factorised given z (any model), and with them the autoregressive one (``models.autoregressive``)
Factorised = Literal["bernoulli", "gaussian", "gaussian-learned"]
Likelihood = Literal["bernoulli", "gaussian", "gaussian-learned", "bernoulli-autoregressive"]


class GaussianVAE(nn.Module):
    """p(z) p(x | z) with z ~ N(0, I) by default (Kingma & Welling 2014, Sec. 3).

    :param decoder: network z -> likelihood parameters of shape ``data_shape``.
    :param prior: module whose ``forward()`` gives p(z), e.g. ``StandardNormal(d)``.
    :param likelihood: module mapping decoder output to p(x | z), e.g. ``Bernoulli()``.
    :param data_shape: shape of one example.
    :param network_config: the widths and kind of network ``decoder`` mirrors, which guides take
        as their defaults (default: ``NetworkConfig()``).

    >>> from ppl_vae.models import GaussianVAE, StandardNormal, Bernoulli
    >>> from ppl_vae.networks import Decoder
    >>> model = GaussianVAE(Decoder(2, [16], (5,)), StandardNormal(2), Bernoulli(), (5,))
    >>> model.latent_dims
    {'z': 2}
    """

    def __init__(self, decoder: nn.Module, prior: nn.Module, likelihood: nn.Module, data_shape: tuple[int, ...],
                 network_config: NetworkConfig | None = None):
        super().__init__()
        self.decoder, self.prior, self.likelihood = decoder, prior, likelihood
        self.data_shape, self.network_config = tuple(data_shape), network_config or NetworkConfig()
        self.latent_dims = {"z": prior().event_shape[0]}

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.likelihood(self.decoder(z), len(self.data_shape)), obs=x)


class DLGM(nn.Module):
    """Two stochastic layers p(z2) p(z1 | z2) p(x | z1): the deep latent Gaussian model of
    Rezende, Mohamed & Wierstra (2014), Eq. 2, with L = 2.

    :param conditional: network z2 -> (loc, scale) of the Gaussian p(z1 | z2).
    :param network_config: as for ``GaussianVAE``.
    """

    def __init__(self, decoder: nn.Module, conditional: nn.Module, prior: nn.Module, likelihood: nn.Module,
                 data_shape: tuple[int, ...], z1_dim: int, network_config: NetworkConfig | None = None):
        super().__init__()
        self.decoder, self.conditional, self.prior, self.likelihood = decoder, conditional, prior, likelihood
        self.data_shape, self.network_config = tuple(data_shape), network_config or NetworkConfig()
        self.latent_dims = {"z2": prior().event_shape[0], "z1": z1_dim}

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", self.prior())
            z1 = pyro.sample("z1", dist.Normal(*self.conditional(z2)).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z1), len(self.data_shape)), obs=x)


@MODELS.register("vae")
def vae(data_shape: tuple[int, ...], latent_dim: int = 32, hidden: list[int] = (512, 256),
        network: Network = "mlp", prior: Prior = "normal", components: int = 10,
        likelihood: Likelihood = "bernoulli", likelihood_scale: float = 0.1,
        activation: Activation = "relu", head: Head = "scale", window: int | None = None,
        ar_channels: int = 32) -> GaussianVAE:
    """A GaussianVAE; ``components`` applies to the mixture prior, ``likelihood_scale`` to Gaussian likelihoods,
    ``window`` and ``ar_channels`` to the autoregressive one (the dimensions before each that it reads,
    0 = factorised, default 3; the width of its causal network).
    ``prior = "bernoulli"`` makes the code binary (train it with guide ``bernoulli``). ``activation``:
    between fully connected layers (``"tanh"``: Burda et al. 2016); ``head``: what the guide's
    Gaussian heads output (``GaussianHead``)."""
    return GaussianVAE(Decoder(latent_dim, list(reversed(hidden)), data_shape, network, activation),
                       PRIORS[prior](latent_dim, components),
                       make_likelihood(likelihood, data_shape, likelihood_scale, window, ar_channels), data_shape,
                       NetworkConfig(tuple(hidden), network, activation, head))


@MODELS.register("dlgm")
def dlgm(data_shape: tuple[int, ...], latent_dim: int = 32, top_latent_dim: int | None = None,
         hidden: list[int] = (512, 256), network: Network = "mlp", likelihood: Likelihood = "bernoulli",
         likelihood_scale: float = 0.1, activation: Activation = "relu", head: Head = "scale",
         top_hidden: list[int] | None = None, window: int | None = None, ar_channels: int = 32) -> DLGM:
    """A 2-layer DLGM: z2 (``top_latent_dim``, default ``latent_dim``) -> z1 (``latent_dim``) -> x;
    p(z1 | z2) has hidden layers of widths ``top_hidden`` (default one of ``hidden[-1]``), as does the
    structured guide's q(z2 | z1) (Shu's 2-layer VAE: three of width 100 where x's are width 10);
    ``head``: what their Gaussian heads output (``GaussianHead``); ``window`` and ``ar_channels`` as for ``vae``."""
    top = top_latent_dim or latent_dim
    widths = tuple(top_hidden) if top_hidden else (hidden[-1] if hidden else 64,)
    conditional = nn.Sequential(mlp([top, *widths], final_activation=True, activation=activation),
                                GaussianHead(widths[-1], latent_dim, head=head))
    return DLGM(Decoder(latent_dim, list(reversed(hidden)), data_shape, network, activation), conditional,
                StandardNormal(top), make_likelihood(likelihood, data_shape, likelihood_scale, window, ar_channels),
                data_shape, latent_dim, NetworkConfig(tuple(hidden), network, activation, head, widths))
