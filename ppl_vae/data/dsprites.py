"""dSprites (Matthey et al. 2017; the data of Higgins et al. 2017, "beta-VAE"), or an image-for-image
stand-in for it rendered on demand: the world simulator that the disentanglement metrics draw from.

dSprites holds one binary 64 x 64 image for every combination of five factors, in this order:

=============  ====  ==========================
factor         size  values
=============  ====  ==========================
shape          3     0 square, 1 ellipse, 2 heart
scale          6     linspace(0.5, 1, 6)
orientation    40    linspace(0, 2 pi, 40)
pos_x          32    linspace(0, 1, 32)
pos_y          32    linspace(0, 1, 32)
=============  ====  ==========================

3 * 6 * 40 * 32 * 32 = 737,280 images, numbered in mixed radix with pos_y fastest:
index = (((shape * 6 + scale) * 40 + orientation) * 32 + pos_x) * 32 + pos_y, as in the original
file (whose constant colour factor, column 0 of ``latents_classes``, is dropped here as in
disentanglement_lib; its shape values are 1, 2, 3 where ours are 0, 1, 2).

Without the file, ``ShapesWorld`` renders a dSprites-LIKE set: the same grid, ordering and shapes,
not the same pixels. Each of the 3 * 6 * 40 = 720 (shape, scale, orientation) sprites is rasterised
once in a 33 x 33 patch (4 x 4 samples a pixel; a pixel is on where at least half of them fall
inside) and every position is a translated copy:

- at scale 1 the square has side 20 px (~1/3 of the canvas), the ellipse is 30 x 15 px and the
  heart, the curve (x^2 + y^2 - 1)^3 = x^2 y^3 times 11 px, is 25 px wide; scale multiplies these;
- orientation turns the sprite counter-clockwise as displayed, about its centre of mass (at 0 the
  ellipse's long axis is horizontal and the heart upright);
- pos_x moves the centre right and pos_y moves it DOWN (image rows), one pixel a step at 64 x 64,
  from (16.8, 16.7) px to (47.8, 47.7) px from the top-left corner: the centre stays in the middle
  half of the canvas, so the largest sprite stays inside it. The centre is 0.3 px right of and 0.2
  px below a pixel centre, off the pixel grid's centres of symmetry (see duplicates);
- at ``image_size = 32`` an image is its 64 x 64 image downsampled: a pixel is on where at least two
  of its 2 x 2 block are (the original file's images are downsampled the same way).

Duplicate images. Orientations 0 and 2 pi (indices 0 and 39) are the same turn, so their images are
the same for every shape, scale and position. The grid's step is 2 pi / 39 and 39 is odd, so no other
pair of turns differs by a symmetry of the square (90 degrees) or the ellipse (180 degrees), but
the nearest pairs (10 steps = 92.3 degrees, 20 steps = 184.6 degrees) can rasterise to the same
pixels. At 64 x 64 none do: those images are all distinct, 718,848 of them (with the centre on a
pixel centre 34 groups of near-symmetric square and ellipse turns did coincide, hence the offset).
At 32 x 32 the smallest sprites are a few pixels across and 171 groups of turns of one (shape,
scale) at one sub-pixel position (pos_x and pos_y even or odd) coincide: squares about 90, 180
or 270 degrees apart, ellipses about 180 degrees apart, a few neighbouring turns, and the
smallest hearts 1 or 13-15 steps apart; 663,296 distinct images. tests/test_dsprites.py renders
every sprite to pin both sets.

Speed: ``render_all_packed`` writes the 737,280 images (360 MiB of bits at 64 x 64) in 0.7-1.1 s at
64 x 64 and 0.55 s at 32 x 32 on a shared 2-core CPU, in a fresh process, the 720 sprites included:
``python -c "import time; from ppl_vae.data.dsprites import ShapesWorld; w = ShapesWorld(64);
t = time.time(); w.render_all_packed(); print(time.time() - t)"``. Reading the original file takes
about 6 s (decompressing 2.8 GiB of pixels), its 32 x 32 set 3.5 s more.
"""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from ppl_vae.data.datasets import Dataset
from ppl_vae.errors import ConfigError
from ppl_vae.registry import DATASETS

FACTOR_NAMES = ("shape", "scale", "orientation", "pos_x", "pos_y")
FACTOR_SIZES = (3, 6, 40, 32, 32)
FACTOR_VALUES = (np.arange(3.0), np.linspace(0.5, 1, 6), np.linspace(0, 2 * np.pi, 40),
                 np.linspace(0, 1, 32), np.linspace(0, 1, 32))
N_IMAGES = int(np.prod(FACTOR_SIZES))

SOURCE_URL = "https://github.com/deepmind/dsprites-dataset"
FILE_NAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"

CANVAS = 64  # the rendered (and the original file's) image width; smaller sizes are downsampled from it
PATCH = 33  # a sprite's patch width; its top-left pixel at 64 x 64 is (pos_y, pos_x) in grid steps
CENTRE = (PATCH / 2 + 0.3, PATCH / 2 + 0.2)  # a sprite's centre (x, y down) in its patch: off the grid's symmetry
SUBSAMPLES = 4  # samples per pixel along each axis when rasterising

HEART_RADIUS, HEART_CENTROID = 11.0, 0.2935  # the curve's centroid is 0.2935 above its origin (numerically)
#: whether body coordinates (u right, v up; pixels at scale 1, centre of mass at 0) are inside each shape
SHAPES: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    lambda u, v: np.maximum(abs(u), abs(v)) <= 10.0,  # square
    lambda u, v: (u / 15.0) ** 2 + (v / 7.5) ** 2 <= 1.0,  # ellipse
    lambda u, v: _heart(u / HEART_RADIUS, v / HEART_RADIUS + HEART_CENTROID),
)


def _heart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x**2 + y**2 - 1) ** 3 <= x**2 * y**3


def _pool(images: np.ndarray, factor: int) -> np.ndarray:
    """Binary ``[..., H, W]`` images downsampled ``factor`` (< 12) times: on where half or more of a block is."""
    blocks = sum(images[..., i::factor, j::factor].view(np.uint8) for i in range(factor) for j in range(factor))
    return 2 * blocks >= factor * factor


@functools.cache
def _sprites() -> np.ndarray:
    """Every (shape, scale, orientation) sprite centred in its 64 x 64-scale patch: bool ``[3, 6, 40, 33, 33]``."""
    samples = (np.arange(PATCH * SUBSAMPLES) + 0.5) / SUBSAMPLES
    x, y = samples[None, None, :] - CENTRE[0], CENTRE[1] - samples[None, :, None]  # y up: rows run down
    angle = FACTOR_VALUES[2][:, None, None]
    u, v = np.cos(angle) * x + np.sin(angle) * y, np.cos(angle) * y - np.sin(angle) * x  # turned back by angle
    inside = np.stack([np.stack([shape(u / scale, v / scale) for scale in FACTOR_VALUES[1]]) for shape in SHAPES])
    return _pool(inside, SUBSAMPLES)


@functools.cache
def _placed_sprites(image_size: int) -> np.ndarray:
    """The sprites at ``image_size``, one patch for each sub-pixel phase (pos_x % f, pos_y % f), where
    f = 64 / image_size: bool ``[3, 6, 40, f, f, Q, Q]``. The image at (pos_x, pos_y) is its phase's
    patch with its top-left pixel at (pos_y // f, pos_x // f)."""
    f = CANVAS // image_size
    width = -(-(PATCH + f - 1) // f) * f
    placed = np.zeros((*FACTOR_SIZES[:3], f, f, width, width), bool)
    for px in range(f):
        for py in range(f):
            placed[:, :, :, px, py, py:py + PATCH, px:px + PATCH] = _sprites()
    return _pool(placed, f)


class ShapesWorld:
    """The dSprites grid as a simulator: any factor combination's image, on demand.

    :param image_size: 64 (dSprites) or 32 (the 64 x 64 images downsampled, for CPU runs).
    :param path: the original ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``; images are then looked
        up in it instead of rendered. Its images are stored packed (360 MiB), read from the compressed
        archive in chunks, since a compressed npz cannot be memory-mapped. A file holding part of the
        grid (rows named by ``latents_classes``) serves those images only (``indices``).
    """

    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES
    factor_values = FACTOR_VALUES

    def __init__(self, image_size: Literal[64, 32] = 64, path: str | None = None):
        if image_size not in (64, 32):
            raise ConfigError(f"image_size must be 64 or 32, got {image_size!r}")
        self.image_size, self.path = image_size, path
        self._f = CANVAS // image_size
        self._packed, self._row = _read_npz(path) if path is not None else (None, None)

    @property
    def indices(self) -> np.ndarray:
        """The image indices this world can render: all of them, or a file's."""
        return np.arange(N_IMAGES) if self._row is None else np.flatnonzero(self._row >= 0)

    def index(self, factors: np.ndarray) -> np.ndarray:
        """Image indices ``[n]`` of factor classes ``[n, 5]`` (arrays or tensors; ValueError outside the grid)."""
        return np.ravel_multi_index(np.asarray(factors).T, FACTOR_SIZES)

    def factors_of(self, index: np.ndarray) -> np.ndarray:
        """Factor classes ``[n, 5]`` of image indices ``[n]``."""
        return np.stack(np.unravel_index(np.asarray(index), FACTOR_SIZES), axis=-1)

    def values_of(self, factors: np.ndarray) -> np.ndarray:
        """Factor values ``[n, 5]`` (shape 0, 1, 2; scale; orientation in radians; positions in [0, 1])."""
        factors = np.asarray(factors)
        return np.stack([values[factors[:, i]] for i, values in enumerate(FACTOR_VALUES)], axis=-1)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` factor combinations drawn uniformly from the grid, ``[n, 5]``."""
        return np.stack([rng.integers(size, size=n) for size in FACTOR_SIZES], axis=-1)

    def render(self, factors: np.ndarray) -> torch.Tensor:
        """The images of factor classes ``[n, 5]``: float32 0/1 ``[n, 1, S, S]``."""
        factors = np.asarray(factors).reshape(-1, 5)
        index = self.index(factors)  # validates the factors
        if self._packed is not None:
            rows = self._row[index]
            if (rows < 0).any():
                raise ValueError(f"{self.path} does not hold image {index[rows < 0][0]}; it holds {len(self.indices)}")
            return _as_tensor(self._pooled(self._packed[rows]))
        size, f = self.image_size, self._f
        shape, scale, angle, kx, ky = factors.T
        patches = _placed_sprites(size)[shape, scale, angle, kx % f, ky % f]
        width = patches.shape[-1]
        images = np.zeros((len(factors), size, size), bool)
        rows = (ky // f)[:, None, None] + np.arange(width)[None, :, None]
        cols = (kx // f)[:, None, None] + np.arange(width)[None, None, :]
        images[np.arange(len(factors))[:, None, None], rows, cols] = patches
        return _as_tensor(images)

    def render_all_packed(self) -> np.ndarray:
        """All 737,280 images in index order, ``np.packbits`` of each row-major image: uint8 ``[737280, S*S/8]``.

        A translated copy of a sprite's packed rows for every position: each image costs a copy of
        its sprite's bytes, not a rasterisation.
        """
        size, f = self.image_size, self._f
        if self._packed is not None:
            if len(self.indices) < N_IMAGES:
                raise ValueError(f"{self.path} holds {len(self.indices)} of the {N_IMAGES} images")
            if f == 1:
                packed = self._packed.view()
                packed.flags.writeable = False  # the cached file's images
                return packed
            chunks = (self._pooled(self._packed[start:start + 8192]) for start in range(0, N_IMAGES, 8192))
            return np.concatenate([np.packbits(chunk.reshape(len(chunk), -1), axis=-1) for chunk in chunks])
        placed = _placed_sprites(size)
        sprites = placed.reshape(-1, *placed.shape[3:])  # [720, px, py, Q, Q]
        width, steps = sprites.shape[-1], 32 // f
        rows = np.zeros((len(sprites), steps, f, f, width, size), bool)  # each sprite row at each column step
        for ax in range(steps):
            rows[:, ax, ..., ax:ax + width] = sprites
        rows = np.packbits(rows, axis=-1)  # [720, x step, px, py, Q, S/8]
        out = np.zeros((len(sprites), steps, f, steps, f, size, size // 8), np.uint8)  # pos_x = (step, px) ...
        for ay in range(steps):
            out[:, :, :, ay, :, ay:ay + width] = rows
        return out.reshape(N_IMAGES, -1)

    def unpack(self, packed_rows: np.ndarray) -> torch.Tensor:
        """Rows of ``render_all_packed`` as images: float32 0/1 ``[n, 1, S, S]``."""
        size = self.image_size
        return _as_tensor(np.unpackbits(np.asarray(packed_rows), axis=-1, count=size * size).reshape(-1, size, size))

    def _pooled(self, packed_64: np.ndarray) -> np.ndarray:
        """Packed 64 x 64 images (the file's) at this world's size: bool ``[n, S, S]``."""
        return _pool(np.unpackbits(packed_64, axis=-1).reshape(-1, CANVAS, CANVAS).view(bool), self._f)


def _as_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images[:, None]).float()


@functools.lru_cache(maxsize=1)
def _read_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The file's images packed, 512 bytes each, and each grid index's row in them (-1: not in the file)."""
    hint = f"download {FILE_NAME} from {SOURCE_URL} and set data.path to it, or leave path unset to render the images"
    try:
        with zipfile.ZipFile(path) as archive:
            with archive.open("latents_classes.npy") as f:
                classes = np.lib.format.read_array(f)
            with archive.open("imgs.npy") as f:
                version = np.lib.format.read_magic(f)
                shape, fortran, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                         else np.lib.format.read_array_header_2_0)(f)
                if dtype != np.uint8 or fortran or len(shape) != 3 or shape[1:] != (CANVAS, CANVAS):
                    raise ConfigError(f"{path}: imgs is {dtype} {shape}, not dSprites' uint8 [N, 64, 64]; {hint}")
                packed = np.empty((shape[0], CANVAS * CANVAS // 8), np.uint8)
                for start in range(0, shape[0], 8192):  # 32 MiB of pixels at a time
                    count = min(8192, shape[0] - start)
                    chunk = np.frombuffer(f.read(count * CANVAS * CANVAS), np.uint8)
                    if chunk.size != count * CANVAS * CANVAS or chunk.max(initial=0) > 1:
                        raise ConfigError(f"{path}: imgs is truncated or not binary; {hint}")
                    packed[start:start + count] = np.packbits(chunk.reshape(count, -1), axis=-1)
    except ConfigError:
        raise
    except FileNotFoundError as error:
        raise ConfigError(f"the dSprites file {path} does not exist: {hint}") from error
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise ConfigError(f"{path} is not the dSprites npz (imgs and latents_classes): {error}; {hint}") from error
    if classes.shape != (len(packed), 6):
        raise ConfigError(f"{path}: latents_classes is {classes.shape}, expected [{len(packed)}, 6]; {hint}")
    try:
        index = np.ravel_multi_index(classes[:, 1:].T, FACTOR_SIZES)
    except ValueError as error:
        raise ConfigError(f"{path}: latents_classes has classes outside the dSprites grid; {hint}") from error
    row = np.full(N_IMAGES, -1, np.int64)
    row[index] = np.arange(len(index))
    if (row >= 0).sum() != len(index):
        raise ConfigError(f"{path}: latents_classes names an image twice; {hint}")
    return packed, row


@dataclass
class FactorDataset(Dataset):
    """A ``Dataset`` whose images come from a ``ShapesWorld``, with each image's factor classes ``[N, 5]``."""

    world: ShapesWorld | None = None
    train_factors: torch.Tensor | None = None
    test_factors: torch.Tensor | None = None

    def map_tensors(self, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> FactorDataset:
        mapped = super().map_tensors(fn)  # the factor tensors are not in data.TENSOR_FIELDS
        return replace(mapped, **{f: fn(f, getattr(self, f)) for f in ("train_factors", "test_factors")
                                  if getattr(self, f) is not None})


@DATASETS.register("dsprites")
def dsprites(image_size: Literal[64, 32] = 64, train_size: int = 20_000, test_size: int = 2_000, seed: int = 0,
             path: str | None = None, limit: int | None = None) -> FactorDataset:
    """Distinct dSprites images drawn at random with ``seed``: the original file's at ``path``, else the
    dSprites-like rendering. Labels are the shape factor; the images are 0/1 already (binarize "none")."""
    world = ShapesWorld(image_size, path)
    available = world.indices
    if train_size < 1 or test_size < 1 or train_size + test_size > len(available):
        raise ConfigError(f"dsprites needs train_size >= 1, test_size >= 1 and train_size + test_size <= "
                          f"{len(available)}, got {train_size} and {test_size}")
    index = np.random.default_rng(seed).choice(available, train_size + test_size, replace=False)
    train_index, test_index = index[:train_size], index[train_size:]
    if limit is not None:  # data._limit's cut, made before rendering: a smoke run renders only what it keeps
        train_index, test_index = train_index[:limit], test_index[:max(1, limit // 4)]
    name = ("dsprites" if path else "dsprites-like") + ("" if image_size == 64 else f"-{image_size}")
    factors = [torch.from_numpy(world.factors_of(i)) for i in (train_index, test_index)]
    train, test = (world.render(f.numpy()) for f in factors)
    return FactorDataset(name, train, test, "none", factors[0][:, 0], factors[1][:, 0], world=world,
                         train_factors=factors[0], test_factors=factors[1])
