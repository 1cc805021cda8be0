"""Per-datapoint ELBO terms and importance-weighted log-likelihoods for any model/guide pair.

-ELBO(x) = recon(x) + sum_sites KL_site(x), with recon(x) = -E_q[log p(x | z)] and, per latent
site, KL_site(x) = E_q[log q(z_s | .) - log p(z_s | .)] — a one-sample Monte Carlo estimate, or
the analytic KL where ``analytic_kl`` and both sides have one registered (Kingma & Welling 2014,
Eq. 10). Per-dimension KLs are given where both sides factorise over dimensions (diagonal
Gaussians, point masses); their sum is the site's KL.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from arviz_stats.base import array_stats
from pyro.distributions import Independent
from torch.distributions import kl_divergence
from tqdm.auto import tqdm

from ppl_vae.errors import ConfigError, IncompatiblePairError
from ppl_vae.tracing import global_sites, observed_site, trace_pair


@dataclass
class ElboTerms:
    """Per-datapoint terms in nats: ``recon`` ``[B]``, ``kl[site]`` ``[B]``, ``kl_dims[site]`` ``[B, D]``,
    and ``recon_dims`` ``[B, *data_shape]`` where the likelihood factorises over data dimensions;
    ``kl_global[site]``: a one-draw estimate of the KL of each global latent site, in nats (0-dim);
    ``observed[site]`` ``[B]``: -log p at the model's other observed sites (labels beside ``x``)."""

    recon: torch.Tensor
    kl: dict[str, torch.Tensor]
    kl_dims: dict[str, torch.Tensor] = field(default_factory=dict)
    recon_dims: torch.Tensor | None = None
    kl_global: dict[str, torch.Tensor] = field(default_factory=dict)
    observed: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def loss(self) -> torch.Tensor:
        """Negative ELBO per datapoint, the global sites' KLs left out (they are not per datapoint)."""
        return self.recon + sum([*self.kl.values(), *self.observed.values()], torch.zeros_like(self.recon))


def site_kl(q, p, z, analytic: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """KL(q || p) of one site at draws ``z`` of q, per datapoint and, where both sides factorise over
    dimensions, per dimension: in closed form where ``analytic`` and one is registered, else
    log q(z) - log p(z). Unscaled."""
    factorised = isinstance(q, Independent) and isinstance(p, Independent) and q.reinterpreted_batch_ndims == 1
    if analytic:
        try:
            if factorised:
                per_dim = kl_divergence(q.base_dist, p.base_dist)
                return per_dim.sum(-1), per_dim
            return kl_divergence(q, p), None
        except NotImplementedError:
            pass  # no closed form registered: Monte Carlo below
    if factorised:
        per_dim = q.base_dist.log_prob(z) - p.base_dist.log_prob(z)
        return per_dim.sum(-1), per_dim
    return q.log_prob(z) - p.log_prob(z), None


def _masked(site: dict, value: torch.Tensor) -> torch.Tensor:
    """``value`` (a per-datapoint term, or per datapoint and dimension) zeroed where the site is masked
    out (``poutine.mask``; ``obs_mask``'s observed and unobserved halves)."""
    mask = site["mask"]
    if mask is None or mask is True:
        return value
    mask = torch.as_tensor(mask, device=value.device)
    return torch.where(mask.reshape(mask.shape + (1,) * (value.dim() - mask.dim())), value, 0.0)


def elbo_terms(model, guide, x: torch.Tensor, analytic_kl: bool = False,
               fields: dict[str, torch.Tensor] | None = None) -> ElboTerms:
    """Trace ``guide(x)``, replay ``model(x)`` on its latents, and split -ELBO into its terms
    (the pair called with the data ``fields`` it takes as keywords).

    Unscaled log-densities are used, so the terms are those of the plain ELBO whatever KL
    weight the pair is trained with; masks apply (a label site observed on some rows only).
    """
    model_trace, guide_trace = trace_pair(model, guide, x, **(fields or {}))
    recon, recon_dims = torch.zeros(x.shape[0], device=x.device), None
    kl, kl_dims, kl_global, shared, observed = {}, {}, {}, global_sites(model), {}
    data_site = observed_site(model)
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["infer"].get("_deterministic"):
            continue
        if site["is_observed"] and name == data_site:
            recon = recon - _masked(site, site["fn"].log_prob(site["value"]))
            if isinstance(site["fn"], Independent):
                recon_dims = -site["fn"].base_dist.log_prob(site["value"])
        elif site["is_observed"]:
            observed[name] = -_masked(site, site["fn"].log_prob(site["value"]))
        elif name not in guide_trace.nodes:  # left to enumeration by the guide: drawn from p here (q = p, no KL)
            continue
        elif name in shared:
            kl_global[name] = site_kl(guide_trace.nodes[name]["fn"], site["fn"], site["value"], analytic_kl)[0].sum()
        else:
            kl[name], per_dim = site_kl(guide_trace.nodes[name]["fn"], site["fn"], site["value"], analytic_kl)
            kl[name] = _masked(guide_trace.nodes[name], kl[name])
            if per_dim is not None:
                kl_dims[name] = _masked(guide_trace.nodes[name], per_dim)
    for name, site in guide_trace.nodes.items():  # the guide's own (auxiliary) sites: their log q
        if site["type"] == "sample" and name not in model_trace.nodes:
            # an autoguide's "mu_unconstrained" goes with "mu"; another (a joint latent) under its own name
            owner = name.removesuffix("_unconstrained")
            owner = owner if owner in model_trace.nodes else name
            log_q = site["fn"].log_prob(site["value"])
            if name in shared:
                kl_global[owner] = kl_global.get(owner, 0) + log_q.sum()
            else:
                kl[owner] = kl.get(owner, 0) + log_q
    return ElboTerms(recon, kl, kl_dims, recon_dims, kl_global, observed)


@torch.no_grad()
def evaluate(model, guide, data: torch.Tensor, analytic_kl: bool = False, chunk_size: int = 2048,
             num_particles: int = 1, fields: dict[str, torch.Tensor] | None = None) -> dict:
    """Dataset means of the ELBO terms, in nats per example, computed in chunks without gradients,
    averaged over ``num_particles`` draws of z per datapoint.

    Returns ``{"loss", "recon", "kl", "kl_sites": {site: float}, "kl_dims": {site: [float]}}``, and for
    a model with global latent sites (``pairs.Program``) ``kl_global``: ``{site: nats}``, each the
    KL of the whole site. In ``loss`` and ``kl`` each counts once per pass over the model's
    ``data_size`` training examples (its KL / N per example), as in the full-data ELBO it trains;
    ``kl_sites`` and ``kl_dims`` hold the per-datapoint sites only. A model that observes labels
    beside ``x`` adds ``observed_sites``: ``{site: -log p}``, part of ``loss``.

    :param fields: ``data``'s rows of the data fields the pair takes as keywords (``Dataset.test_fields``).
    """
    sums: dict[str, torch.Tensor] = {}
    shared: dict[str, list[torch.Tensor]] = {}
    fields = fields or {}
    chunks = zip(data.split(chunk_size), *[t.split(chunk_size) for t in fields.values()])
    for x, *values in chunks:
        left = num_particles
        while left:  # several particles per pass, as repeated rows, up to chunk_size rows
            copies = min(left, max(1, chunk_size // len(x)))
            left -= copies
            x_rows, *value_rows = [t.repeat(copies, *[1] * (t.dim() - 1)) for t in (x, *values)]
            terms = elbo_terms(model, guide, x_rows, analytic_kl, dict(zip(fields, value_rows)))
            kl = sum(terms.kl.values(), torch.zeros_like(terms.recon))  # 0 for a pair of global latents alone
            parts = {"loss": terms.loss, "recon": terms.recon, "kl": kl}
            parts |= {f"kl_sites/{s}": v for s, v in terms.kl.items()}
            parts |= {f"kl_dims/{s}": v for s, v in terms.kl_dims.items()}
            parts |= {f"observed_sites/{s}": v for s, v in terms.observed.items()}
            for key, value in parts.items():
                sums[key] = sums.get(key, 0) + value.sum(0)
            for site, value in terms.kl_global.items():
                shared.setdefault(site, []).append(value)
    means = {k: (v / (len(data) * num_particles)).tolist() for k, v in sums.items()}  # one copy per term
    out = {k: means[k] for k in ("loss", "recon", "kl")}
    for group in ("kl_sites", "kl_dims", "observed_sites"):
        out[group] = {k.split("/", 1)[1]: v for k, v in means.items() if k.startswith(group + "/")}
    if not out["observed_sites"]:
        del out["observed_sites"]
    if shared:
        out["kl_global"] = {site: torch.stack(v).mean().item() for site, v in shared.items()}
        per_example = sum(out["kl_global"].values()) / (getattr(model, "data_size", None) or len(data))
        out["loss"] += per_example
        out["kl"] += per_example
    return out


def log_importance_weights(model, guide, *args, num_samples: int, reparameterised: bool = False,
                           **kwargs) -> torch.Tensor:
    """log w = log p(x, z) - log q(z | x) for ``num_samples`` draws z ~ q per datapoint, shape
    ``[num_samples, batch]``, with gradients; site scales (a KL weight) apply.

    :param reparameterised: refuse a guide with a latent that is not reparameterisable, whose
        gradient through these weights would miss its score-function term.

    The draws are one vectorised run under a ``"particles"`` plate; a pair whose code does not
    broadcast over that dimension (Pyro's CVAE example indexes its pixels with a boolean mask) is
    run once per draw instead, with a ``RuntimeWarning`` that says so.
    """
    try:
        with pyro.plate("particles", num_samples, dim=-2):
            return _log_weights(model, guide, args, kwargs, reparameterised)
    except (RuntimeError, IndexError, ValueError) as error:
        if num_samples == 1 or isinstance(error, ConfigError):
            raise
        warnings.warn(f"the pair does not run on {num_samples} draws at once ({type(error).__name__}: "
                      f"{str(error).splitlines()[0]}): drawing them one at a time, {num_samples} runs per batch",
                      RuntimeWarning, stacklevel=2)
        return torch.stack([_log_weights(model, guide, args, kwargs, reparameterised) for _ in range(num_samples)])


def _log_weights(model, guide, args, kwargs, reparameterised: bool) -> torch.Tensor:
    """log p(x, z) - log q(z | x) of one run of the pair (see ``log_importance_weights``)."""
    model_trace, guide_trace = trace_pair(model, guide, *args, **kwargs)
    discrete = [n for n, s in guide_trace.nodes.items() if s["type"] == "sample" and not s["fn"].has_rsample]
    if reparameterised and discrete:
        raise IncompatiblePairError(
            f"the importance-weighted bound's gradient needs reparameterised draws, but the guide's "
            f"{', '.join(map(repr, discrete))} cannot be reparameterised (a discrete latent): use estimator 'mc'")
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    # a latent the guide leaves to enumeration is drawn from the model's prior here: the proposal is p
    # there, and its density cancels from the weight
    log_w = sum(s["log_prob"] for n, s in model_trace.nodes.items() if s["type"] == "sample"
                and (s["is_observed"] or n in guide_trace.nodes))
    return log_w - sum(s["log_prob"] for s in guide_trace.nodes.values() if s["type"] == "sample")


def psis_khat(log_weights: torch.Tensor) -> torch.Tensor:
    """Pareto k-hat of the importance weights of each datapoint, ``log_weights`` ``[K, B]`` -> ``[B]``:
    the shape of a generalised Pareto fit to the largest weights (Vehtari et al. 2024, PSIS, Sec. 3),
    by ArviZ. Above 0.7 the importance-weighted estimate is unreliable. Weights that agree to within
    0.1% (q equal to the posterior, up to rounding) have no tail to fit and get -inf.
    """
    lw = log_weights.detach().double().cpu().numpy().T
    khat = np.full(lw.shape[0], -np.inf)
    varied = (lw.max(1) - lw.min(1)) > 1e-3
    if varied.any():
        # ArviZ follows the LOO convention (it smooths exp(-ary)): pass -log w to smooth w
        khat[varied] = array_stats.psislw(-lw[varied], axis=-1)[1]
    return torch.as_tensor(khat, dtype=torch.float32)


@dataclass
class ImportanceEstimate:
    """Per-datapoint ``log_px`` (the importance-weighted estimate of log p(x)) and ``elbo`` (the mean
    log-weight, a one-sample-ELBO average) from the same draws, in nats; ``gap`` = log_px - elbo;
    ``khat``, the PSIS k-hat of each datapoint's weights, where asked for."""

    log_px: torch.Tensor
    elbo: torch.Tensor
    khat: torch.Tensor | None = None

    @property
    def gap(self) -> torch.Tensor:
        """The variational gap, an estimate of KL(q(z | x) || p(z | x)) (>= 0 up to noise)."""
        return self.log_px - self.elbo


@torch.no_grad()
def importance_log_likelihood(model, guide, data: torch.Tensor, num_samples: int = 5000, chunk_size: int = 250,
                              batch_size: int = 100, khat: bool = False, progress: bool = False,
                              fields: dict[str, torch.Tensor] | None = None) -> ImportanceEstimate:
    """log p(x) ~ log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x), per datapoint: the IWAE
    bound of Burda et al. (2016), Eq. 8, which rises to log p(x) as K grows (their Theorem 1).

    The K draws are taken ``chunk_size`` at a time and folded into a running log-sum-exp, so
    memory grows with ``chunk_size * batch_size``, not with K.

    :param num_samples: K, importance samples per datapoint (5,000 in Burda et al.).
    :param chunk_size: samples drawn at once per datapoint.
    :param batch_size: datapoints scored at once.
    :param khat: also give the PSIS k-hat per datapoint (keeps K x ``batch_size`` weights at a time).
    :param fields: ``data``'s rows of the data fields the pair takes as keywords: for a conditional
        model (a prior on the visible pixels, a likelihood of the hidden ones) this is the conditional
        log p(x_hidden | x_visible), the importance-sampled CLL of Sohn et al. (2015).
    """
    if min(num_samples, chunk_size, batch_size) < 1:
        raise ValueError(f"num_samples, chunk_size and batch_size must be >= 1, got "
                         f"{num_samples}, {chunk_size}, {batch_size}")
    chunks = [min(chunk_size, num_samples - start) for start in range(0, num_samples, chunk_size)]
    log_px, elbo, khats = [], [], []
    fields = fields or {}
    batches = zip(data.split(batch_size), *[t.split(batch_size) for t in fields.values()])
    for x, *field_rows in tqdm(batches, desc="log p(x)", total=-(-len(data) // batch_size), disable=not progress,
                               leave=False):
        keywords = dict(zip(fields, field_rows))
        log_sum = torch.full((len(x),), -math.inf, device=x.device)
        total = torch.zeros(len(x), device=x.device)
        kept = []
        for k in chunks:
            log_w = log_importance_weights(model, guide, x, num_samples=k, **keywords)
            log_sum = torch.logaddexp(log_sum, log_w.logsumexp(0))
            total += log_w.sum(0)
            if khat:
                kept.append(log_w.cpu())
        log_px.append(log_sum - math.log(num_samples))
        elbo.append(total / num_samples)
        if khat:
            khats.append(psis_khat(torch.cat(kept)))
    return ImportanceEstimate(torch.cat(log_px), torch.cat(elbo), torch.cat(khats) if khat else None)
