"""Disentanglement metrics against known answers, on small synthetic worlds defined here.

The main world's observation IS its factor vector, so ``identity`` is the ground-truth representation;
what each metric's definition predicts for it, for noise and for mixed factors is computed below.
"""

import math

import numpy as np
import pytest
import torch

from ppl_vae import GUIDES, MODELS
from ppl_vae.errors import ConfigError, Fault
from ppl_vae.evaluation.disentanglement import (
    ICA_MAX_ITER,
    FittedRepresentation,
    NonFiniteCodesError,
    beta_vae_score,
    encoder_means,
    factor_vae_score,
    histogram_discretise,
    ica_representation,
    mig,
    pca_representation,
    raw_pixels,
    sample_sharing_factor,
)


class FactorWorld:
    """Factors uniform over a grid; the observation is the factor vector itself, as floats ``[n, F]``."""

    def __init__(self, factor_sizes, factor_names=None):
        self.factor_sizes = tuple(factor_sizes)
        self.factor_names = tuple(factor_names or (f"v{k}" for k in range(len(factor_sizes))))

    def sample_factors(self, n, rng):
        return rng.integers(0, self.factor_sizes, size=(n, len(self.factor_sizes)))

    def render(self, factors):
        return torch.as_tensor(factors, dtype=torch.float32)


class LinearWorld(FactorWorld):
    """Observations ``[n, PIXELS]``: a fixed random linear map of the factors, each scaled to [0, 1]."""

    PIXELS = 12  # more "pixels" than factors, so the map hides the factors in a higher-dimensional space

    def __init__(self, factor_sizes):
        super().__init__(factor_sizes)
        mixing = np.random.default_rng(0).normal(size=(len(factor_sizes), self.PIXELS))
        self.mixing = torch.as_tensor(mixing, dtype=torch.float32)

    def render(self, factors):
        return super().render(factors) / (torch.tensor(self.factor_sizes) - 1) @ self.mixing


class DotsWorld(FactorWorld):
    """8x8 binary images ``[n, 1, 8, 8]``: a dot in the first column at row ``left`` and one in the last
    column at row ``right``; ``colour`` takes one value, like dSprites' colour, and carries nothing."""

    SIDE = 8

    def __init__(self):
        super().__init__((1, self.SIDE, self.SIDE), ("colour", "left", "right"))

    def render(self, factors):
        images = torch.zeros(len(factors), 1, self.SIDE, self.SIDE)
        rows = torch.arange(len(factors))
        images[rows, 0, torch.as_tensor(factors[:, 1]), 0] = 1.0
        images[rows, 0, torch.as_tensor(factors[:, 2]), -1] = 1.0
        return images


#: 3, 6 and 30 values: the last has more values than MIG's 20 bins, so the bins merge some of them
WORLD = FactorWorld((3, 6, 30))
NUM_BINS = 20  # disentanglement_lib's discretisation, the metric's default
#: sizes small enough for a fast test; MIG's plug-in estimates need more points than the classifiers
SMALL = {
    beta_vae_score: dict(batch_size=16, num_train=500, num_eval=2000),
    factor_vae_score: dict(batch_size=16, num_train=300, num_eval=2000, num_variance_estimate=1000),
    mig: dict(num_train=10_000),
}
#: smaller still, for a neural representation
TINY = {
    beta_vae_score: dict(batch_size=8, num_train=200, num_eval=200),
    factor_vae_score: dict(batch_size=8, num_train=200, num_eval=200, num_variance_estimate=500),
    mig: dict(num_train=1000),
}
METRICS = list(SMALL)
CLASSIFIER_METRICS = [beta_vae_score, factor_vae_score]
metric_ids = pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.__name__)


def run(metric, represent, world=WORLD, seed=0, **kwargs):
    return metric(represent, world, seed, **{**SMALL[metric], **kwargs})


def identity(x):
    return x


def rotated(x):
    """The factors with v1 and v2 (each scaled to [0, 1]) mixed by a 45-degree rotation."""
    a, b = x[:, 1] / 5, x[:, 2] / 29
    return torch.stack([x[:, 0], (a + b) / math.sqrt(2), (a - b) / math.sqrt(2)], dim=1)


def noise(dims=4, seed=1):
    """A representation independent of the observations: fresh standard normal codes each call."""
    rng = np.random.default_rng(seed)
    return lambda x: rng.normal(size=(len(x), dims))


def entropy(probabilities):
    p = np.asarray(probabilities, dtype=float)
    return float(-(p[p > 0] * np.log(p[p > 0])).sum())


def plug_in_bias(values_a, values_b, n):
    """The plug-in estimate's upward bias on the mutual information of independent variables with
    these many values: (A - 1)(B - 1) / 2n nats (Miller 1955; 2n I ~ chi-square on (A-1)(B-1) dof)."""
    return (values_a - 1) * (values_b - 1) / (2 * n)


def test_the_factors_themselves_score_what_each_definition_predicts():
    """beta-VAE: the shared factor's |z1 - z2| is 0 in its own dimension only, separable -> 1. FactorVAE:
    that dimension has variance 0 -> every vote right -> 1. MIG: a dimension's bins are a function of its
    factor, so I(bins_k; v_k) = H(bins_k): 1 for 3 and 6 values (each its own bin), H(bins)/H(v) < 1 for
    30 values in 20 equal-width bins over [0, 29]; the runner-up is independent, up to plug-in bias."""
    assert run(beta_vae_score, identity)["score"] == 1.0
    assert run(factor_vae_score, identity)["score"] == 1.0

    result = run(mig, identity)
    n = result["num_train"]
    expected, tolerance = {}, {}
    for k, (name, size) in enumerate(zip(WORLD.factor_names, WORLD.factor_sizes)):
        per_bin = np.histogram(np.arange(size), NUM_BINS)[0]  # the grid's values in each equal-width bin
        expected[name] = entropy(per_bin / size) / math.log(size)
        others = [s for j, s in enumerate(WORLD.factor_sizes) if j != k]
        runner_up = max(plug_in_bias(min(s, NUM_BINS), size, n) for s in others)  # an independent dimension
        tolerance[name] = 3 * runner_up / math.log(size)
        assert result["per_factor"][name] == pytest.approx(expected[name], abs=tolerance[name])
    assert [expected["v0"], expected["v1"]] == pytest.approx([1.0, 1.0])
    assert expected["v2"] < 0.9  # 30 values in 20 bins: even the factors themselves have MIG < 1
    assert result["score"] == pytest.approx(np.mean(list(expected.values())), abs=max(tolerance.values()))
    assert result["best_dims"] == {"v0": 0, "v1": 1, "v2": 2}


@pytest.mark.parametrize("metric", CLASSIFIER_METRICS, ids=lambda m: m.__name__)
def test_noise_scores_at_chance_on_the_classifier_metrics(metric):
    """Codes independent of the factors make each held-out prediction independent of its label, so the
    accuracy is Binomial(num_eval, 1/F) / num_eval: within 4 standard errors of 1/F."""
    result = run(metric, noise())
    chance, n = 1 / len(WORLD.factor_sizes), result["num_eval"]
    assert result["chance"] == chance
    assert result["score"] == pytest.approx(chance, abs=4 * math.sqrt(chance * (1 - chance) / n))


def test_noise_has_no_mutual_information_gap():
    """Every I(bins_d; v_k) of noise is plug-in bias alone, mean (B-1)(K-1)/2n; the gap between two of
    them is of the order of their spread, a fraction sqrt(2 / dof) of that mean, so the mean bounds it."""
    result = run(mig, noise())
    n = result["num_train"]
    for name, size in zip(WORLD.factor_names, WORLD.factor_sizes):
        assert 0 <= result["per_factor"][name] < plug_in_bias(NUM_BINS, size, n) / result["factor_entropy"][name]


@metric_ids
def test_permuted_code_dimensions_score_the_same(metric):
    assert run(metric, lambda x: rotated(x)[:, [2, 0, 1]])["score"] == pytest.approx(run(metric, rotated)["score"])
    assert run(metric, lambda x: x[:, [1, 2, 0]])["score"] == run(metric, identity)["score"]


@metric_ids
def test_mixing_two_factors_scores_lower(metric):
    """A 45-degree rotation spreads v1 and v2 over two dimensions each: neither is any longer the only
    one to change (beta-VAE), to stay still (FactorVAE) or to inform (MIG)."""
    assert run(metric, rotated)["score"] < run(metric, identity)["score"] - 0.2


def test_mixing_two_factors_shrinks_their_gaps_only():
    mixed, pure = run(mig, rotated)["per_factor"], run(mig, identity)["per_factor"]
    assert mixed["v0"] == pytest.approx(pure["v0"], abs=0.01)
    assert mixed["v1"] < pure["v1"] - 0.5 and mixed["v2"] < pure["v2"] - 0.3


def in_row_order(represent, order):
    """``represent`` called on the rows in ``order(n)``, its codes put back in the original order."""

    def reordered(x):
        rows = order(len(x))
        codes = represent(x[rows])
        out = torch.empty_like(codes)
        out[rows] = codes
        return out

    return reordered


@metric_ids
def test_scores_do_not_depend_on_the_order_or_the_chunks_data_arrive_in(metric):
    shuffle = np.random.default_rng(0)
    reference = run(metric, rotated)
    assert run(metric, in_row_order(rotated, lambda n: torch.arange(n - 1, -1, -1))) == reference
    assert run(metric, in_row_order(rotated, lambda n: torch.as_tensor(shuffle.permutation(n)))) == reference
    assert run(metric, rotated, chunk_size=7) == reference


@metric_ids
def test_a_fixed_seed_fixes_the_score_and_other_seeds_move_it(metric):
    assert run(metric, rotated, seed=3) == run(metric, rotated, seed=3)
    scores = {run(metric, rotated, seed=seed)["score"] for seed in range(4)}
    assert len(scores) > 1 and max(scores) - min(scores) < 0.1


@metric_ids
def test_each_result_says_what_was_scored_and_how(metric):
    result = run(metric, identity, representation="the factors")
    assert result["representation"] == "the factors" and result["seed"] == 0
    assert result["factors"] == list(WORLD.factor_names)
    assert {key: result[key] for key in SMALL[metric]} == SMALL[metric]
    assert run(metric, identity)["representation"] == "encoder means"


def test_the_beta_vae_classifier_is_a_converged_logistic_regression():
    result = run(beta_vae_score, identity)
    assert result["classifier"].startswith("LogisticRegression(") and result["classifier_converged"]
    assert result["train_accuracy"] == 1.0


def test_factor_vae_prunes_collapsed_dimensions_and_scores_zero_without_any():
    """A dimension whose std over the data is below 0.05 gets no vote; with none active the score is 0."""
    with_constant = run(factor_vae_score, lambda x: torch.cat([x, torch.full((len(x), 1), 7.0)], 1))
    assert with_constant["score"] == 1.0 and with_constant["active_dims"] == [0, 1, 2]
    assert with_constant["train_votes"][3] == [0, 0, 0]
    collapsed = run(factor_vae_score, lambda x: 0.01 * x[:, :1] / 2)
    assert collapsed["score"] == 0.0 and collapsed["num_active_dims"] == 0
    assert "no active dimension" in collapsed["note"]


def test_factor_vae_prunes_on_the_standard_deviation_not_the_variance():
    """disentanglement_lib's ``prune_dims.threshold = 0.05`` is on the std: a dimension of std 0.06
    (variance 0.0036, below 0.05) is active, one of std 0.04 is not."""
    sizes = torch.tensor(WORLD.factor_sizes, dtype=torch.float32)
    uniform_std = ((sizes ** 2 - 1) / 12).sqrt()  # of a factor uniform over 0 .. size - 1
    wanted = torch.tensor([0.06, 0.1, 0.04])
    result = run(factor_vae_score, lambda x: x * wanted / uniform_std)
    assert result["global_std"] == pytest.approx(wanted.tolist(), rel=0.1)
    assert result["active_dims"] == [0, 1]


class RecordingWorld(FactorWorld):
    """A ``FactorWorld`` that keeps every batch of factor vectors it renders, in order."""

    def __init__(self, factor_sizes):
        super().__init__(factor_sizes)
        self.rendered = []

    def render(self, factors):
        self.rendered.append(np.array(factors))
        return super().render(factors)


def test_each_beta_vae_pair_draws_the_shared_factors_value_anew():
    """Higgins et al. (2017), Sec. 3: each of a point's L pairs shares the value of factor k, drawn
    for that pair; one value for all L pairs would make z_diff a different statistic (measured: 0.66
    against 0.59 on mid-range codes). Read from what the metric renders: L pairs a point, the two of
    a pair adjacent."""
    world, pairs = RecordingWorld((30, 30, 30)), 16
    beta_vae_score(identity, world, 0, batch_size=pairs, num_train=40, num_eval=40)
    points = np.concatenate(world.rendered).reshape(80, pairs, 2, 3)  # [point, pair, member, factor]
    shared = (points[:, :, 0] == points[:, :, 1]).all(axis=1)  # [point, factor]: shared by all its pairs
    assert (shared.sum(axis=1) == 1).all()  # one factor, k (another agreeing in 16 pairs by chance: 30^-16)
    k = shared.argmax(axis=1)
    values = points[np.arange(80), :, 0, k]  # [point, pair]: the value of k in each pair
    assert all(len(np.unique(v)) > 1 for v in values)  # 16 draws of 30 values all alike: 30^-15


def plug_in_information(a, b) -> float:
    """The sample's mutual information of two discrete columns, in nats (from their contingency table)."""
    _, pa = np.unique(a, return_inverse=True)
    _, pb = np.unique(b, return_inverse=True)
    p_ab = np.zeros((pa.max() + 1, pb.max() + 1))
    np.add.at(p_ab, (pa, pb), 1 / len(a))
    outer = p_ab.sum(1, keepdims=True) * p_ab.sum(0, keepdims=True)
    nonzero = p_ab > 0
    return float((p_ab[nonzero] * np.log(p_ab[nonzero] / outer[nonzero])).sum())


def test_mig_divides_each_gap_by_the_factors_sample_entropy():
    """Chen et al. (2018), Eq. 5 divides by H(v_k), disentanglement_lib by its plug-in estimate on the
    sample. On 24 points it is below log K, so the two differ. The factors as codes put each
    value in a bin of its own: I(z_k; v_k) = H(v_k), and the runner-up is the other factor's plug-in
    information about v_k, so the gap is known in closed form."""
    world, n = FactorWorld((4, 8)), 24
    result = mig(identity, world, 0, num_train=n)
    v = world.sample_factors(n, np.random.default_rng(0))  # the metric's first draw from its seed
    for k, name in enumerate(world.factor_names):
        h = plug_in_information(v[:, k], v[:, k])
        gap = h - plug_in_information(v[:, 1 - k], v[:, k])
        assert result["factor_entropy"][name] == pytest.approx(h, rel=1e-9)
        assert result["per_factor"][name] == pytest.approx(gap / h, rel=1e-9)
        assert gap / math.log(world.factor_sizes[k]) < gap / h - 0.01  # what dividing by log K would give


def test_pairs_share_exactly_the_chosen_factor():
    rng = np.random.default_rng(0)
    factor = rng.integers(0, 3, size=500)
    groups = sample_sharing_factor(WORLD, factor, 4, rng)
    assert groups.shape == (500, 4, 3)
    shared = groups[np.arange(500), :, factor]
    assert (shared == shared[:, :1]).all()
    others = groups[factor != 2][:, :, 2]  # v2 not held fixed: 4 draws of 30 values rarely all agree
    assert (others != others[:, :1]).any(axis=1).mean() > 0.99


def test_histogram_discretisation_is_disentanglement_libs():
    """20 equal-width bins over each column's range, labelled 1..20, the maximum in the last bin."""
    codes = np.stack([np.arange(30.0), np.linspace(-1, 1, 30) ** 3], axis=1)
    binned = histogram_discretise(codes)
    assert binned.min() == 1 and binned.max() == NUM_BINS and binned[-1].tolist() == [NUM_BINS, NUM_BINS]
    assert (np.diff(binned, axis=0) >= 0).all()
    assert histogram_discretise(np.full((5, 1), 3.0)).tolist() == [[11]] * 5  # a constant: one bin, mid-range


def test_pca_of_a_linear_world_recovers_its_factors():
    """Observations are a rank-3 linear map of the factors: 3 components hold all their variance and a
    rotation of the factors, whose differences a linear classifier reads; so does the raw observation."""
    world = LinearWorld((3, 6, 10))
    pca = pca_representation(world, n_components=3, num_fit=2000)
    assert isinstance(pca, FittedRepresentation) and pca.name == "PCA"
    assert pca.estimator.explained_variance_ratio_.sum() == pytest.approx(1.0, abs=1e-5)
    assert run(beta_vae_score, pca, world, representation="PCA")["score"] > 0.95
    assert run(beta_vae_score, raw_pixels(), world)["score"] > 0.95


def test_ica_of_a_linear_world_unmixes_what_pca_only_rotates():
    """The factors are independent and non-Gaussian: ICA finds them again, PCA only their subspace."""
    world = LinearWorld((3, 6, 10))
    ica = ica_representation(world, n_components=3, num_fit=2000)
    pca = pca_representation(world, n_components=3, num_fit=2000)
    assert ica.name == "ICA" and ica.estimator.n_iter_ < ICA_MAX_ITER
    assert run(mig, ica, world, num_train=2000)["score"] > run(mig, pca, world, num_train=2000)["score"] + 0.2


def test_raw_pixels_of_images_score_the_definitions_answer_on_the_classifier_metrics():
    """Holding ``left`` fixed zeroes the first column's |x1 - x2| and variances, and nothing else: the
    beta-VAE classifier is always right. FactorVAE's argmin takes the first of tied zero variances, and
    pixel (0, 0) (dimension 0, ``left``'s) is constant also when ``right`` is held fixed and none of the
    L dots on the left is in row 0 (or all are), so it is wrong with probability ((7/8)^L + (1/8)^L) / 2.
    The one-valued colour factor is left out (chance 1/2)."""
    beta_vae = run(beta_vae_score, raw_pixels(), DotsWorld(), representation="raw pixels")
    assert beta_vae["factors"] == ["left", "right"] and beta_vae["chance"] == 0.5 and beta_vae["score"] == 1.0
    factor_vae = run(factor_vae_score, raw_pixels(), DotsWorld(), representation="raw pixels")
    size, group, n = DotsWorld.SIDE, factor_vae["batch_size"], factor_vae["num_eval"]
    expected = 1 - (((size - 1) / size) ** group + (1 / size) ** group) / 2
    edges = sorted([size * row for row in range(size)] + [size * row + size - 1 for row in range(size)])
    assert factor_vae["active_dims"] == edges  # the middle columns never change: pruned
    assert factor_vae["classifier"][0] == "left"
    assert factor_vae["score"] == pytest.approx(expected, abs=4 * math.sqrt(expected * (1 - expected) / n))


def test_raw_pixels_of_images_have_no_mutual_information_gap():
    """The first column's 8 pixels say the same about ``left`` (I(pixel; left) = H(1/8) for each): the two
    most informative dimensions tie, up to sampling, and each gap is about 0."""
    result = run(mig, raw_pixels(), DotsWorld(), num_train=2000)
    assert result["factors"] == ["left", "right"] and len(result["mutual_information"]) == 64
    assert result["score"] == pytest.approx(0.0, abs=0.02)


def tiny_gaussian_pair():
    model = MODELS["vae"]((1, 8, 8), latent_dim=2, hidden=[8])
    return model, GUIDES["gaussian"](model)


def test_encoder_means_are_the_guides_gaussian_locs_whatever_the_batches():
    _, guide = tiny_gaussian_pair()
    x = DotsWorld().render(DotsWorld().sample_factors(50, np.random.default_rng(0)))
    codes = encoder_means(guide)(x)
    with torch.no_grad():
        loc, _ = guide.heads["z"](guide.encoder(x))
    assert codes.shape == (50, 2) and not codes.requires_grad
    torch.testing.assert_close(codes, loc)
    torch.testing.assert_close(encoder_means(guide, batch_size=7)(x), codes)
    reverse = torch.arange(49, -1, -1)
    torch.testing.assert_close(encoder_means(guide)(x[reverse]), codes[reverse])


@metric_ids
def test_an_untrained_encoder_is_scored_by_every_metric(metric):
    _, guide = tiny_gaussian_pair()
    result = metric(encoder_means(guide), DotsWorld(), 0, **TINY[metric])
    assert result["representation"] == "encoder means" and 0.0 <= result["score"] <= 1.0


def test_mistakes_are_named_with_their_fix():
    _, guide = tiny_gaussian_pair()
    with pytest.raises(ConfigError, match="no latent site 'w'.*pass site="):
        encoder_means(guide, site="w")(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ConfigError, match="is not a world"):
        mig(identity, object())
    with pytest.raises(ConfigError, match="at least 2 factors that take more than one value"):
        beta_vae_score(identity, FactorWorld((1, 5)))
    with pytest.raises(ConfigError, match="MIG needs at least 2 code dimensions"):
        mig(lambda x: x[:, :1], WORLD, num_train=100)
    with pytest.raises(ConfigError, match=r"returned codes of shape \(1000,\) for 1000 observations.*reshape"):
        run(factor_vae_score, lambda x: x[:, 0])
    with pytest.raises(NonFiniteCodesError, match="non-finite") as error:  # a fault of the run, not of the input
        run(mig, lambda x: x / 0)
    assert isinstance(error.value, Fault) and not isinstance(error.value, ConfigError)  # the command exits 1, not 2
    with pytest.raises(ConfigError, match="batch_size = 1 is out of range: it must be an integer >= 2"):
        run(factor_vae_score, identity, batch_size=1)
    with pytest.raises(ConfigError, match="lower n_components or raise num_fit"):
        pca_representation(WORLD, n_components=10, num_fit=100)
