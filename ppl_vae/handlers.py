"""Effect handlers and schedules for the weight on the KL term.

``KLWeight`` scales the log-density of every *latent* (unobserved) sample site
in the model **and** the guide, so for any pair the ELBO becomes
E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)). Scaling both sides matters:
``TraceMeanField_ELBO`` takes the scale of its analytic KL from the guide site,
``Trace_ELBO`` from each side's own log-density.
"""

from __future__ import annotations

import math
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
