"""Inference guides q(z | x): imported as ``ppl_vae.guides`` (never as a top-level ``guides``)."""

from ppl_vae.guides.encoders import AmortisedGuide, BernoulliEncoder, DeltaEncoder, GaussianEncoder, StructuredDLGMGuide

__all__ = ["AmortisedGuide", "GaussianEncoder", "BernoulliEncoder", "DeltaEncoder", "StructuredDLGMGuide"]
