"""Generative models p(x, z): imported as ``ppl_vae.models`` (never as a top-level ``models``)."""

from ppl_vae.models.likelihoods import LIKELIHOODS, Bernoulli, Gaussian
from ppl_vae.models.priors import PRIORS, MixtureOfGaussians, StandardNormal
from ppl_vae.models.vae import DLGM, GaussianVAE, dlgm, vae

__all__ = ["GaussianVAE", "DLGM", "StandardNormal", "MixtureOfGaussians", "Bernoulli", "Gaussian",
           "PRIORS", "LIKELIHOODS", "vae", "dlgm"]
