"""Inference guides q(z | x): imported as ``ppl_vae.guides`` (never as a top-level ``guides``)."""

from ppl_vae.guides.encoders import (
                                    AmortisedGuide,
                                    BernoulliGuide,
                                    DeltaGuide,
                                    GaussianGuide,
                                    IAFGuide,
                                    MeanFieldGuide,
                                    StructuredDLGMGuide,
)

__all__ = ["AmortisedGuide", "MeanFieldGuide", "GaussianGuide", "BernoulliGuide", "DeltaGuide",
           "StructuredDLGMGuide", "IAFGuide"]
