"""What a trained pair is measured by: posterior collapse (``collapse``: active units, KL per
dimension, mutual information, the importance-weighted log p(x)), disentanglement metrics
(``disentanglement``), latent-space geometry (``latent_space``) and anomaly scores (``anomaly``)."""

from ppl_vae.evaluation.collapse import active_units, diagnose, latent_information

__all__ = ["diagnose", "active_units", "latent_information"]
