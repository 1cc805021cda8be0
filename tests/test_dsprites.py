"""The dSprites world: its grid and ordering, the rendered images' geometry, the original file's
look-up and the registered data set."""

import collections
import hashlib
import itertools

import numpy as np
import pytest
import torch

from ppl_vae.data.datasets import Dataset
from ppl_vae.data.dsprites import FactorDataset, ShapesWorld, _pool
from ppl_vae.errors import ConfigError
from ppl_vae.registry import DATASETS, check_kwargs

SIZES = (64, 32)
#: every (shape, scale, orientation), in index order
SPRITES = np.array(list(itertools.product(range(3), range(6), range(40))))


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s}px")
def world(request) -> ShapesWorld:
    return ShapesWorld(request.param)


@pytest.fixture(scope="module")
def packed(world) -> np.ndarray:
    return world.render_all_packed()


def at(sprites: np.ndarray, pos_x, pos_y) -> np.ndarray:
    """Factor rows: each sprite at each (pos_x, pos_y) (scalars or per-row arrays)."""
    return np.column_stack([sprites, np.broadcast_to(pos_x, len(sprites)), np.broadcast_to(pos_y, len(sprites))])


def phases(world: ShapesWorld) -> list[tuple[int, int]]:
    """Positions covering each sub-pixel phase: at 32 x 32 a step is half a pixel, so odd and even differ."""
    f = 64 // world.image_size
    return [(10 + px, 10 + py) for px in range(f) for py in range(f)]


def test_grid_is_dsprites():
    w = ShapesWorld()
    assert w.factor_names == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert w.factor_sizes == (3, 6, 40, 32, 32) and np.prod(w.factor_sizes) == 737_280
    shape, scale, angle, x, y = w.factor_values
    assert shape.tolist() == [0, 1, 2] and np.allclose(scale, [0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert len(angle) == 40 and angle[0] == 0 and np.isclose(angle[-1], 2 * np.pi)
    assert np.allclose(np.diff(angle), 2 * np.pi / 39)
    assert np.array_equal(x, np.linspace(0, 1, 32)) and np.array_equal(y, x)
    assert np.allclose(w.values_of([[2, 5, 39, 31, 0]]), [[2, 1.0, 2 * np.pi, 1.0, 0.0]])


def test_index_is_mixed_radix_with_pos_y_fastest():
    w = ShapesWorld()
    factors = np.array([[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0], [0, 1, 0, 0, 0],
                        [1, 0, 0, 0, 0], [1, 2, 3, 4, 5], [2, 5, 39, 31, 31]])
    by_hand = [0, 1, 32, 1024, 40_960, 245_760, 330_885, 737_279]  # e.g. (((1*6 + 2)*40 + 3)*32 + 4)*32 + 5
    assert w.index(factors).tolist() == by_hand
    assert np.array_equal(w.factors_of(by_hand), factors)
    index = np.random.default_rng(0).integers(737_280, size=1000)
    assert np.array_equal(w.index(w.factors_of(index)), index)
    with pytest.raises(ValueError):
        w.index([[3, 0, 0, 0, 0]])


def test_sample_factors_covers_the_grid_uniformly_and_reproducibly():
    w = ShapesWorld()
    factors = w.sample_factors(20_000, np.random.default_rng(1))
    assert factors.shape == (20_000, 5)
    for column, size in zip(factors.T, w.factor_sizes):
        counts = np.bincount(column, minlength=size)
        assert len(counts) == size and counts.min() > 0.7 * 20_000 / size  # every value, about equally often
    assert np.array_equal(factors, w.sample_factors(20_000, np.random.default_rng(1)))


def duplicate_groups(world: ShapesWorld) -> list[tuple]:
    """(pos_x, pos_y, shape, scale, orientations) for every set of sprites rendering the same image.

    Images at different positions cannot coincide by a sprite's translation alone, so rendering every
    sprite at one position of each sub-pixel phase finds them all (test_the_full_set below checks it).
    """
    groups = []
    for x, y in phases(world):
        images = world.render(at(SPRITES, x, y)).flatten(1).numpy()
        _, group, count = np.unique(images, axis=0, return_inverse=True, return_counts=True)
        for g in np.flatnonzero(count > 1):
            members = SPRITES[group.ravel() == g]
            assert len(np.unique(members[:, :2], axis=0)) == 1, f"different shapes or scales coincide: {members}"
            groups.append((x, y, *members[0, :2].tolist(), tuple(members[:, 2].tolist())))
    return sorted(groups)


def test_images_are_distinct_but_for_orientations_0_and_2pi_at_64():
    groups = duplicate_groups(ShapesWorld(64))
    assert groups == [(10, 10, shape, scale, (0, 39)) for shape in range(3) for scale in range(6)]


#: at 32 x 32, the groups of coinciding turns besides (0, 39), counted by (shape, scale) ...
EXTRA_GROUPS_32 = {(0, 0): 35, (0, 1): 32, (0, 2): 23, (0, 3): 11, (0, 4): 9, (0, 5): 3,
                   (1, 0): 22, (1, 1): 8, (1, 2): 5, (1, 3): 2, (2, 0): 15, (2, 1): 5, (2, 2): 1}
#: ... and pinned exactly (sha-256 of the sorted groups' repr: print duplicate_groups to see them)
GROUPS_32_DIGEST = "47f9a176d2d2d7bb"


def test_duplicates_at_32_are_the_smallest_sprites_near_symmetric_turns():
    groups = duplicate_groups(ShapesWorld(32))
    extra = [g for g in groups if g[-1] != (0, 39)]
    assert collections.Counter(g[2:4] for g in extra) == EXTRA_GROUPS_32
    for *_, shape, _, turns in extra:  # squares within a step of a quarter turn apart, ellipses of a half
        if shape < 2:
            period = 39 / (4, 2)[shape]
            apart = np.diff(turns) % period
            assert (np.minimum(apart, period - apart) <= 1).all(), turns
    assert hashlib.sha256(repr(groups).encode()).hexdigest()[:16] == GROUPS_32_DIGEST


def test_the_full_set_at_32_has_no_duplicates_but_those():
    """Each group's images coincide at the 16 x 16 positions of its phase, and no others do."""
    packed = ShapesWorld(32).render_all_packed()
    distinct = np.unique(packed.view(np.dtype((np.void, packed.shape[1]))))
    repeats = sum(len(turns) - 1 for *_, turns in duplicate_groups(ShapesWorld(32)))
    assert len(distinct) == 737_280 - 16 * 16 * repeats == 663_296


@pytest.mark.slow
def test_the_full_set_at_64_has_distinct_images_but_for_orientations_0_and_2pi():
    packed = ShapesWorld(64).render_all_packed()
    assert len(np.unique(packed.view(np.dtype((np.void, packed.shape[1]))))) == 737_280 - 18 * 32 * 32


def test_a_heart_is_no_ellipse_or_square(world):
    for x, y in phases(world):
        images = world.render(at(SPRITES, x, y)).flatten(1)
        heart, others = images[SPRITES[:, 0] == 2], images[SPRITES[:, 0] != 2]
        assert torch.cdist(heart, others, p=1).min() > 0  # in fact >= 18 pixels apart at 64 x 64, 2 at 32


def test_a_larger_scale_covers_more_pixels_for_every_shape_and_orientation(world):
    for x, y in phases(world):
        area = world.render(at(SPRITES, x, y)).sum((1, 2, 3)).reshape(3, 6, 40)
        assert (area.diff(dim=1) > 0).all()


@pytest.mark.parametrize("axis", ["pos_x", "pos_y"])
def test_position_moves_the_centre_of_mass_right_and_down(world, axis):
    sprites = SPRITES[np.random.default_rng(2).choice(720, 40, replace=False)]
    steps = np.arange(32)
    rows = np.repeat(sprites, 32, axis=0)
    pos, other = np.tile(steps, len(sprites)), np.full(32 * len(sprites), 7)
    images = world.render(at(rows, pos, other) if axis == "pos_x" else at(rows, other, pos))[:, 0]
    coord = torch.arange(world.image_size, dtype=torch.float32)
    mass = images.sum((1, 2))
    right = ((images.sum(1) * coord).sum(1) / mass).reshape(len(sprites), 32)
    down = ((images.sum(2) * coord).sum(1) / mass).reshape(len(sprites), 32)
    moved, still = (right, down) if axis == "pos_x" else (down, right)
    f = 64 // world.image_size  # at 32 x 32 the other coordinate alternates with the half-pixel phase
    assert (moved.diff(dim=1) > 0).all() and torch.allclose(still[:, f:], still[:, :-f])
    if world.image_size == 64:
        assert torch.allclose(moved.diff(dim=1), torch.tensor(1.0))  # a pixel a step
    assert 0.2 < moved[:, 0].min() / world.image_size and moved[:, -1].max() / world.image_size < 0.8


def test_render_matches_render_all_packed(world, packed):
    assert packed.shape == (737_280, world.image_size**2 // 8) and packed.dtype == np.uint8
    index = np.random.default_rng(3).choice(737_280, 300, replace=False)
    images = world.render(world.factors_of(index))
    assert images.shape == (300, 1, world.image_size, world.image_size) and images.dtype == torch.float32
    assert torch.equal(images, world.unpack(packed[index]))
    assert set(images.unique().tolist()) == {0.0, 1.0}


def test_32_is_64_downsampled():
    factors = ShapesWorld().sample_factors(200, np.random.default_rng(4))
    big = ShapesWorld(64).render(factors)[:, 0].numpy().astype(bool)
    assert np.array_equal(ShapesWorld(32).render(factors)[:, 0].numpy(), _pool(big, 2))


def test_registered_dataset_draws_distinct_images_with_their_factors():
    ds = DATASETS["dsprites"](image_size=32, train_size=300, test_size=60, seed=5)
    assert isinstance(ds, FactorDataset) and isinstance(ds, Dataset)
    assert ds.train.shape == (300, 1, 32, 32) and ds.test.shape == (60, 1, 32, 32) and ds.is_binary
    assert ds.train_factors.shape == (300, 5) and ds.test_factors.shape == (60, 5)
    assert torch.equal(ds.train_labels, ds.train_factors[:, 0]) and torch.equal(ds.test_labels, ds.test_factors[:, 0])
    index = ds.world.index(torch.cat([ds.train_factors, ds.test_factors]))
    assert len(np.unique(index)) == 360  # distinct, so no image is in both splits
    assert torch.equal(ds.world.render(ds.train_factors[:20]), ds.train[:20])
    assert torch.equal(ds.world.render(ds.test_factors[-20:]), ds.test[-20:])
    again = DATASETS["dsprites"](image_size=32, train_size=300, test_size=60, seed=5)
    assert torch.equal(again.train_factors, ds.train_factors)


def test_limit_cuts_images_labels_and_factors_alike():
    ds = DATASETS["dsprites"](image_size=32, train_size=100, test_size=40, limit=20)
    assert (len(ds.train), len(ds.test), len(ds.train_eval), len(ds.test_eval)) == (20, 5, 20, 5)
    assert (len(ds.train_factors), len(ds.test_factors), len(ds.test_labels)) == (20, 5, 5)
    assert torch.equal(ds.world.render(ds.test_factors), ds.test)
    moved = ds.to("cpu")
    assert isinstance(moved, FactorDataset) and torch.equal(moved.train_factors, ds.train_factors)


def test_dataset_options_are_checked():
    factory = DATASETS["dsprites"]
    check_kwargs(factory, {"image_size": 32, "path": None, "limit": 10}, "data")
    for bad in ({"image_size": 48}, {"path": 3}, {"train_size": 1.5}):
        with pytest.raises(ConfigError, match=f"\\[data\\] {next(iter(bad))}"):
            check_kwargs(factory, bad, "data")
    with pytest.raises(ConfigError, match="train_size \\+ test_size <= 737280"):
        factory(image_size=32, train_size=737_280, test_size=1)


@pytest.fixture
def fake_npz(tmp_path):
    """A dSprites-format file holding 12 of the images (random pixels), rows in a shuffled order."""
    rng = np.random.default_rng(6)
    index = rng.choice(737_280, 12, replace=False)
    classes = np.column_stack([np.zeros(12, int), ShapesWorld().factors_of(index)])
    imgs = rng.integers(0, 2, size=(12, 64, 64), dtype=np.uint8)
    path = tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
    np.savez_compressed(path, imgs=imgs, latents_classes=classes, latents_values=classes.astype(float))
    return path, index, imgs


def test_a_dsprites_file_answers_render_by_look_up(fake_npz):
    path, index, imgs = fake_npz
    w = ShapesWorld(64, str(path))
    assert sorted(w.indices.tolist()) == sorted(index.tolist())
    order = np.argsort(index)[::-1]
    assert np.array_equal(w.render(w.factors_of(index[order]))[:, 0].numpy(), imgs[order])
    small = ShapesWorld(32, str(path)).render(w.factors_of(index))[:, 0].numpy()
    assert np.array_equal(small, _pool(imgs.astype(bool), 2))
    with pytest.raises(ValueError, match="does not hold image"):
        w.render(w.factors_of(np.setdiff1d(np.arange(20), index)[:1]))
    ds = DATASETS["dsprites"](path=str(path), train_size=8, test_size=4)
    assert ds.name == "dsprites" and ds.is_binary
    assert torch.equal(ds.train, w.render(ds.train_factors)) and torch.equal(ds.test, w.render(ds.test_factors))


def test_a_missing_or_wrong_dsprites_file_says_where_to_get_it(tmp_path):
    link = "https://github.com/deepmind/dsprites-dataset"
    with pytest.raises(ConfigError, match=f"does not exist: download dsprites_ndarray.*{link}"):
        DATASETS["dsprites"](path=str(tmp_path / "missing.npz"))
    (tmp_path / "wrong.npz").write_text("not an archive")
    with pytest.raises(ConfigError, match=f"is not the dSprites npz.*{link}"):
        ShapesWorld(path=str(tmp_path / "wrong.npz"))
    np.savez(tmp_path / "grey.npz", imgs=np.zeros((2, 64, 64)), latents_classes=np.zeros((2, 6), int))
    with pytest.raises(ConfigError, match=f"grey.npz: imgs is float64 \\(2, 64, 64\\), not dSprites' uint8.*{link}"):
        ShapesWorld(path=str(tmp_path / "grey.npz"))
