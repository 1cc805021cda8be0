"""Atomic writes: a failed or interrupted write never leaves a half-written file."""

import json
import pickle

import pytest
import torch

from ppl_vae.io import atomic_write, load_tensors, save_tensors, write_json


def fail_part_way(path):
    path.write_text('{"new": ')  # half a file
    raise OSError("disk full")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial_one(tmp_path):
    path = tmp_path / "summary.json"
    write_json(path, {"old": 1})
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail_part_way)
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "new" / "summary.json", fail_part_way)
    assert list((tmp_path / "new").iterdir()) == []


def test_a_checkpoint_that_cannot_be_saved_keeps_the_last_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_tensors(path, {"step": torch.tensor(1)})
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):  # a lambda cannot be pickled
        save_tensors(path, {"step": torch.tensor(2), "bad": lambda: None})
    assert load_tensors(path)["step"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
