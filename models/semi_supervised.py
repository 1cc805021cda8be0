"""The semi-supervised VAE "M2" of Kingma, Rezende, Mohamed & Welling (2014), Sec. 3.1.2: a class y
and a style z generate x, and y is observed on the labelled rows of a batch and a latent on the others.

The model takes the data fields ``y`` and ``labelled`` (``ppl_vae.data.datasets.label_fields``) and
observes y with Pyro's ``obs_mask``: the labelled rows at the site ``"y_observed"``, the others as
the latent site ``"y_unobserved"``, which the guide samples or, under estimator ``enum``, sums over
the classes exactly (Eq. 7). Called without them (generating, or diagnostics on x alone), no label
is known.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from ppl_vae.data.datasets import batch_labels
from ppl_vae.errors import ConfigError
from ppl_vae.models.likelihoods import LIKELIHOODS
from ppl_vae.models.priors import StandardNormal
from ppl_vae.models.vae import Factorised
from ppl_vae.networks import Activation, Decoder, Encoder, Network, NetworkConfig, joined
from ppl_vae.registry import MODELS


class SemiSupervisedVAE(nn.Module):
    """p(y) p(z) p(x | y, z) with y ~ Categorical(1 / classes) and z ~ N(0, I) (Kingma et al. 2014,
    Eq. 2), the decoder reading z and the one-hot y side by side.

    :param classifier: network x -> logits of q(y | x), shared with the guide: with ``alpha`` > 0
        each labelled row adds ``alpha * log q(y | x)`` to the bound, the classification term of
        the objective J^alpha (Eq. 9), so that q(y | x) learns from the labelled rows too.
    :param alpha: the weight of that term per labelled example (Kingma et al.: 0.1 N over N_l
        labelled examples of N, i.e. 0.1 N / N_l each); 0 = the bound alone.
    """

    def __init__(self, decoder: nn.Module, classifier: nn.Module, prior: nn.Module, likelihood: nn.Module,
                 data_shape: tuple[int, ...], classes: int, alpha: float = 0.0,
                 network_config: NetworkConfig | None = None):
        super().__init__()
        self.decoder, self.classifier, self.prior, self.likelihood = decoder, classifier, prior, likelihood
        self.data_shape, self.classes, self.alpha = tuple(data_shape), classes, alpha
        self.network_config = network_config or NetworkConfig()
        self.latent_dims = {"z": prior().event_shape[0], "y_unobserved": 1}

    def check_fields(self, fields: dict, where: str) -> None:
        """Refuse a known label outside the classes 0 .. classes - 1 (``ConfigError``, naming the fix)."""
        if "y" not in fields:
            return
        y = fields["y"][fields["labelled"].bool()] if "labelled" in fields else fields["y"]
        outside = y[(y < 0) | (y >= self.classes)]
        if len(outside):
            raise ConfigError(f"{where} has the label {int(outside[0])} (and {len(outside) - 1} more outside the "
                              f"classes 0 .. {self.classes - 1}): set [model] classes = {int(y.max()) + 1} if the "
                              "data have that many classes, or fix the labels")

    def forward(self, x, y=None, labelled=None):
        y, labelled = batch_labels(x, y, labelled)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            uniform = dist.Categorical(logits=torch.zeros(self.classes, device=x.device))
            label = pyro.sample("y", uniform, obs=y, obs_mask=labelled)  # latent where not labelled
            one_hot = nn.functional.one_hot(label, self.classes).to(x.dtype)
            pyro.sample("x", self.likelihood(self.decoder(joined(z, one_hot)), len(self.data_shape)), obs=x)
            if self.alpha:
                with poutine.mask(mask=labelled):
                    q_y = dist.Categorical(logits=self.classifier(x))
                    pyro.factor("classification", self.alpha * q_y.log_prob(y))


@MODELS.register("m2")
def m2(data_shape: tuple[int, ...], latent_dim: int = 50, hidden: list[int] = (500,), classes: int = 10,
       alpha: float = 0.0, network: Network = "mlp", likelihood: Factorised = "bernoulli",
       likelihood_scale: float = 0.1, activation: Activation = "relu") -> SemiSupervisedVAE:
    """M2 with ``latent_dim`` style units and networks of widths ``hidden`` (Kingma et al. 2014, Sec. 4.2:
    z of 50, one hidden layer of 500 units), the classifier q(y | x) an encoder of the same widths."""
    classifier = nn.Sequential(Encoder(data_shape, list(hidden), network, activation),
                               nn.Linear(hidden[-1] if hidden else int(torch.tensor(data_shape).prod()), classes))
    return SemiSupervisedVAE(Decoder(latent_dim + classes, list(reversed(hidden)), data_shape, network, activation),
                             classifier, StandardNormal(latent_dim), LIKELIHOODS[likelihood](likelihood_scale),
                             data_shape, classes, alpha, NetworkConfig(tuple(hidden), network, activation))
