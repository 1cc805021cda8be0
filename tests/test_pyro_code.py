"""Pyro code as Pyro users write it (``ppl_vae.infer.pairs``): a tutorial-style pair trains step for step
as ``pyro.infer.SVI`` trains it, through ``Trainer`` and through an experiment file (the VAE tutorial's,
the semi-supervised tutorial's and the CVAE example's, taking ``ys``), and resumes
exactly; pairs keep their own parameters; a global site's KL counts once per pass over the data
(a conjugate model with a closed-form ELBO); importing the toolkit changes no Pyro setting; a bad
pair is named."""

import json
import math
import subprocess
import sys
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample
from pyro.optim import Adam
from pyro_pairs import QuadrantCVAE, SemiSupervisedTutorialVAE, TutorialVAE
from torch import nn

from ppl_vae import DATASETS, Dataset, IncompatiblePairError, TrainConfig, Trainer
from ppl_vae.infer.bounds import evaluate
from ppl_vae.infer.capture import CaptureWarning
from ppl_vae.infer.pairs import Sites
from ppl_vae.lab.experiment import run
from ppl_vae.models import GaussianVAE, StandardNormal
from ppl_vae.models.likelihoods import Bernoulli
from ppl_vae.networks import Decoder

#: per-step losses of the toolkit and of SVI agree to this relative tolerance (float32 sums in
#: another order, and the toolkit's per-example objective through Adam's epsilon)
SVI_RTOL = 1e-5


@pytest.fixture(scope="module")
def digits():
    return DATASETS["digits"](binarize="static", limit=200)


def svi_losses(data, init: dict, batch_size: int, epochs: int, seed: int = 0) -> list[float]:
    """A plain SVI loop on the tutorial pair from ``init``: Adam, Trace_ELBO, the batches drawn as
    the toolkit draws them (a permutation per epoch from torch's generator)."""
    pyro.clear_param_store()
    vae = TutorialVAE(784, 2, 32)
    vae.load_state_dict(init)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    pyro.set_rng_seed(seed)
    losses, n = [], len(data.train)
    for _ in range(epochs):
        batches = [slice(None)] if batch_size >= n else torch.randperm(n).split(batch_size)
        losses.append(sum(svi.step(data.batch(index)) for index in batches) / n)
    pyro.clear_param_store()
    return losses


@pytest.mark.parametrize("batch_size, capture", [(200, False), (200, True), (50, True)])
def test_a_tutorial_pair_trains_step_for_step_as_svi_does(digits, batch_size, capture):
    pyro.set_rng_seed(0)
    vae = TutorialVAE(784, 2, 32)
    init = {k: v.clone() for k, v in vae.state_dict().items()}
    trainer = Trainer(vae.model, vae.guide, digits, TrainConfig(epochs=8, batch_size=batch_size, lr=1e-3,
                                                                capture=capture))
    assert trainer.model.sites == Sites(observed="obs", local={"latent": 2}, global_=())
    pyro.set_rng_seed(0)
    ours = [trainer.train_epoch() for _ in range(8)]  # full batch: one step per epoch
    theirs = svi_losses(digits, init, batch_size, 8)
    assert ours == pytest.approx(theirs, rel=SVI_RTOL)
    assert ours[-1] < ours[0]  # it trains
    # the user's own modules are the ones trained, and Pyro's global param store is untouched
    assert not torch.equal(vae.decoder.fc1.weight, init["decoder.fc1.weight"])
    assert list(pyro.get_param_store().keys()) == []


def test_a_tutorial_pair_trains_from_an_experiment_file_as_svi_does(tmp_path, digits):
    path = tmp_path / "tutorial.toml"
    path.write_text("""
[data]
name = "digits"
binarize = "static"
limit = 200
[model]
name = "pyro_pairs:TutorialVAE.model"   # TutorialVAE(**these), then its .model
x_dim = 784
z_dim = 2
hidden_dim = 32
[guide]
name = "pyro_pairs:TutorialVAE.guide"   # the same instance's .guide
[train]
epochs = 6
batch_size = 0
lr = 1e-3
eval_every = 1
[diagnostics]
rows = 50
iw_samples = 25
""")
    (summary,) = run(path, tmp_path / "out", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    pyro.set_rng_seed(0)  # the cell's seed, with which it built the pair
    init = TutorialVAE(784, 2, 32).state_dict()
    assert [r["train_objective"] for r in rows] == pytest.approx(svi_losses(digits, init, 200, 6), rel=SVI_RTOL)
    # the diagnostics find the pair's own sites
    assert set(summary["kl_sites"]) == {"latent"} and summary["latent_dims"] == {"latent": 2}
    assert math.isfinite(summary["log_px_iw"]) and "kl_global" not in summary


def test_a_pyro_pair_resumes_from_its_checkpoint_exactly(tmp_path, digits):
    """Its parameters (a module's, and one pyro.param of its own) are saved and restored with the
    optimiser: stopped after 2 epochs and resumed, it ends where a run of 4 in one go ends."""

    class WithTemperature(TutorialVAE):
        def model(self, x):
            pyro.param("temperature", torch.ones(()), constraint=dist.constraints.positive)
            super().model(x)

    def trainer(epochs: int) -> Trainer:
        pyro.set_rng_seed(0)
        vae = WithTemperature(784, 2, 32)
        return Trainer(vae.model, vae.guide, digits, TrainConfig(epochs=epochs, batch_size=50))

    whole = trainer(4)
    whole.fit()
    first = trainer(2)
    first.fit(tmp_path / "checkpoint.pt")
    resumed = trainer(4)
    resumed.load(tmp_path / "checkpoint.pt")
    resumed.fit()
    assert "loose.temperature" in dict(resumed.model.params.named_parameters())
    assert [r["train_objective"] for r in resumed.history] == [r["train_objective"] for r in whole.history]


def test_pairs_keep_their_own_parameters_under_one_param_store_name(digits):
    pyro.set_rng_seed(0)
    first, second = TutorialVAE(784, 2, 32), TutorialVAE(784, 2, 32)  # both call pyro.module("decoder", ...)
    untouched = {k: v.clone() for k, v in second.state_dict().items()}
    trainers = [Trainer(vae.model, vae.guide, digits, TrainConfig(batch_size=0)) for vae in (first, second)]
    trainers[0].train_epoch()
    assert all(torch.equal(v, untouched[k]) for k, v in second.state_dict().items())
    assert not torch.equal(first.decoder.fc1.weight, untouched["decoder.fc1.weight"])
    # a function's pyro.param parameters, too: each pair makes its own
    def model(x):
        loc = pyro.param("loc", torch.zeros(784))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Bernoulli(logits=loc).to_event(1), obs=x.reshape(len(x), -1))

    def guide(x):
        pass

    a, b = (Trainer(model, guide, digits, TrainConfig(batch_size=0, lr=0.1)) for _ in range(2))
    a.train_epoch()
    (loc_a,), (loc_b,) = a.model.params.loose.values(), b.model.params.loose.values()
    assert loc_a is not loc_b and loc_a.abs().sum() > 0 and loc_b.abs().sum() == 0
    assert list(pyro.get_param_store().keys()) == []


def test_building_a_trainer_leaves_the_random_stream_and_each_modules_mode_as_it_was(digits):
    """The run on 2 and 3 rows that finds a user pair's sites and makes its parameters is invisible:
    torch's random stream is where it was (a user who draws after ``Trainer(...)`` draws what they
    would have drawn), and each module is back in the mode its user left it in (dropout still drops)."""
    vae = TutorialVAE(784, 2, 32)
    vae.decoder = nn.Sequential(nn.Dropout(0.5), vae.decoder)  # dropout on z, in training mode
    vae.encoder = nn.Sequential(nn.Dropout(0.5), vae.encoder).eval()  # the user's choice: an encoder without it
    pyro.set_rng_seed(7)
    expected = torch.rand(5)
    pyro.set_rng_seed(7)
    Trainer(vae.model, vae.guide, digits, TrainConfig(batch_size=0))
    assert torch.equal(torch.rand(5), expected)
    assert all(m.training for m in vae.decoder.modules()) and not any(m.training for m in vae.encoder.modules())
    decoded = vae.decoder(torch.ones(64, 2))  # 64 draws of the dropout mask: not all alike
    assert not torch.equal(decoded, decoded[:1].expand_as(decoded))


def test_a_native_pair_is_trained_as_it_is(digits):
    model = GaussianVAE(Decoder(2, [16], digits.data_shape), StandardNormal(2), Bernoulli(), digits.data_shape)
    from ppl_vae.guides import GaussianGuide

    guide = GaussianGuide(model)
    trainer = Trainer(model, guide, digits, TrainConfig(batch_size=0))
    assert trainer.model is model and trainer.guide is guide


# --- a global latent: the conjugate Gaussian mean, q(mu) an AutoNormal --------------------------

N, D = 100, 2


def conjugate_model(x):
    """mu ~ N(0, I), x_n ~ N(mu, I): the posterior is N(sum x / (N + 1), I / (N + 1))."""
    mu = pyro.sample("mu", dist.Normal(torch.zeros(D), 1.0).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, 1.0).to_event(1), obs=x)


class ConjugateMean(PyroModule):
    """The same model as a PyroModule with a PyroSample prior (its location a tensor made once)."""

    def __init__(self):
        super().__init__()
        self.mu = PyroSample(dist.Normal(torch.zeros(D), 1.0).to_event(1))

    def forward(self, x):
        mu = self.mu
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(mu, 1.0).to_event(1), obs=x)


def closed_form_negative_elbo(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> float:
    """-ELBO(q) of the full data for q(mu) = N(loc, diag(scale^2)), in closed form."""
    n = len(x)
    expected_log_lik = (-0.5 * math.log(2 * math.pi) * n * D - ((x - loc) ** 2).sum() / 2 - n * (scale ** 2).sum() / 2)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale),
                                           torch.distributions.Normal(0.0, 1.0)).sum()
    return (kl - expected_log_lik).item()


@pytest.mark.parametrize("model", [conjugate_model, ConjugateMean], ids=["function", "PyroModule"])
def test_a_global_sites_kl_counts_once_per_pass_over_the_data(model):
    model = model() if model is ConjugateMean else model
    x = 2.0 + torch.randn(N, D, generator=torch.Generator().manual_seed(0))
    data = Dataset("conjugate", x, x[:20].clone())
    posterior_mean, posterior_sd = x.sum(0) / (N + 1), (N + 1) ** -0.5
    # counted once per batch of 10, the prior would weigh 10 times as much: mean sum x / (N + 10)
    assert (posterior_mean - x.sum(0) / (N + 10)).abs().min() > 0.15
    pyro.set_rng_seed(1)
    guide = AutoNormal(model)
    trainer = Trainer(model, guide, data, TrainConfig(epochs=300, batch_size=10, lr=0.05, lr_final=1e-3))
    assert trainer.model.sites.global_ == ("mu", "mu_unconstrained") and trainer.model.sites.local == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", CaptureWarning)  # captured, a PyroSample's constant prior included
        trainer.fit()
    with trainer.model.params.scope():
        loc, scale = guide.locs.mu.detach(), guide.scales.mu.detach()
    assert loc == pytest.approx(posterior_mean, abs=0.02)
    assert scale == pytest.approx(torch.full((D,), posterior_sd), rel=0.1)
    # at the optimum the full-data ELBO is the evidence: log p(x) of x_n = mu + noise, in closed form
    covariance = torch.eye(N) + torch.ones(N, N)
    log_px = sum(torch.distributions.MultivariateNormal(torch.zeros(N), covariance).log_prob(x[:, d]) for d in range(D))
    assert closed_form_negative_elbo(x, loc, scale) / N == pytest.approx(-log_px.item() / N, abs=1e-3)
    # the diagnostics report the global KL on its own, and count it once per pass in the -ELBO
    terms = evaluate(trainer.model, trainer.guide, x, num_particles=50)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale), torch.distributions.Normal(0.0, 1.0))
    assert set(terms["kl_global"]) == {"mu"} and terms["kl_global"]["mu"] == pytest.approx(kl.sum().item(), abs=3.0)
    assert terms["kl_sites"] == {} and terms["kl"] == pytest.approx(terms["kl_global"]["mu"] / N)


def test_the_bayesian_decoder_reports_global_and_local_kl_apart(tmp_path):
    (summary,) = run("digits-bayes-decoder", tmp_path / "out", quick_run=True, progress=False)
    assert set(summary["kl_global"]) == {"out.weight", "out.bias"} and set(summary["kl_sites"]) == {"z"}
    assert summary["latent_dims"] == {"z": 8}  # active units count z alone
    n_train = len(DATASETS["digits"](limit=256).train)  # the quick run's training digits
    assert summary["kl"] == pytest.approx(summary["kl_sites"]["z"] + sum(summary["kl_global"].values()) / n_train,
                                          rel=1e-6)
    assert math.isnan(summary["log_px_iw"])  # not defined per datapoint with shared weights


def test_an_experiment_file_names_a_function_and_an_autoguide(tmp_path):
    path = tmp_path / "rates.toml"
    path.write_text("""
[data]
name = "bits"
n = 4
rows = 40
[model]
name = "pyro_pairs:pixel_rates"   # a function, used as it is
[guide]
name = "AutoNormal"               # pyro.infer.autoguide.AutoNormal(model, init_scale=0.05)
init_scale = 0.05
[train]
epochs = 200
batch_size = 8
lr = 0.05
[diagnostics]
rows = 8
iw_samples = 25
""")
    (summary,) = run(path, tmp_path / "out", progress=False)
    assert (summary["model"], summary["guide"]) == ("pyro_pairs:pixel_rates", "AutoNormal")
    assert set(summary["kl_global"]) == {"logits"} and summary["kl_sites"] == {}
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    # it learns the rates: each bit is 1 in half the rows, so the best -ELBO is 4 ln 2 plus the KL of
    # the rates over the 32 training rows (0.13 nats per row at the end: measured 2.90 against 3.05 at first)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.1
    assert rows[-1]["train_loss"] == pytest.approx(4 * math.log(2) + summary["kl_global"]["logits"] / 32, abs=0.05)


def test_importing_the_toolkit_changes_no_pyro_setting():
    code = ("import pyro; before = pyro.settings.get(); import ppl_vae, ppl_vae.infer.pairs, ppl_vae.cli; "
            "assert pyro.settings.get() == before, (before, pyro.settings.get())")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- errors ---------------------------------------------------------------------------------


def _latent(x):
    with pyro.plate("data", len(x)):
        return pyro.sample("z", dist.Normal(torch.zeros(len(x), 1), 1.0).to_event(1))


def test_a_model_that_observes_nothing_is_named(digits):
    with pytest.raises(IncompatiblePairError, match=r"the model .*_latent has no observed site: .*obs=x"):
        Trainer(_latent, _latent, digits)


def _model(x, shift: bool = False):
    """z per datapoint, and with ``shift`` a global w, observed as Bernoulli pixels."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0)) if shift else 0.0
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 1), 1.0).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=z + w).expand([len(x), 784]).to_event(1), obs=x.reshape(len(x), -1))


def test_a_latent_the_guide_misses_is_named(digits):
    with pytest.raises(IncompatiblePairError, match=r"latent site\(s\) 'w' are not sampled by the guide .*_latent, "
                                                   r"which samples 'z'"):
        Trainer(lambda x: _model(x, shift=True), _latent, digits)


def test_a_pair_without_parameters_is_named(digits):
    with pytest.raises(IncompatiblePairError, match=r"neither the model .*_model nor the guide .*_latent has a "
                                                   r"parameter to train: register networks with pyro.module"):
        Trainer(_model, _latent, digits)


def test_estimators_a_pyro_pair_cannot_use_are_named(digits):
    vae = TutorialVAE(784, 2, 32)  # its guide does not say it is mean-field
    with pytest.raises(IncompatiblePairError, match=r"'analytic' needs a mean-field guide, and guide TutorialVAE.guide "
                                                   r"does not say whether it is one: set mean_field = True"):
        Trainer(vae.model, vae.guide, digits, TrainConfig(estimator="analytic", batch_size=0)).train_epoch()
    vae.mean_field = True
    Trainer(vae.model, vae.guide, digits, TrainConfig(estimator="analytic", batch_size=0)).train_epoch()
    with pytest.raises(IncompatiblePairError, match=r"'iw' takes a log-mean-exp per datapoint, but the pair's latent "
                                                   r"site\(s\) 'mu', 'mu_unconstrained' are shared by all data"):
        Trainer(conjugate_model, AutoNormal(conjugate_model), Dataset("c", torch.zeros(10, D), torch.zeros(2, D)),
                TrainConfig(estimator="iw"))


def test_a_class_is_not_a_program(digits):
    with pytest.raises(IncompatiblePairError, match="not a Pyro program: give a callable model"):
        Trainer(TutorialVAE, _latent, digits)


def step_for_step(make_pair, data, loss, fields: tuple[str, ...], epochs: int = 3, batch_size: int = 50,
                  estimator: str = "mc") -> tuple[list[float], list[float]]:
    """Per-epoch training losses of the pair ``make_pair()`` through ``Trainer`` and through a plain SVI
    loop with ``loss`` (the pair's guide wrapped as ``make_pair`` says), from the same initial networks
    and the same batches, the data ``fields`` given to both."""
    pyro.set_rng_seed(0)
    pair = make_pair()
    init = {k: v.clone() for k, v in pair.state_dict().items()}
    trainer = Trainer(pair.model, pair.guide, data, TrainConfig(epochs=epochs, batch_size=batch_size, lr=1e-3,
                                                                estimator=estimator, capture=False), device="cpu")
    assert trainer.fields == fields
    pyro.set_rng_seed(0)
    ours = [trainer.train_epoch() for _ in range(epochs)]
    pyro.clear_param_store()
    theirs_pair = make_pair()
    theirs_pair.load_state_dict(init)
    guide = config_enumerate(theirs_pair.guide, "parallel", expand=True) if estimator == "enum" else theirs_pair.guide
    svi = SVI(theirs_pair.model, guide, Adam({"lr": 1e-3}), loss)
    pyro.set_rng_seed(0)
    theirs, n = [], len(data.train)
    for _ in range(epochs):
        theirs.append(sum(svi.step(data.batch(index), *[data.train_fields[f][index] for f in fields])
                          for index in torch.randperm(n).split(batch_size)) / n)
    pyro.clear_param_store()
    return ours, theirs


@pytest.mark.parametrize("labelled", [True, False])
def test_a_semi_supervised_tutorial_pair_trains_step_for_step_as_svi_does(labelled):
    """The SS-VAE tutorial's ``model(xs, ys=None)``/``guide(xs, ys=None)`` as written: on labelled
    batches y is observed; on unlabelled ones the guide's y is summed out by ``enum`` as by
    ``TraceEnum_ELBO`` over ``config_enumerate(guide)``."""
    data = DATASETS["tutorial-digits"](labelled=labelled, limit=100)
    ours, theirs = step_for_step(lambda: SemiSupervisedTutorialVAE(784, 10, 2, 16), data,
                                 TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False),
                                 ("ys",) if labelled else (), estimator="enum")
    assert ours == pytest.approx(theirs, rel=SVI_RTOL) and ours[-1] < ours[0]


#: Pyro's own warning on the example's code as written (a frozen baseline inside a module in training mode)
FROZEN_BASELINE = "ignore:baseline_net.* was not registered in the param store:UserWarning"


@pytest.mark.filterwarnings(FROZEN_BASELINE)
def test_a_cvae_example_pair_trains_step_for_step_as_svi_does():
    """The CVAE example's ``model(xs, ys=None)``/``guide(xs, ys=None)`` as written, with its frozen
    baseline inside: x the visible quadrant, ``ys`` the hidden ones."""
    data = DATASETS["tutorial-quadrants"](visible_quadrants=1, limit=100)
    ours, theirs = step_for_step(lambda: QuadrantCVAE(784, 2, 16), data, Trace_ELBO(), ("ys",))
    assert ours == pytest.approx(theirs, rel=SVI_RTOL) and ours[-1] < ours[0]


@pytest.mark.filterwarnings(FROZEN_BASELINE)
@pytest.mark.parametrize("pair, data", [("SemiSupervisedTutorialVAE", "tutorial-digits"),
                                        ("QuadrantCVAE", "tutorial-quadrants")])
def test_tutorial_pairs_taking_ys_train_from_an_experiment_file(tmp_path, pair, data):
    """Named in an experiment file as they are, on data that carry ``ys``: trained, and diagnosed given them."""
    path = tmp_path / "pair.toml"
    path.write_text(f"""
imports = ["pyro_pairs"]              # registers the data as these programs take it
[data]
name = "{data}"
limit = 64
[model]
name = "pyro_pairs:{pair}.model"
x_dim = 784
[guide]
name = "pyro_pairs:{pair}.guide"
[train]
epochs = 2
batch_size = 32
estimator = "{'enum' if pair.startswith('Semi') else 'mc'}"
capture = false
[diagnostics]
rows = 16
iw_samples = 25
mean_samples = 1
info_samples = 1
""")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        (summary,) = run(path, tmp_path / "out", progress=False)
    # the CVAE example indexes pixels with a boolean mask: its importance samples are drawn one at a time, and said so
    one_at_a_time = [w for w in caught if "drawing them one at a time" in str(w.message)]
    assert bool(one_at_a_time) == (pair == "QuadrantCVAE")
    assert summary["fields"] == ["ys"] and set(summary["latent_dims"]) == {"z"}
    assert math.isfinite(summary["log_px_iw"]) and summary["log_px_iw"] >= -summary["loss"] - 1e-3
