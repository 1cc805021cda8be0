"""Pairs written as Pyro's own tutorials write them, for the tests of ``ppl_vae.infer.pairs`` (and their
experiment files, as ``pyro_pairs:...``): the tutorial VAE's ``model``/``guide`` methods on one
module (https://pyro.ai/examples/vae.html), with site names of its own."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class Encoder(nn.Module):
    def __init__(self, x_dim: int, z_dim: int, hidden_dim: int):
        super().__init__()
        self.x_dim = x_dim
        self.fc1 = nn.Linear(x_dim, hidden_dim)
        self.fc21, self.fc22 = nn.Linear(hidden_dim, z_dim), nn.Linear(hidden_dim, z_dim)

    def forward(self, x):
        hidden = nn.functional.softplus(self.fc1(x.reshape(-1, self.x_dim)))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    def __init__(self, x_dim: int, z_dim: int, hidden_dim: int):
        super().__init__()
        self.fc1, self.fc21 = nn.Linear(z_dim, hidden_dim), nn.Linear(hidden_dim, x_dim)

    def forward(self, z):
        return torch.sigmoid(self.fc21(nn.functional.softplus(self.fc1(z))))


class TutorialVAE(nn.Module):
    """Pyro's tutorial VAE: sites ``latent`` and ``obs``, Bernoulli probabilities from a sigmoid."""

    def __init__(self, x_dim: int = 64, z_dim: int = 2, hidden_dim: int = 32):
        super().__init__()
        self.encoder, self.decoder = Encoder(x_dim, z_dim, hidden_dim), Decoder(x_dim, z_dim, hidden_dim)
        self.x_dim, self.z_dim = x_dim, z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = x.new_zeros(x.shape[0], self.z_dim), x.new_ones(x.shape[0], self.z_dim)
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            probs = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(probs, validate_args=False).to_event(1), obs=x.reshape(-1, self.x_dim))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def pixel_rates(x):
    """Each pixel's Bernoulli logit as a global latent with a N(0, 1) prior: a model for an
    autoguide named in an experiment file (``[guide] name = "AutoNormal"``)."""
    logits = pyro.sample("logits", dist.Normal(x.new_zeros(x[0].numel()), 1.0).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x.reshape(len(x), -1))
