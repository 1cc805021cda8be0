"""The captured training loss: same runs as eager Pyro, eager fallback with a reason, no host reads per step."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae import GUIDES, MODELS, TrainConfig, Trainer
from ppl_vae.capture import CaptureWarning, TrainingLoss
from ppl_vae.data import Dataset
from ppl_vae.objectives import TraceELBO


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


def trainer_for(data, **config):
    pyro.set_rng_seed(0)
    model = MODELS["vae"](data.data_shape, latent_dim=2, hidden=[8])
    options = {"epochs": 3, "batch_size": 8, "lr": 1e-2, **config}
    return Trainer(model, GUIDES["gaussian"](model), data, TrainConfig(**options))


@pytest.mark.parametrize("free_bits", [0.0, 0.3])
def test_captured_run_is_the_eager_run(tiny_data, free_bits):
    """Same history and parameters, under a KL weight that changes every step (linear warm-up)
    and with a partial last batch, which gets a graph of its own."""
    data = tiny_data(n=44)  # 33 training rows: batches of 8, 8, 8, 8 and 1
    runs = [trainer_for(data, capture=capture, kl_schedule="linear", kl_warmup_epochs=2, free_bits=free_bits)
            for capture in (True, False)]
    histories = [run.fit() for run in runs]
    assert [(row["epoch"], row["kl_weight"]) for row in histories[0]] == [(1, 0.4), (2, 0.9), (3, 1.0)]  # last step of each
    for a, b in zip(map(flat, histories[0]), map(flat, histories[1])):
        assert a.keys() == b.keys()
        assert all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6) for k in a)
    captured, eager = runs
    assert sorted(k[0] for k, graph in captured.loss.graphs.items() if graph is not None) == [(1, 6), (8, 6)]
    assert all(graph is None for graph in eager.loss.graphs.values())
    for p, q in zip(captured.loss_fn.parameters(), eager.loss_fn.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)


class BranchingModel(nn.Module):
    """A model whose structure depends on a data value: it cannot be captured."""

    latent_dims, data_shape = {"z": 2}, (6,)

    def __init__(self):
        super().__init__()
        self.decoder = nn.Linear(2, 6)

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))
            shift = 1.0 if x.sum() > 0 else 0.0
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z) + shift).to_event(1), obs=x)


def test_value_dependent_pair_runs_eagerly_with_a_warning(tiny_data):
    data = tiny_data()
    model = BranchingModel()
    loss = TrainingLoss(TraceELBO()(model, GUIDES["gaussian"](model)))
    x = data.train[:8]
    with pytest.warns(CaptureWarning, match="could not be captured.*data-dependent"):
        loss(x, torch.tensor(1.0))
    assert list(loss.graphs.values()) == [None]
    pyro.set_rng_seed(1)
    eager = loss(x, torch.tensor(1.0))  # later calls: eager, no second warning (filterwarnings = error)
    pyro.set_rng_seed(1)
    assert eager.item() == pytest.approx(TraceELBO()(model, loss.loss_fn.guide)(x).item(), rel=1e-6)


@pytest.mark.parametrize("capture", [True, False])
def test_no_host_reads_per_step(tiny_data, monkeypatch, capture):
    """Reading a tensor back to the host (a synchronisation on a GPU) happens per epoch, not per step:
    an epoch of 8 steps reads back as often as an epoch of 2."""
    reads = []
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _f=original, _n=name, **k: (reads.append(_n), _f(self, *a, **k))[1])

    def reads_per_epoch(rows):
        x = torch.bernoulli(torch.full((rows + 8, 6), 0.5))
        trainer = trainer_for(Dataset("t", x[:rows], x[rows:]), capture=capture)
        trainer.train_epoch()  # the first batch of a shape is validated (and captured): reads allowed
        reads.clear()
        trainer.train_epoch()
        return len(reads)

    assert reads_per_epoch(16) == reads_per_epoch(64) <= 2
