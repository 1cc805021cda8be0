"""The training loop: exact resume, NaN errors, determinism, evaluation without steps."""

import pyro
import pytest
import torch

from ppl_vae import GUIDES, MODELS, ConfigError, NonFiniteLossError, TrainConfig, Trainer
from ppl_vae.data.datasets import Dataset


def make_trainer(data, seed=0, **config):
    pyro.set_rng_seed(seed)
    model = MODELS["vae"](data.data_shape, latent_dim=2, hidden=[8])
    guide = GUIDES["gaussian"](model)
    options = {"epochs": 4, "batch_size": 8, "lr": 1e-2, "seed": seed, **config}
    return Trainer(model, guide, data, TrainConfig(**options))


def dynamic_data(n=40):
    """Grey values binarised afresh each batch, so the run consumes RNG for data as well as for z."""
    x = torch.rand(n, 6, generator=torch.Generator().manual_seed(1))
    return Dataset("grey", x[:32], x[32:], binarize="dynamic")


def params(trainer):
    return {n: p.detach().clone() for n, p in trainer.loss_fn.named_parameters()}


@pytest.mark.parametrize("eval_every", [1, 3])
def test_resume_is_exact(tmp_path, eval_every):
    """Stopped after the epoch-2 checkpoint, resumed elsewhere: the same history and parameters,
    including a history row whose training objective spans the stop (eval_every = 3)."""
    data, checkpoint = dynamic_data(), tmp_path / "checkpoint.pt"
    straight = make_trainer(data, kl_schedule="linear", kl_warmup_epochs=3, lr_final=1e-3, eval_every=eval_every)
    straight.fit()

    def crash(row):
        if row["epoch"] >= 2:
            raise KeyboardInterrupt

    interrupted = make_trainer(data, checkpoint_every=2, kl_schedule="linear", kl_warmup_epochs=3, lr_final=1e-3,
                               eval_every=eval_every)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(checkpoint, on_epoch=crash)
    torch.load(checkpoint, weights_only=True)  # loadable without unpickling arbitrary objects

    pyro.set_rng_seed(999)  # a different RNG state: resume must restore its own
    resumed = make_trainer(data, seed=5, checkpoint_every=2, kl_schedule="linear", kl_warmup_epochs=3,
                           lr_final=1e-3, eval_every=eval_every)
    resumed.load(checkpoint)
    assert (resumed.epoch, resumed.step) == (2, 8)
    resumed.fit()
    assert resumed.history == straight.history
    expected = params(straight)
    assert all(torch.equal(p, expected[n]) for n, p in params(resumed).items())


def test_same_seed_same_run_other_seed_other_run():
    data = dynamic_data()
    a, b, c = (make_trainer(data, seed=s, epochs=2) for s in (0, 0, 1))
    assert a.fit() == b.fit()
    assert c.fit() != a.history


@pytest.mark.filterwarnings("ignore:Encountered NaN")  # Pyro's own warning; our error follows it
def test_nan_stops_with_step_and_site(tiny_data):
    trainer = make_trainer(tiny_data(), epochs=2)
    with torch.no_grad():
        trainer.model.decoder.mlp[-1].bias[0] = float("nan")
    with pyro.validation_enabled(False), pytest.raises(NonFiniteLossError) as error:
        trainer.fit()
    message = str(error.value)
    assert "at step 0 (epoch 1)" in message and "'x' (model)" in message and "'z'" not in message


def test_evaluation_takes_no_step(tiny_data):
    trainer = make_trainer(tiny_data(), epochs=1)
    trainer.fit()
    before, optimiser = params(trainer), repr(trainer.optimizer.state_dict())
    trainer.evaluate(trainer.data.test_eval)
    assert all(torch.equal(p, before[n]) for n, p in params(trainer).items())
    assert repr(trainer.optimizer.state_dict()) == optimiser


def test_history_reports_terms_in_nats_per_example(tiny_data):
    history = make_trainer(tiny_data(), epochs=2).fit()
    row = history[-1]
    assert row["test_loss"] == pytest.approx(row["test_recon"] + row["test_kl"], rel=1e-5)
    assert row["test_kl"] == pytest.approx(sum(row["test_kl_sites"].values()), rel=1e-5)
    assert row["test_kl_sites"]["z"] == pytest.approx(sum(row["test_kl_dims"]["z"]), rel=1e-5)
    assert len(row["test_kl_dims"]["z"]) == 2
    assert 0 < row["test_recon"] < 6 * 5  # 6 Bernoulli pixels: a few nats, not summed over the batch


def test_eval_every_scores_fewer_rows_of_the_same_run(tiny_data):
    """Scoring is read-only: every third epoch and the last give the same rows as scoring each
    epoch; a row's train objective is the mean over the epochs since the previous row."""
    every = make_trainer(tiny_data(), epochs=7).fit()
    sparse = make_trainer(tiny_data(), epochs=7, eval_every=3).fit()
    assert [row["epoch"] for row in sparse] == [3, 6, 7]
    for row in sparse:
        dense = every[row["epoch"] - 1]
        assert {k: v for k, v in row.items() if k != "train_objective"} == \
            {k: v for k, v in dense.items() if k != "train_objective"}
    assert sparse[0]["train_objective"] == pytest.approx(sum(r["train_objective"] for r in every[:3]) / 3)


def test_bernoulli_needs_binary_data():
    x = torch.rand(16, 6)
    with pytest.raises(ConfigError, match="binary"):
        make_trainer(Dataset("grey", x[:12], x[12:]))


@pytest.mark.parametrize("key, value", [("epochs", 0), ("lr", -1.0), ("kl_weight", -0.5), ("estimator", "nope"),
                                        ("eval_every", 0)])
def test_bad_train_config_is_refused(key, value):
    with pytest.raises(ConfigError, match=key if key != "estimator" else "unknown estimator"):
        TrainConfig(**{key: value})


def test_nan_mid_epoch_is_traced_to_its_step_with_the_parameters_it_saw():
    """Losses are read back once per epoch; a non-finite one replays the epoch from its start,
    checking each step, so the error names the first bad step, and the parameters are those
    that step saw (finite), not the ones a NaN gradient has since spoiled."""
    x = torch.rand(40, 6, generator=torch.Generator().manual_seed(1))
    x[7, 2] = float("nan")  # one bad training row: Gaussian likelihood, so no binary check stops it
    pyro.set_rng_seed(0)
    model = MODELS["vae"]((6,), latent_dim=2, hidden=[8], likelihood="gaussian")
    trainer = Trainer(model, GUIDES["gaussian"](model), Dataset("grey", x[:32], x[32:]),
                      TrainConfig(epochs=2, batch_size=4, seed=3))
    drawn = []  # every batch the trainer takes: the epoch's 8, then the replay's
    take = trainer.data.batch
    trainer.data.batch = lambda index: (drawn.append(index.clone()), take(index))[1]
    with pyro.validation_enabled(False), pytest.raises(NonFiniteLossError) as error:
        trainer.fit()
    bad_step = trainer.step
    assert f"at step {bad_step} (epoch 1)" in str(error.value) and "'x' (model)" in str(error.value)
    pyro.set_rng_seed(3)
    batches = torch.randperm(32).split(4)  # the epoch's batches, as the trainer drew them
    assert 7 in batches[bad_step] and all(7 not in b for b in batches[:bad_step])
    first_pass, replay = drawn[:8], drawn[8:]
    assert len(replay) == bad_step + 1  # the replay stops at the bad step ...
    assert all(torch.equal(a, b) for a, b in zip(replay, first_pass))  # ... having redrawn the same batches
    assert all(torch.isfinite(p).all() for p in trainer.loss_fn.parameters())


def test_full_batch_training_reads_back_once_per_row_and_still_names_the_bad_step(tiny_data, monkeypatch):
    """One step per epoch: the losses of the epochs between two history rows are read back together,
    after one snapshot; a loss that turns NaN inside them replays them from that snapshot, and the
    error names its step and epoch as a per-step read would."""
    trainer = make_trainer(tiny_data(), epochs=12, batch_size=0, eval_every=4)
    taken = []
    take = trainer.snapshot.take
    monkeypatch.setattr(trainer.snapshot, "take", lambda step: (taken.append(step), take(step)))
    trainer.fit()
    assert taken == [0, 4, 8]
    trainer = make_trainer(tiny_data(), epochs=12, batch_size=0, eval_every=4)
    replay = trainer.loss.loss_and_grads
    monkeypatch.setattr(trainer.loss, "loss_and_grads",
                        lambda *args: replay(*args) * (float("nan") if trainer.step == 6 else 1.0))
    with pytest.raises(NonFiniteLossError, match=r"at step 6 \(epoch 7\)"):
        trainer.fit()
    assert (trainer.step, trainer.epoch) == (6, 4)  # the replay stopped at the bad step; the span's start kept


@pytest.mark.parametrize("grad_clip", [0.0, 1.0])
def test_one_gradient_spike_freezes_adam_unless_the_gradient_is_clipped(tiny_data, monkeypatch, grad_clip):
    """Adam divides each step by the root of its second moment. One step whose gradient is 10^6 times
    the usual (a draw of z1 where p(z1 | z2) has shrunk to its floor: the single-bit n = 1000 blow-ups)
    raises that moment for about 10^4 steps (beta2 = 0.999), and the parameters stop moving. With
    ``grad_clip`` the spike is cut to the cap and the next steps move as far as before it."""
    trainer = make_trainer(tiny_data(n=44), batch_size=0, lr=1e-3, grad_clip=grad_clip)
    original = trainer.loss.loss_and_grads

    def spiked(*args):
        loss = original(*args)
        for p in trainer.loss.trainable_tensors:
            p.grad = p.grad * 1e6
        return loss

    def movement(steps):
        before = params(trainer)
        for _ in range(steps):
            trainer.train_epoch()  # full batch: one step
        return sum((p - before[n]).norm() for n, p in params(trainer).items()).item()

    moved = movement(5)  # Adam's first steps, about lr per coordinate
    monkeypatch.setattr(trainer.loss, "loss_and_grads", spiked)
    trainer.train_epoch()
    monkeypatch.setattr(trainer.loss, "loss_and_grads", original)
    movement(50)  # the spike's own direction, which Adam's first moment carries on for ~50 steps
    after = movement(10) / 2  # then: per 5 steps, to compare
    second_moment = max(s["exp_avg_sq"].max().item() for s in trainer.optimizer.state.values())
    if grad_clip:
        assert after > 0.2 * moved and second_moment < grad_clip ** 2
    else:
        assert after < 0.05 * moved and second_moment > 1e4
