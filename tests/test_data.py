"""Data sets: the replicated bit, the embedded digits, MNIST through torchvision."""

import pytest
import torch

from ppl_vae import DATASETS, ConfigError
from ppl_vae.data.datasets import split


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


def test_split_holds_out_disjoint_rows_that_cover_the_set():
    """Split the row numbers themselves: every row lands in exactly one part, with its own label."""
    rows = torch.arange(100)
    train, test, train_labels, test_labels = split(rows[:, None], rows, test_fraction=0.2, seed=3)
    assert (len(train), len(test)) == (80, 20)
    assert sorted(torch.cat([train, test]).squeeze(1).tolist()) == list(range(100))
    assert torch.equal(train.squeeze(1), train_labels) and torch.equal(test.squeeze(1), test_labels)
    assert test.squeeze(1).tolist() != list(range(20))  # shuffled, not the first rows
    assert torch.equal(split(rows[:, None], rows, 0.2, seed=3)[1], test)  # the seed fixes it


def test_digits_splits_share_no_image():
    ds = DATASETS["digits"]()
    train, test = ds.train.flatten(1), ds.test.flatten(1)
    nearest = torch.cdist(test, train).min(1).values
    assert (nearest > 0).all()


def test_fixed_draws_do_not_depend_on_the_global_random_state():
    """The evaluation sets' binarisation (dynamic) and the static binarisation are seeded draws:
    built under two different global random states, the data sets are identical."""
    built = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        built.append((DATASETS["digits"](limit=40), DATASETS["digits"](binarize="static", limit=40)))
    (dynamic_a, static_a), (dynamic_b, static_b) = built
    assert torch.equal(dynamic_a.test_eval, dynamic_b.test_eval)
    assert torch.equal(dynamic_a.train_eval, dynamic_b.train_eval)
    assert torch.equal(static_a.train, static_b.train) and torch.equal(static_a.test, static_b.test)
    assert set(dynamic_a.test_eval.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(dynamic_a.test_eval, dynamic_a.test.round())  # a draw, not a threshold
