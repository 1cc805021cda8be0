"""The two configurations an experiment file's sections map onto: ``[train]`` is ``TrainConfig``,
``[diagnostics]`` is ``DiagnosticsConfig``. Frozen dataclasses, a comment on every default, each
range checked on construction (``ConfigError`` names the key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ppl_vae.errors import ConfigError
from ppl_vae.registry import ESTIMATORS


@dataclass(frozen=True)
class TrainConfig:
    """How to fit a pair; every field is a key of an experiment file's ``[train]`` section."""

    epochs: int = 20  # passes over the training set
    batch_size: int = 128  # examples per step; 0 = the full training set
    lr: float = 1e-3  # Adam learning rate at the first step
    lr_final: float | None = None  # decay exponentially to this by the last step; None = constant
    estimator: str = "mc"  # registered ELBO estimator: mc | analytic | iw | enum
    num_particles: int = 1  # samples of z per datapoint in the training objective
    free_bits: float = 0.0  # nats per latent dimension the KL may use for free (Kingma et al. 2016); 0 = off
    # per-site free bits, e.g. {z2 = 0.5}; ahead of free_bits
    free_bits_sites: dict[str, float] = field(default_factory=dict)
    free_bits_release: float = 0.0  # share of the steps over which free_bits_sites fall linearly to 0; 0 = held
    grad_clip: float = 0.0  # max L2 norm of each step's gradient over all parameters (torch's clip_grad_norm_); 0 = off
    kl_weight: float = 1.0  # beta: 1 = ELBO, > 1 = beta-VAE, 0 with guide "delta" = plain autoencoder
    kl_schedule: Literal["constant", "linear", "cyclical"] = "constant"  # how the weight reaches kl_weight
    kl_warmup_epochs: float = 0.0  # linear schedule: epochs to ramp the weight from 0
    kl_cycles: int = 4  # cyclical schedule: number of ramps over the run
    seed: int = 0  # seeds parameters, batches and samples: the same seed gives the same run
    checkpoint_every: int = 5  # epochs between checkpoints (the last epoch is always saved)
    eval_every: int = 1  # epochs between scored history rows (the last epoch is always scored)
    # He et al. (2019), Algorithm 1: before each decoder step, encoder-only steps on fresh batches until the
    # encoder's loss stops falling; the phase ends once the held-out I(x; z) has failed to rise 5 times
    aggressive: bool = False
    aggressive_epochs: int = 0  # the most epochs the aggressive phase may last; 0 = until I(x; z) stops rising
    # history rows also hold the held-out I(x; z) and KL(q(z) || p(z)) (ELBO surgery); on when aggressive
    track_information: bool = False
    capture: bool = True  # replay the loss as a captured graph (ppl_vae.infer.capture); false = run the pair eagerly
    compile: bool = False  # compile the captured graph with Inductor (torch.compile); one that fails replays uncompiled
    # on CUDA, replay each captured (and compiled) step as one CUDA graph (ppl_vae.infer.cuda_graphs), checked like
    # the capture; one that fails replays as before, with a warning; ignored on the CPU
    cuda_graphs: bool = False
    # run folders: the grid's cells that differ only in seed and kl_weight train as one vectorised program
    # (ppl_vae.infer.restarts); cells that cannot run separately, with a warning saying why
    vectorise: bool = False
    threads: int = 0  # torch's CPU threads while training and diagnosing, under every runner; 0 = as torch has it
    tensorboard: bool = False  # run folders: each cell also logs its history and image grids (ppl_vae.viz.board)
    # the guide sees corrupted x (denoising; ppl_vae.data.corruption)
    input_noise: Literal["none", "gaussian", "masking"] = "none"
    noise_level: float = 0.5  # gaussian: the noise's standard deviation; masking: the fraction of pixels set to 0

    def __post_init__(self):
        checks = {
            "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 0, "lr": self.lr > 0,
            "lr_final": self.lr_final is None or self.lr_final > 0, "num_particles": self.num_particles >= 1,
            "free_bits": self.free_bits >= 0, "free_bits_release": 0 <= self.free_bits_release <= 1,
            "free_bits_sites": isinstance(self.free_bits_sites, dict)
            and all(isinstance(v, (int, float)) and v >= 0 for v in self.free_bits_sites.values()),
            "kl_weight": self.kl_weight >= 0, "grad_clip": self.grad_clip >= 0,
            "kl_warmup_epochs": self.kl_warmup_epochs >= 0, "kl_cycles": self.kl_cycles >= 1,
            "checkpoint_every": self.checkpoint_every >= 0, "threads": self.threads >= 0,
            "noise_level": self.noise_level >= 0 and (self.input_noise != "masking" or self.noise_level < 1),
            "eval_every": self.eval_every >= 1, "aggressive_epochs": self.aggressive_epochs >= 0,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"[train] {key} = {getattr(self, key)!r} is out of range")
        ESTIMATORS[self.estimator](self.num_particles, self.free_bits)  # unknown name or bad pairing -> ConfigError
        if self.kl_warmup_epochs and self.kl_schedule != "linear":
            raise ConfigError(f"[train] kl_warmup_epochs = {self.kl_warmup_epochs} ramps the KL weight only with "
                              f"kl_schedule = 'linear' (it is {self.kl_schedule!r}): set kl_schedule = 'linear'")
        if self.estimator == "enum" and (self.kl_weight != 1 or self.kl_schedule != "constant" or self.free_bits_sites):
            raise ConfigError("[train] estimator 'enum' sums discrete sites out, and Pyro's TraceEnum_ELBO needs one "
                              "scale for every site that depends on them: set kl_weight = 1, kl_schedule = 'constant' "
                              "and no free_bits_sites, or use estimator 'mc' to weight the KL")
        if self.free_bits_sites and self.estimator == "iw":
            raise ConfigError("[train] free_bits_sites apply to a KL term, which the importance-weighted bound "
                              "has not: use estimator 'mc' or 'analytic'")


#: ArviZ's PSIS fits the largest min(K / 5, 3 sqrt(K)) of K weights and needs at least 5 of them
PSIS_MIN_SAMPLES = 25


@dataclass(frozen=True)
class DiagnosticsConfig:
    """What ``collapse.diagnose`` measures; the keys of an experiment file's ``[diagnostics]`` section."""

    rows: int = 500  # held-out rows scored (the first ones)
    particles: int = 10  # draws of z per datapoint for the ELBO terms
    iw_samples: int = 200  # K, importance samples per datapoint for log p(x), the gap and PSIS k-hat
    chunk_size: int = 100  # importance samples drawn at once per datapoint (bounds the memory)
    info_samples: int = 1  # draws per datapoint for I(x; z) and KL(q(z) || p(z))
    mean_samples: int = 500  # draws per datapoint averaged into E_q[z | x] where it has no closed form (flows)
    metric_train: int = 10_000  # disentanglement metrics (data with factors): training points, as disentanglement_lib
    metric_eval: int = 5_000  # disentanglement metrics: held-out points of the classifier scores

    def __post_init__(self):
        for key in ("rows", "particles", "iw_samples", "chunk_size", "info_samples", "mean_samples", "metric_train",
                    "metric_eval"):
            if getattr(self, key) < 1:
                raise ConfigError(f"[diagnostics] {key} = {getattr(self, key)!r} is out of range: it must be >= 1")
        if self.iw_samples < PSIS_MIN_SAMPLES:
            raise ConfigError(f"[diagnostics] iw_samples = {self.iw_samples!r} is out of range: PSIS k-hat needs at "
                              f"least {PSIS_MIN_SAMPLES} importance samples per datapoint (a tail of 5 draws)")
