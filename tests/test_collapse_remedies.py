"""The collapse remedies of the ``ar-collapse`` benchmark against their definitions: delta-VAE's
committed rate and BN-VAE's batch-normalised means bound the KL from below as their closed forms say;
the aggressive schedule of He et al. (2019) steps the encoder alone in its inner loop, the decoder
alone after it, and ends when the held-out I(x; z) stops rising; history rows split the KL into
I(x; z) and KL(q(z) || p(z)); the pair trains in training mode and is scored in evaluation mode."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vae import DATASETS, GUIDES, MODELS, ConfigError, IncompatiblePairError, TrainConfig, Trainer
from ppl_vae.data.datasets import Dataset, resized
from ppl_vae.guides.encoders import committed_scale
from ppl_vae.infer import training
from ppl_vae.infer.information import LatentInformation
from ppl_vae.tracing import decode


def gaussian_kl(loc, scale):
    """KL(N(loc, scale^2) || N(0, 1)) per dimension, in closed form."""
    return 0.5 * (loc ** 2 + scale ** 2 - 1 - 2 * scale.log())


def guide_params(guide, x):
    """loc and scale of q(z | x) for the model's one site ``z``."""
    fn = guide.site_distribution("z", guide.encoder(x)).base_dist
    return fn.loc, fn.scale


@pytest.mark.parametrize("rate", [0.01, 0.1, 1.0, 5.0])
def test_the_committed_scale_has_exactly_the_committed_rate_at_the_prior_mean(rate):
    scale = committed_scale(rate)
    assert scale < 1
    assert gaussian_kl(torch.tensor(0.0), torch.tensor(scale, dtype=torch.float64)).item() == pytest.approx(rate,
                                                                                                           rel=1e-9)


def test_a_committed_rate_bounds_every_datapoints_kl_per_dimension():
    torch.manual_seed(0)
    model = MODELS["vae"]((6,), latent_dim=4, hidden=[8])
    guide = GUIDES["gaussian"](model, committed_rate=0.3)
    for p in guide.parameters():
        p.data.normal_(0, 3.0)  # scales of every size, means near and far from 0
    loc, scale = guide_params(guide, torch.randn(500, 6) * 5)
    assert scale.max() < committed_scale(0.3)
    kl = gaussian_kl(loc, scale)
    assert kl.min() >= 0.3 - 1e-5
    assert kl.min() < 0.35  # and it is reached: the bound is the rate, not some looser number


def test_bn_vae_bounds_the_batch_mean_kl_by_dims_gamma_squared_over_two():
    torch.manual_seed(0)
    model = MODELS["vae"]((6,), latent_dim=4, hidden=[8])
    guide = GUIDES["gaussian"](model, mean_batch_norm=0.6)
    with torch.no_grad():
        guide.norms["z"].shift.normal_(0, 0.5)
    loc, scale = guide_params(guide, torch.randn(256, 6))
    beta = guide.norms["z"].shift.detach()
    mean_kl = gaussian_kl(loc, scale).sum(-1).mean()
    bound = 0.5 * (0.6 ** 2 * 4 + (beta ** 2).sum())  # E_B[mu_d^2] = gamma^2 + beta_d^2 (Zhu et al. 2020)
    assert mean_kl >= bound - 0.01  # up to batch norm's eps beside the variance of the means
    assert torch.allclose((loc ** 2).mean(0), 0.36 + beta ** 2, atol=0.01)


def test_bn_vae_scores_each_digit_alone_by_its_running_statistics():
    """Scored without gradients, the running statistics normalise: q(z | x) is the same in any batch."""
    model = MODELS["vae"]((6,), latent_dim=3, hidden=[8])
    guide = GUIDES["gaussian"](model, mean_batch_norm=0.5)
    guide_params(guide, torch.randn(64, 6) + 2)  # a training step's batch: the running statistics move
    norm = guide.norms["z"]
    assert norm.running_mean.abs().sum() > 0
    kept = norm.running_mean.clone()
    x = torch.randn(10, 6)
    with torch.no_grad():
        alone, together = guide_params(guide, x[:1])[0], guide_params(guide, x)[0][:1]
    assert torch.allclose(alone, together)
    assert torch.equal(kept, norm.running_mean)  # scoring leaves them


@pytest.mark.parametrize("option", [{"committed_rate": 0.1}, {"mean_batch_norm": 0.5}])
def test_the_kl_bounds_refuse_a_prior_other_than_the_standard_normal(option):
    model = MODELS["vae"]((6,), latent_dim=2, hidden=[8], prior="mixture", components=3)
    with pytest.raises(IncompatiblePairError, match=f"{next(iter(option))} bounds the KL to a N\\(0, I\\) prior"):
        GUIDES["gaussian"](model, **option)
    with pytest.raises(ConfigError, match="must be >= 0"):
        GUIDES["gaussian"](MODELS["vae"]((6,), latent_dim=2, hidden=[8]), **{next(iter(option)): -1.0})


def grey_data(n=200):
    x = torch.rand(n, 6, generator=torch.Generator().manual_seed(1))
    return Dataset("grey", x[: 3 * n // 4], x[3 * n // 4:], binarize="dynamic")


def make_trainer(data=None, **config):
    data = data or grey_data()
    pyro.set_rng_seed(0)
    model = MODELS["vae"](data.data_shape, latent_dim=2, hidden=[8])
    guide = GUIDES["gaussian"](model, mean_batch_norm=0.5)
    options = {"epochs": 2, "batch_size": 10, "lr": 1e-2, "estimator": "analytic", **config}
    return Trainer(model, guide, data, TrainConfig(**options), device="cpu")


def snapshot(tensors):
    return [t.detach().clone() for t in tensors]


def changed(before, tensors):
    return [not torch.equal(b, t) for b, t in zip(before, tensors)]


def test_the_aggressive_inner_loop_steps_the_encoder_alone_until_its_loss_stops_falling(monkeypatch):
    trainer = make_trainer(aggressive=True)
    calls = []
    replay = trainer.loss.loss_and_grads
    monkeypatch.setattr(trainer.loss, "loss_and_grads", lambda *a: calls.append(replay(*a)) or calls[-1])
    encoder, decoder = snapshot(trainer.encoder_tensors), snapshot(trainer.decoder_tensors)
    x = trainer.data.batch(torch.arange(10))
    trainer._encoder_steps(x, {})
    assert all(changed(encoder, trainer.encoder_tensors))
    assert not any(changed(decoder, trainer.decoder_tensors))
    steps = len(calls)  # stopped at a window whose mean loss rose, or at the cap
    losses = torch.stack(calls).reshape(-1)
    if steps < training.AGGRESSIVE_MAX_INNER - 1:
        windows = losses[: steps // 10 * 10].reshape(-1, training.AGGRESSIVE_WINDOW).mean(1)
        assert steps % training.AGGRESSIVE_WINDOW == 0 and windows[-1] > windows[-2]
        assert (windows[1:-1] <= windows[:-2]).all()  # every earlier window fell
    # the outer step then moves the decoder alone: the encoder has had its own steps
    encoder, decoder = snapshot(trainer.encoder_tensors), snapshot(trainer.decoder_tensors)
    monkeypatch.setattr(trainer, "_encoder_steps", lambda x, fields: None)
    trainer.train_step(x)
    assert not any(changed(encoder, trainer.encoder_tensors))
    assert all(changed(decoder, trainer.decoder_tensors))


def test_the_aggressive_phase_ends_after_five_epochs_without_a_new_best_information(monkeypatch):
    trainer = make_trainer(aggressive=True, epochs=9, batch_size=0)
    information = iter([1.0, 2.0, 1.5, 2.5, 2.4, 2.3, 2.2, 2.1, 2.0])  # misses at epochs 3, 5, 6, 7 and 8
    monkeypatch.setattr(training, "latent_information",
                        lambda *a, **k: LatentInformation(kl=0.0, mi=next(information), marginal_kl=0.0))
    inner = []
    monkeypatch.setattr(trainer, "_encoder_steps", lambda x, fields: inner.append(trainer.epoch))
    history = trainer.fit()
    assert [row["aggressive"] for row in history] == [True] * 8 + [False]
    assert inner == list(range(8))  # epochs 1 to 8 were aggressive; the row after the 5th miss ends it
    state = trainer.state_dict()
    resumed = make_trainer(aggressive=True, epochs=9, batch_size=0)
    resumed.load_state_dict(state)
    assert (resumed.aggressive, resumed.best_information, resumed.information_misses) == (False, 2.5, 5)


def test_aggressive_epochs_caps_the_phase(monkeypatch):
    trainer = make_trainer(aggressive=True, aggressive_epochs=2, epochs=4, batch_size=0)
    information = iter([1.0, 2.0, 3.0, 4.0])  # still rising: only the cap ends it
    monkeypatch.setattr(training, "latent_information",
                        lambda *a, **k: LatentInformation(kl=0.0, mi=next(information), marginal_kl=0.0))
    monkeypatch.setattr(trainer, "_encoder_steps", lambda x, fields: None)
    assert [row["aggressive"] for row in trainer.fit()] == [True, True, False, False]
    # a cap between history rows: the phase ends there, and the next row says so
    trainer = make_trainer(aggressive=True, aggressive_epochs=1, epochs=4, batch_size=0, eval_every=2)
    information, inner = iter([1.0, 2.0]), []
    monkeypatch.setattr(trainer, "_encoder_steps", lambda x, fields: inner.append(trainer.epoch))
    assert [row["aggressive"] for row in trainer.fit()] == [False, False] and inner == [0]


def user_model(x):
    bias = pyro.param("bias", torch.zeros(x.shape[1]))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Bernoulli(logits=bias + z[:, None]).to_event(1), obs=x)


def user_guide(x):
    loc = pyro.param("loc", torch.zeros(()))
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Normal(loc, 1.0))


def test_aggressive_needs_a_guide_with_parameters_of_its_own():
    """Pyro code's parameters live in the pair's one store: which are the encoder's is not known."""
    with pytest.raises(ConfigError, match="aggressive = true alternates encoder and decoder steps"):
        Trainer(user_model, user_guide, grey_data(), TrainConfig(aggressive=True), device="cpu")


def test_history_rows_split_the_kl_into_information_and_marginal_kl():
    trainer = make_trainer(track_information=True, epochs=3)
    for row in trainer.fit():
        assert -0.1 <= row["test_mi"] <= math.log(50) + 0.1  # up to Monte Carlo noise, and at most log N
        assert row["test_mi"] + row["test_marginal_kl"] == pytest.approx(row["test_kl"], abs=0.3)


def test_a_trainer_keeps_batch_statistics_from_its_steps_and_not_from_its_scoring():
    trainer = make_trainer(epochs=1)
    norm = trainer.guide.norms["z"]
    before = norm.running_mean.clone()
    trainer.fit()
    assert not torch.equal(before, norm.running_mean)  # the steps saw batch statistics and kept them
    kept = norm.running_mean.clone()
    trainer.evaluate(trainer.data.test_eval)
    assert torch.equal(kept, norm.running_mean)  # scoring did not


def test_image_size_averages_areas_and_refuses_to_enlarge():
    images = torch.rand(3, 1, 28, 28)
    small = resized(images, 14)
    assert small.shape == (3, 1, 14, 14)
    assert small[0, 0, 0, 0] == pytest.approx(images[0, 0, :2, :2].mean().item())
    digits = DATASETS["digits"](image_size=7, limit=20)
    assert digits.data_shape == (1, 7, 7) and ((digits.train > 0) & (digits.train < 1)).any()  # grey levels
    with pytest.raises(ConfigError, match="image_size = 40 is out of range"):
        resized(images, 40)


def test_draws_given_z_are_binary_images_of_the_autoregressive_decoder():
    model = MODELS["vae"]((1, 5, 5), latent_dim=2, hidden=[8], likelihood="bernoulli-autoregressive", window=1)
    draws = decode(model, {"z": torch.zeros(4, 2)}, draw=True)
    assert draws.shape == (4, 1, 5, 5) and set(draws.unique().tolist()) <= {0.0, 1.0}
