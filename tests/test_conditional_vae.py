"""The conditional VAE (Sohn, Lee & Yan 2015) on quadrants: the field ``visible`` and its layout, a
likelihood of the hidden pixels alone under a prior network of the visible ones, the conditional
log-likelihood by importance sampling against a closed form, and the model's completions."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vae import DATASETS, GUIDES, MODELS, ConfigError, DiagnosticsConfig, fit
from ppl_vae.data.datasets import quadrant_mask
from ppl_vae.infer.bounds import evaluate, importance_log_likelihood
from ppl_vae.lab.experiment_file import validate
from ppl_vae.lab.studies.cvae_quadrants import completions
from ppl_vae.networks import joined


@pytest.mark.parametrize("quadrants, shown", [(1, {(1, 0)}), (2, {(0, 0), (1, 0)}), (3, {(0, 0), (0, 1), (1, 0)})])
def test_visible_quadrants_show_pyros_layout(quadrants, shown):
    mask = quadrant_mask((1, 6, 6), quadrants)[0]
    seen = {(r, c) for r in (0, 1) for c in (0, 1) if mask[3 * r:3 * r + 3, 3 * c:3 * c + 3].all()}
    hidden = {(r, c) for r in (0, 1) for c in (0, 1) if not mask[3 * r:3 * r + 3, 3 * c:3 * c + 3].any()}
    assert seen == shown and hidden == {(0, 0), (0, 1), (1, 0), (1, 1)} - shown  # whole quadrants, never mixed
    data = DATASETS["digits"](visible_quadrants=quadrants, limit=16)
    assert data.train_fields["visible"].shape == (16, 1, 28, 28) and int(data.test_fields["visible"][0].sum()) == \
        196 * quadrants


def test_other_quadrant_counts_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"visible_quadrants = 4: give 1, 2 or 3"):
        quadrant_mask((1, 4, 4), 4)
    with pytest.raises(ConfigError, match=r"\[data\] visible_quadrants = 4 is invalid"):
        validate({"data": {"name": "digits", "visible_quadrants": 4}, "model": {"name": "cvae"},
                  "guide": {"name": "gaussian"}})
    with pytest.raises(ConfigError, match=r"needs images \[C, H, W\]"):
        quadrant_mask((6,), 1)


def tiny_cvae():
    pyro.set_rng_seed(0)
    model = MODELS["cvae"]((1, 4, 4), latent_dim=2, hidden=[8])
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.5), generator=torch.Generator().manual_seed(0))
    return model, x, quadrant_mask((1, 4, 4), 1).expand_as(x)


@torch.no_grad()
def test_the_cvae_scores_the_hidden_pixels_under_a_prior_of_the_visible_ones():
    model, x, visible = tiny_cvae()
    trace = pyro.poutine.trace(model).get_trace(x, visible=visible)
    z = trace.nodes["z"]["value"]
    logits = model.decoder(joined(z, model.prior_network(x.where(visible, -1.0))))  # the paper's p(x_h | x_v, z)
    by_hand = (dist.Bernoulli(logits=logits).log_prob(x) * ~visible).flatten(1).sum(1)
    assert trace.nodes["x"]["fn"].log_prob(x) == pytest.approx(by_hand, rel=1e-6)
    # the prior reads the visible pixels alone: flipping a hidden one leaves it, flipping a visible one moves it
    prior = lambda x: pyro.poutine.trace(model).get_trace(x, visible=visible).nodes["z"]["fn"].base_dist.loc  # noqa
    flipped_hidden, flipped_visible = x.clone(), x.clone()
    flipped_hidden[:, 0, 0, 3] = 1 - x[:, 0, 0, 3]
    flipped_visible[:, 0, 3, 0] = 1 - x[:, 0, 3, 0]
    assert torch.equal(prior(flipped_hidden), prior(x)) and not torch.equal(prior(flipped_visible), prior(x))
    # without the field nothing is visible: every pixel is scored
    whole = pyro.poutine.trace(pyro.poutine.condition(model, {"z": z})).get_trace(x)
    logits = model.decoder(joined(z, model.prior_network(torch.full_like(x, -1.0))))
    assert whole.nodes["x"]["fn"].log_prob(x) == pytest.approx(dist.Bernoulli(logits=logits).log_prob(x)
                                                                .flatten(1).sum(1), rel=1e-6)


def linear_gaussian(x, visible, a=0.7, noise=0.5):
    """z ~ N(a * x_v, 1), x_h ~ N(z, noise^2): p(x_h | x_v) = N(a * x_v, 1 + noise^2) in closed form."""
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(a * x[:, 0], 1.0))
        pyro.sample("x", dist.Normal(z.unsqueeze(-1), noise).mask(~visible).to_event(1), obs=x)


def exact_posterior(x, visible, a=0.7, noise=0.5):
    """q(z | x) = p(z | x_v, x_h): precision 1 + 1 / noise^2."""
    precision = 1 + 1 / noise ** 2
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal((a * x[:, 0] + x[:, 1] / noise ** 2) / precision, precision ** -0.5))


def test_the_importance_weighted_conditional_log_likelihood_is_exact_with_the_exact_posterior():
    """With the fields given, the estimate is of log p(x_h | x_v), not of log p(x): every weight equals it."""
    x = torch.tensor([[0.3, 1.2], [-1.0, 0.4], [2.0, 2.5]])
    visible = torch.tensor([[True, False]]).expand(3, 2)
    estimate = importance_log_likelihood(linear_gaussian, exact_posterior, x, num_samples=7,
                                         fields={"visible": visible})
    closed_form = dist.Normal(0.7 * x[:, 0], math.sqrt(1 + 0.5 ** 2)).log_prob(x[:, 1])
    assert estimate.log_px == pytest.approx(closed_form, abs=1e-5)
    assert estimate.gap == pytest.approx(torch.zeros(3), abs=1e-5)


def test_a_cvae_fits_quadrants_and_is_diagnosed_given_them():
    data = DATASETS["digits"](visible_quadrants=2, limit=64)
    pyro.set_rng_seed(0)
    model = MODELS["cvae"](data.data_shape, latent_dim=4, hidden=[32])
    result = fit(model, GUIDES["gaussian"](model), data, epochs=2, batch_size=32,
                 diagnostics=DiagnosticsConfig(rows=16, iw_samples=25))
    assert result.trainer.fields == ("visible",)
    found = result.diagnostics
    # a bound of the hidden half alone: under the 16 x 784 / 2 pixels' worth of a bound of the whole digit
    assert found["loss"] == pytest.approx(found["recon"] + found["kl"], rel=1e-5)
    assert math.isfinite(found["log_px_iw"]) and found["log_px_iw"] >= -found["loss"] - 1e-3
    # given the field the bound scores the hidden half alone: far below the same pair's bound on every pixel
    whole = evaluate(result.model, result.guide, result.data.test_eval[:16])["loss"]
    assert found["loss"] < 0.75 * whole
    # I(x; z) and the KL, each draw held against its own digit's prior p(z | x_v)
    assert found["info_kl"] == pytest.approx(found["mi"] + found["marginal_kl"], abs=1e-4) and found["mi"] >= -1e-4
    x, visible = data.test_eval[:3], data.test_fields["visible"][:3]
    drawn = completions(model, x, visible, draws=4)
    assert drawn.shape == (4, 3, 1, 28, 28)
    assert torch.equal(drawn[:, visible], x[visible].expand(4, -1))  # the visible pixels as given
    assert (drawn[:, ~visible].std(0) > 0).any()  # the hidden ones differ from draw to draw
