"""Experiment-file text that several test modules build on (``from experiment_text import ...``;
``tests/`` is on pytest's ``pythonpath``)."""

#: the smallest experiment file: 4 replicated bits, a 1-D latent, one hidden layer of 8; tests add
#: their own [train], [diagnostics] and [grid] sections
TINY_EXPERIMENT = """
description = "a tiny valid experiment"
[data]
name = "bits"
n = 4
rows = 40
[model]
name = "vae"
latent_dim = 1
hidden = [8]
[guide]
name = "gaussian"
"""
