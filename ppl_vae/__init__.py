"""ppl-vae: variational autoencoders as Pyro model/guide pairs, trained with SVI.

``fit`` trains any pair in one call; ``run`` runs an experiment file (a grid of cells, a study)
into a run folder, ``report`` writes a finished run's report again, ``restore`` loads a trained
cell back, ``diagnose`` measures posterior collapse for any pair. The subpackages, lowest first:
``infer`` (estimators, handlers, the trainer), ``data``, ``evaluation``, ``viz`` and ``lab`` (running experiments).

>>> import ppl_vae
>>> from ppl_vae.models import GaussianVAE
>>> sorted(ppl_vae.MODELS), sorted(ppl_vae.GUIDES)
(['cvae', 'dlgm', 'm2', 'vae'], ['bernoulli', 'delta', 'gaussian', 'iaf', 'm2', 'structured'])
>>> sorted(ppl_vae.ESTIMATORS)
['analytic', 'enum', 'iw', 'mc']
"""

import importlib

# Importing the toolkit changes none of Pyro's settings: each pair it trains keeps its parameters
# in a param store of its own (``ppl_vae.infer.pairs``), whatever ``module_local_params`` says.
from ppl_vae import guides, models  # registers the bundled models and guides
from ppl_vae.data import DATASETS, Dataset  # registers the data sets
from ppl_vae.errors import ConfigError, Fault, IncompatiblePairError
from ppl_vae.evaluation import diagnose
from ppl_vae.fitting import Fit, fit
from ppl_vae.infer import (
                           DiagnosticsConfig,
                           FreeBits,
                           FreeBitsRelease,
                           KLSchedule,
                           KLWeight,
                           NonFiniteLossError,
                           TrainConfig,
                           Trainer,
                           elbo_terms,
                           evaluate,
                           importance_log_likelihood,
)
from ppl_vae.registry import ESTIMATORS, GUIDES, MODELS

#: imported on first use: running experiments brings matplotlib and torchvision's utilities (1.5 s on
#: 2 CPU cores), which training and diagnosing from Python, and every grid worker's start, do without
_RUNS = {"run": "ppl_vae.lab.experiment", "report": "ppl_vae.lab.experiment", "restore": "ppl_vae.lab.cell"}


def __getattr__(name: str):
    if name in _RUNS:
        return getattr(importlib.import_module(_RUNS[name]), name)
    raise AttributeError(f"module 'ppl_vae' has no attribute {name!r}")


__all__ = ["fit", "Fit", "run", "report", "restore", "diagnose", "models", "guides", "MODELS", "GUIDES", "ESTIMATORS",
           "DATASETS", "Dataset", "Trainer", "TrainConfig", "DiagnosticsConfig", "KLWeight", "KLSchedule", "FreeBits",
           "FreeBitsRelease", "elbo_terms", "evaluate", "importance_log_likelihood", "ConfigError", "Fault",
           "IncompatiblePairError", "NonFiniteLossError"]
