"""Posterior-collapse diagnostics against known answers."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae import GUIDES, MODELS
from ppl_vae import plots
from ppl_vae.collapse import DiagnosticsConfig, active_units, diagnose, latent_information, posterior_draws, posterior_means
from ppl_vae.diagnostics import prior_draws


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


@pytest.mark.parametrize("variance, active", [(0.05, 1), (0.005, 0)])
def test_a_unit_is_active_above_burda_et_al_s_threshold(variance, active):
    """Cov_x(E_q[z | x]) = shift^2 for q(z | x) = N(+-shift, 1): active above 0.01 only."""
    units = active_units(ShiftGuide(math.sqrt(variance)), BITS)
    assert units["variance"]["z"] == [pytest.approx(variance, rel=1e-4)]
    assert units["count"] == active


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


SMALL = DiagnosticsConfig(rows=200, particles=20, iw_samples=300, mean_samples=50)


def test_diagnose_a_collapsed_pair_gives_the_exact_density():
    """q(z | x) = p(z) = p(z | x): the ELBO is log p(x) = -ln 2 exactly, no gap, no k-hat tail, no
    KL, no information, no active unit."""
    found = diagnose(IgnoresZ(), ShiftGuide(0.0), BITS, SMALL)
    assert found["loss"] == pytest.approx(math.log(2), abs=1e-6) and found["kl"] == pytest.approx(0.0, abs=1e-6)
    assert found["log_px_iw"] == pytest.approx(-math.log(2), abs=1e-6) and found["gap"] == pytest.approx(0, abs=1e-6)
    assert found["recon_per_dim"] == pytest.approx(math.log(2), abs=1e-6)
    assert (found["khat_share"], found["active_units"], found["rows"]) == (0.0, 0, 200)
    assert found["mi"] == pytest.approx(0.0, abs=1e-6)


def test_diagnose_a_poor_proposal_flags_it():
    """q(z | x) = N(+-10, 1) against the true posterior N(0, 1): KL 50 nats, the importance weights
    exp(50 -+ 10 z) have a heavy tail (k-hat > 0.7 everywhere) and the IW estimate stays far
    below log p(x) = -ln 2, above the ELBO."""
    found = diagnose(IgnoresZ(), ShiftGuide(10.0), BITS, SMALL)
    assert found["kl"] == pytest.approx(50.0, abs=1.0) and found["khat_share"] == 1.0
    assert -found["loss"] < found["log_px_iw"] < -math.log(2) - 1.0
    assert found["active_units"] == 1 and found["mi"] == pytest.approx(math.log(2), abs=1e-3)


def test_the_figure_draws_follow_the_posterior_and_the_prior():
    """What the aggregate-posterior figure plots: with q(z | x) = N(+-3, 1) each datapoint's draws
    have mean +-3 and variance 1, and pooled over the bits they are the mixture q(z) with variance
    1 + 3^2 = 10; the prior panel's draws are N(0, 1)."""
    torch.manual_seed(0)
    z = posterior_draws(ShiftGuide(3.0), BITS, num_samples=50)["z"]  # [1000, 50, 1]
    assert z.shape == (1000, 50, 1)
    assert z[0::2].mean().item() == pytest.approx(-3.0, abs=0.02)  # x = 0 rows
    assert z[1::2].mean().item() == pytest.approx(3.0, abs=0.02)
    assert z[1::2].var().item() == pytest.approx(1.0, abs=0.03)
    assert z.var().item() == pytest.approx(10.0, abs=0.1)
    prior = prior_draws(IgnoresZ(), 20_000)["z"]
    assert prior.shape == (20_000, 1)
    assert (prior.mean().item(), prior.var().item()) == pytest.approx((0.0, 1.0), abs=0.03)


@pytest.mark.parametrize("dim", [1, 2])
def test_aggregate_posterior_figure(tmp_path, dim):
    model = MODELS["vae"]((6,), latent_dim=dim, hidden=[8])
    guide = GUIDES["gaussian"](model)
    x = torch.bernoulli(torch.full((30, 6), 0.5))
    draws = posterior_draws(guide, x, num_samples=5)
    assert draws["z"].shape == (30, 5, dim)
    labels, prior = x[:, 0].long(), torch.randn(1000, dim)
    path = plots.aggregate_posterior([("z", draws["z"], labels, prior), ("no labels", draws["z"], None, prior)],
                                     tmp_path / "q.png")
    assert path.stat().st_size > 5000
