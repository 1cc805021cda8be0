"""Posterior-collapse diagnostics against known answers."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae import GUIDES, MODELS
from ppl_vae.collapse import active_units, latent_information, posterior_means


class IgnoresZ(nn.Module):
    """p(z) = N(0, 1), p(x | z) = Bernoulli(0.5) whatever z: the latent carries nothing."""

    latent_dims, data_shape = {"z": 1}, (1,)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=x.new_zeros(x.shape)).to_event(1), obs=x)


class ShiftGuide(nn.Module):
    """q(z | x) = N(shift * (2x - 1), 1): the two values of a bit sent to -shift and +shift."""

    def __init__(self, shift: float):
        super().__init__()
        self.shift = shift

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.shift * (2 * x - 1), 1.0).to_event(1))


BITS = torch.tensor([[0.0], [1.0]]).repeat(500, 1)  # 1,000 rows, half zeros, half ones


def test_a_guide_equal_to_the_prior_uses_no_latent():
    info = latent_information(IgnoresZ(), ShiftGuide(0.0), BITS)
    assert (info.kl, info.mi, info.marginal_kl) == pytest.approx((0.0, 0.0, 0.0), abs=1e-6)
    units = active_units(ShiftGuide(0.0), BITS)
    assert units["count"] == 0 and units["variance"]["z"] == [0.0]


def test_two_separated_codes_carry_one_bit():
    """q(z | x) = N(+-10, 1): I(x; z) = ln 2 (the components do not overlap), the average KL is
    10^2 / 2 = 50 nats, and the marginal KL is the rest, 50 - ln 2."""
    info = latent_information(IgnoresZ(), ShiftGuide(10.0), BITS, num_samples=2)
    assert info.mi == pytest.approx(math.log(2), abs=1e-3)
    assert info.kl == pytest.approx(50.0, abs=1.0)  # Monte Carlo: a z per draw, 2,000 draws
    assert info.marginal_kl == pytest.approx(info.kl - info.mi, abs=1e-4)
    units = active_units(ShiftGuide(10.0), BITS)
    assert units["count"] == 1 and units["variance"]["z"] == [pytest.approx(100.0)]


def test_mutual_information_is_bounded_by_log_n():
    info = latent_information(IgnoresZ(), ShiftGuide(10.0), torch.tensor([[0.0], [1.0]] * 3))
    assert info.mi <= math.log(6) + 1e-6


@pytest.mark.parametrize("model_name, guide_name", [("vae", "gaussian"), ("dlgm", "structured"), ("vae", "iaf"),
                                                    ("dlgm", "iaf")])
def test_every_family_gives_consistent_diagnostics(model_name, guide_name):
    """Registered pairs, all latent sites jointly: the decomposition holds and the means have one
    row per datapoint (structured: Rao-Blackwellised over z1)."""
    model = MODELS[model_name]((6,), latent_dim=2, hidden=[8])
    guide = GUIDES[guide_name](model)
    x = torch.bernoulli(torch.full((40, 6), 0.5))
    info = latent_information(model, guide, x, num_samples=3, chunk_size=7)
    assert info.kl == pytest.approx(info.mi + info.marginal_kl, abs=1e-4)
    assert 0 <= info.mi <= math.log(len(x)) + 1e-4
    means = posterior_means(guide, x, num_samples=4)
    assert set(means) == set(model.latent_dims) and all(m.shape == (40, 2) for m in means.values())
