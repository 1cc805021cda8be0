"""Estimators and diagnostics against closed-form answers.

Linear-Gaussian model: z ~ N(0, 1), x | z ~ N(a z + b, s^2). Then p(x) = N(b, a^2 + s^2), the
posterior is N(a (x - b) / (a^2 + s^2), s^2 / (a^2 + s^2)), and for q(z | x) = N(m, v)
  ELBO = -log(2 pi s^2)/2 - ((x - b - a m)^2 + a^2 v) / (2 s^2) - KL(N(m, v) || N(0, 1)).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule

from ppl_vae import ESTIMATORS, elbo_terms, importance_log_likelihood

A, B, S = 2.0, 0.5, 0.7
POST_GAIN, POST_VAR = A / (A**2 + S**2), S**2 / (A**2 + S**2)


class LinearGaussian(PyroModule):
    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(A * z + B, S).to_event(1), obs=x)


class LinearGuide(PyroModule):
    """q(z | x) = N(gain (x - b), var): exact at gain = POST_GAIN, var = POST_VAR.
    ``draws_seen`` records the number of draws per datapoint in each call (particles x data)."""

    def __init__(self, gain, var):
        super().__init__()
        self.gain, self.var, self.draws_seen = gain, var, []

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(self.gain * (x - B), math.sqrt(self.var)).to_event(1))
        self.draws_seen.append(z.shape[:-1].numel() // x.shape[0])


def log_px(x):
    return log_px_each(x).sum()


def log_px_each(x):
    return dist.Normal(B, math.sqrt(A**2 + S**2)).log_prob(x).sum(-1)


def closed_form_elbo(x, gain, var):
    m = gain * (x - B)
    kl = 0.5 * (var + m**2 - 1 - math.log(var))
    expected_loglik = -0.5 * math.log(2 * math.pi * S**2) - ((x - B - A * m) ** 2 + A**2 * var) / (2 * S**2)
    return (expected_loglik - kl).sum()


X = torch.tensor([[-1.5], [0.0], [0.4], [2.5]])


@pytest.mark.parametrize("estimator", ["mc", "iw"])
def test_exact_posterior_makes_sampled_bounds_tight(estimator):
    """With q equal to the posterior, log p(x, z) - log q(z | x) = log p(x) for every z: zero variance.
    (The analytic-KL form keeps Monte Carlo noise in its reconstruction term; see the next test.)"""
    loss = ESTIMATORS[estimator](num_particles=4).loss(LinearGaussian(), LinearGuide(POST_GAIN, POST_VAR), X)
    assert loss == pytest.approx(-log_px(X).item(), rel=1e-5)


@pytest.mark.parametrize("estimator", ["mc", "analytic"])
def test_elbo_matches_closed_form(estimator):
    gain, var = 0.1, 0.5  # a poor guide: the ELBO is well below log p(x)
    exact = closed_form_elbo(X, gain, var).item()
    assert exact < log_px(X).item() - 1.0
    losses = torch.tensor([ESTIMATORS[estimator](num_particles=200).loss(LinearGaussian(), LinearGuide(gain, var), X)
                           for _ in range(20)])
    stderr = losses.std() / math.sqrt(len(losses))
    assert abs(losses.mean().item() + exact) < 4 * stderr + 1e-3


def test_importance_weighting_tightens_towards_log_likelihood():
    guide, model = LinearGuide(0.1, 0.5), LinearGaussian()
    elbo, target = closed_form_elbo(X, 0.1, 0.5).item(), log_px(X).item()
    bounds, errors = [], []
    for k in (1, 10, 1000):
        draws = -torch.tensor([ESTIMATORS["iw"](num_particles=k).loss(model, guide, X) for _ in range(100)])
        bounds.append(draws.mean().item())
        errors.append(draws.std().item() / 10)
    assert abs(bounds[0] - elbo) < 4 * errors[0]  # K = 1 is the ELBO
    assert bounds[0] < bounds[1] < bounds[2] <= target + 4 * errors[2]
    assert bounds[2] == pytest.approx(target, abs=0.1)


def test_iw_training_bound_takes_a_log_mean_exp_per_datapoint():
    """The iw estimator's loss is -sum_n log (1/K) sum_k w_nk (Burda et al. 2016, Eq. 8, per datapoint),
    recomputed here in closed form from the same K draws of a poor guide; one log-mean-exp over the
    batch's summed weights would be another number."""
    k, gain, var = 5, 0.1, 0.5
    guide = LinearGuide(gain, var)
    pyro.set_rng_seed(2)
    loss = ESTIMATORS["iw"](num_particles=k)(LinearGaussian(), guide)(X)
    pyro.set_rng_seed(2)
    with pyro.plate("particles", k, dim=-2):
        z = poutine.trace(guide).get_trace(X).nodes["z"]["value"]  # [K, N, 1], the estimator's draws
    log_w = (dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(A * z + B, S).log_prob(X)
             - dist.Normal(gain * (X - B), math.sqrt(var)).log_prob(z)).squeeze(-1)  # [K, N]
    per_datapoint = -(log_w.logsumexp(0) - math.log(k)).sum()
    batch_wide = -(log_w.sum(1).logsumexp(0) - math.log(k))
    assert loss.item() == pytest.approx(per_datapoint.item(), rel=1e-5)
    assert abs(per_datapoint - batch_wide) > 0.1


def test_analytic_gaussian_kl_per_site_and_dimension():
    """KL(N(m, diag v) || N(0, I)) = sum_d (v_d + m_d^2 - 1 - log v_d) / 2, per datapoint and dimension."""
    loc = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]])
    scale = torch.tensor([[1.0, 0.5, 0.2], [2.0, 1.0, 0.9]])

    def model(x):
        with pyro.plate("data", 2):
            pyro.sample("z", dist.Normal(torch.zeros(2, 3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([2, 1]).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", 2):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    expected = 0.5 * (scale**2 + loc**2 - 1 - torch.log(scale**2))
    terms = elbo_terms(model, guide, torch.zeros(2, 1), analytic_kl=True)
    assert torch.allclose(terms.kl_dims["z"], expected)
    assert torch.allclose(terms.kl["z"], expected.sum(-1))
    assert torch.allclose(terms.recon, torch.full((2,), 0.5 * math.log(2 * math.pi)))


@pytest.mark.parametrize("chunk_size", [1, 7, 100])
def test_importance_log_likelihood_is_exact_for_the_posterior(chunk_size):
    """With q = p(z | x) every weight equals p(x): the estimate is log p(x) whatever the chunking,
    and the variational gap is zero."""
    estimate = importance_log_likelihood(LinearGaussian(), LinearGuide(POST_GAIN, POST_VAR), X, num_samples=50,
                                         chunk_size=chunk_size, batch_size=3)
    assert torch.allclose(estimate.log_px, log_px_each(X), atol=1e-5)
    assert torch.allclose(estimate.gap, torch.zeros(len(X)), atol=1e-5)


def test_importance_log_likelihood_converges_in_bounded_chunks():
    """A poor proposal: the K = 5,000 estimate is within 0.05 nats of log p(x) per datapoint and
    above the ELBO by the closed-form gap, while no call draws more than ``chunk_size`` samples."""
    guide = LinearGuide(0.1, 0.5)
    estimate = importance_log_likelihood(LinearGaussian(), guide, X, num_samples=5000, chunk_size=256)
    assert set(guide.draws_seen) == {256, 5000 % 256}
    assert torch.allclose(estimate.log_px, log_px_each(X), atol=0.05)
    exact_elbo = torch.stack([closed_form_elbo(x, 0.1, 0.5) for x in X])
    assert torch.allclose(estimate.elbo, exact_elbo, atol=0.1)
    assert (estimate.gap > 0.5).all()


def test_importance_log_likelihood_does_not_fall_as_k_grows():
    """Averaged over 400 datapoints, the estimate rises with K towards log p(x) and stays below it."""
    guide, model, data = LinearGuide(0.1, 0.5), LinearGaussian(), X.repeat(100, 1)
    means = [importance_log_likelihood(model, guide, data, num_samples=k, chunk_size=64).log_px.mean().item()
             for k in (1, 30, 3000)]
    target = log_px_each(X).mean().item()
    assert means[0] < means[1] < means[2] <= target + 0.01
    assert means[2] == pytest.approx(target, abs=0.05)


@pytest.mark.parametrize("option", ["num_samples", "chunk_size", "batch_size"])
def test_importance_log_likelihood_refuses_sizes_below_one(option):
    with pytest.raises(ValueError, match="must be >= 1"):
        importance_log_likelihood(LinearGaussian(), LinearGuide(0.1, 0.5), X, **{option: 0})


def test_psis_khat_separates_good_from_poor_proposals():
    """Pareto k-hat of the weights (ArviZ): -inf for the exact posterior (constant weights), low for a
    proposal wider than the posterior, above 0.7 for one much narrower (infinite-variance weights,
    k = 1 - var_q / var_post ~ 0.9)."""
    def khat(var):
        return importance_log_likelihood(LinearGaussian(), LinearGuide(POST_GAIN, var), X, num_samples=4000,
                                         chunk_size=1000, khat=True).khat
    assert torch.isneginf(khat(POST_VAR)).all()
    assert (khat(2 * POST_VAR) < 0.5).all()
    assert (khat(0.1 * POST_VAR) > 0.7).all()
