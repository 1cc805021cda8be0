"""Pairs written as Pyro's own tutorials write them, for the tests of ``ppl_vae.infer.pairs`` (and their
experiment files, as ``pyro_pairs:...``): the tutorial VAE's ``model``/``guide`` methods on one
module (https://pyro.ai/examples/vae.html), with site names of its own; the semi-supervised VAE
tutorial's and the CVAE example's pairs; and the data as those programs take it, registered for
experiment files (``imports = ["pyro_pairs"]``)."""

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae import DATASETS, Dataset
from ppl_vae.data.datasets import digits, quadrant_mask


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



def dense(sizes: list[int], last=None) -> nn.Sequential:
    """Linear layers with softplus between them, and ``last`` (a module) after the final one."""
    layers = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.Softplus())][:-1]
    return nn.Sequential(*layers, *([last] if last is not None else []))


def concat(*tensors):
    """Concatenated on the last dimension, broadcast first (the tutorial's ``ConcatModule``): under
    enumeration the labels have a dimension of their own on the left."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(*shape, t.shape[-1]) for t in tensors], -1)


class SemiSupervisedTutorialVAE(nn.Module):
    """Pyro's semi-supervised VAE tutorial (https://pyro.ai/examples/ss-vae.html) in its style: M2 with
    one-hot labels ``ys``, observed where given and drawn from q(y | x) where not (a whole batch either
    way, as the tutorial steps on labelled and unlabelled batches apart), for ``config_enumerate``."""

    def __init__(self, x_dim: int = 64, y_dim: int = 10, z_dim: int = 2, hidden_dim: int = 16):
        super().__init__()
        self.x_dim, self.y_dim, self.z_dim = x_dim, y_dim, z_dim
        self.encoder_y = dense([x_dim, hidden_dim, y_dim], nn.Softmax(dim=-1))
        self.encoder_z = dense([x_dim + y_dim, hidden_dim, 2 * z_dim])
        self.decoder = dense([z_dim + y_dim, hidden_dim, x_dim], nn.Sigmoid())

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        with pyro.plate("data"):
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(batch_size, self.z_dim),
                                              xs.new_ones(batch_size, self.z_dim)).to_event(1))
            ys = pyro.sample("y", dist.OneHotCategorical(xs.new_ones(batch_size, self.y_dim) / self.y_dim), obs=ys)
            probs = self.decoder(concat(zs, ys))
            pyro.sample("x", dist.Bernoulli(probs, validate_args=False).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                ys = pyro.sample("y", dist.OneHotCategorical(self.encoder_y(xs)))
            out = self.encoder_z(concat(xs, ys))
            pyro.sample("z", dist.Normal(out[..., :self.z_dim], torch.exp(out[..., self.z_dim:])).to_event(1))


class QuadrantEncoder(nn.Module):
    """(x, y) -> (loc, scale): the visible pixels of x (hidden ones -1) completed from y, through a
    hidden layer (Pyro's CVAE example's ``Encoder``; its prior and recognition networks)."""

    def __init__(self, x_dim: int, z_dim: int, hidden_dim: int):
        super().__init__()
        self.x_dim = x_dim
        self.fc1, self.loc, self.log_scale = (nn.Linear(x_dim, hidden_dim), nn.Linear(hidden_dim, z_dim),
                                              nn.Linear(hidden_dim, z_dim))

    def forward(self, x, y):
        whole = x.clone()
        whole[x == -1] = y[x == -1]
        hidden = torch.relu(self.fc1(whole.view(-1, self.x_dim)))
        return self.loc(hidden), torch.exp(self.log_scale(hidden))


class QuadrantCVAE(nn.Module):
    """Pyro's CVAE example (``examples/cvae``) in its style: ``xs`` the visible quadrants (hidden pixels
    -1), ``ys`` the hidden ones (visible pixels -1); a frozen baseline's guess feeds the prior network,
    and the Bernoulli site ``y`` observes the hidden pixels alone."""

    def __init__(self, x_dim: int = 64, z_dim: int = 2, hidden_dim: int = 16):
        super().__init__()
        self.x_dim = x_dim
        self.baseline_net = dense([x_dim, hidden_dim, x_dim], nn.Sigmoid()).requires_grad_(False).eval()
        self.prior_net = QuadrantEncoder(x_dim, z_dim, hidden_dim)
        self.recognition_net = QuadrantEncoder(x_dim, z_dim, hidden_dim)
        self.generation_net = dense([z_dim, hidden_dim, x_dim], nn.Sigmoid())

    def model(self, xs, ys=None):
        pyro.module("generation_net", self)
        batch_size = xs.shape[0]
        with pyro.plate("data"):
            with torch.no_grad():
                y_hat = self.baseline_net(xs).view(xs.shape)
            zs = pyro.sample("z", dist.Normal(*self.prior_net(xs, y_hat)).to_event(1))
            loc = self.generation_net(zs)
            if ys is not None:
                hidden = (xs == -1).view(-1, self.x_dim)
                pyro.sample("y", dist.Bernoulli(loc[hidden].view(batch_size, -1), validate_args=False).to_event(1),
                            obs=ys[xs == -1].view(batch_size, -1))
            else:
                pyro.deterministic("y", loc.detach())
            return loc

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            if ys is None:
                loc, scale = self.prior_net(xs, self.baseline_net(xs).view(xs.shape))
            else:
                loc, scale = self.recognition_net(xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


@DATASETS.register("tutorial-digits")
def tutorial_digits(labelled: bool = True, limit: int = 200) -> Dataset:
    """The digits as the semi-supervised tutorial takes them: flat, binarised once, and (``labelled``)
    their one-hot labels as the field ``ys``."""
    data = digits(binarize="static", limit=limit)
    one_hot = lambda labels: nn.functional.one_hot(labels, 10).float()  # noqa: E731
    fields = ({"ys": one_hot(data.train_labels)}, {"ys": one_hot(data.test_labels)}) if labelled else ({}, {})
    return Dataset("tutorial-digits", data.train.flatten(1), data.test.flatten(1), "static", data.train_labels,
                   data.test_labels, train_fields=fields[0], test_fields=fields[1])


@DATASETS.register("tutorial-quadrants")
def tutorial_quadrants(visible_quadrants: int = 1, limit: int = 200) -> Dataset:
    """The digits as the CVAE example takes them, flat: x the visible quadrants (hidden pixels -1), the
    field ``ys`` the hidden ones (visible pixels -1)."""
    data = digits(binarize="static", limit=limit)
    visible = quadrant_mask(data.data_shape, visible_quadrants).flatten()
    inputs = lambda x: x.flatten(1).where(visible, -1.0)  # noqa: E731
    outputs = lambda x: x.flatten(1).where(~visible, -1.0)  # noqa: E731
    return Dataset("tutorial-quadrants", inputs(data.train), inputs(data.test), "none",
                   train_fields={"ys": outputs(data.train)}, test_fields={"ys": outputs(data.test)})
