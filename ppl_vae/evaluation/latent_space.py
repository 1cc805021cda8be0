"""What a code says about images: clusters in it, the images between codes, and how much of
the code's plane decodes to something digit-like.

These are the demonstrations of the seed posts on autoencoders and VAEs (the 2-D map of the
code, the gaps an autoencoder leaves and a VAE fills, interpolation between a 1 and a 7),
made numbers: how far a decoded image is from the nearest real one (``nearest_distance``),
and how well k-means in the code recovers the digit classes (``cluster_scores``). Codes are
the guide's posterior means E_q[z | x] (the point itself for the autoencoder's point mass).
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Normal

from ppl_vae.evaluation.collapse import posterior_means
from ppl_vae.tracing import decode, reconstruct


def codes(guide, x: torch.Tensor, site: str = "z") -> torch.Tensor:
    """E_q[z | x] of the latent ``site`` for each image of ``x``: ``[N, D]``."""
    return posterior_means(guide, x)[site]


def cluster_scores(code: torch.Tensor, labels: torch.Tensor, k: int = 10, seed: int = 0) -> dict[str, float]:
    """k-means with ``k`` clusters on the codes, against the labels: the adjusted Rand index
    (Hubert & Arabie 1985) and the normalised mutual information, both 1 for a perfect match and
    about 0 for chance (scikit-learn's ``KMeans``, ``adjusted_rand_score``, ``normalized_mutual_info_score``)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    found = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(code.detach().cpu().double().numpy())
    truth = labels.cpu().numpy()
    return {"ari": float(adjusted_rand_score(truth, found)), "nmi": float(normalized_mutual_info_score(truth, found))}


def nearest_distance(images: torch.Tensor, reference: torch.Tensor,
                     excluded: torch.Tensor | None = None) -> torch.Tensor:
    """Root-mean-square pixel distance from each image to its nearest reference image, ``[N]``
    (0 = a real image; an image between two classes that matches neither is far from all).

    :param excluded: ``[N, M]`` booleans, reference images not to count for an image (its own sources).
    """
    a, b = images.flatten(1).float(), reference.flatten(1).float().to(images.device)
    distance = torch.cdist(a, b) / math.sqrt(a.shape[1])
    if excluded is not None:
        distance = distance.masked_fill(excluded.to(distance.device), math.inf)
    return distance.min(1).values


def line(z_from: torch.Tensor, z_to: torch.Tensor, steps: int) -> torch.Tensor:
    """Codes evenly spaced from ``z_from`` to ``z_to`` (``[P, D]`` each), ``[P, steps, D]``."""
    t = torch.linspace(0, 1, steps, device=z_from.device)[:, None]
    return z_from[:, None] * (1 - t) + z_to[:, None] * t


@torch.no_grad()
def interpolation(model, guide, x_from: torch.Tensor, x_to: torch.Tensor, steps: int = 9,
                  site: str = "z") -> torch.Tensor:
    """Decoded images along the straight line between the codes of ``x_from`` and ``x_to`` (pairs
    of images), a row of ``steps`` per pair: ``[P * steps, ...]``; the first and last of a row are the
    two images' reconstructions (the seed post's 1 to 7)."""
    z = line(codes(guide, x_from, site), codes(guide, x_to, site), steps)
    return decode(model, {site: z.reshape(-1, z.shape[-1])})


def different_class_pairs(labels: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` random pairs of indices whose labels differ, ``[count, 2]`` (any pairs without labels)."""
    generator = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    pairs = torch.randint(len(labels), (8 * count, 2), generator=generator)
    pairs = pairs[labels[pairs[:, 0]] != labels[pairs[:, 1]]]
    return pairs[:count]


@torch.no_grad()
def in_between_distance(model, guide, x: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor,
                        pairs: int = 200, steps: int = 5, site: str = "z", seed: int = 0) -> dict[str, float]:
    """How digit-like the decoded points between codes are: for ``pairs`` random pairs of images of
    different classes, the codes along the line between theirs are decoded and each image's
    ``nearest_distance`` to ``reference`` (the images ``x`` stand for, in the same order) is taken,
    the pair's own two images excluded. Returns the mean distance at the midpoint, over the inner
    points, and at the ends (the reconstructions: what the decoder's own digits score)."""
    chosen = different_class_pairs(labels, pairs, seed).to(x.device)
    images = interpolation(model, guide, x[chosen[:, 0]], x[chosen[:, 1]], steps, site)
    excluded = torch.zeros(len(chosen), steps, len(reference), dtype=torch.bool, device=x.device)
    rows = torch.arange(len(chosen), device=x.device)
    excluded[rows, :, chosen[:, 0]] = True
    excluded[rows, :, chosen[:, 1]] = True
    distance = nearest_distance(images, reference, excluded.reshape(-1, len(reference))).reshape(len(chosen), steps)
    return {"midpoint": distance[:, steps // 2].mean().item(), "inner": distance[:, 1:-1].mean().item(),
            "ends": distance[:, [0, -1]].mean().item()}


def plane(points: int, code: torch.Tensor | None = None, quantiles: tuple[float, float] = (0.05, 0.95)) -> torch.Tensor:
    """A ``points`` x ``points`` grid over a 2-D code, ``[points**2, 2]``, rows top to bottom: at the
    ``quantiles`` of N(0, 1) on each axis (a VAE's prior; Kingma & Welling 2014, Fig. 4), or, given
    the codes of data, between their ``quantiles`` per axis (an autoencoder has no prior to read)."""
    q = torch.linspace(*quantiles, points)
    if code is None:
        axes = [Normal(0.0, 1.0).icdf(q)] * 2
    else:
        axes = [torch.quantile(code[:, d].float().cpu(), q) for d in range(2)]
    rows, cols = torch.meshgrid(axes[1].flip(0), axes[0], indexing="ij")
    return torch.stack([cols.reshape(-1), rows.reshape(-1)], 1)


def gaussian_draws(code: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` draws from the Gaussian with the mean and covariance of ``code`` ``[N, D]``: how a user
    samples an autoencoder, which has no prior of its own (the VAE's draws come from its prior)."""
    fitted = torch.distributions.MultivariateNormal(code.mean(0), torch.cov(code.T) + 1e-5 * torch.eye(code.shape[1],
                                                                                                      device=code.device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fitted.sample((n,))


@torch.no_grad()
def reconstruction_error(model, guide, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared pixel error between the reconstruction of ``x`` (the mean of p(x | z) at
    z ~ q(z | x)) and ``target``, per image ``[N]``: feed a corrupted ``x`` and the clean ``target``
    to score denoising."""
    return (reconstruct(model, guide, x) - target).flatten(1).pow(2).mean(1)
