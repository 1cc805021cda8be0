"""Posterior-collapse diagnostics for any model/guide pair: is the latent used, and by how much?

- ``posterior_means`` and ``active_units``: a latent dimension is active when its posterior mean
  moves with x, Cov_x(E_q[z_d | x]) > 0.01 (Burda, Grosse & Salakhutdinov 2016, Sec. 5.2).
- ``latent_information`` (``ppl_vae.infer.information``): the average KL split as in Hoffman & Johnson (2016), Eq. 3,
  E_x KL(q(z|x) || p(z)) = I_q(x; z) + KL(q(z) || p(z)), with q(z) = (1/N) sum_n q(z | x_n) the
  aggregate posterior over the N data. A collapsed pair has all three at zero.

All latent sites are taken jointly (z = (z1, z2) for the 2-layer DLGM), draws are Monte Carlo
from the guide, and every density is the guide's or the model's own ``log_prob``, so any pair
with a guide whose density can be evaluated (Gaussian, structured, flows) is covered.
"""

from __future__ import annotations

import math

import torch

from ppl_vae.infer.bounds import ImportanceEstimate, evaluate, importance_log_likelihood
from ppl_vae.infer.config import DiagnosticsConfig
from ppl_vae.infer.information import guide_sites, latent_information
from ppl_vae.tracing import decode, global_sites, prior_draws

#: Burda et al. (2016): a unit is active when Cov_x(E_q[u | x]) exceeds this
ACTIVE_THRESHOLD = 0.01


@torch.no_grad()
def posterior_means(guide, data: torch.Tensor, num_samples: int = 1, batch_size: int = 1000,
                    fields: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """E_q[z | x] per datapoint and latent site, ``{site: [N, D]}`` (the guide given the rows of the
    data ``fields`` it takes).

    Each site's distribution mean is averaged over ``num_samples`` draws of the sites it depends
    on: exact with one draw for a mean-field Gaussian guide, Rao-Blackwellised for a structured one;
    where a distribution has no closed-form mean (a flow) its draws are averaged instead.
    """
    means: dict[str, list[torch.Tensor]] = {}
    for x, sites in guide_sites(guide, data, num_samples, batch_size, fields):
        for name, site in sites.items():
            fn = site["fn"]
            if _is_class(fn):  # a class: its probabilities, E_q[one_hot(y) | x], a unit per value
                support = fn.enumerate_support(expand=False)  # [K, 1, ..., 1]
                probs = fn.log_prob(support).exp().reshape(len(support), -1, len(x))  # [K, S or 1, B]
                mean = probs.expand(len(support), num_samples, len(x)).permute(1, 2, 0)
            else:
                try:
                    mean = fn.mean
                except NotImplementedError:
                    mean = site["value"]
                mean = mean.expand(num_samples, len(x), *fn.event_shape)
            means.setdefault(name, []).append(mean.mean(0))
    return {name: torch.cat(parts) for name, parts in means.items()}


def _is_class(fn) -> bool:
    """A scalar discrete site with finite support (a class y): its draws are values, not vectors."""
    return fn.has_enumerate_support and fn.event_shape == ()


@torch.no_grad()
def active_units(guide, data: torch.Tensor, num_samples: int = 1, threshold: float = ACTIVE_THRESHOLD,
                 fields: dict[str, torch.Tensor] | None = None) -> dict:
    """Active latent dimensions (Burda et al. 2016, Sec. 5.2): ``{"count": int, "sites": {site: int},
    "variance": {site: [Cov_x(E_q[z_d | x]) per dimension]}}``; a class site counts a unit per class,
    active where q(y = k | x) varies with x."""
    means = posterior_means(guide, data, num_samples, fields=fields)
    variance = {name: mean.var(0, unbiased=False) for name, mean in means.items()}
    sites = {name: int((v > threshold).sum()) for name, v in variance.items()}
    return {"count": sum(sites.values()), "sites": sites, "variance": {n: v.tolist() for n, v in variance.items()}}


def kl_holding_dims(kl_dims: list[float], share: float = 0.9) -> int:
    """The fewest latent dimensions whose KLs (nats, one per dimension) add up to ``share`` of the
    total: how many dimensions the code spends its KL on, which a near-empty dimension (a unit that
    is active by ``active_units``' variance threshold while holding 0.016 nats, say) cannot change."""
    if not 0 < share <= 1:
        raise ValueError(f"share = {share} is out of range: give a fraction in (0, 1]")
    ranked = sorted(kl_dims, reverse=True)
    target, held = share * sum(ranked), 0.0
    for count, kl in enumerate(ranked, 1):
        held += kl
        if held >= target * (1 - 1e-9):  # float sums: a share met exactly counts
            return count
    return len(ranked)


@torch.no_grad()
def posterior_draws(guide, data: torch.Tensor, num_samples: int = 20,
                    batch_size: int = 1000) -> dict[str, torch.Tensor]:
    """``num_samples`` draws z ~ q(z | x) per datapoint and latent site, ``{site: [N, S, D]}``;
    pooled over the data they are draws of the aggregate posterior q(z) (Hoffman & Johnson 2016)."""
    draws: dict[str, list[torch.Tensor]] = {}
    for x, sites in guide_sites(guide, data, num_samples, batch_size):
        for name, site in sites.items():
            value = site["value"].expand(num_samples, len(x), *site["fn"].event_shape)
            draws.setdefault(name, []).append(value.transpose(0, 1))
    return {name: torch.cat(parts) for name, parts in draws.items()}


@torch.no_grad()
def diagnose(model, guide, data: torch.Tensor, config: DiagnosticsConfig | None = None,
             analytic_kl: bool = False, fields: dict[str, torch.Tensor] | None = None) -> dict:
    """Everything that says whether and how much the latent is used, on ``data[:config.rows]``,
    in nats per datapoint: the ELBO terms (``loss``, ``recon``, ``kl``, per site and dimension,
    ``recon_per_dim`` = recon / data dimensions), the importance-weighted ``log_px_iw`` and the
    variational ``gap`` (Burda et al. 2016), ``log_px_iw_stderr`` (its standard error over the
    rows), ``khat_share`` (the share of datapoints whose PSIS k-hat exceeds 0.7), ``active_units``
    (Burda et al. 2016) and the decomposition
    ``kl`` ~ ``mi`` + ``marginal_kl`` (Hoffman & Johnson 2016; its own Monte Carlo ``info_kl``).
    ``analytic_kl``: closed-form KLs where registered; only for a mean-field guide (as the
    ``analytic`` estimator). A model with global latent sites (``pairs.Program``) gets their KLs as
    ``kl_global``, per-datapoint diagnostics over its other sites, and no importance-weighted
    log p(x) (NaN): its weights would mix the data's shared sites into each datapoint's.
    ``fields``: ``data``'s rows of the data fields the pair takes (labels, the visible pixels), given
    to it as keywords: the bounds are then of what the model scores given them (a conditional
    log-likelihood, for a model of the hidden pixels).
    """
    config = config or DiagnosticsConfig()
    x = data[: config.rows]
    fields = {name: t[: config.rows] for name, t in (fields or {}).items()}
    terms = evaluate(model, guide, x, analytic_kl, num_particles=config.particles, fields=fields)
    nan = torch.full((len(x),), math.nan, device=x.device)
    iw = (ImportanceEstimate(nan, nan, nan) if global_sites(model) else
          importance_log_likelihood(model, guide, x, config.iw_samples, config.chunk_size, khat=True, fields=fields))
    units = active_units(guide, x, config.mean_samples, fields=fields)
    info = latent_information(model, guide, x, config.info_samples, fields=fields)
    return {
        "rows": len(x), **terms, "recon_per_dim": terms["recon"] / x[0].numel(),
        "log_px_iw": iw.log_px.mean().item(), "gap": iw.gap.mean().item(), "iw_samples": config.iw_samples,
        "log_px_iw_stderr": (iw.log_px.std() / math.sqrt(len(x))).item() if len(x) > 1 else math.nan,
        "khat_share": (iw.khat > 0.7).float().mean().item() if not global_sites(model) else math.nan,
        "active_units": units["count"], "active_units_sites": units["sites"],
        "latent_dims": {site: len(v) for site, v in units["variance"].items()},
        "mi": info.mi, "marginal_kl": info.marginal_kl, "info_kl": info.kl,
    }


def aggregate_posterior_panels(model, guide, data, rows: int | None = None, samples: int = 20,
                               sites: list[str] | None = None, title: str = "{site}: aggregate posterior vs prior",
                               prior_samples: int = 20_000) -> list[tuple]:
    """What ``plots.aggregate_posterior`` draws: per latent site, ``(title, draws of q(z | x) [N, S, D],
    labels [N] or None, draws of p(z) [M, D])`` on the first ``rows`` held-out examples of ``data``
    (a ``Dataset``; all of them by default), ``samples`` draws per example; their pool is the
    aggregate posterior q(z) (Hoffman & Johnson 2016).

    :param sites: the sites to draw (default: every 1-D or 2-D one; larger ones cannot be drawn).
    :param title: each panel's title, ``{site}`` filled in.
    """
    x = data.test_eval[:rows]
    labels = None if data.test_labels is None else data.test_labels[:rows]
    draws = posterior_draws(guide, x, samples)
    prior = prior_draws(model, prior_samples, x.device)
    return [(title.format(site=site), draws[site], labels, prior[site])
            for site in (sites if sites is not None else [s for s, d in draws.items() if d.shape[-1] <= 2])]


@torch.no_grad()
def latent_traversal(model, guide, x: torch.Tensor, site: str = "z", dims: list[int] | None = None,
                     values: torch.Tensor | None = None) -> torch.Tensor:
    """Decoded images of one example ``x`` ``[1, ...]`` with one latent dimension at a time moved
    over ``values`` (default: -2.5 to 2.5 in 9 steps, prior standard deviations for N(0, I)) and
    the others held at the example's posterior mean: ``[len(dims) * len(values), ...]``, a row
    per dimension (Higgins et al. 2017, Fig. 7's traversals).

    :param dims: the dimensions, in the order of the rows (default: all).
    """
    values = torch.linspace(-2.5, 2.5, 9, device=x.device) if values is None else values.to(x.device)
    mean = posterior_means(guide, x[:1])[site][0]
    dims = list(range(len(mean))) if dims is None else dims
    z = mean.repeat(len(dims) * len(values), 1)
    for row, d in enumerate(dims):
        z[row * len(values):(row + 1) * len(values), d] = values
    return decode(model, {site: z})
