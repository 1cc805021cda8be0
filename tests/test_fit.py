"""The Python-first path: ``fit`` in one call, ``Trainer`` on the GPU by default where torch sees one,
and ``Trainer.train_step`` for a loop of one's own."""

import copy
import inspect

import pytest
import torch
from torch import nn

import ppl_vae
from ppl_vae import ConfigError, Dataset, TrainConfig, Trainer, fit


def test_fit_holds_out_a_share_of_a_tensor_and_diagnoses_the_held_out_rows(tiny_pair):
    model, guide = tiny_pair("vae", "gaussian")
    x = torch.bernoulli(torch.full((40, 6), 0.3), generator=torch.Generator().manual_seed(0))
    result = fit(model, guide, x, held_out=0.25, epochs=3, device="cpu",
                 diagnostics=ppl_vae.DiagnosticsConfig(rows=50, iw_samples=25, mean_samples=5))
    assert (len(result.data.train), len(result.data.test)) == (30, 10)
    assert sorted(map(tuple, result.data.train.tolist() + result.data.test.tolist())) == sorted(map(tuple, x.tolist()))
    assert [row["epoch"] for row in result.history] == [1, 2, 3] and result.trainer.epoch == 3
    assert result.diagnostics["rows"] == 10  # all held-out rows, no more
    assert result.diagnostics["loss"] == pytest.approx(result.diagnostics["recon"] + result.diagnostics["kl"])
    assert result.model is result.trainer.model and next(result.model.parameters()).device.type == "cpu"


def test_fit_without_a_held_out_split_scores_the_training_rows(tiny_pair):
    model, guide = tiny_pair("vae", "gaussian")
    x = torch.bernoulli(torch.full((16, 6), 0.5), generator=torch.Generator().manual_seed(1))
    result = fit(model, guide, x, held_out=0, epochs=1, device="cpu", diagnostics=None)
    assert torch.equal(result.data.test, x) and torch.equal(result.data.train, x) and result.diagnostics == {}


def test_fit_binarises_grey_data_for_a_bernoulli_likelihood_only_when_asked(tiny_pair):
    model, guide = tiny_pair("vae", "gaussian")
    grey = torch.rand(20, 6, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ConfigError, match="Bernoulli likelihood needs binary data"):
        fit(model, guide, grey, epochs=1, device="cpu", diagnostics=None)
    result = fit(model, guide, grey, binarize="static", epochs=1, device="cpu", diagnostics=None)
    assert result.data.is_binary and set(result.data.train.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("data, options, message", [
    (torch.zeros(8), {}, r"a tensor \[N, \*data_shape\], not Tensor of shape \(8,\): put one example per row"),
    ([[0.0, 1.0]], {}, r"not list"),
    (torch.zeros(8, 6), {"epoch": 3}, r"unknown training option\(s\) epoch: the options are TrainConfig's fields: "
                                      r".*epochs"),
    (torch.zeros(8, 6), {"epochs": 0}, r"\[train\] epochs = 0 is out of range"),
    (torch.zeros(8, 6), {"binarize": "Dynamic"}, r"binarize = 'Dynamic' is not one of none, static, dynamic"),
    (torch.zeros(8, 6), {"held_out": 1.0}, r"held_out = 1.0 is out of range: the share of rows held out, in \[0, 1\)"),
    (Dataset("d", torch.zeros(6, 6), torch.zeros(2, 6)), {"held_out": 0.5},
     r"held_out and binarize apply to tensor data; a Dataset has its own split"),
])
def test_fit_refuses_bad_input_with_the_fix(tiny_pair, data, options, message):
    model, guide = tiny_pair("vae", "gaussian")
    with pytest.raises(ConfigError, match=message):
        fit(model, guide, data, device="cpu", **options)


def test_a_trainer_without_a_device_trains_on_cuda_where_torch_sees_it(tiny_pair, tiny_data, monkeypatch):
    """``Trainer()`` and ``fit()`` default to ``"auto"``: with a GPU in sight the pair is moved there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    moved_to = []

    class Moved(Exception):
        pass

    def to(module, device, *args, **kwargs):  # where the trainer puts the pair; stop before CUDA is touched
        moved_to.append(torch.device(device))
        raise Moved

    monkeypatch.setattr(nn.Module, "to", to)
    model, guide = tiny_pair("vae", "gaussian")
    with pytest.raises(Moved):
        Trainer(model, guide, tiny_data())
    with pytest.raises(Moved):
        fit(model, guide, tiny_data())
    assert moved_to == [torch.device("cuda"), torch.device("cuda")]
    assert inspect.signature(ppl_vae.restore).parameters["device"].default == "auto"  # a Trainer's default too


def test_an_epoch_of_train_steps_is_the_trainers_epoch(tiny_pair, tiny_data):
    """The loop of docs/getting-started.md: one ``train_step`` per shuffled batch from the same random state gives the
    parameters ``train_epoch`` gives, exactly; each step returns the batch's objective on the device."""
    data = tiny_data(n=64)
    model, guide = tiny_pair("vae", "gaussian")
    config = TrainConfig(batch_size=16, kl_weight=0.5)
    ours, theirs = (Trainer(*copy.deepcopy((model, guide)), data, config, device="cpu") for _ in range(2))
    torch.manual_seed(3)
    theirs.train_epoch()
    torch.manual_seed(3)
    losses = [ours.train_step(ours.data.batch(index)) for index in torch.randperm(len(data.train)).split(16)]
    assert ours.step == theirs.step == 3 and all(loss.ndim == 0 and torch.isfinite(loss) for loss in losses)
    for a, b in zip(ours.loss_fn.parameters(), theirs.loss_fn.parameters(), strict=True):
        assert torch.equal(a, b)
    before = [p.detach().clone() for p in ours.loss_fn.parameters()]
    ours.train_step(data.train[:5])  # any batch, of any size
    assert ours.step == 4 and any(not torch.equal(a, b) for a, b in zip(before, ours.loss_fn.parameters()))


def test_the_package_exports_the_python_api():
    assert {"fit", "Fit", "run", "report", "restore", "diagnose", "Trainer", "TrainConfig", "Dataset",
            "ConfigError", "Fault"} <= set(ppl_vae.__all__)
    assert all(hasattr(ppl_vae, name) for name in ppl_vae.__all__)
    assert isinstance(ppl_vae.data.digits(limit=8), Dataset)
