"""Shared fixtures (a clean Pyro state, a fixed seed and validation on for every test) and the pair
matrix: every model variant x registered guide x registered estimator, each combination either
compatible or refused with the error listed for it below.

A test takes one of these arguments to run over the matrix (``pytest_generate_tests``):
``combination`` (all of it), ``compatible_pair`` (every (variant, guide) that builds) or
``compatible_pair_and_estimator`` (every (variant, guide, estimator) that trains).
"""

import struct
from dataclasses import dataclass
from types import SimpleNamespace

import pyro
import pytest
import torch

from ppl_vae import ESTIMATORS, GUIDES, MODELS
from ppl_vae.data.datasets import Dataset
from ppl_vae.models.priors import PRIORS

# (model name, model options, data shape): each model under each swappable part
MODEL_VARIANTS = [
    ("vae", {}, (6,)),
    ("vae", {"prior": "mixture", "components": 3, "likelihood": "gaussian-learned"}, (6,)),
    ("vae", {"prior": "bernoulli"}, (6,)),  # binary latent units: score-function gradients
    ("vae", {"network": "conv", "likelihood": "gaussian"}, (1, 8, 8)),
    ("vae", {"likelihood": "bernoulli-autoregressive", "window": 2}, (6,)),  # a decoder that reads x_<i too
    ("vae", {"network": "conv", "likelihood": "bernoulli-autoregressive"}, (1, 8, 8)),  # a small gated PixelCNN
    ("dlgm", {}, (6,)),
    ("m2", {"alpha": 1.0}, (6,)),  # a class observed where labelled, else a discrete latent (no labels here)
    ("cvae", {}, (6,)),  # a prior network on the visible pixels (none visible here)
]
assert {m for m, _, _ in MODEL_VARIANTS} == set(MODELS), "add new models to MODEL_VARIANTS"
assert {kw.get("prior", "normal") for m, kw, _ in MODEL_VARIANTS if m == "vae"} == set(PRIORS), "add new priors"


def variant_id(model: str, options: dict) -> str:
    """The model and its options' named choices (numbers left out): ``vae-mixture-gaussian-learned``."""
    return "-".join([model, *(v for v in options.values() if isinstance(v, str))])


VARIANT_IDS = [variant_id(m, kw) for m, kw, _ in MODEL_VARIANTS]
assert len(set(VARIANT_IDS)) == len(VARIANT_IDS), "two model variants share an id"

# What each refusal must say (a regex searched in the IncompatiblePairError message).
ONE_LAYER = r"guide 'structured' needs a model with latent sites z1 and z2"
REAL_LATENT = r"draws boolean values, but the model's latent site 'z\d?' is real: use guide 'gaussian'"
BINARY_LATENT = r"draws real values, but the model's latent site 'z' is boolean: use guide 'bernoulli'$"

M2_ONLY = r"guide 'm2' needs the M2 model .* use model 'm2'"
CLASS_LATENT = r"draws real values, but the model's latent site 'y_unobserved' is integer: use guide 'm2'"

#: (model variant id, guide name) -> the refusal building the guide raises
GUIDE_REFUSALS = {
    ("vae", "bernoulli"): REAL_LATENT,
    ("vae", "structured"): ONE_LAYER,
    ("vae-mixture-gaussian-learned", "bernoulli"): REAL_LATENT,
    ("vae-mixture-gaussian-learned", "structured"): ONE_LAYER,
    ("vae-bernoulli", "delta"): BINARY_LATENT,
    ("vae-bernoulli", "gaussian"): BINARY_LATENT,
    ("vae-bernoulli", "iaf"): BINARY_LATENT,
    ("vae-bernoulli", "structured"): BINARY_LATENT,
    ("vae-conv-gaussian", "bernoulli"): REAL_LATENT,
    ("vae-conv-gaussian", "structured"): ONE_LAYER,
    ("dlgm", "bernoulli"): REAL_LATENT,
    **{(variant, guide): refusal for variant in ("vae-bernoulli-autoregressive", "vae-conv-bernoulli-autoregressive")
       for guide, refusal in (("bernoulli", REAL_LATENT), ("structured", ONE_LAYER))},
    ("cvae", "bernoulli"): REAL_LATENT,
    ("cvae", "structured"): ONE_LAYER,
    **{(variant, "m2"): M2_ONLY for variant in ("vae", "vae-mixture-gaussian-learned", "vae-bernoulli",
                                                "vae-conv-gaussian", "vae-bernoulli-autoregressive",
                                                "vae-conv-bernoulli-autoregressive", "dlgm", "cvae")},
    ("m2", "bernoulli"): REAL_LATENT,
    **{("m2", guide): CLASS_LATENT for guide in ("delta", "gaussian", "iaf", "structured")},
}

#: (guide name, estimator name) -> the refusal the estimator raises on its first loss, wherever the guide builds
ESTIMATOR_REFUSALS = {
    ("structured", "analytic"): r"estimator 'analytic' is invalid for guide StructuredDLGMGuide: it is not mean-field",
    ("bernoulli", "analytic"): r"estimator 'analytic' needs a reparameterised guide",
    ("bernoulli", "iw"): r"importance-weighted bound's gradient needs reparameterised draws, but the guide's 'z'",
    ("m2", "analytic"): r"estimator 'analytic' is invalid for guide SemiSupervisedGuide: it is not mean-field",
    ("m2", "iw"): r"needs reparameterised draws, but the guide's 'y_unobserved' cannot be reparameterised",
}


@dataclass(frozen=True)
class Combination:
    """A model variant with a guide and (for a cell of the full matrix) an estimator, and the refusal
    expected of it: the guide's when building it fails, else the estimator's, else none."""

    model: str
    options: tuple[tuple[str, object], ...]
    data_shape: tuple[int, ...]
    guide: str
    estimator: str | None = None

    @property
    def variant(self) -> str:
        return variant_id(self.model, dict(self.options))

    @property
    def id(self) -> str:
        return "-".join(filter(None, (self.variant, self.guide, self.estimator)))

    @property
    def guide_refusal(self) -> str | None:
        return GUIDE_REFUSALS.get((self.variant, self.guide))

    @property
    def estimator_refusal(self) -> str | None:
        return None if self.guide_refusal else ESTIMATOR_REFUSALS.get((self.guide, self.estimator))

    @property
    def compatible(self) -> bool:
        return not (self.guide_refusal or self.estimator_refusal)

    def build(self):
        """(model, guide) with 2-D latents and 8 hidden units; raises where the guide is refused."""
        return tiny_pair_of(self.model, self.guide, self.data_shape, **dict(self.options))

    def data(self, n: int = 12) -> torch.Tensor:
        """``n`` binary examples of the variant's shape (from the global random stream)."""
        return torch.bernoulli(torch.full((n, *self.data_shape), 0.5))


def tiny_pair_of(model_name: str, guide_name: str, data_shape=(6,), **kwargs):
    model = MODELS[model_name](data_shape, **{"latent_dim": 2, "hidden": [8], **kwargs})
    return model, GUIDES[guide_name](model)


COMBINATIONS = [Combination(m, tuple(kw.items()), shape, g, e)
                for m, kw, shape in MODEL_VARIANTS for g in sorted(GUIDES) for e in sorted(ESTIMATORS)]
PAIRS = [Combination(m, tuple(kw.items()), shape, g) for m, kw, shape in MODEL_VARIANTS for g in sorted(GUIDES)]
MATRIX_ARGUMENTS = {
    "combination": COMBINATIONS,
    "compatible_pair": [c for c in PAIRS if c.compatible],
    "compatible_pair_and_estimator": [c for c in COMBINATIONS if c.compatible],
}


def pytest_generate_tests(metafunc):
    for argument, cases in MATRIX_ARGUMENTS.items():
        if argument in metafunc.fixturenames:
            metafunc.parametrize(argument, [pytest.param(c, id=c.id) for c in cases])


@pytest.fixture(scope="session")
def pair_matrix():
    """The matrix's parts, for tests of the matrix itself."""
    return SimpleNamespace(variants=VARIANT_IDS, combinations=COMBINATIONS, guide_refusals=GUIDE_REFUSALS,
                           estimator_refusals=ESTIMATOR_REFUSALS)


@pytest.fixture(autouse=True)
def clean_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield
    pyro.clear_param_store()


@pytest.fixture
def tiny_data():
    """make(shape=(6,), n=48): binary data of that per-example shape, split 3:1."""

    def make(shape=(6,), n=48) -> Dataset:
        g = torch.Generator().manual_seed(0)
        x = torch.bernoulli(torch.full((n, *shape), 0.5), generator=g)
        return Dataset("tiny", x[: 3 * n // 4], x[3 * n // 4:])

    return make


@pytest.fixture
def tiny_pair():
    """make(model, guide, data_shape=(6,), **model_kwargs): a registered pair with 2-D latents and
    8 hidden units; IncompatiblePairError where the guide cannot serve the model."""
    return tiny_pair_of


@pytest.fixture
def fake_mnist(tmp_path):
    """A root folder holding MNIST's four idx files (20 train, 8 test random images) where torchvision looks."""
    raw = tmp_path / "mnist-root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 20), ("t10k", 8)):
        pixels = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        header = struct.pack(">IIII", 2051, n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + pixels.numpy().tobytes())
        labels = torch.arange(n, dtype=torch.uint8) % 10
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.numpy().tobytes())
    return tmp_path / "mnist-root"


@pytest.fixture
def host_reads(monkeypatch) -> list[str]:
    """The names of the tensor methods that read back to the host (a synchronisation on a GPU), one entry
    per call from here on: clear it, run, count."""
    reads = []
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _f=original, _n=name, **k: (reads.append(_n), _f(self, *a, **k))[1])
    return reads
