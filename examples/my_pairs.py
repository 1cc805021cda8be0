import pyro
import pyro.distributions as dist
from torch import nn

from ppl_vae import GUIDES, MODELS
from ppl_vae.networks import Decoder, Encoder, GaussianHead


@MODELS.register("laplace-vae")
class LaplaceVAE(nn.Module):
    """p(z) = Laplace(0, 1) per dimension, p(x | z) = Bernoulli(decoder(z))."""

    def __init__(self, data_shape: tuple, latent_dim: int = 8, hidden: list[int] = (256,)):
        super().__init__()
        self.data_shape, self.latent_dims = tuple(data_shape), {"z": latent_dim}
        self.decoder = Decoder(latent_dim, list(hidden), data_shape)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Laplace(x.new_zeros(self.latent_dims["z"]), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(len(self.data_shape)), obs=x)


@GUIDES.register("laplace")
class LaplaceEncoder(nn.Module):
    """q(z | x) = Laplace(mu(x), b(x)) per dimension."""

    def __init__(self, model, hidden: list[int] = (256,)):
        super().__init__()
        self.encoder = Encoder(model.data_shape, list(hidden))
        self.head = GaussianHead(self.encoder.out_features, model.latent_dims["z"])  # (location, positive scale)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Laplace(*self.head(self.encoder(x))).to_event(1))
