import pyro
import pyro.distributions as dist
from torch import nn


class VAE(nn.Module):
    def __init__(self, x_dim: int = 784, z_dim: int = 10, hidden_dim: int = 200):
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.encoder = nn.Sequential(nn.Linear(x_dim, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, 2 * z_dim))
        self.decoder = nn.Sequential(nn.Linear(z_dim, hidden_dim), nn.Softplus(), nn.Linear(hidden_dim, x_dim),
                                     nn.Sigmoid())

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            pyro.sample("obs", dist.Bernoulli(self.decoder(z), validate_args=False).to_event(1),
                        obs=x.reshape(-1, self.x_dim))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = self.encoder(x.reshape(-1, self.x_dim)).chunk(2, -1)
            pyro.sample("latent", dist.Normal(loc, log_scale.exp()).to_event(1))
