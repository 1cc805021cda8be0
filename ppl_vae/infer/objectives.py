"""ELBO estimators, registered by name. Each is a Pyro ``ELBO``, so ``estimator(model, guide)``
is an ``ELBOModule`` whose ``forward(x)`` is the differentiable loss (negative bound, summed
over the batch) and whose ``parameters()`` are the pair's.

- ``mc``: Monte Carlo KL (Kingma & Welling 2014, Eq. 7). Valid for every pair.
- ``analytic``: analytic KL where registered (Kingma & Welling 2014, Eq. 10). Refuses guides
  that are not mean-field, where it would be wrong.
- ``iw``: the importance-weighted bound of Burda et al. (2016), Eq. 8, with K particles,
  a log-mean-exp per datapoint.
- ``enum``: the ELBO with the guide's discrete sites, and the model's marked for enumeration, summed
  out exactly (``TraceEnum_ELBO``'s semantics: parallel enumeration, the plate nesting found from the pair),
  as the semi-supervised VAE of Kingma et al. (2014), Eq. 7, sums over the classes of y.

The loss never leaves the device: Pyro's ``Trace_ELBO.differentiable_loss`` reads each site's
log-density back to the host and hooks a NaN check on the gradient, a host-device
synchronisation per step on a GPU. Here tracing, particles and validation are Pyro's, and only
the final sum is our own.

Three classes serve the four names: ``ElboEstimator`` (``mc`` and ``analytic``; built on Pyro's
``Trace_ELBO``, whose tracing it reuses through the private ``_get_traces`` and
``_compute_log_r``: ``pyro-ppl`` is bounded to the versions tested, and
``tests/test_architecture.py`` checks their signatures), ``ImportanceWeightedEstimator`` (``iw``)
and ``EnumeratedEstimator`` (``enum``, on ``TraceEnum_ELBO`` and its private ``_compute_dice_elbo``).
"""

from __future__ import annotations

import functools
import logging
import math
import operator

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.traceenum_elbo import _compute_dice_elbo
from pyro.infer.util import is_identically_zero
from pyro.poutine.messenger import Messenger

from ppl_vae.errors import ConfigError, IncompatiblePairError
from ppl_vae.infer.bounds import log_importance_weights, site_kl
from ppl_vae.infer.random_state import preserved_rng
from ppl_vae.registry import ESTIMATORS
from ppl_vae.tracing import trace_pair


class DeviceELBO(ELBO):
    """``loss`` and ``loss_and_grads`` derived from ``differentiable_loss``, so every form of an
    estimator gives the same number; a subclass implements ``differentiable_loss`` only."""

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


def _score_function_elbo(model_trace, guide_trace) -> torch.Tensor:
    """log p(x, z) - log q(z | x) whose gradient is ``Trace_ELBO``'s surrogate: the score-function
    (REINFORCE; Williams 1992) term for each guide site that is not reparameterised, weighted by the
    detached log p - log q of its own plate slice — each datapoint's score by its own ELBO (Pyro's
    partial Rao-Blackwellisation; Ranganath et al. 2014, Sec. 3). As Pyro computes it, less the
    reads of every site's value back to the host."""
    model_sites = [s for s in model_trace.nodes.values() if s["type"] == "sample"]
    guide_sites = [s for s in guide_trace.nodes.values() if s["type"] == "sample"]
    log_p = functools.reduce(operator.add, [s["log_prob_sum"] for s in model_sites])
    value = log_p - functools.reduce(operator.add, [s["log_prob_sum"] for s in guide_sites])
    surrogate, log_r = log_p, None
    for site in guide_sites:
        _, score_function, entropy = site["score_parts"]
        if not is_identically_zero(entropy):
            surrogate = surrogate - entropy.sum()
        if not is_identically_zero(score_function):
            log_r = _compute_log_r(model_trace, guide_trace) if log_r is None else log_r
            surrogate = surrogate + (log_r.sum_to(site["cond_indep_stack"]) * score_function).sum()
    return value.detach() + (surrogate - surrogate.detach())  # the ELBO's value, the surrogate's gradient


class ElboEstimator(DeviceELBO, Trace_ELBO):
    """-ELBO = -E_q[log p(x, z) - log q(z | x)], summed over sites and data, averaged over particles.

    For a reparameterised guide the surrogate loss of ``Trace_ELBO`` is the loss itself; a guide
    with non-reparameterisable sites takes Pyro's score-function surrogate.

    :param analytic_kl: replace log q - log p of each latent site by KL(q || p) in closed form
        where one is registered (``TraceMeanField_ELBO``'s estimator); needs a mean-field guide:
        for the 2-layer DLGM with bottom-up inference q(z1|x) q(z2|z1) the closed form at z1
        would hold z2 fixed while z2 depends on z1.
    :param free_bits: nats per latent dimension that the KL may use for free (Kingma et al.
        2016, Eq. 15): each dimension's KL, averaged over the batch, counts as at least this
        much, so below it the KL pushes no dimension towards the prior. 0 = off.
    """

    def __init__(self, num_particles: int = 1, analytic_kl: bool = False, free_bits: float = 0.0):
        super().__init__(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)
        self.analytic_kl, self.free_bits = analytic_kl, free_bits

    def _get_traces(self, model, guide, args, kwargs):
        mean_field = getattr(guide, "mean_field", True)
        if self.analytic_kl and mean_field is None:  # Pyro code of the user's own that does not say
            raise IncompatiblePairError(
                f"estimator 'analytic' needs a mean-field guide, and guide "
                f"{getattr(guide, 'name', type(guide).__name__)} does not say whether it is one: "
                "set mean_field = True on it (or on the module whose method it is) if each latent's q depends on "
                "x alone, or use estimator 'mc' or 'iw'")
        if self.analytic_kl and not mean_field:
            raise IncompatiblePairError(
                f"estimator 'analytic' is invalid for guide {type(guide).__name__}: it is not mean-field "
                "(a latent's guide depends on another latent), so the analytic KL would be wrong; "
                "use estimator 'mc' or 'iw'"
            )
        yield from super()._get_traces(model, guide, args, kwargs)

    def _site_term(self, model_site, guide_site) -> torch.Tensor:
        """-KL of one latent site, summed over the batch, with the site's scale (the KL weight).

        The free-bits floor is the site's own (``infer["free_bits"]``, set by ``handlers.FreeBits``;
        a tensor that a schedule may lower to 0) or else the estimator's ``free_bits``."""
        free_bits = guide_site["infer"].get("free_bits", self.free_bits)
        if not (self.analytic_kl or torch.is_tensor(free_bits) or free_bits):
            return model_site["log_prob_sum"] - guide_site["log_prob_sum"]  # log p - log q, already summed
        q = guide_site["fn"]
        kl, kl_dims = site_kl(q, model_site["fn"], guide_site["value"], self.analytic_kl)
        if torch.is_tensor(free_bits) or free_bits:
            # per dimension where the site factorises, else for the site as a whole
            per_dim = (kl_dims if kl_dims is not None else kl.unsqueeze(-1)).reshape(kl.numel(), -1)
            floor = free_bits * (1 if kl_dims is not None else q.event_shape.numel())
            floored = per_dim.mean(0).clamp(min=floor).sum() * kl.numel()
            # a floor of 0 is the plain KL: a Monte Carlo KL's batch mean can be negative, which the clamp would lift
            kl = torch.where(free_bits > 0, floored, kl.sum()) if torch.is_tensor(free_bits) else floored
        return -scale_and_mask(kl, guide_site["scale"], guide_site["mask"]).sum()

    def _elbo_particle(self, model_trace, guide_trace) -> torch.Tensor:
        sites = [(name, site) for name, site in model_trace.nodes.items() if site["type"] == "sample"]
        if not all(guide_trace.nodes[n]["fn"].has_rsample for n, s in sites if not s["is_observed"]):
            floors = [self.free_bits] + [guide_trace.nodes[n]["infer"].get("free_bits", 0.0) for n, s in sites
                                         if not s["is_observed"]]
            for option, on in (("estimator 'analytic'", self.analytic_kl),
                               ("free bits", any(torch.is_tensor(f) or f for f in floors))):
                if on:
                    raise IncompatiblePairError(
                        f"{option} needs a reparameterised guide; this guide samples a latent that is not "
                        "reparameterisable (a discrete one): use estimator 'mc' without free bits")
            return _score_function_elbo(model_trace, guide_trace)
        terms = [site["log_prob_sum"] if site["is_observed"] else self._site_term(site, guide_trace.nodes[name])
                 for name, site in sites]
        # the guide's own sites (an autoguide's auxiliary draws, say): their -log q is part of the bound
        terms += [-site["log_prob_sum"] for name, site in guide_trace.nodes.items()
                  if site["type"] == "sample" and name not in model_trace.nodes]
        return functools.reduce(operator.add, terms)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        particles = [self._elbo_particle(m, g) for m, g in self._get_traces(model, guide, args, kwargs)]
        elbo = functools.reduce(operator.add, particles)  # no "0 +" or "/ 1": each is a step in the graph
        return -elbo if self.num_particles == 1 else -elbo / self.num_particles


class ImportanceWeightedEstimator(DeviceELBO):
    """The IWAE bound sum_n log (1/K) sum_k p(x_n, z_nk) / q(z_nk | x_n), z_nk ~ q(z | x_n)
    (Burda, Grosse & Salakhutdinov 2016, Eq. 8). K = 1 is the ELBO.

    Unlike Pyro's ``RenyiELBO(alpha=0)``, which takes one log-mean-exp of the log-weights
    summed over the whole data plate, this takes a log-mean-exp per datapoint.
    """

    def __init__(self, num_particles: int = 5):
        super().__init__(num_particles=num_particles, max_plate_nesting=1, vectorize_particles=True)

    def _get_trace(self, model, guide, args, kwargs):
        return trace_pair(model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        log_w = log_importance_weights(model, guide, *args, num_samples=self.num_particles,
                                       reparameterised=torch.is_grad_enabled(), **kwargs)
        return -(log_w.logsumexp(0) - math.log(self.num_particles)).sum()


class _EnumerableSitesOnly(Messenger):
    """Refuse, by name, a site marked for enumeration whose distribution has no finite support to sum over."""

    def _pyro_sample(self, msg):
        if msg["infer"].get("enumerate") and not msg["is_observed"] and not msg["fn"].has_enumerate_support:
            raise IncompatiblePairError(
                f"site {msg['name']!r} is marked for enumeration, but its {type(msg['fn']).__name__} distribution "
                "is not discrete with finite support: mark only discrete sites (config_enumerate(guide, "
                "default='parallel') marks the discrete ones alone), or use estimator 'mc'")


class EnumeratedEstimator(DeviceELBO, TraceEnum_ELBO):
    """-ELBO with discrete sites summed out exactly: every discrete site of the guide with finite support
    (``config_enumerate(guide, "parallel")``: E_q(y|x) as a weighted sum, Kingma et al. 2014, Eq. 7;
    a site the pair marks ``infer={"enumerate": None}`` is drawn instead) and the model's sites
    marked for enumeration (a mixture's assignment, marginalised); the other sites are sampled,
    with Dice's score-function terms for those not reparameterisable (Obermeyer et al. 2019).
    Pyro's ``TraceEnum_ELBO`` with parallel enumeration and ``max_plate_nesting`` found from the
    pair on its first call, less its NaN hook on the loss (a host read every step).
    """

    #: every site that depends on an enumerated one must share one scale, read as a number: the trainer
    #: applies no KL weight (``TrainConfig`` refuses one other than 1)
    takes_kl_weight = False
    #: why ``capture.TrainingLoss`` runs this estimator eagerly rather than tracing it
    capture_refusal = ("estimator 'enum' runs eagerly: Pyro's TraceEnum_ELBO weighs each cost by its enumerated "
                       "probability and branches on whether all of them are positive, a branch on values that a "
                       "captured graph cannot hold (set train.capture = false to run eagerly without this warning)")

    def __init__(self, num_particles: int = 1):
        super().__init__(num_particles=num_particles, vectorize_particles=num_particles > 1,
                         strict_enumeration_warning=False)

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        """Pyro's guess (one run of the pair), leaving the random stream as it was, so that finding the
        nesting is no part of the run, and without its log line."""
        device = next((a.device for a in args if torch.is_tensor(a)), torch.device("cpu"))
        logger, level = logging.getLogger("pyro.infer.elbo"), logging.getLogger("pyro.infer.elbo").level
        logger.setLevel(logging.WARNING)
        try:
            with preserved_rng(device):
                super()._guess_max_plate_nesting(model, guide, args, kwargs)
        finally:
            logger.setLevel(level)

    def _get_traces(self, model, guide, args, kwargs):
        check = _EnumerableSitesOnly()
        # the guide's discrete sites summed out, as config_enumerate marks them, unless the pair says otherwise
        yield from super()._get_traces(check(model), check(config_enumerate(guide, "parallel")), args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        particles = [_compute_dice_elbo(m, g) for m, g in self._get_traces(model, guide, args, kwargs)]
        elbo = functools.reduce(operator.add, particles)
        return -elbo if self.num_particles == 1 else -elbo / self.num_particles


@ESTIMATORS.register("mc")
def mc(num_particles: int = 1, free_bits: float = 0.0) -> ELBO:
    """Monte Carlo ELBO (Trace_ELBO's estimator), particles vectorised; valid for every pair."""
    return ElboEstimator(num_particles, free_bits=free_bits)


@ESTIMATORS.register("analytic")
def analytic(num_particles: int = 1, free_bits: float = 0.0) -> ELBO:
    """ELBO with the KL in closed form where registered (TraceMeanField_ELBO's); mean-field guides only."""
    return ElboEstimator(num_particles, analytic_kl=True, free_bits=free_bits)


@ESTIMATORS.register("iw")
def iw(num_particles: int = 5, free_bits: float = 0.0) -> ELBO:
    """Importance-weighted bound with K = num_particles (Burda et al. 2016), per datapoint."""
    if free_bits:
        raise ConfigError("free bits apply to a KL term, which the importance-weighted bound has not: "
                          "use estimator 'mc' or 'analytic' with free_bits, or set free_bits = 0")
    return ImportanceWeightedEstimator(num_particles)


@ESTIMATORS.register("enum")
def enum(num_particles: int = 1, free_bits: float = 0.0) -> ELBO:
    """ELBO with the guide's discrete sites, and the model's marked for enumeration, summed out exactly."""
    if free_bits:
        raise ConfigError("free bits floor a reparameterised KL, and estimator 'enum' sums discrete sites out: "
                          "set free_bits = 0, or use estimator 'mc' or 'analytic' for a pair without discrete sites")
    return EnumeratedEstimator(num_particles)
