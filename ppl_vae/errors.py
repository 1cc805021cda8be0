"""The toolkit's errors, in the two kinds the command line tells apart.

- ``ConfigError`` (a ``ValueError``): the input is wrong: an experiment file, a value, a pair, a
  data file, a run folder, a missing optional extra. The message names the key and the fix;
  ``ppl-vae`` prints it on one line and exits 2.
- ``Fault`` (a ``RuntimeError``): the input was valid, but the work failed: a loss that turned
  NaN (``NonFiniteLossError``), codes that are not finite (``NonFiniteCodesError``), cells of a
  grid that raised (``CellsFailed``). Each has its own class; ``ppl-vae`` prints it and exits 1.
"""


class ConfigError(ValueError):
    """Bad input (a configuration, a value, a pair, a file): the message names the key and the fix."""


class IncompatiblePairError(ConfigError):
    """This guide (or estimator) cannot serve this model; the message says which would."""


class Fault(RuntimeError):
    """Valid input, failed work: the message says where it failed and what was kept."""
