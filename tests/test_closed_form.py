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
from pyro.nn import PyroModule

from ppl_vae import ESTIMATORS, elbo_terms

A, B, S = 2.0, 0.5, 0.7
POST_GAIN, POST_VAR = A / (A**2 + S**2), S**2 / (A**2 + S**2)


class LinearGaussian(PyroModule):
    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(A * z + B, S).to_event(1), obs=x)


class LinearGuide(PyroModule):
    """q(z | x) = N(gain (x - b), var): exact at gain = POST_GAIN, var = POST_VAR."""

    def __init__(self, gain, var):
        super().__init__()
        self.gain, self.var = gain, var

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.gain * (x - B), math.sqrt(self.var)).to_event(1))


def log_px(x):
    return dist.Normal(B, math.sqrt(A**2 + S**2)).log_prob(x).sum()


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
