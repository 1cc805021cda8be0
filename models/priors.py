"""Priors p(z): modules whose ``forward()`` returns a distribution with event shape ``[latent_dim]``.

A prior is passed to a model as an object, so swapping the prior never means
copying the model.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn


class StandardNormal(nn.Module):
    """p(z) = N(0, I), the prior of Kingma & Welling (2014), Sec. 3."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, 1.0).to_event(1)


class MixtureOfGaussians(nn.Module):
    """Learnable p(z) = sum_k pi_k N(mu_k, diag(sigma_k^2)), as in Dilokthanakul et al. (2016)
    and the VampPrior discussion of Tomczak & Welling (2018), Eq. 9.

    Means start spread out (N(0, I) draws) so the components do not coincide.
    """

    def __init__(self, latent_dim: int, components: int = 10):
        super().__init__()
        self.locs = nn.Parameter(torch.randn(components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(components))

    def forward(self) -> dist.Distribution:
        component = dist.Normal(self.locs, self.log_scales.exp()).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), component)


class BinaryUnits(nn.Module):
    """p(z) = prod_d Bernoulli(z_d; 1/2): a code of ``latent_dim`` binary units, the prior of the
    discrete VAEs trained with score-function gradients (Mnih & Gregor 2014, Sec. 2; their
    sigmoid-belief-network layer with no parent). Its draws cannot be reparameterised, so a pair
    with this prior needs a discrete guide (``bernoulli``) and the ``mc`` estimator.
    """

    def __init__(self, latent_dim: int):
        super().__init__()
        self.register_buffer("probs", torch.full((latent_dim,), 0.5))

    def forward(self) -> dist.Distribution:
        return dist.Bernoulli(self.probs).to_event(1)


#: name -> factory(latent_dim, components); ``components`` is used by the mixture only.
PRIORS = {
    "normal": lambda latent_dim, components: StandardNormal(latent_dim),
    "mixture": MixtureOfGaussians,
    "bernoulli": lambda latent_dim, components: BinaryUnits(latent_dim),
}
