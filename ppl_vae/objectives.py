"""ELBO estimators, registered by name. Each is a Pyro ``ELBO``, so ``estimator(model, guide)``
is an ``ELBOModule`` whose ``forward(x)`` is the differentiable loss (negative bound, summed
over the batch) and whose ``parameters()`` are the pair's.

- ``mc``: Monte Carlo KL, ``Trace_ELBO`` (Kingma & Welling 2014, Eq. 7). Valid for every pair.
- ``analytic``: analytic KL where registered, ``TraceMeanField_ELBO`` (Kingma & Welling 2014,
  Eq. 10). Refuses guides that are not mean-field, where it would be wrong.
- ``iw``: the importance-weighted bound of Burda et al. (2016), Eq. 8, with K particles,
  a log-mean-exp per datapoint.
"""

from __future__ import annotations

import math

import torch
import pyro
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from ppl_vae.diagnostics import trace_pair
from ppl_vae.registry import ESTIMATORS, IncompatiblePairError


class AnalyticKLELBO(TraceMeanField_ELBO):
    """``TraceMeanField_ELBO`` that raises for a guide declaring ``mean_field = False``.

    Its analytic KL at a site integrates that site out while holding the others at their
    sampled values, which is wrong when a latent's model parent is its guide descendant —
    exactly the 2-layer DLGM with bottom-up inference q(z1|x) q(z2|z1).
    """

    def _get_traces(self, model, guide, args, kwargs):
        if not getattr(guide, "mean_field", True):
            raise IncompatiblePairError(
                f"estimator 'analytic' is invalid for guide {type(guide).__name__}: it is not mean-field "
                "(a latent's guide depends on another latent), so the analytic KL would be wrong; "
                "use estimator 'mc' or 'iw'"
            )
        yield from super()._get_traces(model, guide, args, kwargs)


class ImportanceWeightedELBO(ELBO):
    """The IWAE bound sum_n log (1/K) sum_k p(x_n, z_nk) / q(z_nk | x_n), z_nk ~ q(z | x_n)
    (Burda, Grosse & Salakhutdinov 2016, Eq. 8). K = 1 is the ELBO.

    Unlike Pyro's ``RenyiELBO(alpha=0)``, which takes one log-mean-exp of the log-weights
    summed over the whole data plate, this takes a log-mean-exp per datapoint.
    """

    def __init__(self, num_particles: int = 5):
        super().__init__(num_particles=num_particles, max_plate_nesting=1, vectorize_particles=True)

    def _get_trace(self, model, guide, args, kwargs):
        return trace_pair(model, guide, *args, **kwargs)

    def log_weights(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """log p(x, z) - log q(z | x) with shape ``[num_particles, batch]``; latent scales apply."""
        with pyro.plate("particles", self.num_particles, dim=-2):
            model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        log_w = sum(s["log_prob"] for s in model_trace.nodes.values() if s["type"] == "sample")
        return log_w - sum(s["log_prob"] for s in guide_trace.nodes.values() if s["type"] == "sample")

    def differentiable_loss(self, model, guide, *args, **kwargs):
        log_w = self.log_weights(model, guide, *args, **kwargs)
        return -(log_w.logsumexp(0) - math.log(self.num_particles)).sum()

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


@ESTIMATORS.register("mc")
def mc(num_particles: int = 1) -> ELBO:
    """Monte Carlo ELBO (Trace_ELBO), particles vectorised; valid for every pair."""
    return Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)


@ESTIMATORS.register("analytic")
def analytic(num_particles: int = 1) -> ELBO:
    """ELBO with the KL in closed form where registered (TraceMeanField_ELBO); mean-field guides only."""
    return AnalyticKLELBO(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)


@ESTIMATORS.register("iw")
def iw(num_particles: int = 5) -> ELBO:
    """Importance-weighted bound with K = num_particles (Burda et al. 2016), per datapoint."""
    return ImportanceWeightedELBO(num_particles=num_particles)
