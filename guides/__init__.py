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
from ppl_vae.guides.semi_supervised import SemiSupervisedGuide

__all__ = ["AmortisedGuide", "MeanFieldGuide", "GaussianGuide", "BernoulliGuide", "DeltaGuide",
           "StructuredDLGMGuide", "IAFGuide", "SemiSupervisedGuide"]
