"""ppl-vae: variational autoencoders as Pyro model/guide pairs, trained with SVI.

>>> import ppl_vae
>>> from ppl_vae.models import GaussianVAE
>>> sorted(ppl_vae.MODELS), sorted(ppl_vae.GUIDES), sorted(ppl_vae.ESTIMATORS)
(['dlgm', 'vae'], ['bernoulli', 'delta', 'gaussian', 'iaf', 'structured'], ['analytic', 'iw', 'mc'])
"""

# Importing the toolkit changes none of Pyro's settings: each pair it trains keeps its parameters
# in a param store of its own (``ppl_vae.pairs``), whatever ``module_local_params`` says.
from ppl_vae import guides, models  # noqa: E402  (registers the bundled models and guides)
from ppl_vae import objectives  # noqa: E402,F401  (registers the estimators)
from ppl_vae import dsprites  # noqa: E402,F401  (registers the dsprites dataset)
from ppl_vae.data import DATASETS, Dataset  # noqa: E402
from ppl_vae.diagnostics import elbo_terms, evaluate, importance_log_likelihood  # noqa: E402
from ppl_vae.handlers import FreeBits, FreeBitsRelease, KLSchedule, KLWeight  # noqa: E402
from ppl_vae.registry import ESTIMATORS, GUIDES, MODELS, ConfigError, IncompatiblePairError  # noqa: E402
from ppl_vae.config import DiagnosticsConfig, TrainConfig  # noqa: E402
from ppl_vae.nonfinite import NonFiniteLossError  # noqa: E402
from ppl_vae.training import Trainer  # noqa: E402

__all__ = ["models", "guides", "MODELS", "GUIDES", "ESTIMATORS", "DATASETS", "Dataset", "KLWeight", "KLSchedule", "FreeBits", "FreeBitsRelease",
           "TrainConfig", "DiagnosticsConfig", "Trainer", "NonFiniteLossError", "ConfigError", "IncompatiblePairError", "elbo_terms",
           "evaluate", "importance_log_likelihood"]
