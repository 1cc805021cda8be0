"""Disentanglement metrics of any representation of a world whose factors of variation are known.

A *world* (``World``) draws factor vectors uniformly over a grid and renders them as observations;
a *representation* maps a batch of observations ``[n, ...]`` to codes ``[n, D]`` (a torch tensor or
a numpy array): a guide's posterior means (``encoder_means``) or a baseline fitted on the world's
observations (``raw_pixels``, ``pca_representation``, ``ica_representation``: the other rows of
Higgins et al.'s dSprites table). The metrics, each with disentanglement_lib's protocol and defaults
(Locatello et al. 2019):

- ``beta_vae_score``: can a linear classifier tell which factor a batch of pairs shares from the
  mean absolute code difference? (Higgins et al. 2017)
- ``factor_vae_score``: does the factor held fixed pin down the dimension of least normalised
  variance? (Kim & Mnih 2018)
- ``mig``: the gap in mutual information between each factor's two most informative dimensions
  (Chen et al. 2018)

Each returns a dict with ``score`` and what is needed to read it (the representation's name, the
protocol's sizes, the classifier, chance level); a fixed ``seed`` gives a fixed score. A factor with a
single value (dSprites' colour) carries nothing and is left out, as disentanglement_lib's dSprites
leaves it out. Observations are rendered and represented ``chunk_size`` at a time, a representation
is assumed to code each row independently of the others in its batch, and every random draw is made
before any rendering, so scores do not depend on ``chunk_size``.

References: Higgins et al. (2017), beta-VAE, Sec. 3 and Appendix; Kim & Mnih (2018), Disentangling by
Factorising, Sec. 4; Chen et al. (2018), Isolating Sources of Disentanglement in VAEs, Eq. 5; Locatello
et al. (2019), Challenging Common Assumptions in the Unsupervised Learning of Disentangled
Representations, and its disentanglement_lib (the protocols and defaults followed here).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score

from ppl_vae.errors import ConfigError, Fault
from ppl_vae.evaluation.collapse import posterior_means

#: disentanglement_lib's batch_size L: points per beta-VAE z_diff (pairs) and per FactorVAE vote
GROUP_SIZE = 64
#: disentanglement_lib's num_train: training points (beta-VAE, FactorVAE) and random points (MIG)
NUM_TRAIN = 10_000
#: disentanglement_lib's num_eval: held-out points of the two classifier scores
NUM_EVAL = 5_000
#: disentanglement_lib's num_variance_estimate: random points behind FactorVAE's global scale
NUM_VARIANCE_ESTIMATE = 10_000
#: disentanglement_lib's prune_dims.threshold: a dimension whose std over the data is below it has collapsed
PRUNE_THRESHOLD = 0.05
#: disentanglement_lib's discretizer.num_bins: equal-width bins per code dimension for MIG
NUM_BINS = 20
#: scikit-learn's default iteration cap for LogisticRegression, which disentanglement_lib keeps
CLASSIFIER_MAX_ITER = 100
#: observations rendered and represented at a time: 4,096 64x64 images are 64 MiB of float32
CHUNK_SIZE = 4096
#: observations the PCA and ICA baselines are fitted on (as many as a metric's training points)
NUM_FIT = 10_000
#: components of the PCA and ICA baselines: as many as the 10-dimensional codes of the dSprites VAEs
BASELINE_COMPONENTS = 10
#: scikit-learn's FastICA defaults: iteration cap and tolerance of the fixed-point updates
ICA_MAX_ITER, ICA_TOL = 200, 1e-4
#: rows per guide call in ``encoder_means`` (``posterior_means``' default)
ENCODER_BATCH = 1000
#: the name a metric reports when not told which representation it scored
DEFAULT_REPRESENTATION = "encoder means"


class NonFiniteCodesError(Fault, FloatingPointError):
    """A representation returned NaN or infinite codes: nothing can be scored; the message says how many."""


@runtime_checkable
class World(Protocol):
    """A simulator with known factors of variation: ``sample_factors`` draws ``[n, F]`` integers uniformly
    over the grid ``factor_sizes`` (factor f in ``0 .. factor_sizes[f] - 1``); ``render`` turns them into
    observations ``[n, ...]`` (e.g. dSprites images ``[n, 1, 64, 64]`` of 0/1)."""

    factor_names: tuple[str, ...]
    factor_sizes: tuple[int, ...]

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray: ...

    def render(self, factors: np.ndarray) -> torch.Tensor: ...


#: observations ``[n, ...]`` -> codes ``[n, D]``
Representation = Callable[[torch.Tensor], Any]


# ---------------------------------------------------------------- checks and draws shared by the metrics


def _require(minimum: int, **sizes: int) -> None:
    """ConfigError naming the first of ``sizes`` that is not an integer >= ``minimum``."""
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ConfigError(f"{key} = {value!r} is out of range: it must be an integer >= {minimum}")


def varying_factors(world: World, at_least: int = 1) -> np.ndarray:
    """Indices of the world's factors that take more than one value (a constant one carries nothing);
    ConfigError if ``world`` is not a ``World`` or fewer than ``at_least`` factors vary."""
    if not isinstance(world, World):
        raise ConfigError(f"{type(world).__name__} is not a world: it needs factor_names, factor_sizes, "
                          "sample_factors(n, rng) and render(factors) (see ppl_vae.evaluation.disentanglement.World)")
    if len(world.factor_names) != len(world.factor_sizes):
        raise ConfigError(f"the world names {len(world.factor_names)} factors but gives {len(world.factor_sizes)} "
                          "sizes: give one size per name")
    varying = np.flatnonzero(np.asarray(world.factor_sizes) > 1)
    if len(varying) < at_least:
        raise ConfigError(f"this metric needs at least {at_least} factors that take more than one value; the "
                          f"world's sizes are {dict(zip(world.factor_names, world.factor_sizes))}")
    return varying


def sample_factors(world: World, n: int, rng: np.random.Generator) -> np.ndarray:
    """``world.sample_factors(n, rng)``, checked: ``[n, F]`` integers inside the grid."""
    factors = np.array(world.sample_factors(n, rng))  # a copy: sample_sharing_factor writes into it
    sizes = np.asarray(world.factor_sizes)
    if factors.shape != (n, len(sizes)) or not np.issubdtype(factors.dtype, np.integer):
        raise ConfigError(f"world.sample_factors({n}, rng) returned {factors.dtype} {factors.shape}: it must return "
                          f"integers of shape ({n}, {len(sizes)})")
    if n and ((factors < 0) | (factors >= sizes)).any():
        raise ConfigError(f"world.sample_factors returned values outside 0 .. size - 1 for sizes {tuple(sizes)}")
    return factors


def sample_sharing_factor(world: World, factor: np.ndarray, group_size: int, rng: np.random.Generator) -> np.ndarray:
    """Groups of factor vectors ``[G, group_size, F]`` whose members share one value of factor
    ``factor[g]`` (itself uniform) and are otherwise independent and uniform over the grid: pairs for
    the beta-VAE score (``group_size=2``), FactorVAE's batches of L.

    References: Higgins et al. (2017), Sec. 3; Kim & Mnih (2018), Sec. 4."""
    factor = np.asarray(factor)
    groups = sample_factors(world, len(factor) * group_size, rng).reshape(len(factor), group_size, -1)
    rows = np.arange(len(factor))
    groups[rows, :, factor] = groups[rows, 0, factor][:, None]
    return groups


def _as_codes(codes: Any, n: int) -> np.ndarray:
    """A representation's output as float64 ``[n, D]``: a ``ConfigError`` where its shape is wrong (the
    caller's representation), a ``NonFiniteCodesError`` where its values are not finite (a trained
    encoder that diverged)."""
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().double().numpy()
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or len(codes) != n:
        raise ConfigError(f"the representation returned codes of shape {codes.shape} for {n} observations: it must "
                          f"return [{n}, D] (reshape a single code dimension to [{n}, 1])")
    if not np.isfinite(codes).all():
        raise NonFiniteCodesError(f"the representation returned {int((~np.isfinite(codes)).sum())} non-finite codes: "
                          "fix the encoder (or its inputs) before scoring it")
    return codes


@torch.no_grad()
def represent_groups(represent: Representation, world: World, groups: np.ndarray,
                     reduce: Callable[[np.ndarray], np.ndarray], chunk_size: int = CHUNK_SIZE) -> np.ndarray:
    """``reduce`` of the codes of each group of factor vectors ``groups`` ``[G, m, F]``: renders and
    represents whole groups, about ``chunk_size`` observations at a time, and hands ``reduce`` codes
    ``[g, m, D]``; returns the reductions concatenated over the groups."""
    num_groups, m, num_factors = groups.shape
    per_chunk = max(1, chunk_size // m)
    parts = []
    for start in range(0, num_groups, per_chunk):
        part = groups[start:start + per_chunk].reshape(-1, num_factors)
        codes = _as_codes(represent(world.render(part)), len(part))
        parts.append(reduce(codes.reshape(-1, m, codes.shape[1])))
    return np.concatenate(parts)


def _random_codes(represent, world, n, rng, chunk_size) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random factor vectors ``[n, F]`` and their codes ``[n, D]``."""
    factors = sample_factors(world, n, rng)
    return factors, represent_groups(represent, world, factors[:, None], lambda c: c[:, 0], chunk_size)


def _report(metric: str, score: float, representation: str, seed: int, world: World, varying: np.ndarray,
            **protocol) -> dict:
    """A metric's output: its name and score, what was scored, the factors it ran over, then its protocol."""
    return {"metric": metric, "score": float(score), "representation": representation, "seed": seed,
            "factors": [world.factor_names[k] for k in varying], **protocol}


# ---------------------------------------------------------------- the metrics


def _beta_vae_points(represent, world, varying, batch_size, num_points, rng, chunk_size):
    """``num_points`` (z_diff ``[D]``, k): k uniform over the varying factors, z_diff the mean over
    ``batch_size`` pairs sharing factor k of |z1 - z2|."""
    k = rng.choice(varying, size=num_points)
    pairs = sample_sharing_factor(world, np.repeat(k, batch_size), 2, rng)
    groups = pairs.reshape(num_points, 2 * batch_size, -1)  # each point's L pairs, the two of a pair adjacent

    def z_diff(codes):
        pair_codes = codes.reshape(len(codes), batch_size, 2, -1)
        return np.abs(pair_codes[:, :, 0] - pair_codes[:, :, 1]).mean(1)

    return represent_groups(represent, world, groups, z_diff, chunk_size), k


def beta_vae_score(represent: Representation, world: World, seed: int = 0, *, batch_size: int = GROUP_SIZE,
                   num_train: int = NUM_TRAIN, num_eval: int = NUM_EVAL, max_iter: int = CLASSIFIER_MAX_ITER,
                   chunk_size: int = CHUNK_SIZE, representation: str = DEFAULT_REPRESENTATION) -> dict:
    """The beta-VAE disentanglement score: the held-out accuracy of a linear classifier that predicts
    which factor k was shared by ``batch_size`` (L) pairs of observations from z_diff = mean_l ``|z1_l - z2_l|``.

    k is uniform over the factors that vary; each pair shares the value of factor k (drawn anew per
    pair) and has its other factors independent. The classifier is disentanglement_lib's: scikit-learn's
    ``LogisticRegression`` (L2, C = 1, lbfgs) on the raw z_diff, trained on ``num_train`` points and
    scored on ``num_eval`` fresh ones; chance is 1 / (number of varying factors).

    Returns ``score`` (= ``eval_accuracy``), ``train_accuracy``, ``chance``, ``classifier`` and its
    ``classifier_iterations`` / ``classifier_converged``, ``batch_size``, ``num_train``, ``num_eval``,
    with the representation's name, the seed and the factors.

    References: Higgins et al. (2017), Sec. 3 and Appendix; disentanglement_lib ``beta_vae.py``.
    """
    varying = varying_factors(world, at_least=2)
    _require(1, batch_size=batch_size, num_train=num_train, num_eval=num_eval, max_iter=max_iter,
             chunk_size=chunk_size)
    rng = np.random.default_rng(seed)
    train_x, train_y = _beta_vae_points(represent, world, varying, batch_size, num_train, rng, chunk_size)
    eval_x, eval_y = _beta_vae_points(represent, world, varying, batch_size, num_eval, rng, chunk_size)
    if len(np.unique(train_y)) < 2:
        raise ConfigError(f"num_train = {num_train} training points all hold the same factor fixed: raise num_train")
    with warnings.catch_warnings():  # a classifier stopped at max_iter is reported (classifier_converged), not warned
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier = LogisticRegression(max_iter=max_iter, random_state=seed).fit(train_x, train_y)
    iterations = int(np.max(classifier.n_iter_))
    eval_accuracy = classifier.score(eval_x, eval_y)
    return _report("beta-VAE score", eval_accuracy, representation, seed, world, varying,
                   eval_accuracy=float(eval_accuracy), train_accuracy=float(classifier.score(train_x, train_y)),
                   chance=1 / len(varying), batch_size=batch_size, num_train=num_train, num_eval=num_eval,
                   classifier=repr(classifier), classifier_iterations=iterations,
                   classifier_converged=iterations < max_iter)


def _factor_vae_votes(represent, world, varying, batch_size, num_points, rng, chunk_size, global_variance,
                      active) -> np.ndarray:
    """Votes ``[D, K]``: per point, k uniform over the varying factors, ``batch_size`` points sharing
    factor k's value, and the active dimension of least variance once divided by the global variance."""
    k = rng.choice(len(varying), size=num_points)
    groups = sample_sharing_factor(world, varying[k], batch_size, rng)
    local_variance = represent_groups(represent, world, groups, lambda c: c.var(axis=1, ddof=1), chunk_size)
    active_dims = np.flatnonzero(active)
    dims = active_dims[np.argmin(local_variance[:, active] / global_variance[active], axis=1)]
    votes = np.zeros((len(global_variance), len(varying)), dtype=np.int64)
    np.add.at(votes, (dims, k), 1)
    return votes


def factor_vae_score(represent: Representation, world: World, seed: int = 0, *, batch_size: int = GROUP_SIZE,
                     num_train: int = NUM_TRAIN, num_eval: int = NUM_EVAL,
                     num_variance_estimate: int = NUM_VARIANCE_ESTIMATE, prune_threshold: float = PRUNE_THRESHOLD,
                     chunk_size: int = CHUNK_SIZE, representation: str = DEFAULT_REPRESENTATION) -> dict:
    """The FactorVAE disentanglement score: the held-out accuracy of a majority-vote classifier from
    "the dimension of least normalised variance" to "the factor held fixed".

    Codes are scaled by their standard deviation over ``num_variance_estimate`` random points; a
    dimension whose standard deviation is below ``prune_threshold`` has collapsed and is left out. Each
    vote: k uniform over the varying factors, ``batch_size`` (L) points sharing one value of factor k,
    the active dimension whose scaled codes vary least. The classifier sends each dimension to the
    factor it got most training votes for (a dimension without votes to the first factor, as
    disentanglement_lib); its accuracy on ``num_eval`` fresh votes is the score. With no active
    dimension the score is 0 and ``note`` says why.

    Returns ``score`` (= ``eval_accuracy``), ``train_accuracy``, ``chance``, ``classifier`` (per code
    dimension, the factor it predicts), ``train_votes`` ``[D][K]``, ``active_dims``, ``num_active_dims``,
    ``global_std``, ``prune_threshold``, ``batch_size``, ``num_train``, ``num_eval``,
    ``num_variance_estimate``, with the representation's name, the seed and the factors.

    References: Kim & Mnih (2018), Sec. 4; disentanglement_lib ``factor_vae.py`` (``prune_dims.threshold
    = 0.05`` on the standard deviation).
    """
    varying = varying_factors(world, at_least=2)
    _require(2, batch_size=batch_size, num_variance_estimate=num_variance_estimate)
    _require(1, num_train=num_train, num_eval=num_eval, chunk_size=chunk_size)
    rng = np.random.default_rng(seed)
    _, codes = _random_codes(represent, world, num_variance_estimate, rng, chunk_size)
    global_variance = codes.var(axis=0, ddof=1)
    active = np.sqrt(global_variance) >= prune_threshold
    protocol = dict(chance=1 / len(varying), batch_size=batch_size, num_train=num_train, num_eval=num_eval,
                    num_variance_estimate=num_variance_estimate, prune_threshold=prune_threshold,
                    global_std=np.sqrt(global_variance).tolist(), active_dims=np.flatnonzero(active).tolist(),
                    num_active_dims=int(active.sum()))
    if not active.any():
        return _report("FactorVAE score", 0.0, representation, seed, world, varying, eval_accuracy=0.0,
                       train_accuracy=0.0, **protocol,
                       note=f"no active dimension: every code dimension's std over the data is below {prune_threshold}")
    train_votes = _factor_vae_votes(represent, world, varying, batch_size, num_train, rng, chunk_size,
                                    global_variance, active)
    eval_votes = _factor_vae_votes(represent, world, varying, batch_size, num_eval, rng, chunk_size,
                                   global_variance, active)
    predicted = train_votes.argmax(axis=1)  # per dimension, the factor it votes for most

    def accuracy(votes):
        return float(votes[np.arange(len(votes)), predicted].sum() / votes.sum())

    return _report("FactorVAE score", accuracy(eval_votes), representation, seed, world, varying,
                   eval_accuracy=accuracy(eval_votes), train_accuracy=accuracy(train_votes), **protocol,
                   classifier=[world.factor_names[varying[k]] for k in predicted], train_votes=train_votes.tolist())


def histogram_discretise(codes: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """Each column of ``codes`` ``[n, D]`` as bin indices 1 .. ``num_bins`` of ``num_bins`` equal-width
    bins over its range (``np.histogram``'s edges; the maximum falls in the last bin).

    References: disentanglement_lib ``utils._histogram_discretize``."""
    return np.stack([np.digitize(column, np.histogram(column, num_bins)[1][:-1]) for column in codes.T], axis=1)


def mig(represent: Representation, world: World, seed: int = 0, *, num_train: int = NUM_TRAIN,
        num_bins: int = NUM_BINS, chunk_size: int = CHUNK_SIZE, representation: str = DEFAULT_REPRESENTATION) -> dict:
    """The mutual information gap: over factors v_k, the mean of (I(z_j1; v_k) - I(z_j2; v_k)) / H(v_k),
    j1 and j2 the two code dimensions most informative about v_k.

    On ``num_train`` random points, each code dimension is cut into ``num_bins`` equal-width bins
    (``histogram_discretise``) and every mutual information and entropy is the plug-in one of the
    sample, in nats (``sklearn.metrics.mutual_info_score``; H(v) = I(v; v)). A factor with more values
    than bins has values merged, so even the factors themselves score below 1 on it.

    Returns ``score``, ``per_factor`` (each factor's normalised gap), ``mutual_information`` ``[D][K]``,
    ``factor_entropy``, ``best_dims`` (per factor, the most informative dimension), ``num_train``,
    ``num_bins``, with the representation's name, the seed and the factors.

    References: Chen et al. (2018), Eq. 5; disentanglement_lib ``mig.py`` (its discrete MIG).
    """
    varying = varying_factors(world)
    _require(1, num_train=num_train, num_bins=num_bins, chunk_size=chunk_size)
    rng = np.random.default_rng(seed)
    factors, codes = _random_codes(represent, world, num_train, rng, chunk_size)
    if codes.shape[1] < 2:
        raise ConfigError(f"MIG needs at least 2 code dimensions (it is a gap between the two most informative), "
                          f"got {codes.shape[1]}: score this representation with beta_vae_score or factor_vae_score")
    binned = histogram_discretise(codes, num_bins)
    factors = factors[:, varying]
    information = np.array([[mutual_info_score(dim, v) for v in factors.T] for dim in binned.T])
    entropy = np.array([mutual_info_score(v, v) for v in factors.T])
    if (entropy == 0).any():
        raise ConfigError(f"num_train = {num_train} random points leave a factor constant: raise num_train")
    top = -np.sort(-information, axis=0)
    gaps = (top[0] - top[1]) / entropy
    names = [world.factor_names[k] for k in varying]
    return _report("MIG", gaps.mean(), representation, seed, world, varying,
                   per_factor=dict(zip(names, gaps.tolist())), mutual_information=information.tolist(),
                   factor_entropy=dict(zip(names, entropy.tolist())),
                   best_dims=dict(zip(names, information.argmax(axis=0).tolist())), num_train=num_train,
                   num_bins=num_bins)


# ---------------------------------------------------------------- representations


def encoder_means(guide, site: str = "z", batch_size: int = ENCODER_BATCH, num_samples: int = 1) -> Representation:
    """The representation E_q[z | x] of the guide's latent ``site``: codes ``[n, D]`` on the CPU, computed
    on the guide's device under ``torch.no_grad``, ``batch_size`` rows at a time (``posterior_means``;
    ``num_samples`` draws of the sites ``site`` depends on, for a structured guide).

    References: Locatello et al. (2019) and disentanglement_lib: the encoder's mean is the representation scored."""
    _require(1, batch_size=batch_size, num_samples=num_samples)
    parameters = guide.parameters() if isinstance(guide, torch.nn.Module) else iter(())
    device = next(parameters, torch.empty(0)).device  # a guide without parameters runs on the CPU

    def represent(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            means = posterior_means(guide, torch.as_tensor(x).to(device), num_samples, batch_size)
        if site not in means:
            raise ConfigError(f"the guide has no latent site {site!r}; its sites: {', '.join(means)}: pass site=...")
        return means[site].cpu()

    return represent


def _flatten(x) -> np.ndarray:
    """Observations ``[n, ...]`` as float rows ``[n, pixels]``."""
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return x.reshape(len(x), -1).astype(np.float32)


def raw_pixels() -> Representation:
    """The observation itself, flattened: codes ``[n, pixels]`` (Higgins et al.'s "raw pixels" row).

    References: Higgins et al. (2017), the dSprites results table."""
    return _flatten


@dataclass(frozen=True)
class FittedRepresentation:
    """A scikit-learn transformer fitted on a world's flattened observations; called on observations
    ``[n, ...]`` it returns ``estimator.transform`` of them, codes ``[n, n_components]``."""

    estimator: Any
    name: str

    def __call__(self, x) -> np.ndarray:
        return self.estimator.transform(_flatten(x))


def _fit_on_world(estimator, name: str, world: World, num_fit: int, seed: int, chunk_size: int) -> FittedRepresentation:
    """``estimator`` fitted on ``num_fit`` observations of random factor vectors (``np.random.default_rng(seed)``)."""
    _require(1, n_components=estimator.n_components, num_fit=num_fit, chunk_size=chunk_size)
    varying_factors(world)
    factors = sample_factors(world, num_fit, np.random.default_rng(seed))
    pixels = np.concatenate([_flatten(world.render(factors[s:s + chunk_size])) for s in range(0, num_fit, chunk_size)])
    if estimator.n_components > min(pixels.shape):
        raise ConfigError(f"{name} with n_components = {estimator.n_components} needs at least that many observations "
                          f"and pixels, got {pixels.shape[0]} x {pixels.shape[1]}: lower n_components or raise num_fit")
    return FittedRepresentation(estimator.fit(pixels), name)


def pca_representation(world: World, n_components: int = BASELINE_COMPONENTS, num_fit: int = NUM_FIT, seed: int = 0,
                       chunk_size: int = CHUNK_SIZE) -> FittedRepresentation:
    """The first ``n_components`` principal components of the world's flattened observations (sklearn
    ``PCA`` fitted on ``num_fit`` random ones).

    References: Higgins et al. (2017), the dSprites results table (the PCA row)."""
    return _fit_on_world(PCA(n_components, random_state=seed), "PCA", world, num_fit, seed, chunk_size)


def ica_representation(world: World, n_components: int = BASELINE_COMPONENTS, num_fit: int = NUM_FIT, seed: int = 0,
                       max_iter: int = ICA_MAX_ITER, tol: float = ICA_TOL,
                       chunk_size: int = CHUNK_SIZE) -> FittedRepresentation:
    """``n_components`` independent components of the world's flattened observations (sklearn ``FastICA``
    on whitened data, fitted on ``num_fit`` random ones; ``max_iter`` and ``tol`` are FastICA's and
    its defaults; it warns with a ``ConvergenceWarning`` when they are not enough).

    References: Higgins et al. (2017), the dSprites results table (the ICA row); Hyvarinen & Oja (2000)."""
    ica = FastICA(n_components, whiten="unit-variance", max_iter=max_iter, tol=tol, random_state=seed)
    return _fit_on_world(ica, "ICA", world, num_fit, seed, chunk_size)


__all__ = ["World", "Representation", "beta_vae_score", "factor_vae_score", "mig", "encoder_means", "raw_pixels",
           "pca_representation", "ica_representation", "FittedRepresentation", "sample_sharing_factor",
           "sample_factors", "varying_factors", "represent_groups", "histogram_discretise"]
