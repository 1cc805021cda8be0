"""Generative models p(x, z): imported as ``ppl_vae.models`` (never as a top-level ``models``)."""

from ppl_vae.models.conditional import ConditionalVAE, cvae
from ppl_vae.models.likelihoods import LIKELIHOODS, Bernoulli, Gaussian
from ppl_vae.models.priors import PRIORS, BinaryUnits, MixtureOfGaussians, StandardNormal
from ppl_vae.models.semi_supervised import SemiSupervisedVAE, m2
from ppl_vae.models.vae import DLGM, GaussianVAE, dlgm, vae

__all__ = ["GaussianVAE", "DLGM", "StandardNormal", "MixtureOfGaussians", "BinaryUnits", "Bernoulli", "Gaussian",
           "PRIORS", "LIKELIHOODS", "vae", "dlgm", "SemiSupervisedVAE", "m2",
           "ConditionalVAE", "cvae"]
