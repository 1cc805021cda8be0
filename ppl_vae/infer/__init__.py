"""Inference: what turns a model/guide pair and data into a trained pair.

Handlers that scale or floor a site's KL (``handlers``), the estimators of the bound
(``objectives``: ``mc``, ``analytic``, ``iw``), any pair SVI accepts made trainable (``pairs``),
the captured and compiled loss (``capture``), the trainer and its configuration (``training``,
``config``), restarts trained as one vectorised program (``restarts``), a captured step replayed as
one CUDA graph (``cuda_graphs``), the replay that names a
non-finite step's sites (``nonfinite``), the random state (``random_state``), and the
per-datapoint ELBO terms and importance-weighted log-likelihood (``bounds``).
"""

from ppl_vae.infer import objectives  # noqa: F401  (registers the estimators)
from ppl_vae.infer.bounds import elbo_terms, evaluate, importance_log_likelihood
from ppl_vae.infer.config import DiagnosticsConfig, TrainConfig
from ppl_vae.infer.handlers import FreeBits, FreeBitsRelease, KLSchedule, KLWeight
from ppl_vae.infer.nonfinite import NonFiniteLossError
from ppl_vae.infer.restarts import Restarts
from ppl_vae.infer.training import Trainer

__all__ = ["Trainer", "TrainConfig", "DiagnosticsConfig", "KLWeight", "KLSchedule", "FreeBits", "FreeBitsRelease",
           "NonFiniteLossError", "Restarts", "elbo_terms", "evaluate", "importance_log_likelihood"]
