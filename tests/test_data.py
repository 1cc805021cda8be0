"""Data sets: the replicated bit, the embedded digits, MNIST through torchvision."""

import pytest
import torch

from ppl_vae import DATASETS, ConfigError


def test_bits_rows_are_all_zeros_or_all_ones():
    ds = DATASETS["bits"](n=7, rows=100, test_fraction=0.2)
    rows = torch.cat([ds.train, ds.test])
    assert rows.shape == (100, 7) and ds.data_shape == (7,)
    assert torch.equal(rows, rows[:, :1].expand_as(rows))
    assert rows[:, 0].sum() == 50 and len(ds.test) == 20


def test_digits_are_real_images_split_and_binarised():
    ds = DATASETS["digits"]()
    assert ds.train.shape == (4500, 1, 28, 28) and ds.test.shape == (500, 1, 28, 28)
    assert 0 <= ds.train.min() and ds.train.max() <= 1 and ds.train.mean() > 0.05
    assert set(ds.test_eval.unique().tolist()) == {0.0, 1.0}
    a, b = ds.batch(torch.arange(64)), ds.batch(torch.arange(64))
    assert set(a.unique().tolist()) == {0.0, 1.0} and not torch.equal(a, b)  # dynamic: a fresh draw per batch
    assert sorted(ds.train_labels.unique().tolist()) == list(range(10))


def test_limit_shrinks_both_splits():
    ds = DATASETS["digits"](limit=40)
    assert (len(ds.train), len(ds.test)) == (40, 10)


def test_mnist_offline_error_says_where_the_files_go(tmp_path):
    with pytest.raises(ConfigError, match=r"MNIST/raw.*download = true.*train-images-idx3-ubyte"):
        DATASETS["mnist"](root=str(tmp_path))


def test_mnist_reads_torchvision_files(fake_mnist):
    ds = DATASETS["mnist"](root=str(fake_mnist), binarize="static")
    assert ds.train.shape == (20, 1, 28, 28) and ds.test.shape == (8, 1, 28, 28)
    assert set(ds.train.unique().tolist()) == {0.0, 1.0}
    assert ds.train_labels.tolist()[:3] == [0, 1, 2]
