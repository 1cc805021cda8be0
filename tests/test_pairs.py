"""Every registered model x guide x estimator, checked once (Pyro's test_valid_models pattern):
a new registered pair or estimator is tested for free."""

import pyro
import pytest
import torch

from ppl_vae import ESTIMATORS, GUIDES, MODELS, IncompatiblePairError, KLWeight, TrainConfig, Trainer
from ppl_vae.capture import TrainingLoss
from ppl_vae.data import Dataset
from ppl_vae.diagnostics import trace_pair

# (model name, model options, data shape): each model under each swappable part
MODEL_VARIANTS = [
    ("vae", {}, (6,)),
    ("vae", {"prior": "mixture", "components": 3, "likelihood": "gaussian-learned"}, (6,)),
    ("vae", {"network": "conv", "likelihood": "gaussian"}, (1, 8, 8)),
    ("dlgm", {}, (6,)),
]
assert {m for m, _, _ in MODEL_VARIANTS} == set(MODELS), "add new models to MODEL_VARIANTS"
CASES = [pytest.param(m, kw, shape, g, id=f"{m}{'-' + '-'.join(map(str, kw.values())) if kw else ''}-{g}")
         for m, kw, shape in MODEL_VARIANTS for g in sorted(GUIDES)]


def binary(shape, n=12):
    return torch.bernoulli(torch.full((n, *shape), 0.5))


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("model_name, options, shape, guide_name", CASES)
def test_loss_forms_agree(tiny_pair, model_name, options, shape, guide_name, estimator):
    model, guide = tiny_pair(model_name, guide_name, shape, **options)
    elbo, x = ESTIMATORS[estimator](num_particles=3), binary(shape)
    if estimator == "analytic" and not guide.mean_field:
        with pytest.raises(IncompatiblePairError, match="not mean-field"):
            elbo.loss(model, guide, x)
        return
    values = []
    for form in (elbo.loss, elbo.loss_and_grads, lambda m, g, x: elbo.differentiable_loss(m, g, x).item(),
                 lambda m, g, x: elbo(m, g)(x).item()):
        pyro.set_rng_seed(7)
        values.append(form(model, guide, x))
    assert all(torch.isfinite(torch.tensor(values)))
    assert values == pytest.approx([values[0]] * 4, rel=1e-5)


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("model_name, options, shape, guide_name", CASES)
def test_captured_loss_replays_the_pair(tiny_pair, model_name, options, shape, guide_name, estimator):
    """The training loss captured as a graph gives the pair's loss and gradients, with a live KL weight
    (captured at 0.5, replayed at 2.0). A pair that cannot be captured would warn, failing the test."""
    model, guide = tiny_pair(model_name, guide_name, shape, **options)
    if estimator == "analytic" and not guide.mean_field:
        pytest.skip("refused above")
    loss_fn, x = ESTIMATORS[estimator](num_particles=3)(model, guide), binary(shape)
    captured = TrainingLoss(loss_fn)
    captured(x, torch.tensor(0.5))
    assert list(captured.graphs.values()) != [None]

    def loss_and_grads(loss):
        grads = torch.autograd.grad(loss, list(loss_fn.parameters()), allow_unused=True)
        return [loss.detach()] + [g for g in grads if g is not None]

    results = []
    for run in (lambda: captured(x, torch.tensor(2.0)), lambda: KLWeight(2.0)(loss_fn)(x)):
        pyro.set_rng_seed(3)
        results.append(loss_and_grads(run()))
    assert len(results[0]) == len(results[1]) > 1
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(*results))


@pytest.mark.parametrize("model_name, options, shape, guide_name", CASES)
def test_sites_match(tiny_pair, model_name, options, shape, guide_name):
    model, guide = tiny_pair(model_name, guide_name, shape, **options)
    x = binary(shape)
    model_trace, guide_trace = trace_pair(model, guide, x)
    latent = {n for n, s in model_trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
    sampled = {n for n, s in guide_trace.nodes.items() if s["type"] == "sample"}
    assert latent == sampled == set(model.latent_dims)
    for name in latent:
        q, p = guide_trace.nodes[name]["fn"], model_trace.nodes[name]["fn"]
        assert q.batch_shape == p.batch_shape == (len(x),)
        assert q.event_shape == p.event_shape == (model.latent_dims[name],)
    assert model_trace.nodes["x"]["fn"].event_shape == shape


@pytest.mark.parametrize("model_name, options, shape, guide_name", CASES)
def test_every_parameter_trains(tiny_pair, model_name, options, shape, guide_name):
    """Guards the silent no-training trap: one optimiser step moves every parameter of the pair."""
    model, guide = tiny_pair(model_name, guide_name, shape, **options)
    x = binary(shape, 16)
    trainer = Trainer(model, guide, Dataset("t", x[:12], x[12:]), TrainConfig(epochs=1, batch_size=0, lr=1e-2))
    before = {n: p.detach().clone() for n, p in trainer.loss_fn.named_parameters()}
    assert before, "the pair has no parameters"
    trainer.train_epoch()
    assert trainer.step == 1
    unchanged = [n for n, p in trainer.loss_fn.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []
    assert len(pyro.get_param_store()) == 0, "parameters leaked into Pyro's global param store"


def test_structured_guide_refuses_one_layer_model():
    model = MODELS["vae"]((6,), latent_dim=2, hidden=[8])
    with pytest.raises(IncompatiblePairError, match="z1 and z2"):
        GUIDES["structured"](model)


def test_two_models_never_share_parameters(tiny_data):
    data = tiny_data()
    pairs = []
    for seed in (0, 0):  # same seed, same names: only module-local storage keeps them apart
        pyro.set_rng_seed(seed)
        model = MODELS["vae"](data.data_shape, latent_dim=2, hidden=[8])
        pairs.append((model, GUIDES["gaussian"](model)))
    (m1, g1), (m2, g2) = pairs
    frozen = {n: p.detach().clone() for n, p in m2.named_parameters()}
    Trainer(m1, g1, data, TrainConfig(epochs=1, batch_size=0)).train_epoch()
    assert all(torch.equal(p, frozen[n]) for n, p in m2.named_parameters())
    assert not torch.equal(m1.decoder.mlp[0].weight, m2.decoder.mlp[0].weight)
