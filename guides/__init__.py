"""Inference guides q(z | x): imported as ``ppl_vae.guides`` (never as a top-level ``guides``)."""

from ppl_vae.guides.encoders import (AmortisedGuide, BernoulliEncoder, DeltaEncoder, GaussianEncoder, IAFGuide,
                                    MeanFieldEncoder, StructuredDLGMGuide)

__all__ = ["AmortisedGuide", "MeanFieldEncoder", "GaussianEncoder", "BernoulliEncoder", "DeltaEncoder",
           "StructuredDLGMGuide", "IAFGuide"]
