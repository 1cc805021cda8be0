"""The captured training loss: same runs as eager Pyro, eager fallback with a reason, no host reads per step."""

import copy
import itertools
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn
from torch.func import vmap

from ppl_vae import DATASETS, GUIDES, MODELS, TrainConfig, Trainer
from ppl_vae.data.datasets import Dataset
from ppl_vae.infer.capture import CaptureWarning, TrainingLoss, functional_noise
from ppl_vae.infer.objectives import ElboEstimator


def flat(row: dict) -> dict:
    """A history row with its per-site and per-dimension entries spread into scalar keys."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dict):
            for site, v in value.items():
                out |= {f"{key}/{site}/{i}": x for i, x in enumerate(v if isinstance(v, list) else [v])}
        else:
            out[key] = value
    return out


def trainer_for(data, prior="normal", guide="gaussian", **config):
    pyro.set_rng_seed(0)
    model = MODELS["vae"](data.data_shape, latent_dim=2, hidden=[8], prior=prior)
    options = {"epochs": 3, "batch_size": 8, "lr": 1e-2, **config}
    return Trainer(model, GUIDES[guide](model), data, TrainConfig(**options))


@pytest.mark.parametrize("pair, free_bits", [(("normal", "gaussian"), 0.0), (("normal", "gaussian"), 0.3),
                                             (("bernoulli", "bernoulli"), 0.0)])
def test_captured_run_is_the_eager_run(tiny_data, pair, free_bits):
    """Same history and parameters, under a KL weight that changes every step (linear warm-up)
    and with a partial last batch, which gets a graph of its own; for Gaussian and for binary
    latents (score-function gradients)."""
    data = tiny_data(n=44)  # 33 training rows: batches of 8, 8, 8, 8 and 1
    runs = [trainer_for(data, *pair, capture=capture, kl_schedule="linear", kl_warmup_epochs=2, free_bits=free_bits)
            for capture in (True, False)]
    histories = [run.fit() for run in runs]
    # the KL weight of each epoch's last step
    assert [(row["epoch"], row["kl_weight"]) for row in histories[0]] == [(1, 0.4), (2, 0.9), (3, 1.0)]
    for a, b in zip(map(flat, histories[0]), map(flat, histories[1])):
        assert a.keys() == b.keys()
        assert all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6) for k in a)
    captured, eager = runs
    assert sorted(k[0] for k, graph in captured.loss.graphs.items() if graph is not None) == [(1, 6), (8, 6)]
    assert all(graph is None for graph in eager.loss.graphs.values())
    for p, q in zip(captured.loss_fn.parameters(), eager.loss_fn.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)


def test_binary_latents_train_through_the_captured_graph_on_pyros_gradients():
    """8 binary latent units with a Bernoulli prior and encoder, a linear decoder, one batch of 64
    digits, the mc estimator: the replayed graph gives each parameter the gradient of Pyro's own
    Trace_ELBO from the same random state. (A replayed forward pass alone, which loses every
    detach(), gave the same loss and a zero gradient.)"""
    digits = DATASETS["digits"](binarize="static", limit=64)
    model = MODELS["vae"](digits.data_shape, latent_dim=8, hidden=[], prior="bernoulli")
    guide = GUIDES["bernoulli"](model)
    assert [type(m).__name__ for m in model.decoder.mlp] == ["Linear"]
    trainer = Trainer(model, guide, digits, TrainConfig(epochs=2, batch_size=64))
    trainer.fit()  # epoch 1 runs eagerly and captures the graph, epoch 2 replays it
    (graph,) = trainer.loss.graphs.values()
    assert graph is not None
    x, params = trainer.data.batch(slice(None)), list(trainer.loss_fn.parameters())
    pyro.set_rng_seed(3)
    trainer.loss.loss_and_grads(x, torch.tensor(1.0))
    replay = [p.grad for p in params]
    pyro.set_rng_seed(3)
    pyros = torch.autograd.grad(Trace_ELBO(max_plate_nesting=1)(model, guide)(x), params)
    for (name, _), replayed, expected in zip(trainer.loss_fn.named_parameters(), replay, pyros, strict=True):
        assert expected.norm() > 1.0, name  # the score-function gradient of 64 digits is large
        assert torch.allclose(replayed, expected, rtol=1e-4, atol=1e-4 * expected.abs().max()), name


def flaky_gradient(drift: float) -> type[torch.autograd.Function]:
    """An identity whose backward scales by 1 + ``drift`` x (backward passes so far): a gradient
    traced once and replayed is off from the eager one by a relative ``drift`` while the loss agrees."""
    calls = itertools.count()

    class FlakyGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * (1 + drift * next(calls))

    return FlakyGradient


class TinyModel(nn.Module):
    """z ~ N(0, I_2), x ~ Bernoulli(logits(z, x)) over 6 pixels; a subclass changes ``logits``."""

    latent_dims, data_shape = {"z": 2}, (6,)

    def __init__(self):
        super().__init__()
        self.decoder = nn.Linear(2, 6)

    def logits(self, z, x):
        return self.decoder(z)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.logits(z, x)).to_event(1), obs=x)


class FlakyDecoderModel(TinyModel):
    def __init__(self, drift: float):
        super().__init__()
        self.flaky = flaky_gradient(drift)

    def logits(self, z, x):
        return self.flaky.apply(self.decoder(z))


@pytest.mark.parametrize("drift", [1.0, 1e-3], ids=["doubled", "ten-times-the-tolerance"])
def test_a_replay_whose_gradients_differ_runs_eagerly_with_a_warning(tiny_data, drift):
    """Off by a factor of 2, and by 0.1%: ten times the check's relative tolerance (``GRAD_RTOL``)."""
    model = FlakyDecoderModel(drift)
    loss = TrainingLoss(ElboEstimator()(model, GUIDES["gaussian"](model)))
    with pytest.warns(CaptureWarning, match=r"not its gradients: gradient of 'model\.decoder\.weight'"):
        loss.loss_and_grads(tiny_data().train[:8], torch.tensor(1.0))
    assert list(loss.graphs.values()) == [None]


class BranchingModel(TinyModel):
    """A model whose structure depends on a data value: it cannot be captured."""

    def logits(self, z, x):
        return self.decoder(z) + (1.0 if x.sum() > 0 else 0.0)


def test_value_dependent_pair_runs_eagerly_with_a_warning(tiny_data):
    data = tiny_data()
    model = BranchingModel()
    loss = TrainingLoss(ElboEstimator()(model, GUIDES["gaussian"](model)))
    x = data.train[:8]
    with pytest.warns(CaptureWarning, match="could not be captured.*data-dependent"):
        loss.loss_and_grads(x, torch.tensor(1.0))
    assert list(loss.graphs.values()) == [None]
    pyro.set_rng_seed(1)
    eager = loss.loss_and_grads(x, torch.tensor(1.0))  # later calls: eager, no second warning (filterwarnings = error)
    grad = model.decoder.weight.grad
    pyro.set_rng_seed(1)
    expected = ElboEstimator()(model, loss.loss_fn.guide)(x)
    assert eager.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.allclose(grad, torch.autograd.grad(expected, model.decoder.weight)[0])


@pytest.mark.parametrize("options", [{"capture": True}, {"capture": False}, {"grad_clip": 1.0}],
                         ids=["captured", "eager", "clipped"])
def test_no_host_reads_per_step(tiny_data, host_reads, options):
    """Reading a tensor back to the host (a synchronisation on a GPU) happens per epoch, not per step:
    an epoch of 8 steps reads back as often as an epoch of 2 (clipping the gradient too)."""
    reads = host_reads

    def reads_per_epoch(rows):
        x = torch.bernoulli(torch.full((rows + 8, 6), 0.5))
        trainer = trainer_for(Dataset("t", x[:rows], x[rows:]), **options)
        trainer.train_epoch()  # the first batch of a shape is validated (and captured): reads allowed
        reads.clear()
        trainer.train_epoch()
        return len(reads)

    assert reads_per_epoch(16) == reads_per_epoch(64) <= 2


def _three_runs(combination, epochs=3):
    """Eager, captured and compiled training of one registered pair x estimator from the same seed."""
    runs = {}
    for name, options in {"eager": {"capture": False}, "captured": {}, "compiled": {"compile": True}}.items():
        pyro.set_rng_seed(0)
        model, guide = combination.build()
        x = combination.data(40)
        config = TrainConfig(epochs=epochs, batch_size=16, lr=1e-2, estimator=combination.estimator,
                             kl_schedule="linear", kl_warmup_epochs=2, **options)
        runs[name] = Trainer(model, guide, Dataset("t", x[:30], x[30:]), config)
        runs[name].fit()
    return runs


def _assert_same_runs(a, b):
    for row_a, row_b in zip(map(flat, a.history), map(flat, b.history), strict=True):
        assert row_a.keys() == row_b.keys()
        assert all(row_a[k] == pytest.approx(row_b[k], rel=1e-4, abs=1e-5) for k in row_a)
    for p, q in zip(a.loss_fn.parameters(), b.loss_fn.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5)


def _check_compiled(combination):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptureWarning)  # a registered pair must capture and compile
        runs = _three_runs(combination)
    graphs = [g for g in runs["compiled"].loss.graphs.values() if g is not None]
    # Inductor's graphs, not the FX replay
    assert graphs and all(not isinstance(g.graph, torch.fx.GraphModule) for g in graphs)
    assert runs["compiled"].loss.compile_seconds > 0 and runs["captured"].loss.compile_seconds == 0
    _assert_same_runs(runs["captured"], runs["eager"])
    _assert_same_runs(runs["compiled"], runs["captured"])


def test_compiled_run_is_the_captured_and_the_eager_run():
    """``train.compile``: Inductor's program of the captured graph draws from torch's generator
    (``fallback_random``), so three epochs with a partial last batch and a changing KL weight give
    the same history and parameters compiled, captured and eager (within float tolerance: fused
    loops sum in another order). The full matrix of pairs is a slow test."""
    from types import SimpleNamespace

    def build():
        model = MODELS["vae"]((6,), latent_dim=2, hidden=[8])
        return model, GUIDES["gaussian"](model)

    _check_compiled(SimpleNamespace(build=build, data=lambda n: torch.bernoulli(torch.full((n, 6), 0.5)),
                                    estimator="mc"))


@pytest.mark.slow
def test_every_registered_pair_and_estimator_compiles_to_the_same_run(compatible_pair_and_estimator):
    _check_compiled(compatible_pair_and_estimator)


def _no_compiler(graph, **options):
    raise RuntimeError("no C++ compiler found")


def _doubles_the_loss(graph, **options):
    return lambda *inputs: (lambda loss, *grads: (2 * loss, *grads))(*graph(*inputs))


def _moves_a_gradient(graph, **options):
    return lambda *inputs: (lambda loss, grad, *grads: (loss, 1.01 * grad + 0.01, *grads))(*graph(*inputs))


@pytest.mark.parametrize("compiler, message", [
    (_no_compiler, r"could not be compiled \(RuntimeError: no C\+\+ compiler found\)"),
    (_doubles_the_loss, r"gave -?[\d.]+ where the pair gives -?[\d.]+"),
    (_moves_a_gradient, r"gives the pair's loss but not its gradients: gradient of '[\w.]+' has norm .*"),
], ids=["raises", "wrong-loss", "wrong-gradient"])
def test_a_graph_that_does_not_compile_or_compiles_wrong_is_replayed_uncompiled(tiny_data, monkeypatch, compiler,
                                                                               message):
    """Where Inductor fails, or its program's first step is not the eager step (loss and every
    gradient, checked as the capture is; a stand-in compiler that returns a wrong program without
    raising), the captured graph is replayed as it is, with a warning that says why."""
    monkeypatch.setattr(torch, "compile", compiler)
    data = tiny_data(n=44)
    with pytest.warns(CaptureWarning, match=message + "; replaying it uncompiled"):
        trainer = trainer_for(data, compile=True)
        trainer.fit()
    assert all(isinstance(g.graph, torch.fx.GraphModule) for g in trainer.loss.graphs.values())
    captured = trainer_for(data)
    captured.fit()
    _assert_same_runs(trainer, captured)


def test_released_free_bits_train_the_same_captured_and_eager(tiny_data):
    """Per-site free bits on the DLGM's z2 released over half the run: the release factor is an
    input of the captured graph (changing every step, never frozen), so the captured and eager runs agree."""
    data = tiny_data(n=44)
    runs = []
    for capture in (True, False):
        pyro.set_rng_seed(0)
        model = MODELS["dlgm"](data.data_shape, latent_dim=2, top_latent_dim=1, hidden=[8], top_hidden=[16],
                               activation="elu", head="variance")
        config = TrainConfig(epochs=4, batch_size=8, lr=1e-2, capture=capture, free_bits_sites={"z2": 0.8},
                             free_bits_release=0.5)
        runs.append(Trainer(model, GUIDES["structured"](model), data, config))
        runs[-1].fit()
    _assert_same_runs(*runs)
    pyro.set_rng_seed(0)
    model = MODELS["dlgm"](data.data_shape, latent_dim=2, top_latent_dim=1, hidden=[8], top_hidden=[16],
                           activation="elu", head="variance")
    held = Trainer(model, GUIDES["structured"](model), data,
                   TrainConfig(epochs=4, batch_size=8, lr=1e-2, free_bits_sites={"z2": 0.8}))
    held.fit()
    assert held.history[-1]["train_objective"] != pytest.approx(runs[0].history[-1]["train_objective"], rel=1e-6)


def test_a_replayed_gradient_of_another_dtype_device_or_shape_is_a_mismatch():
    """The optimiser steps each parameter with its replayed gradient: it must be the parameter's own kind."""
    from ppl_vae.infer.capture import _grad_mismatch

    eager = torch.ones(3)
    assert _grad_mismatch(["w"], [torch.ones(3)], [eager]) is None
    assert "float64" in _grad_mismatch(["w"], [torch.ones(3, dtype=torch.float64)], [eager])
    assert "(1, 3)" in _grad_mismatch(["w"], [torch.ones(1, 3)], [eager])


def test_a_gradient_strided_unlike_its_parameter_is_set_in_the_parameter_layout():
    """CUDA's fused Adam refuses a .grad laid out unlike its parameter; a compiled replay may return one."""
    from ppl_vae.infer.capture import set_grads

    weight = torch.nn.Parameter(torch.randn(4, 3))
    transposed = torch.randn(3, 4).t()  # shape (4, 3), strides (1, 4)
    set_grads([weight], [0], [transposed])
    assert weight.grad.stride() == weight.stride() and torch.equal(weight.grad, transposed)


def test_functional_noise_lets_vmap_train_restarts_and_replays_one_restart_bit_for_bit(tiny_data):
    """The captured graph draws z as empty + normal_, which vmap(randomness="different") refuses; with
    the draws made functional it takes it. Over one restart it replays the plain graph exactly, from
    the same random state; over restarts of different parameters that draw alike (randomness="same"),
    each restart's loss and gradients are the plain graph's on its own parameters."""
    trainer = trainer_for(tiny_data(), batch_size=0)
    trainer.train_epochs(2)  # captured on the first step
    (joint,) = trainer.loss.graphs.values()
    plain = joint.graph
    functional = functional_noise(copy.deepcopy(plain))
    assert "normal_" in plain.code and "normal_" not in functional.code and "randn" in functional.code
    x = trainer.data.train
    inputs = (x, torch.ones(()), torch.ones(()) / len(x), torch.ones(()))
    state = [t.detach() for t in trainer.loss.state]
    with pytest.raises(RuntimeError, match="randomness"):
        vmap(lambda *s: plain(*s, *inputs), randomness="different")(*[t.unsqueeze(0) for t in state])

    def from_seed(fn, *args):
        torch.manual_seed(5)
        return fn(*args)

    expected = from_seed(plain, *state, *inputs)
    one = from_seed(vmap(lambda *s: functional(*s, *inputs), randomness="different"), *[t.unsqueeze(0) for t in state])
    assert all(torch.equal(a[0], b) for a, b in zip(one, expected))
    other = [t + 0.1 * torch.randn_like(t) if t.is_floating_point() else t for t in state]
    both = from_seed(vmap(lambda *s: functional(*s, *inputs), randomness="same"),
                     *[torch.stack([a, b]) for a, b in zip(state, other)])
    for restart, params in enumerate((state, other)):
        alone = from_seed(functional, *params, *inputs)
        assert all(torch.allclose(a[restart], b, rtol=1e-5, atol=1e-6) for a, b in zip(both, alone))
    different = from_seed(vmap(lambda *s: functional(*s, *inputs), randomness="different"),
                          *[torch.stack([t, t]) for t in state])
    assert different[0][0] != different[0][1]  # the same parameters, their own draws
