"""The pieces of the image studies: input corruption (a denoising guide), training-set selection,
the latent-space measures, the anomaly scores, and ``ppl-vae explore``."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from ppl_vae import GUIDES, MODELS, ConfigError, TrainConfig, Trainer
from ppl_vae.cli import main
from ppl_vae.data.corruption import corrupt, corrupted_inputs
from ppl_vae.data.datasets import Dataset, digits
from ppl_vae.evaluation.anomaly import LocalPixelModel, png_nats, roc_auc, scores
from ppl_vae.evaluation.latent_space import cluster_scores, in_between_distance, line, nearest_distance, plane
from ppl_vae.infer.random_state import preserved_rng
from ppl_vae.lab.experiment import run


def test_gaussian_and_masking_noise_have_their_level():
    x = torch.full((200, 1, 10, 10), 0.5)
    assert torch.equal(corrupt(x, "none", 0.9), x) and torch.equal(corrupt(x, "gaussian", 0.0), x)
    noisy = corrupt(x, "gaussian", 0.1, torch.Generator().manual_seed(0))
    assert (noisy - x).std().item() == pytest.approx(0.1, rel=0.05) and 0 <= noisy.min() and noisy.max() <= 1
    masked = corrupt(x, "masking", 0.3, torch.Generator().manual_seed(0))
    assert (masked == 0).float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert torch.equal(masked[masked > 0], x[masked > 0])  # the rest untouched
    with pytest.raises(ConfigError, match="masked fraction"):
        corrupt(x, "masking", 1.0)
    with pytest.raises(ConfigError, match="out of range"):
        TrainConfig(input_noise="masking", noise_level=1.0)


class Spy(nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x)


def test_corrupted_inputs_feed_the_guide_corrupt_x_only_inside_the_block():
    guide, x = Spy(), torch.ones(4, 50)
    with corrupted_inputs(guide, "masking", 0.5):
        guide(x)
    guide(x)
    assert 0 < (guide.seen[0] == 0).sum() < x.numel() and torch.equal(guide.seen[1], x)
    assert torch.equal(x, torch.ones(4, 50))  # the caller's tensor (what the model observes) is untouched


@pytest.mark.parametrize("noise", ["gaussian", "masking"])
def test_a_denoising_pair_trains_the_same_captured_and_eager(tiny_data, noise):
    """The corruption's draws stay live in the captured graph: the captured run is the eager run,
    and it differs from training on clean inputs."""
    data = tiny_data(n=44)

    def fit(**options):
        torch.manual_seed(0)
        model = MODELS["vae"](data.data_shape, latent_dim=2, hidden=[8])
        config = TrainConfig(epochs=3, batch_size=8, lr=1e-2, **options)
        history = Trainer(model, GUIDES["gaussian"](model), data, config).fit()
        return [{k: v for k, v in row.items() if isinstance(v, float)} for row in history]

    captured, eager = (fit(input_noise=noise, noise_level=0.4, capture=c) for c in (True, False))
    for a, b in zip(captured, eager):
        assert all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6) for k in a)
    assert captured[-1]["train_loss"] != pytest.approx(fit()[-1]["train_loss"], rel=1e-4)


def test_a_denoising_run_is_scored_on_clean_inputs(tiny_data):
    """The guide trains on corrupted inputs, but the train-subset and held-out terms each history row
    records are those of the clean inputs (the denoising criterion scores p(x | z) of clean x, and a
    held-out score must not depend on the training noise): rerun from the random state the scoring
    started from (``fit`` puts it back), a clean evaluation gives the recorded numbers exactly."""
    data = tiny_data(n=44)
    torch.manual_seed(0)
    model = MODELS["vae"](data.data_shape, latent_dim=2, hidden=[8])
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-2, input_noise="masking", noise_level=0.5)
    trainer = Trainer(model, GUIDES["gaussian"](model), data, config)
    row = trainer.fit()[-1]
    with preserved_rng(trainer.device):
        train, test = trainer.evaluate(trainer.data.train_eval), trainer.evaluate(trainer.data.test_eval)
    assert (row["train_loss"], row["test_loss"]) == (train["loss"], test["loss"])
    assert (row["train_kl"], row["test_recon"]) == (train["kl"], test["recon"])
    with corrupted_inputs(trainer.guide, "masking", 0.5):  # what scoring on corrupted inputs would have recorded
        noisy = trainer.evaluate(trainer.data.test_eval)
    assert noisy["loss"] != pytest.approx(test["loss"], rel=1e-3)


def test_training_selection_leaves_the_held_out_split_alone():
    full, without = digits(), digits(exclude_labels=3)
    assert torch.equal(full.test, without.test) and (without.test_labels == 3).any()
    assert not (without.train_labels == 3).any()
    assert len(without.train) == int((full.train_labels != 3).sum()) == len(without.train_eval)
    small = digits(train_size=100, exclude_labels=[0, 1])
    assert len(small.train) == 100 and not torch.isin(small.train_labels, torch.tensor([0, 1])).any()
    with pytest.raises(ConfigError, match="only .* training examples are left"):
        digits(train_size=10_000)
    with pytest.raises(ConfigError, match="needs labelled data"):
        from ppl_vae.data.datasets import select_training
        select_training(Dataset("t", torch.zeros(4, 2), torch.zeros(2, 2)), exclude_labels=1)


def test_cluster_scores_are_one_for_separated_classes_and_near_zero_for_noise():
    labels = torch.arange(10).repeat(30)
    separated = torch.nn.functional.one_hot(labels).float() * 10 + 0.1 * torch.randn(300, 10)
    assert cluster_scores(separated, labels) == {"ari": pytest.approx(1.0), "nmi": pytest.approx(1.0)}
    noise = cluster_scores(torch.randn(300, 2), labels)
    assert abs(noise["ari"]) < 0.05 and noise["nmi"] < 0.15


def test_nearest_distance_is_the_rms_distance_to_the_closest_allowed_reference():
    reference = torch.stack([torch.zeros(4), torch.ones(4), torch.full((4,), 0.5)])
    images = torch.tensor([[0.1, 0.1, 0.1, 0.1], [1.0, 1.0, 1.0, 0.0]])
    assert nearest_distance(images, reference).tolist() == pytest.approx([0.1, 0.5])
    excluded = torch.tensor([[True, False, False], [False, False, False]])
    assert nearest_distance(images, reference, excluded)[0].item() == pytest.approx(0.4)


class CodeIsImage(nn.Module):
    """A pair whose code is its image, so every decoded image is known: z ~ N(0, I_P),
    p(x | z) = N(z, I) over P pixels (its mean, the decoded image, is z itself); as a guide,
    q(z | x) = N(x, 0.001^2 I) (its mean, the code, is x itself)."""

    def __init__(self, pixels: int, guide: bool = False):
        super().__init__()
        self.data_shape, self.latent_dims, self.guide = (pixels,), {"z": pixels}, guide

    def forward(self, x):
        with pyro.plate("data", len(x)):
            if self.guide:
                pyro.sample("z", dist.Normal(x, 1e-3).to_event(1))
                return
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def test_the_in_between_distance_counts_the_inner_points_only():
    """One-pixel images 0 and 1 (of two classes) and a third reference image, 0.3: the line between
    the two codes decodes to 0, 0.25, 0.5, 0.75 and 1, whose distances to 0.3 (the pair's own images
    excluded) are 0.3, 0.05, 0.2, 0.45 and 0.7, whichever way a pair runs."""
    x, labels = torch.tensor([[0.0], [1.0]]), torch.tensor([0, 1])
    reference = torch.tensor([[0.0], [1.0], [0.3]])
    found = in_between_distance(CodeIsImage(1), CodeIsImage(1, guide=True), x, reference, labels, pairs=6, steps=5)
    assert found == pytest.approx({"midpoint": 0.2, "inner": (0.05 + 0.2 + 0.45) / 3, "ends": (0.3 + 0.7) / 2})


def test_latent2d_clusters_the_held_out_codes_against_the_held_out_labels():
    """Held-out images that one-hot encode their labels, coded as themselves: k-means finds the ten
    classes exactly (ARI and NMI 1), against the held-out labels; the training labels, in another
    order, share nothing with them."""
    from ppl_vae.lab.studies.latent2d import measure

    test_labels = torch.arange(10).repeat(3)
    train_labels = test_labels[torch.randperm(30, generator=torch.Generator().manual_seed(0))].repeat(2)
    one_hot = lambda labels: nn.functional.one_hot(labels, 10).float()  # noqa: E731
    data = Dataset("one-hot", one_hot(train_labels), one_hot(test_labels), train_labels=train_labels,
                   test_labels=test_labels)
    found = measure(CodeIsImage(10), CodeIsImage(10, guide=True), data, {"train": {"seed": 0}})
    assert (found["ari"], found["nmi"]) == (pytest.approx(1.0), pytest.approx(1.0))
    assert cluster_scores(data.test_eval, train_labels[:30])["ari"] < 0.2  # what the wrong labels would score


def test_lines_and_planes():
    ends = line(torch.zeros(1, 2), torch.ones(1, 2), 5)
    assert ends.shape == (1, 5, 2) and ends[0, 2].tolist() == [0.5, 0.5]
    prior = plane(3)
    assert prior.shape == (9, 2) and prior[0].tolist() == pytest.approx([-1.6449, 1.6449], abs=1e-3)  # top left
    code = torch.stack([torch.linspace(0, 10, 101), torch.linspace(-1, 1, 101)], 1)
    assert plane(3, code, (0.0, 1.0))[-1].tolist() == pytest.approx([10.0, -1.0])  # bottom right


def test_gaussian_draws_have_the_codes_mean_and_covariance_and_follow_the_seed():
    from ppl_vae.evaluation.latent_space import gaussian_draws

    code = torch.randn(2000, 3) @ torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.5]]) + 4
    drawn = gaussian_draws(code, 20_000, seed=3)
    assert torch.allclose(drawn.mean(0), code.mean(0), atol=0.05)
    assert torch.allclose(torch.cov(drawn.T), torch.cov(code.T), atol=0.1)
    state = torch.get_rng_state()
    assert torch.equal(gaussian_draws(code, 20_000, seed=3), drawn) and torch.equal(torch.get_rng_state(), state)


def test_roc_auc_and_complexity():
    truth = torch.tensor([0, 0, 1, 1]).bool()
    assert roc_auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), truth) == 1.0
    assert roc_auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), truth) == 0.0
    blank, busy = torch.zeros(1, 1, 28, 28), torch.bernoulli(torch.full((1, 1, 28, 28), 0.5))
    assert png_nats(busy).item() > 2 * png_nats(blank).item()


def test_the_local_pixel_model_is_a_normalised_density_of_binary_images():
    """Over all 2^9 binary 3 x 3 images its probabilities sum to one; it learns that strokes continue."""
    from ppl_vae.evaluation.anomaly import LocalPixelModel

    every = torch.tensor([[(i >> b) & 1 for b in range(9)] for i in range(2 ** 9)]).float().reshape(-1, 1, 3, 3)
    stripes = torch.zeros(20, 1, 3, 3)
    stripes[:, :, :, 1] = 1  # vertical lines
    model = LocalPixelModel(stripes)
    assert model.log_prob(every).exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    assert model.log_prob(stripes[:1]) > model.log_prob(stripes[:1].transpose(-1, -2))  # a horizontal line is unlikely


def test_every_anomaly_score_is_higher_for_an_input_the_model_cannot_explain(tiny_pair):
    model, guide = tiny_pair("vae", "gaussian", (1, 4, 4))
    x = torch.bernoulli(torch.full((6, 1, 4, 4), 0.5))
    found = scores(model, guide, x, x, iw_samples=20)
    assert set(found) == {"recon", "neg_elbo", "neg_log_px", "complexity_corrected", "likelihood_ratio"}
    assert all(s.shape == (6,) and torch.isfinite(s).all() for s in found.values())
    assert (found["neg_elbo"] >= found["neg_log_px"] - 0.5).all()  # the IW bound is the tighter one, up to noise


def test_the_corrected_anomaly_scores_are_their_definitions(tiny_pair):
    """Serra et al. (2020), Eq. 2: S(x) = -log p(x) - L(x), L the input's compressed length; Schirrmeister
    et al. (2020), Sec. 5: -log p(x) + log p_local(x), the local pixel model fitted on the training
    images. Blank and busy inputs, so that neither correction is the same for all."""
    model, guide = tiny_pair("vae", "gaussian", (1, 4, 4))
    train = torch.bernoulli(torch.full((20, 1, 4, 4), 0.3))
    x = torch.cat([torch.zeros(2, 1, 4, 4), torch.bernoulli(torch.full((4, 1, 4, 4), 0.5))])
    found = scores(model, guide, x, train, iw_samples=20)
    assert torch.allclose(found["complexity_corrected"], found["neg_log_px"] - png_nats(x))
    assert torch.allclose(found["likelihood_ratio"], found["neg_log_px"] + LocalPixelModel(train).log_prob(x))


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("explore") / "run"
    run("latent2d", out, ["grid.method=[\"vae\"]", "grid.model.latent_dim=[2]", "grid.train.seed=[0]"],
        quick_run=True, progress=False)
    return out


def test_explore_draws_interpolations_and_traversals_for_a_finished_run(image_run, capsys):
    from PIL import Image

    assert main(["explore", str(image_run), "--steps", "6", "--rows", "3"]) == 0
    written = capsys.readouterr().out.split()
    assert [p.rsplit("/", 1)[1] for p in written] == ["interpolation.png", "traversal.png"]
    sizes = []
    for path in written:
        with Image.open(path) as image:
            sizes.append(image.size)
    # 28 x 28 images and 2 px padding: 6 steps by 3 pairs; 9 values by the 2 latent dimensions
    assert sizes == [(6 * 30 + 2, 3 * 30 + 2), (9 * 30 + 2, 2 * 30 + 2)]
    assert main(["explore", str(image_run), "--pairs", "0:1", "--cell", "latent_dim=2__seed=0__method=vae"]) == 0


def test_explore_errors_name_the_problem(image_run, tmp_path, capsys):
    assert main(["explore", str(tmp_path)]) == 2
    assert "neither a run folder" in capsys.readouterr().err
    assert main(["explore", str(image_run), "--cell", "nope"]) == 2
    assert "has no cell 'nope'" in capsys.readouterr().err
    assert main(["explore", str(image_run), "--pairs", "0:999"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["explore", str(image_run), "--between", "one:seven"]) == 2
    assert "A:B" in capsys.readouterr().err


def _anomaly_row(digit: int, aucs: dict) -> dict:
    anomalous = [0, 0, 1, 1]
    return {"exclude_labels": digit, "anomalous": anomalous, **{f"auc_{n}": a for n, a in aucs.items()},
            "anomaly_scores": {n: [0.0, 1.0, 2.0, 3.0] for n in aucs}}


@pytest.mark.parametrize("works, passes", [(5, True), (4, False)])
def test_the_anomaly_report_names_the_winner_the_failures_and_checks_half_the_digits(tmp_path, works, passes):
    """Crafted ROC-AUCs: the check counts the digits whose best score beats 0.9; the winner is the best mean."""
    from ppl_vae.evaluation.anomaly import SCORES
    from ppl_vae.lab.studies.anomaly import report

    rows = [_anomaly_row(d, {n: (0.95 if d < works and n == "likelihood_ratio" else 0.6) for n in SCORES})
            for d in range(10)]
    text = report(tmp_path, rows, [{}] * 10)
    mark = f"- [{'x' if passes else ' '}] {'PASS' if passes else 'FAIL'}"
    assert f"{mark}: the best score exceeds ROC-AUC 0.9 for {works} of 10" in text
    assert "On average `likelihood_ratio` wins" in text
    assert "`recon` fails (ROC-AUC below 0.7) for left-out digit(s): 0 (0.60), 1 (0.60)" in text
    assert (tmp_path / "roc_auc.csv").read_text().splitlines()[1] == "0,recon,0.6000"


def test_the_overfit_report_checks_memorisation_and_the_gaps(tmp_path):
    """Crafted histories: the 100-digit AE memorises (train far below held-out) and its gap is larger than the VAE's."""
    import json

    from ppl_vae.lab.studies.overfit import report

    ends = {("ae", "100"): (1.0, 900.0, 1.0, 900.0), ("vae", "100"): (20.0, 300.0, 30.0, 320.0),
            ("ae", "all"): (50.0, 85.0, 50.0, 85.0), ("vae", "all"): (86.0, 97.0, 104.0, 114.0)}
    rows = []
    for (method, size), (train_recon, test_recon, train_loss, test_loss) in ends.items():
        name = f"method={method}__train_size={size}"
        (tmp_path / name).mkdir()
        history = [{"epoch": e, "train_recon": train_recon * 2 / e, "test_recon": test_recon,
                    "train_loss": train_loss * 2 / e, "test_loss": test_loss} for e in (1, 2)]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        rows.append({"cell": name, "method": method, "train_size": size, "epochs": 2})
    text = report(tmp_path, rows, [{}] * len(rows))
    assert "- [x] PASS: the AE on 100 digits memorises: train reconstruction 1.00 nats" in text
    assert "- [x] PASS: on 100 digits the VAE's gap is smaller than the AE's (290.00 against 899.00 nats)" in text
    assert "| AE | 100 | 2 | 1.00 | 900.00 | 899.00 | | | |" in text
    assert (tmp_path / "figures" / "train_vs_held_out.png").is_file()
