"""``train.tensorboard = true``: every cell of a grid logs its history rows and image grids under
its folder for TensorBoard; off by default (nothing written); without TensorBoard a clear error."""

import importlib.util
import sys

import pytest

from ppl_vae import ConfigError
from ppl_vae.lab.experiment import run

DIGITS = """
description = "a tiny image grid"
[data]
name = "digits"
[model]
name = "vae"
latent_dim = 2
hidden = [16]
[guide]
name = "gaussian"
[train]
epochs = 2
batch_size = 64
tensorboard = true
[grid]
"train.seed" = [0, 1]
"""


def test_missing_tensorboard_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if it were not installed
    path = tmp_path / "e.toml"
    path.write_text(DIGITS)
    with pytest.raises(ConfigError, match=r"needs TensorBoard, an optional extra: pip install -e '\.\[tensorboard\]'"):
        run(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                    reason="TensorBoard is an optional extra (pip install -e '.[tensorboard]'); CI installs it")
def test_every_cell_logs_its_rows_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = tmp_path / "e.toml"
    path.write_text(DIGITS)
    run(path, tmp_path / "on", progress=False)
    for seed in (0, 1):
        events = EventAccumulator(str(tmp_path / "on" / f"seed={seed}" / "tensorboard")).Reload()
        tags = events.Tags()
        assert {"train_objective", "test_loss", "test_recon", "test_kl", "kl_weight", "lr",
                "test_kl_sites/z", "test_kl_dims/z/0", "test_kl_dims/z/1"} <= set(tags["scalars"])
        assert [e.step for e in events.Scalars("test_loss")] == [1, 2]  # one point per scored epoch
        assert {"reconstructions", "samples"} <= {t.split("/")[0] for t in tags["images"]}
    path.write_text(DIGITS.replace("tensorboard = true", ""))
    run(path, tmp_path / "off", progress=False)
    assert not list((tmp_path / "off").rglob("tensorboard"))
