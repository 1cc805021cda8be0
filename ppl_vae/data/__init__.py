"""Data sets as tensors on the training device (``datasets``: bits, the embedded MNIST digits,
MNIST through torchvision), the dSprites-like world of shapes with known factors (``dsprites``), and
input corruption for denoising (``corruption``). Each data set registers in ``DATASETS``."""

from ppl_vae.data import dsprites  # noqa: F401  (registers the dsprites dataset)
from ppl_vae.data.datasets import Dataset, bits, digits, mnist, split
from ppl_vae.registry import DATASETS

__all__ = ["Dataset", "DATASETS", "bits", "digits", "mnist", "split"]
