"""Effect handlers and schedules for the KL term: its weight, and free bits per site.

``KLWeight`` scales the log-density of every *latent* (unobserved) sample site
in the model **and** the guide, so for any pair the ELBO becomes
E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)). Scaling both sides matters:
``TraceMeanField_ELBO`` takes the scale of its analytic KL from the guide site,
``Trace_ELBO`` from each side's own log-density.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from pyro.poutine.messenger import Messenger


class KLWeight(Messenger):
    """Multiply the log-density of latent sites by ``weight``; observed sites are untouched.

    ``weight = beta`` gives the beta-VAE objective (Higgins et al. 2017, Eq. 4); a schedule
    that sets ``weight`` each step gives KL annealing; ``weight = 0`` with a point-mass guide
    gives the plain deterministic autoencoder.

    :param weight: non-negative weight, a number or a 0-dim tensor (which a captured training
        loss takes as an input, so a schedule can change it without re-tracing); may be changed
        between steps.

    >>> import pyro, pyro.distributions as dist, pyro.poutine as poutine
    >>> def model():
    ...     pyro.sample("z", dist.Normal(0., 1.))
    ...     pyro.sample("x", dist.Normal(0., 1.), obs=0.)
    >>> with KLWeight(0.5):
    ...     trace = poutine.trace(model).get_trace()
    >>> trace.nodes["z"]["scale"], trace.nodes["x"]["scale"]
    (0.5, 1.0)
    """

    def __init__(self, weight: float | torch.Tensor = 1.0):
        super().__init__()
        self.weight = weight

    @property
    def weight(self) -> float | torch.Tensor:
        return self._weight

    @weight.setter
    def weight(self, value: float | torch.Tensor) -> None:
        if not torch.is_tensor(value) and not value >= 0:  # a tensor is not read back: no host sync
            raise ValueError(f"the KL weight must be >= 0, got {value}")
        self._weight = value

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self._weight * msg["scale"]


@dataclass(frozen=True)
class KLSchedule:
    """The KL weight as a function of the training step.

    - ``constant``: ``beta`` throughout.
    - ``linear``: warm-up from 0 to ``beta`` over ``warmup_steps`` (Bowman et al. 2016, Sec. 3.1).
    - ``cyclical``: ``cycles`` repeats of a ramp over the first ``ramp`` fraction of each cycle,
      then ``beta`` (Fu et al. 2019, Eq. 6), over ``total_steps``.

    >>> [KLSchedule("linear", beta=1.0, warmup_steps=4)(s) for s in range(6)]
    [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """

    kind: Literal["constant", "linear", "cyclical"] = "constant"
    beta: float = 1.0
    warmup_steps: int = 0
    total_steps: int = 0
    cycles: int = 4
    ramp: float = 0.5

    def __call__(self, step: int) -> float:
        if self.kind == "linear" and self.warmup_steps > 0:
            return self.beta * min(1.0, step / self.warmup_steps)
        if self.kind == "cyclical" and self.total_steps > 0:
            period = math.ceil(self.total_steps / self.cycles)
            return self.beta * min(1.0, (step % period) / (self.ramp * period))
        return self.beta


class FreeBits(Messenger):
    """Give named latent sites a free-bits floor (Kingma et al. 2016, Eq. 15): nats per dimension
    that site's KL may use for free, times ``factor``. The floor rides on the site's ``infer``
    dict as ``infer["free_bits"]``, where the ``mc`` and ``analytic`` estimators read it (ahead
    of their own ``free_bits``); a floor of 0 leaves the plain KL term.

    With ``factor`` a 0-dim tensor that a schedule lowers to 0 (``FreeBitsRelease``), the floor
    keeps a layer alive early in training and the last steps optimise the plain ELBO, so the
    final loss is comparable with an ELBO trained without it.

    :param nats: nats per dimension by site name, e.g. ``{"z2": 0.5}``.
    :param factor: a number or a 0-dim tensor (an input of a captured training loss).

    >>> import pyro, pyro.distributions as dist, pyro.poutine as poutine
    >>> def guide():
    ...     pyro.sample("z1", dist.Normal(0., 1.))
    ...     pyro.sample("z2", dist.Normal(0., 1.))
    >>> with FreeBits({"z2": 0.5}, factor=0.5):
    ...     trace = poutine.trace(guide).get_trace()
    >>> trace.nodes["z1"]["infer"].get("free_bits"), trace.nodes["z2"]["infer"]["free_bits"]
    (None, 0.25)
    """

    def __init__(self, nats: Mapping[str, float], factor: float | torch.Tensor = 1.0):
        super().__init__()
        bad = {site: value for site, value in nats.items() if not value >= 0}
        if bad:
            raise ValueError(f"free bits must be >= 0 nats per dimension, got {bad}")
        self.nats, self.factor = dict(nats), factor

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"] and self.nats.get(msg["name"]):
            msg["infer"] = {**msg["infer"], "free_bits": self.nats[msg["name"]] * self.factor}


@dataclass(frozen=True)
class FreeBitsRelease:
    """The free-bits factor as a function of the step: 1 at the start, falling linearly to 0 at
    ``release_steps`` and 0 after (0 steps: held at 1 throughout).

    >>> [FreeBitsRelease(release_steps=4)(s) for s in range(6)]
    [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """

    release_steps: int = 0

    def __call__(self, step: int) -> float:
        return 1.0 if self.release_steps <= 0 else max(0.0, 1.0 - step / self.release_steps)


class GlobalShare(Messenger):
    """Scale the log-densities of the named (global) latent sites by ``share``, in the model and the
    guide alike: with ``share`` = B / N for a minibatch of B rows out of N, a global site's KL counts
    once per pass over the data, and a minibatch's loss is B / N times an unbiased estimate of the
    full-data negative ELBO (Hoffman et al. 2013, Sec. 2.4; what ``pyro.plate(..., subsample_size=B)``
    does by scaling the per-datapoint sites by N / B instead).

    >>> import pyro, pyro.distributions as dist, pyro.poutine as poutine
    >>> def model():
    ...     pyro.sample("w", dist.Normal(0., 1.))
    ...     pyro.sample("x", dist.Normal(0., 1.), obs=0.)
    >>> with GlobalShare(["w"], 0.25):
    ...     trace = poutine.trace(model).get_trace()
    >>> trace.nodes["w"]["scale"], trace.nodes["x"]["scale"]
    (0.25, 1.0)
    """

    def __init__(self, sites, share: float = 1.0):
        super().__init__()
        if not 0 < share <= 1:
            raise ValueError(f"a global site's share of a pass must be in (0, 1], got {share}")
        self.sites, self.share = frozenset(sites), share

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] in self.sites and not msg["is_observed"]:
            msg["scale"] = self.share * msg["scale"]
