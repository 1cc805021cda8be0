"""Shared fixtures: a clean Pyro state, a fixed seed and validation on for every test."""

import struct

import pyro
import pytest
import torch

from ppl_vae import GUIDES, MODELS, IncompatiblePairError
from ppl_vae.data import Dataset


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
    8 hidden units; the test is skipped where the guide cannot serve the model."""

    def make(model_name: str, guide_name: str, data_shape=(6,), **kwargs):
        model = MODELS[model_name](data_shape, **{"latent_dim": 2, "hidden": [8], **kwargs})
        try:
            guide = GUIDES[guide_name](model)
        except IncompatiblePairError as error:
            pytest.skip(str(error))
        return model, guide

    return make


@pytest.fixture
def fake_mnist(tmp_path):
    """A root folder holding MNIST's four idx files (20 train, 8 test random images) where torchvision looks."""
    raw = tmp_path / "mnist-root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 20), ("t10k", 8)):
        pixels = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + pixels.numpy().tobytes())
        labels = torch.arange(n, dtype=torch.uint8) % 10
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.numpy().tobytes())
    return tmp_path / "mnist-root"
