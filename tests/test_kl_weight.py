"""The KL-weight handler: weight 1 is the plain ELBO, the loss is linear in the weight, and the
weight reaches latent sites in both model and guide (and nothing else)."""

import pyro
import pytest
import torch

from ppl_vae import ESTIMATORS, KLSchedule, KLWeight, elbo_terms


def loss_at(weight, estimator, model, guide, x, seed=3):
    pyro.set_rng_seed(seed)
    elbo = ESTIMATORS[estimator]()
    if weight is None:
        return elbo.loss(model, guide, x)
    with KLWeight(weight):
        return elbo.loss(model, guide, x)


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("guide_name", ["gaussian", "delta"])
def test_weight_one_is_the_plain_elbo(tiny_pair, tiny_data, estimator, guide_name):
    model, guide = tiny_pair("vae", guide_name)
    x = tiny_data().train
    assert loss_at(1.0, estimator, model, guide, x) == loss_at(None, estimator, model, guide, x)


@pytest.mark.parametrize("estimator", ["mc", "analytic"])
def test_loss_is_recon_plus_weight_times_kl(tiny_pair, tiny_data, estimator):
    """L(beta) = recon + beta * KL: with the same noise, L(0) is the reconstruction term alone
    (so the model's latent site was scaled too) and L(beta) - L(0) is beta times the KL
    (so the guide's site was scaled too; TraceMeanField_ELBO reads the guide's scale)."""
    model, guide = tiny_pair("vae", "gaussian")
    x = tiny_data().train
    pyro.set_rng_seed(3)
    terms = elbo_terms(model, guide, x, analytic_kl=estimator == "analytic")
    recon, kl = terms.recon.sum().item(), terms.kl["z"].sum().item()
    assert kl > 0.01
    for beta in (0.0, 0.5, 1.0, 4.0):
        assert loss_at(beta, estimator, model, guide, x) == pytest.approx(recon + beta * kl, rel=1e-5)


def test_dlgm_weight_scales_both_latent_layers(tiny_pair, tiny_data):
    model, guide = tiny_pair("dlgm", "structured")
    x = tiny_data().train
    pyro.set_rng_seed(3)
    terms = elbo_terms(model, guide, x)
    kl = sum(v.sum().item() for v in terms.kl.values())
    assert loss_at(2.0, "mc", model, guide, x) == pytest.approx(terms.recon.sum().item() + 2 * kl, rel=1e-5)


def test_negative_weight_is_refused():
    with pytest.raises(ValueError, match=">= 0"):
        KLWeight(-1.0)


def test_schedules():
    linear = KLSchedule("linear", beta=2.0, warmup_steps=10)
    assert [linear(s) for s in (0, 5, 10, 50)] == [0.0, 1.0, 2.0, 2.0]
    cyclical = KLSchedule("cyclical", beta=1.0, total_steps=100, cycles=4, ramp=0.5)  # period 25, ramp 12.5
    assert [cyclical(s) for s in (0, 5, 13, 24, 25, 30)] == pytest.approx([0, 0.4, 1, 1, 0, 0.4])
    assert KLSchedule("constant", beta=3.0)(123) == 3.0


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_free_bits_floor_each_dimension_at_its_batch_mean(weight):
    """Free bits (Kingma et al. 2016, Eq. 15): each latent dimension's KL, averaged over the batch,
    counts as max(KL_d, lambda). With closed-form KLs per dimension and the same noise, the loss
    rises by exactly beta * B * sum_d max(0, lambda - mean KL_d), the KL weight beta applying after
    the floor."""
    import pyro.distributions as dist
    import torch

    loc = torch.tensor([[0.5, -1.0, 0.0], [0.1, 0.3, 0.0]])
    scale = torch.tensor([[1.0, 0.5, 1.0], [2.0, 1.0, 1.0]])

    def model(x):
        with pyro.plate("data", 2):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, 3), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", 2):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    kl_dims = 0.5 * (scale**2 + loc**2 - 1 - torch.log(scale**2))  # [2, 3]; dimension 2 is the prior
    x, floor = torch.zeros(2, 1), 0.4
    losses = []
    for free_bits in (0.0, floor):
        pyro.set_rng_seed(5)
        with KLWeight(weight):
            losses.append(ESTIMATORS["analytic"](free_bits=free_bits).loss(model, guide, x))
    lift = weight * 2 * (floor - kl_dims.mean(0)).clamp(min=0).sum().item()
    assert lift > 0.4  # dimension 2 (KL 0) is lifted to the floor, at least
    assert losses[1] - losses[0] == pytest.approx(lift, rel=1e-5)


def test_free_bits_need_a_kl_term():
    from ppl_vae import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="free bits apply to a KL term"):
        TrainConfig(estimator="iw", free_bits=0.5)


def _two_site_pair():
    """z1, z2 ~ N(0, 1)^2 each, a guide with closed-form per-dimension KLs; x observes z1 + z2."""
    import pyro.distributions as dist

    loc = {"z1": torch.tensor([[0.5, -1.0], [0.1, 0.3]]), "z2": torch.tensor([[0.2, 0.0], [-0.2, 0.0]])}
    scale = {"z1": torch.tensor([[1.0, 0.5], [2.0, 1.0]]), "z2": torch.tensor([[0.9, 1.0], [1.1, 1.0]])}

    def model(x):
        with pyro.plate("data", 2):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros(2, 2), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(2, 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z1 + z2, 1.0).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", 2):
            for site in ("z1", "z2"):
                pyro.sample(site, dist.Normal(loc[site], scale[site]).to_event(1))

    kl_dims = {s: 0.5 * (scale[s] ** 2 + loc[s] ** 2 - 1 - torch.log(scale[s] ** 2)) for s in loc}
    return model, guide, kl_dims


@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_free_bits_on_one_site_lift_that_site_alone(factor):
    """``FreeBits({"z2": lambda}, factor)``: z2's dimensions are floored at factor * lambda, z1's are
    not, with the estimator's own free_bits 0: the loss rises by B * sum_d max(0, factor * lambda - mean KL_d(z2))."""
    from ppl_vae import FreeBits

    model, guide, kl_dims = _two_site_pair()
    x, nats = torch.zeros(2, 2), 2.0
    losses = []
    for handler in (FreeBits({}), FreeBits({"z2": nats}, torch.tensor(factor))):
        pyro.set_rng_seed(5)
        with handler:
            losses.append(ESTIMATORS["analytic"]().loss(model, guide, x))
    lift = 2 * (factor * nats - kl_dims["z2"].mean(0)).clamp(min=0).sum().item()
    z1_lift = 2 * (factor * nats - kl_dims["z1"].mean(0)).clamp(min=0).sum().item()
    assert lift > 0.1 and z1_lift > 0.1  # both sites would be lifted: only z2 is
    assert losses[1] - losses[0] == pytest.approx(lift, rel=1e-5)


@pytest.mark.parametrize("estimator", ["mc", "analytic"])
def test_released_free_bits_are_the_plain_elbo(estimator):
    """A floor released to 0 (a tensor factor of 0) gives exactly the estimator's plain loss, even
    where a Monte Carlo KL's batch mean is negative, which a clamp at 0 would lift."""
    from ppl_vae import FreeBits

    model, guide, _ = _two_site_pair()
    x = torch.zeros(2, 2)
    losses = []
    for handler in (FreeBits({}), FreeBits({"z1": 0.5, "z2": 0.5}, torch.tensor(0.0))):
        pyro.set_rng_seed(7)
        with handler:
            losses.append(ESTIMATORS[estimator]().loss(model, guide, x))
    assert losses[1] == losses[0]


def test_free_bits_release_schedule_and_config():
    from ppl_vae import ConfigError, FreeBitsRelease, TrainConfig

    assert [FreeBitsRelease(8)(s) for s in (0, 2, 8, 9)] == [1.0, 0.75, 0.0, 0.0]
    assert FreeBitsRelease(0)(10**6) == 1.0  # 0: held for the whole run
    for bad in ({"free_bits_release": 1.5}, {"free_bits_sites": {"z2": -1.0}},
                {"free_bits_sites": {"z2": 0.5}, "estimator": "iw"}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)


def test_a_warm_up_without_the_linear_schedule_is_refused():
    """kl_warmup_epochs ramps only the linear schedule: alone it would silently train the plain ELBO."""
    from ppl_vae import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="set kl_schedule = 'linear'"):
        TrainConfig(kl_warmup_epochs=1000)
    assert TrainConfig(kl_schedule="linear", kl_warmup_epochs=1000).kl_warmup_epochs == 1000
