"""Every registered model x guide x estimator, checked once (Pyro's test_valid_models pattern):
a new registered pair or estimator is tested for free."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from ppl_vae import ESTIMATORS, GUIDES, MODELS, IncompatiblePairError, KLWeight, TrainConfig, Trainer
from ppl_vae.capture import TrainingLoss
from ppl_vae.data import Dataset
from ppl_vae.diagnostics import trace_pair
from ppl_vae.guides import AmortisedGuide
from ppl_vae.models.priors import PRIORS

# (model name, model options, data shape): each model under each swappable part
MODEL_VARIANTS = [
    ("vae", {}, (6,)),
    ("vae", {"prior": "mixture", "components": 3, "likelihood": "gaussian-learned"}, (6,)),
    ("vae", {"prior": "bernoulli"}, (6,)),  # binary latent units: score-function gradients
    ("vae", {"network": "conv", "likelihood": "gaussian"}, (1, 8, 8)),
    ("dlgm", {}, (6,)),
]
assert {m for m, _, _ in MODEL_VARIANTS} == set(MODELS), "add new models to MODEL_VARIANTS"
assert {kw.get("prior", "normal") for m, kw, _ in MODEL_VARIANTS if m == "vae"} == set(PRIORS), "add new priors"
CASES = [pytest.param(m, kw, shape, g, id=f"{m}{'-' + '-'.join(map(str, kw.values())) if kw else ''}-{g}")
         for m, kw, shape in MODEL_VARIANTS for g in sorted(GUIDES)]


def binary(shape, n=12):
    return torch.bernoulli(torch.full((n, *shape), 0.5))


def refusal(estimator: str, guide) -> str | None:
    """What the estimator's error says when it cannot serve this guide, or None when it can."""
    if estimator == "analytic" and not guide.mean_field:
        return "not mean-field"
    if estimator in ("analytic", "iw") and not guide.reparameterised:
        return "reparameterised"
    return None


def grads(loss, params) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(loss, params, allow_unused=True))


def replayed(captured: TrainingLoss, x, weight: float) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """The captured loss and the gradients it sets."""
    loss = captured.loss_and_grads(x, torch.tensor(weight))
    return loss, [p.grad for p in captured.loss_fn.parameters()]


def assert_same_gradients(actual, expected, names, rtol=1e-4):
    """Per parameter: both present, and ||actual - expected|| <= rtol ||expected|| (+ rounding)."""
    for name, a, b in zip(names, actual, expected, strict=True):
        assert a is not None and b is not None, f"{name}: no gradient"
        assert (a - b).norm() <= rtol * b.norm() + 1e-6, f"{name}: {a.norm():.6g} against {b.norm():.6g}"


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("model_name, options, shape, guide_name", CASES)
def test_loss_forms_agree(tiny_pair, model_name, options, shape, guide_name, estimator):
    model, guide = tiny_pair(model_name, guide_name, shape, **options)
    elbo, x = ESTIMATORS[estimator](num_particles=3), binary(shape)
    if refusal(estimator, guide):
        with pytest.raises(IncompatiblePairError, match=refusal(estimator, guide)):
            elbo.loss_and_grads(model, guide, x)
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
    if refusal(estimator, guide):
        pytest.skip("refused above")
    loss_fn, x = ESTIMATORS[estimator](num_particles=3)(model, guide), binary(shape)
    captured = TrainingLoss(loss_fn)
    captured.loss_and_grads(x, torch.tensor(0.5))
    assert list(captured.graphs.values()) != [None]

    pyro.set_rng_seed(3)
    captured_loss, captured_grads = replayed(captured, x, 2.0)
    pyro.set_rng_seed(3)
    eager_loss = KLWeight(2.0)(loss_fn)(x)
    eager_grads = grads(eager_loss, list(loss_fn.parameters()))
    assert torch.allclose(captured_loss, eager_loss.detach(), rtol=1e-5, atol=1e-6)
    assert_same_gradients(captured_grads, eager_grads, [n for n, _ in loss_fn.named_parameters()])


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
def test_every_parameter_gets_the_gradient_eager_pyro_gives_it(tiny_pair, model_name, options, shape, guide_name):
    """Guards the silent no-training trap and the captured graph: from the same random state, the
    captured loss, the eager ``mc`` estimator and Pyro's own ``Trace_ELBO`` give every parameter of
    the pair the same, non-zero gradient (score-function terms included)."""
    model, guide = tiny_pair(model_name, guide_name, shape, **options)
    x = binary(shape, 16)
    ours = ESTIMATORS["mc"]()(model, guide)
    captured = TrainingLoss(ours)
    captured.loss_and_grads(x, torch.tensor(1.0))  # the first batch of a shape is eager and captures the graph
    assert list(captured.graphs.values()) != [None]
    pyros = Trace_ELBO(max_plate_nesting=1)(model, guide)  # max_plate_nesting given: no guessing run
    names, params = zip(*ours.named_parameters())
    results = {}
    for name, loss in (("pyro", pyros), ("eager", ours)):
        pyro.set_rng_seed(3)
        results[name] = grads(loss(x), params)
    pyro.set_rng_seed(3)
    results["captured"] = replayed(captured, x, 1.0)[1]
    assert all(g is not None and g.abs().sum() > 0 for g in results["pyro"]), "a parameter gets no gradient"
    assert_same_gradients(results["eager"], results["pyro"], names)
    assert_same_gradients(results["captured"], results["pyro"], names)
    assert len(pyro.get_param_store()) == 0, "parameters leaked into Pyro's global param store"


@pytest.mark.parametrize("model_name, options, shape, guide_name", CASES)
def test_one_training_step_is_adams_first_step_on_pyros_gradient(tiny_pair, model_name, options, shape, guide_name):
    """The trainer's optimiser covers the whole pair: one step moves every parameter by
    lr * g / (|g| + eps), Adam's first step, with g Pyro's gradient of the loss per example."""
    model, guide = tiny_pair(model_name, guide_name, shape, **options)
    x = binary(shape, 16)
    trainer = Trainer(model, guide, Dataset("t", x, x[:4]), TrainConfig(epochs=1, batch_size=0, lr=1e-2))
    before = [p.detach().clone() for p in trainer.loss_fn.parameters()]
    pyro.set_rng_seed(5)
    expected = grads(Trace_ELBO(max_plate_nesting=1)(model, guide)(x) / len(x), list(trainer.loss_fn.parameters()))
    pyro.set_rng_seed(5)  # full batch, binary data: the step draws only z, as Pyro did
    trainer.train_epoch()
    assert trainer.step == 1
    for (name, p), p0, g in zip(trainer.loss_fn.named_parameters(), before, expected, strict=True):
        step = 1e-2 * g / (g.abs() + 1e-8)
        assert torch.allclose(p0 - p.detach(), step, rtol=1e-3, atol=1e-6), name
        assert (p != p0).any(), f"{name} did not move"


def test_structured_guide_refuses_one_layer_model():
    model = MODELS["vae"]((6,), latent_dim=2, hidden=[8])
    with pytest.raises(IncompatiblePairError, match="z1 and z2"):
        GUIDES["structured"](model)


def test_checking_a_models_support_draws_no_random_numbers(monkeypatch):
    """A guide initialises as it would without the check: runs keep their numbers."""
    model = MODELS["dlgm"]((6,), latent_dim=2, hidden=[8])
    built = []
    for check in (True, False):
        if not check:
            monkeypatch.setattr(AmortisedGuide, "_check_support", lambda self, model: None)
        pyro.set_rng_seed(4)
        built.append(GUIDES["gaussian"](model).state_dict())
    assert all(torch.equal(built[0][k], built[1][k]) for k in built[0])


def test_structured_guide_draws_z2_given_z1_alone():
    """q(z1 | x) q(z2 | z1): with x fixed, two values of z1 give two q(z2); with z1 fixed, two
    data sets give the same q(z2)."""
    model = MODELS["dlgm"]((6,), latent_dim=2, hidden=[8])
    guide = GUIDES["structured"](model)
    x = binary((6,), 4)

    def q_z2(x, z1):
        trace = poutine.trace(poutine.condition(guide, data={"z1": z1})).get_trace(x)
        q = trace.nodes["z2"]["fn"].base_dist
        return torch.cat([q.loc, q.scale], -1)

    z1 = torch.randn(4, 2)
    assert not torch.allclose(q_z2(x, z1), q_z2(x, z1 + 2.0))
    assert torch.equal(q_z2(x, z1), q_z2(1 - x, z1))


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
