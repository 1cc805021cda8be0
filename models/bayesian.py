"""A VAE with a Bayesian decoder output layer, written as a Pyro user writes one: a ``PyroModule``
whose output layer's weights have ``PyroSample`` priors (global latents, shared by all data), and a
guide composed of an autoguide for those (``AutoNormal``) and an amortised encoder for the
per-datapoint z. The toolkit trains it as it is (``ppl_vae.infer.pairs``): an
experiment names it ``"ppl_vae.models.bayesian:BayesianDecoderVAE.model"`` / ``...guide``
(``experiments/digits-bayes-decoder.toml``).

p(W, b) p(z) p(x | z, W, b): W, b ~ N(0, prior_scale^2), z ~ N(0, I), x ~ Bernoulli(sigmoid(W h(z) + b))
with h a point-estimated hidden layer: the "variational Bayes on the decoder's weights" of Kingma &
Welling (2014), Appendix F, here for the output layer only.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample, pyro_method
from torch import nn


class BayesianDecoderVAE(PyroModule):
    """``model(x)`` and ``guide(x)`` of a VAE whose decoder output layer (``out.weight``,
    ``out.bias``) is Bayesian.

    :param data_shape: shape of one example (the toolkit passes it).
    :param latent_dim: size of z.
    :param hidden: width of the encoder's and the decoder's hidden layer.
    :param prior_scale: standard deviation of the output layer's N(0, s^2) prior.
    :param init_scale: initial standard deviation of the output layer's q (``AutoNormal``).
    """

    def __init__(self, data_shape: tuple[int, ...], latent_dim: int = 8, hidden: int = 128,
                 prior_scale: float = 1.0, init_scale: float = 0.01):
        super().__init__()
        self.x_dim, self.latent_dim = math.prod(data_shape), latent_dim
        self.encoder = nn.Sequential(nn.Linear(self.x_dim, hidden), nn.Softplus(), nn.Linear(hidden, 2 * latent_dim))
        self.hidden = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Softplus())
        self.out = PyroModule[nn.Linear](hidden, self.x_dim)
        # priors built at each draw (PyroSample takes a function of the module), with the validation
        # setting of that moment: Pyro's, or the toolkit's when it captures the training step
        self.out.weight = PyroSample(lambda out: dist.Normal(0.0, prior_scale).expand(out.weight_shape).to_event(2))
        self.out.bias = PyroSample(lambda out: dist.Normal(0.0, prior_scale).expand([out.out_features]).to_event(1))
        self.out.weight_shape = (self.x_dim, hidden)
        self.global_guide = AutoNormal(poutine.block(self.model, expose=["out.weight", "out.bias"]),
                                       init_scale=init_scale)

    @pyro_method
    def model(self, x: torch.Tensor) -> None:
        weight, bias = self.out.weight, self.out.bias  # one draw for all data: outside the data plate
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), self.latent_dim), 1.0).to_event(1))
            logits = nn.functional.linear(self.hidden(z), weight, bias)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x.reshape(len(x), -1))

    @pyro_method
    def guide(self, x: torch.Tensor) -> None:
        """q(W, b) q(z | x): ``AutoNormal`` for the global sites, the encoder for z (what
        ``AutoGuideList`` composes, without the data plate that it would open twice)."""
        self.global_guide(x)
        self.local_guide(x)

    @pyro_method
    def local_guide(self, x: torch.Tensor) -> None:
        """q(z | x), amortised by the encoder."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", len(x)):
            loc, log_scale = self.encoder(x.reshape(len(x), -1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))
