"""Figures show what they claim: the pixels and the plotted values are checked against the
tensors they were drawn from, not just that a file was written."""

import numpy as np
import pyro
import pytest
import torch
from matplotlib.patches import StepPatch
from PIL import Image

from ppl_vae import GUIDES, MODELS
from ppl_vae.evaluation.collapse import posterior_draws
from ppl_vae.lab.cell import image_figures
from ppl_vae.tracing import reconstruct, sample_prior
from ppl_vae.viz import plots


def grid_cells(path, count: int, size: tuple[int, int], nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """The first ``count`` images of a grid written by ``plots.image_grid``, ``[count, H, W]`` uint8."""
    grid = torch.from_numpy(np.array(Image.open(path)))[..., 0]  # grey images: three equal channels
    h, w = size
    return torch.stack([grid[r * (h + padding) + padding:][:h, c * (w + padding) + padding:][:, :w]
                        for r, c in (divmod(i, nrow) for i in range(count))])


def as_pixels(images: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] in [0, 1] -> the bytes ``save_image`` writes."""
    return images.squeeze(1).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)


def test_image_figures_show_the_data_their_reconstructions_and_prior_samples(tmp_path):
    model = MODELS["vae"]((1, 8, 8), latent_dim=2, hidden=[16])
    guide = GUIDES["gaussian"](model)
    x = torch.bernoulli(torch.full((8, 1, 8, 8), 0.5))
    pyro.set_rng_seed(1)
    image_figures(model, guide, x, tmp_path)
    pyro.set_rng_seed(1)  # the same draws of z, in the same order
    reconstructions, samples = reconstruct(model, guide, x), sample_prior(model, 64)
    assert torch.equal(grid_cells(tmp_path / "reconstructions.png", 16, (8, 8)),
                       as_pixels(torch.cat([x, reconstructions])))  # top row the data, bottom row the decoder's
    assert torch.equal(grid_cells(tmp_path / "samples.png", 64, (8, 8)), as_pixels(samples))
    assert not torch.equal(as_pixels(reconstructions), as_pixels(samples[:8]))


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures that ``plots`` closes after saving, kept open for inspection."""
    close, figures = plots.plt.close, []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    yield figures
    for figure in figures:
        close(figure)


def two_clusters(dim: int):
    """Draws of q(z | x) for 40 datapoints, 5 each: label 0 around -3, label 1 around +3."""
    labels = torch.arange(40) % 2
    draws = torch.randn(40, 5, dim) + (6.0 * labels - 3.0)[:, None, None]
    return draws, labels, torch.randn(3000, dim)


def test_1d_aggregate_posterior_is_the_mixture_of_the_class_posteriors(tmp_path, drawn):
    draws, labels, prior = two_clusters(1)
    plots.aggregate_posterior([("z", draws, labels, prior)], tmp_path / "q.png")
    (ax,) = drawn[0].axes
    bars = ax.containers[0]
    edges = np.array([b.get_x() for b in bars] + [bars[-1].get_x() + bars[-1].get_width()])
    heights = np.array([b.get_height() for b in bars])
    expected, _ = np.histogram(draws.reshape(-1).numpy(), edges, density=True)
    assert np.allclose(heights, expected)  # q(z): every draw pooled
    parts = [p for p in ax.patches if isinstance(p, StepPatch)]
    assert [p.get_label() for p in parts] == ["q(z | x), 0", "q(z | x), 1"]
    assert np.allclose(sum(p.get_data().values for p in parts), heights)  # each class at its share
    assert (parts[0].get_data().values[edges[1:] > 0] == 0).all()  # label 0 lies left of 0
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {"q(z) aggregate", "p(z)"}


def test_2d_aggregate_posterior_scatters_the_prior_and_each_class(tmp_path, drawn):
    draws, labels, prior = two_clusters(2)
    plots.aggregate_posterior([("z", draws, labels, prior)], tmp_path / "q.png")
    (ax,) = drawn[0].axes
    offsets = [c.get_offsets() for c in ax.collections]
    assert np.allclose(offsets[0], prior.numpy())
    for label, points in zip((0, 1), offsets[1:], strict=True):
        assert np.allclose(points, draws[labels == label].reshape(-1, 2).numpy())


def test_figure_of_a_registered_guide_pools_its_draws(tmp_path, drawn):
    model = MODELS["vae"]((6,), latent_dim=1, hidden=[8])
    x = torch.bernoulli(torch.full((30, 6), 0.5))
    draws = posterior_draws(GUIDES["gaussian"](model), x, num_samples=5)
    assert draws["z"].shape == (30, 5, 1)
    plots.aggregate_posterior([("z", draws["z"], None, torch.randn(1000, 1))], tmp_path / "q.png")
    bars = drawn[0].axes[0].containers[0]
    width = bars[0].get_width()
    assert sum(b.get_height() for b in bars) * width == pytest.approx(1.0, abs=0.01)  # a density of 150 draws


def test_a_traversal_moves_one_dimension_per_row_from_the_examples_code():
    """Row r of ``latent_traversal`` decodes the example's posterior mean with dimension dims[r] set to
    each value in turn: the same images as decoding those codes directly."""
    from ppl_vae.evaluation.collapse import latent_traversal, posterior_means
    from ppl_vae.tracing import decode

    model = MODELS["vae"]((1, 8, 8), latent_dim=3, hidden=[16])
    guide = GUIDES["gaussian"](model)
    x, values = torch.bernoulli(torch.full((1, 1, 8, 8), 0.5)), torch.tensor([-1.0, 0.0, 2.0])
    images = latent_traversal(model, guide, x, dims=[2, 0], values=values)
    mean = posterior_means(guide, x)["z"][0]
    expected = mean.repeat(6, 1)
    expected[:3, 2], expected[3:, 0] = values, values
    assert images.shape == (6, 1, 8, 8) and torch.allclose(images, decode(model, {"z": expected}))
    assert not torch.allclose(images[0], images[2])  # the decoder depends on the moved dimension
