"""Autoregressive likelihoods (``ppl_vae.models.autoregressive``) against closed forms: a proper density
over every binary vector and image, exact sampling, each dimension reading exactly its window, and
the information preference on the single bit: with a decoder that reads x_<i the ELBO's optimum is
ln 2 with z unused; with a window of 0 (factorised) z must carry the bit."""

import itertools
import math

import pyro
import pytest
import torch
from scipy.stats import chisquare

from ppl_vae import DATASETS, GUIDES, MODELS, ConfigError, DiagnosticsConfig, fit
from ppl_vae.models.autoregressive import AutoregressiveBernoulliLikelihood


def randomised(shape, window):
    torch.manual_seed(0)
    likelihood = AutoregressiveBernoulliLikelihood(shape, window)
    for p in likelihood.parameters():
        p.data.normal_(0, 0.7)  # far from the zero-ish initialisation, so every dependence shows
    return likelihood


def every_binary(shape) -> torch.Tensor:
    n = math.prod(shape)
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n))).reshape(2 ** n, 1, *shape)


@pytest.mark.parametrize("shape, window", [((4,), 1), ((4,), 3), ((1, 2, 2), 1), ((1, 2, 3), 2)])
@torch.no_grad()
def test_the_density_sums_to_one_over_every_binary_value(shape, window):
    d = randomised(shape, window)(torch.randn(3, *shape), len(shape))
    total = d.log_prob(every_binary(shape)).logsumexp(0)
    assert total == pytest.approx(torch.zeros(3), abs=1e-5)


@torch.no_grad()
def test_sampling_is_exact():
    """20,000 draws against the density's probabilities of all 8 values: chi-square."""
    shape = (3,)
    d = randomised(shape, 2)(torch.randn(shape), 1)
    probs = d.log_prob(every_binary(shape)[:, 0]).double().exp()
    probs = probs / probs.sum()  # 1 to float32 rounding (checked above), exactly 1 for the test
    pyro.set_rng_seed(1)
    draws = d.sample((20_000,))
    counts = torch.bincount((draws * torch.tensor([4.0, 2.0, 1.0])).sum(-1).long(), minlength=8)
    assert chisquare(counts.numpy(), (probs * 20_000).numpy()).pvalue > 1e-3
    assert (probs * 20_000).min() > 50  # every value expected often enough for the chi-square to hold


@pytest.mark.parametrize("shape, window, reads", [
    ((6,), 2, lambda i, j: i - 2 <= j < i),
    ((6,), 0, lambda i, j: False),  # factorised
    ((1, 4, 4), 1, lambda i, j: (j // 4 == i // 4 - 1 and abs(j % 4 - i % 4) <= 1)  # the row above, 3 wide
     or (j // 4 == i // 4 and j == i - 1)),  # and the pixel to the left
])
def test_each_dimension_reads_exactly_its_window(shape, window, reads):
    network = randomised(shape, window).network
    x = torch.rand(1, *shape, requires_grad=True)
    out = network(x, torch.zeros(1, *shape)).flatten()
    for i in range(len(out)):
        (grad,) = torch.autograd.grad(out[i], x, retain_graph=True, allow_unused=True)
        seen = set() if grad is None else {j for j, g in enumerate(grad.flatten()) if g != 0}
        assert seen == {j for j in range(len(out)) if reads(i, j)}, i


def test_bad_windows_and_shapes_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"window = -1: give how many dimensions"):
        MODELS["vae"]((6,), likelihood="bernoulli-autoregressive", window=-1)
    with pytest.raises(ConfigError, match=r"window = 2 applies to likelihood 'bernoulli-autoregressive' only"):
        MODELS["vae"]((6,), window=2)
    with pytest.raises(ConfigError, match=r"one-channel images \(1, H, W\), not data of shape \[3, 4, 4\]"):
        MODELS["vae"]((3, 4, 4), network="conv", likelihood="bernoulli-autoregressive")


@pytest.mark.parametrize("window", [1, 0])
def test_the_single_bit_shows_the_information_preference(window):
    """n = 5 copies of a fair bit (Shu's data): x_1 is a coin and x_2..x_5 copy it, so a decoder that
    reads one dimension back reaches -log p(x) = ln 2 with z unused, and the ELBO goes there; a
    factorised one can only model the copies through z, which then carries the bit (I(x; z) ~ ln 2)."""
    data = DATASETS["bits"](n=5, rows=200)
    pyro.set_rng_seed(0)
    model = MODELS["vae"](data.data_shape, latent_dim=2, hidden=[16], likelihood="bernoulli-autoregressive",
                          window=window)
    found = fit(model, GUIDES["gaussian"](model), data, epochs=60, batch_size=100, lr=1e-2, estimator="analytic",
                diagnostics=DiagnosticsConfig(rows=80, iw_samples=25, mean_samples=1)).diagnostics
    if window:
        # measured (seed 0): -ELBO 0.6998, KL 0.033, I(x; z) 0.028 nats after 120 steps
        assert found["loss"] == pytest.approx(math.log(2), abs=0.02) and found["kl"] < 0.05 and found["mi"] < 0.05
    else:
        # measured: -ELBO 1.126, KL 1.02, I(x; z) 0.693 = ln 2: the bit, in z
        assert found["mi"] > 0.6 and found["loss"] > math.log(2) + 0.2
