"""Pairs that take more than x: data fields passed as keywords (labels, the mask of which are known),
labels kept per class, and the ``enum`` estimator, checked against closed forms and Pyro's own
``TraceEnum_ELBO``."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from torch import nn

import ppl_vae
from ppl_vae import GUIDES, MODELS, ConfigError, DiagnosticsConfig, IncompatiblePairError, TrainConfig, Trainer
from ppl_vae.data.datasets import Dataset, digits, label_fields
from ppl_vae.evaluation.collapse import posterior_means
from ppl_vae.infer.capture import CaptureWarning
from ppl_vae.infer.objectives import enum

X = torch.tensor([0.5, -1.0, 2.5, 4.0])


class Mixture(nn.Module):
    """p(c) p(x | c): two unit-variance Gaussians; ``assign`` (x -> logits) is q(c | x) where the guide samples c."""

    def __init__(self):
        super().__init__()
        self.locs, self.logits = nn.Parameter(torch.tensor([-2.0, 3.0])), nn.Parameter(torch.tensor([0.3, -0.1]))
        self.assign = nn.Linear(1, 2)

    def model(self, x, enumerate_here: bool = True):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Categorical(logits=self.logits),
                            infer={"enumerate": "parallel"} if enumerate_here else {})
            pyro.sample("x", dist.Normal(self.locs[c], 1.0), obs=x)

    def model_leaving_c_to_the_guide(self, x):
        self.model(x, enumerate_here=False)

    def guide_summing_out(self, x):
        """Samples nothing: the model's c is summed out."""

    def guide(self, x):
        with pyro.plate("data", len(x)):
            pyro.sample("c", dist.Categorical(logits=self.assign(x[:, None])), infer={"enumerate": "parallel"})


def log_joint(mix, x):
    """log p(x, c) for both c, ``[B, 2]``."""
    return torch.log_softmax(mix.logits, 0) + dist.Normal(mix.locs, 1.0).log_prob(x[:, None])


def test_enum_sums_out_a_models_mixture_assignment_exactly():
    """With c summed out in the model, the loss is -sum_n log sum_c p(x_n, c): the marginal likelihood."""
    mix = Mixture()
    loss = enum()(mix.model, mix.guide_summing_out)(X)
    exact = -log_joint(mix, X).logsumexp(-1).sum()
    assert loss.item() == pytest.approx(exact.item(), rel=1e-6)
    got = torch.autograd.grad(loss, [mix.locs, mix.logits])
    expected = torch.autograd.grad(exact, [mix.locs, mix.logits])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, expected))


def test_enum_takes_the_guides_expectation_over_c_exactly():
    """With q(c | x) enumerated in the guide, -ELBO = -sum_n sum_c q(c | x_n) [log p(x_n, c) - log q(c | x_n)]
    in closed form (no sampling), and Pyro's TraceEnum_ELBO gives the same loss and gradients."""
    mix = Mixture()
    loss = enum()(mix.model_leaving_c_to_the_guide, mix.guide)(X)
    log_q = torch.log_softmax(mix.assign(X[:, None]), -1)
    exact = -(log_q.exp() * (log_joint(mix, X) - log_q)).sum()
    assert loss.item() == pytest.approx(exact.item(), rel=1e-6)
    params = [mix.locs, mix.logits, *mix.assign.parameters()]
    got = torch.autograd.grad(loss, params)
    pyros = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(mix.model_leaving_c_to_the_guide, mix.guide, X)
    assert pyros.item() == pytest.approx(loss.item(), rel=1e-6)
    for a, b, c in zip(got, torch.autograd.grad(pyros, params), torch.autograd.grad(exact, params)):
        assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-5)


def test_enum_refuses_a_continuous_site_marked_for_enumeration_by_name():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    with pytest.raises(IncompatiblePairError, match=r"site 'z' is marked for enumeration, but its Normal"):
        enum()(model, lambda x: None)(X)


def test_a_model_summing_out_c_trains_only_under_enum(recwarn):
    """Trainer: the mixture's parameters fit the data by the enumerated bound; mc would score c as drawn
    from the prior, and is refused by name."""
    mix = Mixture()
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(300, generator=g) - 3, torch.randn(100, generator=g) + 3])
    x = x[torch.randperm(400, generator=g)]
    data = Dataset("two-gaussians", x[:360], x[360:])
    with pytest.raises(IncompatiblePairError, match=r"discrete site\(s\) 'c' are marked for enumeration .* use "
                                                     r"estimator 'enum'"):
        Trainer(mix.model, mix.guide_summing_out, data, TrainConfig(estimator="mc"), device="cpu")
    config = TrainConfig(estimator="enum", epochs=60, batch_size=0, lr=0.05, capture=False)
    trainer = Trainer(mix.model, mix.guide_summing_out, data, config, device="cpu")
    trainer.fit()
    assert sorted(mix.locs.tolist()) == pytest.approx([-3, 3], abs=0.3)
    assert sorted(mix.logits.softmax(0).tolist()) == pytest.approx([0.25, 0.75], abs=0.06)
    assert not [w for w in recwarn if issubclass(w.category, CaptureWarning)]


def test_enum_refuses_a_kl_weight_and_free_bits():
    with pytest.raises(ConfigError, match="estimator 'enum' sums discrete sites out.*set kl_weight = 1"):
        TrainConfig(estimator="enum", kl_weight=4.0)
    with pytest.raises(ConfigError, match="free bits"):
        TrainConfig(estimator="enum", free_bits=0.5)


def test_labels_kept_are_balanced_by_class_reproducible_and_the_rest_hidden():
    data = digits(limit=400, labelled=100, seed=3)
    known, y = data.train_fields["labelled"], data.train_fields["y"]
    assert int(known.sum()) == 100
    assert torch.equal(data.train_labels[known].bincount(minlength=10), torch.full((10,), 10))
    assert torch.equal(y[known], data.train_labels[known]) and not y[~known].any()  # a hidden label reads as 0
    assert torch.equal(known, digits(limit=400, labelled=100, seed=3).train_fields["labelled"])
    assert not torch.equal(known, digits(limit=400, labelled=100, seed=4).train_fields["labelled"])
    assert not data.test_fields["labelled"].any() and torch.equal(data.test_fields["y"], data.test_labels)
    assert bool(digits(limit=64).train_fields["labelled"].all())  # by default every label is known
    for bad, message in ((15, "a multiple of the 10 classes"), (400, "needs 40 examples of class")):
        with pytest.raises(ConfigError, match=message):
            label_fields(digits(limit=200), bad)


class Conditional(nn.Module):
    """p(z) p(x | z, y) and q(z | x, y): a class-conditional VAE whose pair takes the field ``y``."""

    def __init__(self):
        super().__init__()
        self.decoder, self.encoder = nn.Linear(2 + 10, 6), nn.Linear(6 + 10, 4)

    def model(self, x, y):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(1))
            logits = self.decoder(torch.cat([z, nn.functional.one_hot(y, 10).float()], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide_of_x_alone(self, x):
        self.guide(x, torch.zeros(len(x), dtype=torch.long))

    def guide(self, x, y):
        loc, raw = self.encoder(torch.cat([x, nn.functional.one_hot(y, 10).float()], -1)).chunk(2, -1)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1))


def labelled_bits(n=48):
    g = torch.Generator().manual_seed(0)
    x, y = torch.bernoulli(torch.full((n, 6), 0.5), generator=g), torch.arange(n) % 10
    return Dataset("bits", x[:36], x[36:], train_labels=y[:36], test_labels=y[36:],
                   train_fields={"y": y[:36]}, test_fields={"y": y[36:]})


def test_a_pair_taking_y_gets_each_batchs_labels_captured_or_eager_alike():
    """The pair is called with the batch's rows of y; the captured graph takes them as an input, and gives
    the eager run's history."""
    histories = []
    for capture in (True, False):
        torch.manual_seed(0)  # the same initial networks
        cvae = Conditional()
        config = TrainConfig(epochs=3, batch_size=12, capture=capture, seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("error", CaptureWarning)
            trainer = Trainer(cvae.model, cvae.guide, labelled_bits(), config, device="cpu")
            histories.append(trainer.fit())
        assert trainer.fields == ("y",)
        assert [g is not None for g in trainer.loss.graphs.values()] == [capture]
    assert [r["test_loss"] for r in histories[0]] == pytest.approx([r["test_loss"] for r in histories[1]], rel=1e-5)


def test_a_pair_asking_for_a_field_the_data_lack_is_refused_by_name():
    cvae = Conditional()
    data = labelled_bits()
    bare = Dataset("bits", data.train, data.test)
    with pytest.raises(ConfigError, match=r"asks for 'y', but data 'bits' has no fields beside x: use data that carry"):
        Trainer(cvae.model, cvae.guide, bare, device="cpu")
    with pytest.raises(IncompatiblePairError, match=r"the guide .* takes no 'y', which the other takes"):
        Trainer(cvae.model, cvae.guide_of_x_alone, data, device="cpu")


def m2_batch(n=8):
    """A tiny M2 pair and a batch whose first half is labelled."""
    model = MODELS["m2"]((6,), latent_dim=2, hidden=[8], alpha=3.0)
    x = torch.bernoulli(torch.full((n, 6), 0.5), generator=torch.Generator().manual_seed(0))
    return model, GUIDES["m2"](model), x, torch.arange(n) % 10, torch.arange(n) < n // 2


def test_enum_gives_pyros_trace_enum_elbo_on_the_m2_pair():
    """Same loss and gradients as pyro.infer.TraceEnum_ELBO on a batch mixing labelled and unlabelled rows."""
    model, guide, x, y, labelled = m2_batch()
    params = list(dict.fromkeys([*model.parameters(), *guide.parameters()]))
    pyro.set_rng_seed(1)
    ours = enum()(model, guide)(x, y=y, labelled=labelled)
    pyro.set_rng_seed(1)
    pyros = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, config_enumerate(guide, "parallel"), x,
                                                                    y=y, labelled=labelled)
    assert ours.item() == pytest.approx(pyros.item(), rel=1e-6)
    for a, b in zip(torch.autograd.grad(ours, params), torch.autograd.grad(pyros, params)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_m2s_classification_term_is_alpha_times_the_labelled_rows_log_q():
    """J^alpha - J = alpha * sum over the labelled rows of -log q(y | x) (Kingma et al. 2014, Eq. 9)."""
    model, guide, x, y, labelled = m2_batch()
    losses = []
    for alpha in (3.0, 0.0):
        model.alpha = alpha
        pyro.set_rng_seed(1)
        losses.append(enum()(model, guide)(x, y=y, labelled=labelled).item())
    log_q = torch.log_softmax(model.classifier(x), -1).gather(1, y[:, None]).squeeze(1)
    assert losses[0] - losses[1] == pytest.approx(-3.0 * log_q[labelled].sum().item(), rel=1e-4)


def test_the_collapse_diagnostics_read_a_class_site_as_its_probabilities():
    """M2 fitted on digits with 50 labels: q(y | x) as a unit per class (probabilities summing to 1),
    the importance-weighted log p(x) and I(x; z, y) finite, the class's KL part of the ELBO."""
    data = digits(limit=128, labelled=50)
    model = MODELS["m2"](data.data_shape, latent_dim=3, hidden=[16], alpha=2.0)
    guide = GUIDES["m2"](model)
    fit = ppl_vae.fit(model, guide, data, estimator="enum", epochs=1, batch_size=64, capture=False, device="cpu",
                      diagnostics=DiagnosticsConfig(rows=16, iw_samples=30, mean_samples=4))
    probs = posterior_means(guide, data.test_eval[:16])["y_unobserved"]
    assert probs.shape == (16, 10) and torch.allclose(probs.sum(1), torch.ones(16))
    found = fit.diagnostics
    assert found["latent_dims"] == {"z": 3, "y_unobserved": 10} and found["kl_sites"]["y_unobserved"] > 0
    assert all(math.isfinite(found[k]) for k in ("log_px_iw", "mi", "marginal_kl", "loss"))
    assert fit.trainer.fields == ("y", "labelled")


def test_a_label_outside_the_classes_is_refused_by_name():
    data = digits(limit=40)
    data.train_fields["y"][0], data.train_fields["labelled"][0] = 12, True
    model = MODELS["m2"](data.data_shape, latent_dim=2, hidden=[8])
    with pytest.raises(ConfigError, match=r"the train split of data 'digits' has the label 12 \(and 0 more outside "
                                          r"the classes 0 \.\. 9\): set \[model\] classes = 13"):
        Trainer(model, GUIDES["m2"](model), data, device="cpu")
    data.train_fields["labelled"][0] = False  # a hidden label is never read
    Trainer(model, GUIDES["m2"](model), data, device="cpu")
