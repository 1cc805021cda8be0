"""Inference guides q(z | x) as Pyro programs: amortised encoders matched to a model's latent sites.

Every guide is built from the model it serves (``factory(model, ...)``): it reads
``model.latent_dims`` and ``model.data_shape`` and samples the same site names
inside the same ``pyro.plate("data", len(x))``. ``mean_field`` says whether each
q(z_i | x) depends on x alone — the condition under which the analytic-KL
estimator (``TraceMeanField_ELBO``) is valid. ``support`` is the set its draws lie in
(real numbers, or binary values), checked against each of the model's latent sites;
``reparameterised`` says whether gradients flow through its draws (else they are
score-function gradients, which the ``mc`` estimator takes).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from torch import nn
from torch.distributions import constraints
from torch.nn import functional as F

from ppl_vae.errors import ConfigError, IncompatiblePairError
from ppl_vae.networks import Encoder, GaussianHead, Network, NetworkConfig, mlp
from ppl_vae.registry import GUIDES
from ppl_vae.tracing import prior_sites


class AmortisedGuide(nn.Module):
    """Shared trunk: an encoder of x whose widths and kind default to the model's.

    A subclass adds its output heads in ``build(width)``. By default each latent site is drawn
    given x alone, from ``site_distribution(site, h)`` on the encoder's features ``h``; a guide
    whose sites depend on each other overrides ``forward``.

    :param model: the model served; its ``latent_dims`` and ``data_shape`` are read, and its
        ``network_config`` (a ``NetworkConfig``; a model without one gets ``NetworkConfig()``), whose
        activation, Gaussian head and width between latent layers the guide's networks take.
    :param hidden: encoder widths (default: the model's ``network_config.hidden``).
    :param network: ``"mlp"`` or ``"conv"`` (default: the model's ``network_config.network``).
    """

    mean_field = True
    support: constraints.Constraint = constraints.real
    reparameterised = True

    def __init__(self, model: nn.Module, hidden: list[int] | None = None, network: Network | None = None):
        super().__init__()
        defaults = getattr(model, "network_config", None) or NetworkConfig()
        hidden = list(defaults.hidden if hidden is None else hidden)
        self.latent_dims = dict(model.latent_dims)
        self.activation, self.head_kind = defaults.activation, defaults.head
        self.top_hidden = defaults.top_hidden
        self._check_support(model)
        self.encoder = Encoder(model.data_shape, hidden, network or defaults.network, self.activation)
        self.build(self.encoder.out_features)

    def build(self, width: int) -> None:
        raise NotImplementedError

    def site_distribution(self, site: str, h: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError

    def forward(self, x, **fields):  # q(z | x) reads x alone: the fields a conditional model takes pass by
        h = self.encoder(x)
        with pyro.plate("data", x.shape[0]):
            for site in self.latent_dims:
                pyro.sample(site, self.site_distribution(site, h))

    def _check_support(self, model: nn.Module) -> None:
        """Refuse a model whose latent sites take values this guide cannot draw (binary against real).
        Draws nothing: building a guide leaves the random stream (and so its own initialisation) alone."""
        for site, prior in prior_sites(model, draw=False).items():
            if not _same_support(prior["fn"].support, self.support):
                fitting = [name for name, guide in GUIDES.items() if _same_support(prior["fn"].support, guide.support)]
                raise IncompatiblePairError(
                    f"guide {type(self).__name__} draws {_name(self.support)} values, but the model's latent site "
                    f"{site!r} is {_name(prior['fn'].support)}: use guide "
                    f"{' or '.join(map(repr, fitting)) or 'of your own with that support'}"
                )


class MeanFieldGuide(AmortisedGuide):
    """q(z | x) = prod_i q(z_i | x) over the model's latent sites, each from its own head on the
    encoder's features. A family is its ``head(width, dim)`` and its ``distribution(params)``."""

    def head(self, width: int, dim: int) -> nn.Module:
        return nn.Linear(width, dim)

    def distribution(self, params) -> dist.Distribution:
        raise NotImplementedError

    def build(self, width):
        self.heads = nn.ModuleDict({s: self.head(width, d) for s, d in self.latent_dims.items()})

    def site_distribution(self, site, h):
        return self.distribution(self.heads[site](h))


class GaussianGuide(MeanFieldGuide):
    """q(z | x) = prod_i N(z_i; mu_i(x), diag sigma_i(x)^2) over all the model's latent sites
    (Kingma & Welling 2014, Eq. 9; mean-field across sites for deeper models).

    Two remedies for posterior collapse constrain the family so that the KL to a N(0, I) prior
    cannot reach 0 (both need that prior on every site, and are off at 0):

    :param committed_rate: delta-VAE (Razavi et al. 2019, Sec. 2.1), nats per latent dimension:
        each scale is squashed into (0, sigma_u) with 1/2 (sigma_u^2 - 1 - ln sigma_u^2) equal to it,
        and KL(N(mu, sigma^2) || N(0, 1)) = 1/2 (mu^2 + sigma^2 - 1 - ln sigma^2) is then at least
        that for every x and mu.
    :param mean_batch_norm: BN-VAE's gamma (Zhu et al. 2020, Sec. 4): each posterior mean batch-normalised
        with its scale fixed at gamma and a learned shift beta (``MeanBatchNorm``), so that over a
        batch E[mu_d^2] = gamma^2 + beta_d^2 and the batch's mean KL is at least dims * gamma^2 / 2.
    """

    def __init__(self, model: nn.Module, hidden: list[int] | None = None, network: Network | None = None,
                 committed_rate: float = 0.0, mean_batch_norm: float = 0.0):
        if committed_rate < 0 or mean_batch_norm < 0:
            raise ConfigError(f"committed_rate = {committed_rate} and mean_batch_norm = {mean_batch_norm} must be "
                              ">= 0 (0 = off)")
        self.max_scale = committed_scale(committed_rate) if committed_rate else None
        self.mean_batch_norm = mean_batch_norm
        super().__init__(model, hidden, network)
        if committed_rate or mean_batch_norm:
            _check_standard_normal_prior(model, "committed_rate" if committed_rate else "mean_batch_norm")

    def build(self, width):
        super().build(width)
        self.norms = nn.ModuleDict({s: MeanBatchNorm(d, self.mean_batch_norm) for s, d in self.latent_dims.items()}
                                   if self.mean_batch_norm else {})

    def head(self, width, dim):
        return GaussianHead(width, dim, head=self.head_kind)

    def site_distribution(self, site, h):
        loc, scale = self.heads[site](h)
        if self.mean_batch_norm:
            loc = self.norms[site](loc)
        if self.max_scale is not None:  # (0, inf) -> (0, sigma_u), monotone
            scale = self.max_scale * scale / (1 + scale)
        return dist.Normal(loc, scale).to_event(1)


def committed_scale(rate: float) -> float:
    """sigma_u < 1 with 1/2 (sigma_u^2 - 1 - ln sigma_u^2) = ``rate`` (delta-VAE, Razavi et al. 2019,
    Sec. 2.1): the largest posterior scale whose KL to N(0, 1) is at least ``rate`` nats at every mean.
    The left side falls from infinity to 0 as sigma_u^2 rises to 1, so bisection on ln sigma_u^2 finds it."""
    low, high = -50.0, 0.0  # ln sigma_u^2
    for _ in range(200):
        mid = (low + high) / 2
        if (math.exp(mid) - 1 - mid) / 2 > rate:
            low = mid
        else:
            high = mid
    return math.exp(high / 2)


class MeanBatchNorm(nn.Module):
    """mu -> gamma (mu - mean_B(mu)) / sd_B(mu) + beta per dimension: the batch normalisation of BN-VAE
    (Zhu et al. 2020, Sec. 4) with its scale fixed at ``gamma`` and the shift beta learned. In a training
    step (training mode, gradients on) it normalises by the batch's statistics and keeps running ones,
    as ``torch.nn.BatchNorm1d`` does; whenever it is scored (the toolkit's evaluations run without
    gradients), by the running ones, so q(z | x) is then a function of x alone."""

    def __init__(self, dim: int, gamma: float):
        super().__init__()
        self.gamma = gamma
        self.shift = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, loc: torch.Tensor) -> torch.Tensor:
        step = self.training and torch.is_grad_enabled()
        normalised = F.batch_norm(loc.reshape(-1, loc.shape[-1]), self.running_mean, self.running_var, training=step)
        return self.gamma * normalised.reshape(loc.shape) + self.shift


def _check_standard_normal_prior(model: nn.Module, option: str) -> None:
    """Refuse a model whose prior on some latent site is not N(0, I): ``option``'s bound on the KL needs it."""
    for site, prior in prior_sites(model, draw=False).items():
        fn = prior["fn"]
        while isinstance(fn, dist.Independent):
            fn = fn.base_dist
        if not (isinstance(fn, dist.Normal) and bool((fn.loc == 0).all()) and bool((fn.scale == 1).all())):
            raise IncompatiblePairError(
                f"guide option {option} bounds the KL to a N(0, I) prior, but the model's prior on {site!r} is a "
                f"{type(fn).__name__} of other parameters: use a model whose prior is prior 'normal' (a one-layer "
                f"'vae'), or drop {option}")


class BernoulliGuide(MeanFieldGuide):
    """q(z | x) = prod_d Bernoulli(z_d; sigmoid(f_d(x))): binary codes, the inference network of
    Mnih & Gregor (2014), Sec. 2, for a model with binary latent units (``prior = "bernoulli"``).
    Its draws are not reparameterisable: the ``mc`` estimator trains it with Pyro's score-function
    gradient (Williams 1992), each datapoint's score weighted by its own ELBO."""

    support = constraints.boolean
    reparameterised = False

    def distribution(self, logits):
        return dist.Bernoulli(logits=logits).to_event(1)


class DeltaGuide(MeanFieldGuide):
    """q(z | x) = delta(z - f(x)): a point mass. With KL weight 0 this is the plain deterministic
    autoencoder (the zero-variance limit of the VAE); with weight 1 it is MAP inference of z."""

    def distribution(self, point):
        return dist.Delta(point).to_event(1)


class StructuredDLGMGuide(AmortisedGuide):
    """Bottom-up structured inference q(z1 | x) q(z2 | z1) for the 2-layer DLGM
    (Rezende et al. 2014; the 2-layer VAE of Shu, "Autoencoding a Single Bit").

    q(z2 | x) = int q(z2 | z1) q(z1 | x) dz1 is then a continuous mixture, not a Gaussian.
    Not mean-field: z1, a model child of z2, is a guide parent of z2.
    """

    mean_field = False

    def build(self, width):
        if set(self.latent_dims) != {"z1", "z2"}:
            raise IncompatiblePairError(
                f"guide 'structured' needs a model with latent sites z1 and z2 (the 'dlgm'); "
                f"this model has {sorted(self.latent_dims)}: use guide 'gaussian' or 'delta'"
            )
        z1, z2 = self.latent_dims["z1"], self.latent_dims["z2"]
        top = list(self.top_hidden or (width,))  # the widths of the model's p(z1 | z2)
        self.q_z1 = GaussianHead(width, z1, head=self.head_kind)
        self.q_z2 = nn.Sequential(mlp([z1, *top], final_activation=True, activation=self.activation),
                                  GaussianHead(top[-1], z2, head=self.head_kind))

    def forward(self, x, **fields):
        h = self.encoder(x)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(*self.q_z1(h)).to_event(1))
            pyro.sample("z2", dist.Normal(*self.q_z2(z1)).to_event(1))


class IAFGuide(AmortisedGuide):
    """q(z | x): eps ~ N(0, I) through ``flows`` invertible steps conditioned on the encoder's
    features h, then z = mu(h) + sigma(h) * y — the amortised inverse autoregressive flow of
    Kingma et al. (2016), Eqs. 10-11, built from Pyro's transforms. Each step of a D >= 2 site is
    an affine autoregressive map (``ConditionalAffineAutoregressive``); a 1-D site has no other
    dimension to condition on, so an affine step would leave q Gaussian, and its steps are
    monotone rational-quadratic splines of eps given h instead (``ConditionalSpline``; Durkan et
    al. 2019), which can bend q(z | x) away from a Gaussian (a truncated one, say).

    :param flows: number of steps per latent site.
    :param flow_hidden: widths of each step's conditioning network.
    :param bins: a spline step's bins; ``bound``: the spline bends eps in [-bound, bound] and is the
        identity outside. A posterior with a hard edge (the single bit's truncated Gaussian) needs
        the tails inside too: a draw left in the identity tail lands across the edge, which costs
        about n nats at n replicated bits.
    """

    def __init__(self, model: nn.Module, hidden: list[int] | None = None, network: Network | None = None,
                 flows: int = 2, flow_hidden: list[int] = (32,), bins: int = 8, bound: float = 3.0):
        self.num_flows, self.flow_hidden, self.bins, self.bound = flows, list(flow_hidden), bins, bound
        super().__init__(model, hidden, network)

    def build(self, width):
        def step(dim):
            if dim == 1:
                return T.conditional_spline(1, context_dim=width, hidden_dims=self.flow_hidden, count_bins=self.bins,
                                            bound=self.bound)
            return T.conditional_affine_autoregressive(dim, context_dim=width, hidden_dims=self.flow_hidden)

        self.heads = nn.ModuleDict({s: GaussianHead(width, d, head=self.head_kind)
                                    for s, d in self.latent_dims.items()})
        self.flows = nn.ModuleDict({s: nn.ModuleList([step(d) for _ in range(self.num_flows)])
                                    for s, d in self.latent_dims.items()})

    def site_distribution(self, site, h):
        loc, scale = self.heads[site](h)
        steps = [flow.condition(h) for flow in self.flows[site]]
        base = dist.Normal(torch.zeros_like(loc), torch.ones_like(scale)).to_event(1)
        # cache_size=1: log q of a fresh draw inverts each step from its cache, not numerically
        affine = T.AffineTransform(loc, scale, event_dim=1, cache_size=1)
        return dist.TransformedDistribution(base, [*steps, affine])


def _base(support: constraints.Constraint) -> constraints.Constraint:
    """The constraint on one coordinate: ``independent(real, 1)`` -> ``real``; a mixture's support
    (``MixtureSameFamilyConstraint``) -> its components'."""
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    return support


def _name(support: constraints.Constraint) -> str:
    name = type(_base(support)).__name__.strip("_").lower()  # "real", "boolean", "integerinterval", ...
    return "integer" if name.startswith("integer") else name


def _same_support(a: constraints.Constraint, b: constraints.Constraint) -> bool:
    return type(_base(a)) is type(_base(b))


GUIDES.register("gaussian")(GaussianGuide)
GUIDES.register("bernoulli")(BernoulliGuide)
GUIDES.register("delta")(DeltaGuide)
GUIDES.register("structured")(StructuredDLGMGuide)
GUIDES.register("iaf")(IAFGuide)
