"""The conditional VAE of Sohn, Lee & Yan (2015), "Learning Structured Output Representation using Deep
Conditional Generative Models" (NeurIPS 2015), on their MNIST quadrant task: from the visible pixels of an
image predict the hidden ones, a one-to-many mapping that one network's mean cannot draw.

The model takes the data field ``visible`` (``ppl_vae.data.datasets.quadrant_fields``): per example,
the mask of the pixels it sees. The prior network reads them, the hidden pixels marked -1 as in Pyro's
CVAE example (``examples/cvae``), and the likelihood scores only the hidden pixels, so the bound is
one of the conditional log-likelihood log p(x_hidden | x_visible) (the CVAE's bound), and the toolkit's
importance-weighted estimate (``iw_samples``) is the conditional log-likelihood the paper reports.
Any guide of one real latent ``z`` serves as the recognition network q(z | x): it reads the whole
image, the visible and the hidden pixels (the paper's q(z | x, y)).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.models.likelihoods import LIKELIHOODS, masked_pixels
from ppl_vae.models.vae import Factorised
from ppl_vae.networks import Activation, Decoder, Encoder, GaussianHead, Network, NetworkConfig, joined
from ppl_vae.registry import MODELS

#: what the prior network reads at a hidden pixel (Pyro's CVAE example: pixels lie in [0, 1])
HIDDEN = -1.0


class ConditionalVAE(nn.Module):
    """p(z | x_v) p(x_h | x_v, z): a Gaussian prior network on the visible pixels x_v, and a generation
    network to every pixel, of which the hidden x_h are scored (Sohn et al. 2015: their recognition,
    prior and generation networks q(z | x, y), p(z | x) and p(y | x, z), with x the visible pixels, y the hidden).

    :param decoder_reads_visible: the generation network reads the prior network's features of x_v
        beside z, as the paper's p(y | x, z) does, so z need only carry what x_v leaves open; False
        decodes z alone, as Pyro's CVAE example does (z must then carry x_v too).

    Called without ``visible`` (generating from scratch, diagnostics on x alone) nothing is visible:
    the prior is the network's prior for an empty input and every pixel is scored.
    """

    def __init__(self, prior_network: nn.Module, prior_head: nn.Module, decoder: nn.Module, likelihood: nn.Module,
                 data_shape: tuple[int, ...], network_config: NetworkConfig | None = None,
                 decoder_reads_visible: bool = True):
        super().__init__()
        self.prior_network, self.prior_head, self.decoder, self.likelihood = (prior_network, prior_head, decoder,
                                                                              likelihood)
        self.data_shape = tuple(data_shape)
        self.network_config = network_config or NetworkConfig()
        self.latent_dims = {"z": prior_head.linear.out_features // 2}
        self.decoder_reads_visible = decoder_reads_visible

    def forward(self, x, visible=None):
        seen = torch.zeros_like(x, dtype=torch.bool) if visible is None else visible.bool()
        with pyro.plate("data", x.shape[0]):
            features = self.prior_network(x.where(seen, HIDDEN))
            z = pyro.sample("z", dist.Normal(*self.prior_head(features)).to_event(1))
            likelihood = self.likelihood(self.decoder(joined(z, features) if self.decoder_reads_visible else z),
                                         len(self.data_shape))
            pyro.sample("x", likelihood if visible is None else masked_pixels(likelihood, ~seen), obs=x)


@MODELS.register("cvae")
def cvae(data_shape: tuple[int, ...], latent_dim: int = 200, hidden: list[int] = (500, 500), network: Network = "mlp",
         likelihood: Factorised = "bernoulli", likelihood_scale: float = 0.1,
         activation: Activation = "relu", decoder_reads_visible: bool = True) -> ConditionalVAE:
    """The CVAE with ``latent_dim`` units and networks of widths ``hidden`` (Pyro's CVAE example: 200
    units, two hidden layers of 500), its prior network an encoder of the same widths whose features
    the generation network reads beside z (``decoder_reads_visible``)."""
    prior_network = Encoder(data_shape, list(hidden), network, activation)
    return ConditionalVAE(prior_network, GaussianHead(prior_network.out_features, latent_dim),
                          Decoder(latent_dim + (prior_network.out_features if decoder_reads_visible else 0),
                                  list(reversed(hidden)), data_shape, network, activation),
                          LIKELIHOODS[likelihood](likelihood_scale), data_shape,
                          NetworkConfig(tuple(hidden), network, activation), decoder_reads_visible)
