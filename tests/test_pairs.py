"""Every model variant x registered guide x registered estimator (the matrix in conftest.py), checked
once (Pyro's test_valid_models pattern): a new registered model, guide or estimator is tested for free,
and each combination either passes or raises the refusal listed for it."""

import contextlib
import itertools
import re

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from ppl_vae import ESTIMATORS, GUIDES, MODELS, IncompatiblePairError, KLWeight, TrainConfig, Trainer
from ppl_vae.data.datasets import Dataset
from ppl_vae.guides import AmortisedGuide
from ppl_vae.infer.capture import CaptureWarning, TrainingLoss
from ppl_vae.tracing import trace_pair


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


def test_loss_forms_agree_unless_refused_as_listed(combination):
    """A refused guide raises its listed refusal when built, a refused estimator on its first loss;
    every other combination gives one finite loss by each of the estimator's four forms."""
    if combination.guide_refusal:
        with pytest.raises(IncompatiblePairError, match=combination.guide_refusal):
            combination.build()
        return
    model, guide = combination.build()
    elbo, x = ESTIMATORS[combination.estimator](num_particles=3), combination.data()
    if combination.estimator_refusal:
        with pytest.raises(IncompatiblePairError, match=combination.estimator_refusal):
            elbo.loss_and_grads(model, guide, x)
        return
    values = []
    for form in (elbo.loss, elbo.loss_and_grads, lambda m, g, x: elbo.differentiable_loss(m, g, x).item(),
                 lambda m, g, x: elbo(m, g)(x).item()):
        pyro.set_rng_seed(7)
        values.append(form(model, guide, x))
    assert all(torch.isfinite(torch.tensor(values)))
    assert values == pytest.approx([values[0]] * 4, rel=1e-5)


def test_the_refusal_tables_hold_no_stale_entry(pair_matrix):
    """Every refusal names a combination of the matrix, and every estimator refusal is asserted by
    some combination (its guide builds for some variant): a listed refusal is one a test checks."""
    assert set(pair_matrix.guide_refusals) <= set(itertools.product(pair_matrix.variants, GUIDES))
    assert set(pair_matrix.estimator_refusals) <= set(itertools.product(GUIDES, ESTIMATORS))
    asserted = {(c.guide, c.estimator) for c in pair_matrix.combinations if c.estimator_refusal}
    assert asserted == set(pair_matrix.estimator_refusals)


def test_captured_loss_replays_the_pair(compatible_pair_and_estimator):
    """The training loss captured as a graph gives the pair's loss and gradients, with a live KL weight
    (captured at 0.5, replayed at 2.0). A pair that cannot be captured would warn, failing the test."""
    case = compatible_pair_and_estimator
    model, guide = case.build()
    loss_fn, x = ESTIMATORS[case.estimator](num_particles=3)(model, guide), case.data()
    captured = TrainingLoss(loss_fn)
    refusal = getattr(loss_fn.elbo, "capture_refusal", None)  # enum: eager, saying why; the same loss all the same
    with pytest.warns(CaptureWarning, match=re.escape(refusal)) if refusal else contextlib.nullcontext():
        captured.loss_and_grads(x, torch.tensor(0.5))
    assert (list(captured.graphs.values()) == [None]) == bool(refusal)

    pyro.set_rng_seed(3)
    captured_loss, captured_grads = replayed(captured, x, 2.0)
    pyro.set_rng_seed(3)
    eager_loss = KLWeight(2.0)(loss_fn)(x)
    eager_grads = grads(eager_loss, list(loss_fn.parameters()))
    assert torch.allclose(captured_loss, eager_loss.detach(), rtol=1e-5, atol=1e-6)
    assert_same_gradients(captured_grads, eager_grads, [n for n, _ in loss_fn.named_parameters()])


def test_sites_match(compatible_pair):
    model, guide = compatible_pair.build()
    x = compatible_pair.data()
    model_trace, guide_trace = trace_pair(model, guide, x)
    latent = {n for n, s in model_trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}
    sampled = {n for n, s in guide_trace.nodes.items() if s["type"] == "sample"}
    assert latent == sampled == set(model.latent_dims)
    for name in latent:
        q, p = guide_trace.nodes[name]["fn"], model_trace.nodes[name]["fn"]
        assert q.batch_shape == p.batch_shape == (len(x),)
        assert q.event_shape == p.event_shape and q.event_shape.numel() == model.latent_dims[name]  # () for a class
    assert model_trace.nodes["x"]["fn"].event_shape == compatible_pair.data_shape


def test_every_parameter_gets_the_gradient_eager_pyro_gives_it(compatible_pair):
    """Guards the silent no-training trap and the captured graph: from the same random state, the
    captured loss, the eager ``mc`` estimator and Pyro's own ``Trace_ELBO`` give every parameter of
    the pair the same, non-zero gradient (score-function terms included)."""
    model, guide = compatible_pair.build()
    x = compatible_pair.data(16)
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


def test_one_training_step_is_adams_first_step_on_pyros_gradient(compatible_pair):
    """The trainer's optimiser covers the whole pair: one step moves every parameter by
    lr * g / (|g| + eps), Adam's first step, with g Pyro's gradient of the loss per example."""
    model, guide = compatible_pair.build()
    x = compatible_pair.data(16)
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
    x = torch.bernoulli(torch.full((4, 6), 0.5))

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
