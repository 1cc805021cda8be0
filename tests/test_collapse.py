"""Posterior-collapse diagnostics against known answers."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae.evaluation.collapse import (
    DiagnosticsConfig,
    active_units,
    diagnose,
    kl_holding_dims,
    latent_information,
    posterior_draws,
    posterior_means,
)
from ppl_vae.tracing import prior_draws


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


def test_every_family_gives_consistent_diagnostics(compatible_pair):
    """Every compatible pair of the matrix, all latent sites jointly: the decomposition holds and the
    means have one row per datapoint (structured: Rao-Blackwellised over z1)."""
    model, guide = compatible_pair.build()
    x = compatible_pair.data(40)
    info = latent_information(model, guide, x, num_samples=3, chunk_size=7)
    assert info.kl == pytest.approx(info.mi + info.marginal_kl, abs=1e-4)
    assert info.mi <= math.log(len(x)) + 1e-4  # exact: every draw's term is at most log N
    assert info.mi >= -4 * info.mi_stderr  # I(x; z) >= 0, up to the estimate's Monte Carlo error
    assert 0 <= info.mi_stderr < 1
    if info.mi_stderr == 0:  # no Monte Carlo error only where a point-mass guide tells every datapoint apart
        assert compatible_pair.guide == "delta" and info.mi == pytest.approx(math.log(len(x)), abs=1e-4)
    means = posterior_means(guide, x, num_samples=4)
    classes = {"y_unobserved": getattr(model, "classes", None)}  # a class site: its probabilities, one per class
    assert {name: m.shape for name, m in means.items()} == {name: (40, classes.get(name) or d)
                                                            for name, d in model.latent_dims.items()}


class BinaryCode(nn.Module):
    """z ~ Bernoulli(1/2), x | z ~ Bernoulli(sigmoid(a (2z - 1))): by symmetry p(x) = 1/2 and the
    posterior is p(z = x | x) = sigmoid(a)."""

    latent_dims, data_shape = {"z": 1}, (1,)

    def __init__(self, a: float):
        super().__init__()
        self.a = a

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Bernoulli(x.new_full((x.shape[0], 1), 0.5)).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.a * (2 * z - 1)).to_event(1), obs=x)


class BinaryGuide(nn.Module):
    """q(z = x | x) = sigmoid(b): the exact posterior at b = a."""

    def __init__(self, b: float):
        super().__init__()
        self.b = b

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Bernoulli(logits=self.b * (2 * x - 1)).to_event(1))


def test_diagnose_a_binary_latent_against_its_closed_form():
    """q = the exact posterior of a binary code: every draw's log p(x, z) - log q(z | x) is
    log p(x) = -ln 2, so the ELBO and the IW estimate are exact with no gap; the aggregate q(z) is
    Bernoulli(1/2) = p(z), so the KL is all information: I(x; z) = ln 2 - H(sigmoid(a)); the
    posterior mean moves by 2 (sigmoid(a) - 1/2) with the bit, an active unit."""
    a, config = 2.0, DiagnosticsConfig(rows=1000, particles=5, iw_samples=50)
    found = diagnose(BinaryCode(a), BinaryGuide(a), BITS, config)
    q = torch.sigmoid(torch.tensor(a)).item()
    entropy = -(q * math.log(q) + (1 - q) * math.log(1 - q))
    assert found["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert found["log_px_iw"] == pytest.approx(-math.log(2), abs=1e-5) and found["gap"] == pytest.approx(0, abs=1e-5)
    closed_form = diagnose(BinaryCode(a), BinaryGuide(a), BITS, config, analytic_kl=True)
    assert closed_form["kl"] == pytest.approx(math.log(2) - entropy, abs=1e-5)
    info = latent_information(BinaryCode(a), BinaryGuide(a), BITS, num_samples=20)
    assert abs(info.mi - (math.log(2) - entropy)) < 4 * info.mi_stderr
    assert info.marginal_kl == pytest.approx(0.0, abs=0.01)
    units = active_units(BinaryGuide(a), BITS)
    assert units["variance"]["z"] == [pytest.approx((q - 0.5) ** 2, rel=1e-5)] and units["count"] == 1


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


def test_the_dimensions_holding_most_of_the_kl_ignore_a_near_empty_unit():
    """3 + 1 + 0.5 of 5 nats is exactly 90%: three dimensions; a unit of 0.016 nats changes nothing."""
    assert kl_holding_dims([0.5, 3.0, 0.0, 1.0, 0.5]) == 3
    assert kl_holding_dims([3.0, 3.0, 2.5, 0.016]) == kl_holding_dims([3.0, 3.0, 2.5]) == 3
    assert kl_holding_dims([3.0, 3.0, 2.5, 1.5]) == 4  # a fourth factor with 15% of the KL counts
    assert kl_holding_dims([1.0, 1.0], share=0.5) == 1 and kl_holding_dims([0.0, 0.0]) == 1
    with pytest.raises(ValueError, match="share = 0 is out of range"):
        kl_holding_dims([1.0], share=0)
