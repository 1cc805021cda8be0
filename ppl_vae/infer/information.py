"""ELBO surgery (Hoffman & Johnson 2016, Eq. 3): the average KL of a pair split into the mutual
information I_q(x; z) and the marginal KL(q(z) || p(z)), with q(z) = (1/N) sum_n q(z | x_n) the
aggregate posterior over N data. Here, beside the bounds, because training reads it too (the
aggressive schedule of He et al. 2019 watches I(x; z)); ``ppl_vae.evaluation.collapse`` reports it.

Draws are Monte Carlo from the guide, and every density is the guide's or the model's own
``log_prob``, so any pair whose guide density can be evaluated (Gaussian, structured, flows) is covered.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from ppl_vae.infer.pairs import accepted_fields
from ppl_vae.tracing import global_sites

__all__ = ["LatentInformation", "guide_sites", "latent_information", "latent_sample_sites"]


def latent_sample_sites(trace, names=None) -> dict:
    """The sample sites of a trace that are latent (or, given ``names``, those named: conditioned ones)."""
    return {name: site for name, site in prune_subsample_sites(trace).nodes.items()
            if site["type"] == "sample" and (name in names if names is not None else not site["is_observed"])}


def guide_sites(guide, data: torch.Tensor, num_samples: int, batch_size: int,
                 fields: dict[str, torch.Tensor] | None = None):
    """Run ``guide`` on ``data`` ``batch_size`` rows at a time with ``num_samples`` particles (and the
    rows of the data ``fields`` it takes, as keywords); yields each batch and its per-datapoint latent
    sites (values ``[S, B, D]`` or broadcastable to it; the global sites, shared by all data, are left
    out: active units and information are per datapoint)."""
    shared = global_sites(guide)
    fields = _keywords(guide, fields or {})
    for x, *field_rows in zip(data.split(batch_size), *[t.split(batch_size) for t in fields.values()]):
        with pyro.plate("particles", num_samples, dim=-2) if num_samples > 1 else nullcontext():
            sites = latent_sample_sites(poutine.trace(guide).get_trace(x, **dict(zip(fields, field_rows))))
        yield x, {name: site for name, site in sites.items() if name not in shared}


def _beside_the_data(values: dict[str, torch.Tensor], event_dims: dict[str, int]) -> dict[str, torch.Tensor]:
    """Each site's draws ``[I, *event]`` as ``[I, 1, *event]``, to broadcast over a batch of data."""
    return {name: v.unsqueeze(v.dim() - event_dims[name]) for name, v in values.items()}


def _keywords(fn, fields: dict[str, torch.Tensor], rows=slice(None)) -> dict[str, torch.Tensor]:
    """The ``rows`` of the data fields ``fn`` takes, as its keywords."""
    return {name: fields[name][rows] for name in accepted_fields(fn, fields)}


def _log_q(guide, data: torch.Tensor, values: dict[str, torch.Tensor], event_dims: dict[str, int],
           fields: dict[str, torch.Tensor]) -> torch.Tensor:
    """log q(z_i | x_m) for draws ``values`` (``{site: [I, *event]}``) against every datapoint: ``[I, M]``."""
    conditioned = _beside_the_data(values, event_dims)  # [I, 1, *event]: broadcasts over the data
    trace = poutine.trace(poutine.condition(guide, data=conditioned)).get_trace(data, **_keywords(guide, fields))
    return sum(site["fn"].log_prob(site["value"]) for site in latent_sample_sites(trace, values).values())


def _log_p(model, data: torch.Tensor, values: dict[str, torch.Tensor], fields: dict[str, torch.Tensor],
           owner: torch.Tensor) -> torch.Tensor:
    """log p(z_i | its own datapoint's fields) under the model's prior over its latent sites, ``[I]``:
    p(z_i) for a prior that reads no field."""
    conditioned = poutine.condition(model, data=values)
    trace = poutine.trace(conditioned).get_trace(data[owner], **_keywords(model, fields, owner))
    return sum(site["fn"].log_prob(site["value"]) for site in latent_sample_sites(trace, values).values()).reshape(-1)


@dataclass
class LatentInformation:
    """Nats per datapoint: ``kl`` = E_x KL(q(z|x) || p(z)) = ``mi`` + ``marginal_kl``."""

    kl: float
    mi: float
    marginal_kl: float
    mi_stderr: float = 0.0  # Monte Carlo standard error of ``mi`` over the draws z ~ q(z | x)


@torch.no_grad()
def latent_information(model, guide, data: torch.Tensor, num_samples: int = 1, chunk_size: int = 1000,
                       fields: dict[str, torch.Tensor] | None = None) -> LatentInformation:
    """The average KL, the mutual information I_q(x; z) and the marginal KL(q(z) || p(z)) of
    Hoffman & Johnson (2016), Eq. 3, over ``data`` (N datapoints, all latent sites jointly).

    z_i ~ q(z | x_n(i)), ``num_samples`` per datapoint; log q(z_i) = logmeanexp_m log q(z_i | x_m)
    over all N data, so the cost is N * num_samples * N guide densities, ``chunk_size`` draws at a
    time. I_q(x; z) <= log N: with few data it is biased low for a well-used latent. ``fields``:
    ``data``'s rows of the data fields the pair takes; a prior that reads them (a conditional model's)
    is each draw's own datapoint's, p(z | c_n), in ``kl`` and ``marginal_kl``.
    """
    fields = fields or {}
    ((_, draws),) = guide_sites(guide, data, num_samples, len(data), fields)
    if not draws:  # no per-datapoint latent (a model of global latents alone): nothing to inform about x
        return LatentInformation(kl=0.0, mi=0.0, marginal_kl=0.0)
    shapes = {name: site["fn"].event_shape for name, site in draws.items()}  # () for a class
    values = {name: site["value"].expand(num_samples, len(data), *shapes[name]).transpose(0, 1)
              .reshape(len(data) * num_samples, *shapes[name]) for name, site in draws.items()}  # datapoint-major
    event_dims = {name: len(shape) for name, shape in shapes.items()}
    owner = torch.arange(len(data), device=data.device).repeat_interleave(num_samples)
    own, aggregate, prior = [], [], []
    for start in range(0, len(owner), chunk_size):
        chunk = {name: v[start:start + chunk_size] for name, v in values.items()}
        log_q = _log_q(guide, data, chunk, event_dims, fields)
        own.append(log_q.gather(1, owner[start:start + chunk_size, None]).squeeze(1))
        aggregate.append(log_q.logsumexp(1) - math.log(len(data)))
        prior.append(_log_p(model, data, chunk, fields, owner[start:start + chunk_size]))
    own, aggregate, prior = torch.cat(own), torch.cat(aggregate), torch.cat(prior)
    information = own - aggregate  # each term is at most log N; their mean, I(x; z), is >= 0 up to noise
    stderr = information.std().item() / math.sqrt(len(information)) if len(information) > 1 else 0.0
    return LatentInformation(kl=(own - prior).mean().item(), mi=information.mean().item(),
                             marginal_kl=(aggregate - prior).mean().item(), mi_stderr=stderr)
