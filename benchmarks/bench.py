"""The benchmark: what a Pyro model/guide pair costs over hand-written PyTorch. Run it from a checkout:
``python benchmarks/bench.py [--quick] [--device cuda]`` (``--help`` lists the options).

Not part of the test run, nor of the package: it reaches no private member of the package. Speed goals
live here. Everything is measured in one process, the variants interleaved round by round (in
alternating order), and medians reported.

- ``train``: time per training step of the same Gaussian VAE (784-512-512-32, Bernoulli
  decoder) written by hand in PyTorch and trained by the toolkit's default path
  (``Trainer.train_epoch``: the registered ``vae``/``gaussian`` pair, the ``mc`` estimator),
  both with data on the device, index batching, the same Adam, and one read-back per epoch;
  and, for reference, the toolkit with ``capture=False`` (Pyro run eagerly every step).
  Each round times one epoch of each, back to back; ``step_ratio`` is the median over rounds
  of the toolkit's time per step divided by hand-written PyTorch's in the same round, which
  keeps a slow spell of a shared machine from landing on one side only (the ratio of the two
  median times is reported beside it). Before timing, both take the same steps from the same
  parameters and noise, and their losses must agree.
- ``iw``: the importance-weighted log-likelihood (``importance_log_likelihood``) at K samples per
  datapoint for two chunk sizes: datapoints x samples per second and peak memory, each
  configuration in a fresh process so one's allocations cannot hide another's.
"""

from __future__ import annotations

import copy
import datetime
import functools
import math
import multiprocessing
import platform
import re
import statistics
import time
from dataclasses import replace as dataclass_replace
from pathlib import Path

import pyro
import torch
from torch import nn
from torch.nn import functional as F

from ppl_vae.data.datasets import DATASETS, Dataset
from ppl_vae.errors import ConfigError
from ppl_vae.infer.bounds import importance_log_likelihood
from ppl_vae.infer.random_state import rng_state, set_rng_state
from ppl_vae.infer.training import TrainConfig, Trainer, adam, resolve_device
from ppl_vae.io import write_json
from ppl_vae.registry import GUIDES, MODELS

LOG_2PI = math.log(2 * math.pi)
#: the benchmark VAE: 784-512-512-32 with a Bernoulli decoder
HIDDEN, LATENT = [512, 512], 32


class HandWrittenVAE(nn.Module):
    """The Gaussian VAE in plain PyTorch: -ELBO with a one-sample Monte Carlo KL, the toolkit's
    default estimator (Kingma & Welling 2014, Eq. 7), summed over the batch.

    :param encoder: x -> features; ``head``: features -> (loc, scale); ``decoder``: z -> logits.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.head, self.decoder = encoder, head, decoder

    @classmethod
    def copy_of(cls, model, guide) -> HandWrittenVAE:
        """A copy of a ``vae``/``gaussian`` pair's networks: the same parameters, separately trained."""
        return cls(*copy.deepcopy((guide.encoder, guide.heads["z"], model.decoder)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        loc, scale = self.head(self.encoder(x))
        eps = torch.randn_like(loc)
        z = loc + scale * eps
        log_px = -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").flatten(1).sum(-1)
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        log_qz = -(0.5 * eps.pow(2) + scale.log() + 0.5 * LOG_2PI).sum(-1)
        return (log_qz - log_pz - log_px).sum()


def hand_written_epoch(vae: HandWrittenVAE, optimizer: torch.optim.Optimizer, train: torch.Tensor,
                       batch_size: int) -> float:
    """One shuffled epoch the way it is written by hand; the mean training objective."""
    total = torch.zeros((), device=train.device)
    for index in torch.randperm(len(train), device=train.device).split(batch_size):
        x = train[index]
        loss = vae(x) / len(index)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(index)
    return total.item() / len(train)


def _machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text()).group(1)
    except (OSError, AttributeError):
        pass
    info = {"cpu": cpu, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "pyro": pyro.__version__, "device": str(device),
            "date": datetime.date.today().isoformat()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: the 64 x 64 conv pair of Higgins et al. (2017) / Locatello et al. (2019) on dSprites-like shapes
CONV = {"hidden": [256], "latent": 10, "network": "conv", "data": "dsprites"}


def _bench_data(kind: str, rows: int, batch_size: int) -> Dataset:
    """``rows`` training examples (whole batches) of the MLP's flattened digits or the conv pair's 64 x 64 shapes."""
    if kind == "dsprites":
        shapes = DATASETS["dsprites"](image_size=64, train_size=max(1, rows // batch_size) * batch_size, test_size=256)
        return Dataset("dsprites-like", shapes.train, shapes.test, binarize="none")
    digits = DATASETS["digits"](binarize="static")
    pixels = digits.train.flatten(1)
    train = pixels.repeat(math.ceil(rows / len(pixels)), 1)[: max(1, rows // batch_size) * batch_size]
    return Dataset("digits-tiled", train, digits.test.flatten(1)[:256], binarize="static")


def bench_train(batch_size: int, rows: int, rounds: int, device: torch.device, hidden=HIDDEN,
                latent=LATENT, log=print, network: str = "mlp", data: str = "digits", compile: bool = True) -> dict:
    """Median time per step of the hand-written and the toolkit's training epoch at ``batch_size``;
    ``compile``: also both under ``torch.compile`` (the toolkit's compiled graph checks its first
    step against the eager one itself, ``capture.TrainingLoss``)."""
    data = _bench_data(data, rows, batch_size)
    train = data.train

    pyro.set_rng_seed(0)
    model = MODELS["vae"](data.data_shape, latent_dim=latent, hidden=hidden, network=network)
    guide = GUIDES["gaussian"](model)
    hand = HandWrittenVAE.copy_of(model, guide).to(device)
    trainer = Trainer(model, guide, data, TrainConfig(batch_size=batch_size, lr=1e-3), device=device)
    hand_optimizer, train = adam(hand.parameters(), 1e-3), trainer.data.train

    # the same steps from the same parameters and noise give the same losses
    check = Dataset("check", trainer.data.train[: 4 * batch_size], trainer.data.test, binarize="static")
    losses = {}
    for name, epoch in (("toolkit", Trainer(model, guide, check, trainer.config, device=device).train_epoch),
                        ("pytorch", lambda: hand_written_epoch(hand, hand_optimizer, check.train, batch_size))):
        pyro.set_rng_seed(1)
        losses[name] = [epoch() for _ in range(3)]  # mean loss of 4 steps, three times over
    loss_rel_diff = max(abs(a - b) / abs(b) for a, b in zip(losses["toolkit"], losses["pytorch"]))

    eager = Trainer(*copy.deepcopy((model, guide)), data,
                    TrainConfig(batch_size=batch_size, lr=1e-3, capture=False), device=device)
    variants = {"pytorch": lambda: hand_written_epoch(hand, hand_optimizer, train, batch_size),
                "toolkit": trainer.train_epoch, "toolkit-eager": eager.train_epoch}
    if compile:
        compiled_hand = copy.deepcopy(hand)
        compiled_optimizer = adam(compiled_hand.parameters(), 1e-3)
        compiled_hand_step = torch.compile(compiled_hand)  # Dynamo + Inductor on the forward, AOTAutograd the backward
        compiled = Trainer(*copy.deepcopy((model, guide)), data,
                           TrainConfig(batch_size=batch_size, lr=1e-3, compile=True), device=device)
        variants |= {"pytorch-compiled": lambda: hand_written_epoch(compiled_hand_step, compiled_optimizer, train,
                                                                    batch_size),
                     "toolkit-compiled": compiled.train_epoch}
    steps = math.ceil(len(train) / batch_size)
    times, first = _interleaved(variants, rounds, steps, device, lambda round_, times: log(
        f"  batch {batch_size} round {round_}/{rounds}: " + ", ".join(f"{n} {t[-1]:.2f}" for n, t in times.items())
        + " ms/step"))
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731
    compiled_results = {} if not compile else {
        "compiled_step_ratio": ratio("toolkit-compiled", "pytorch-compiled"),
        "compiled_over_eager_pytorch": ratio("toolkit-compiled", "pytorch"),
        # the first (warm-up) epoch's extra time over a timed one: compiling, mostly
        "compile_s": {"toolkit": compiled.loss.compile_seconds,
                      "pytorch": first["pytorch-compiled"] - medians["pytorch-compiled"] * steps / 1000}}
    return {"network": network, "data": data.name, "batch_size": batch_size, "steps_per_round": steps, "rounds": rounds,
            "ms_per_step": medians, "steps_per_s": {name: 1000 / t for name, t in medians.items()},
            "ms_per_step_rounds": times,
            "step_ratio": ratio("toolkit", "pytorch"),
            "ratio_of_medians": medians["toolkit"] / medians["pytorch"],
            "eager_step_ratio": ratio("toolkit-eager", "pytorch"), **compiled_results,
            "loss_check": {"epochs_of_4_steps": losses, "max_rel_diff": loss_rel_diff, "equal": loss_rel_diff < 1e-5}}


def _interleaved(variants: dict, rounds: int, steps: int, device: torch.device, log) -> tuple[dict, dict]:
    """ms per step of each variant per round (round 0 warms up, untimed), in alternating order;
    and each variant's warm-up time in seconds."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    first = {}
    for round_ in range(rounds + 1):
        order = list(variants) if round_ % 2 else list(reversed(variants))
        for name in order:
            _sync(device)
            start = time.perf_counter()
            variants[name]()
            _sync(device)
            elapsed = time.perf_counter() - start
            if round_:
                times[name].append(elapsed / steps * 1000)
            else:
                first[name] = elapsed
        if round_:
            log(round_, times)
    return times, first


class HandWrittenDLGM(nn.Module):
    """The single-bit study's 2-layer DLGM in plain PyTorch: q(z1 | x) q(z2 | z1), p(z2) p(z1 | z2)
    p(x | z1), -ELBO with one-sample Monte Carlo KLs summed over the batch (Rezende et al. 2014)."""

    def __init__(self, encoder, q_z1, q_z2, conditional, decoder):
        super().__init__()
        self.encoder, self.q_z1, self.q_z2, self.conditional, self.decoder = encoder, q_z1, q_z2, conditional, decoder

    @classmethod
    def copy_of(cls, model, guide) -> HandWrittenDLGM:
        """A copy of a ``dlgm``/``structured`` pair's networks: the same parameters, separately trained."""
        return cls(*copy.deepcopy((guide.encoder, guide.q_z1, guide.q_z2, model.conditional, model.decoder)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        loc1, scale1 = self.q_z1(self.encoder(x))
        eps1 = torch.randn_like(loc1)
        z1 = loc1 + scale1 * eps1
        loc2, scale2 = self.q_z2(z1)
        eps2 = torch.randn_like(loc2)
        z2 = loc2 + scale2 * eps2
        prior_loc, prior_scale = self.conditional(z2)
        log_px = -F.binary_cross_entropy_with_logits(self.decoder(z1), x, reduction="none").sum(-1)
        log_pz = (-0.5 * (z2.pow(2) + LOG_2PI) - 0.5 * ((z1 - prior_loc) / prior_scale).pow(2)
                  - prior_scale.log() - 0.5 * LOG_2PI).sum(-1)
        log_qz = -(0.5 * (eps1.pow(2) + eps2.pow(2)) + scale1.log() + scale2.log() + LOG_2PI).sum(-1)
        return (log_qz - log_pz - log_px).sum()


def single_bit_cell(n: int = 5, family: str = "dlgm") -> dict:
    """The bundled ``single-bit`` study's cell of ``family`` (the 2-layer DLGM by default) at ``n`` bits,
    as a cell config."""
    from ppl_vae.lab import experiment_file

    _, config = experiment_file.load("single-bit")
    return next(c.config for c in experiment_file.cells(config)
                if c.values.get("n") == n and c.values.get("family") == family)


def bench_single_bit(n: int, rounds: int, device: torch.device, steps: int = 50, compile: bool = True,
                     log=print) -> dict:
    """Full-batch training steps per second of the single-bit study's 2-layer cell: the toolkit
    (captured; and compiled) against the same model written by hand (eager; and compiled).
    The plain ELBO on both sides (the cell's free bits off), ``steps`` steps per round. The toolkit
    steps read each loss back (``train_epoch``, one epoch a step) and, as ``toolkit-one-read``, the
    round's losses together (``train_epochs(steps)``, as ``fit`` runs the epochs between two history rows)."""
    from ppl_vae.lab.cell import build

    config = single_bit_cell(n)
    config["train"] = {**config["train"], "free_bits_sites": {}, "free_bits_release": 0.0, "compile": False}
    data, model, guide, train_config = build(config)
    kinds = ("", "-compiled") if compile else ("",)
    pairs = {f"toolkit{v}": copy.deepcopy((model, guide)) for v in (*kinds, "-one-read")}
    hands = {f"pytorch{v}": HandWrittenDLGM.copy_of(model, guide).to(device) for v in kinds}
    trainers = {name: Trainer(*pair, data, dataclass_replace(train_config, compile=name.endswith("compiled")),
                              device=device) for name, pair in pairs.items()}
    x = trainers["toolkit"].data.train
    optimizers = {name: adam(h.parameters(), train_config.lr) for name, h in hands.items()}
    forwards = {name: torch.compile(h) if name.endswith("compiled") else h for name, h in hands.items()}

    def hand_steps(name):
        for _ in range(steps):
            hand_written_epoch(forwards[name], optimizers[name], x, len(x))

    def toolkit_steps(name):
        if name.endswith("one-read"):
            trainers[name].train_epochs(steps)
            return
        for _ in range(steps):
            trainers[name].train_epoch()

    variants = {name: functools.partial(hand_steps, name) for name in hands}
    variants |= {name: functools.partial(toolkit_steps, name) for name in trainers}
    times, first = _interleaved(variants, rounds, steps, device, lambda round_, times: log(
        f"  single-bit n={n} round {round_}/{rounds}: " + ", ".join(f"{k} {t[-1]:.2f}" for k, t in times.items())
        + " ms/step"))
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731
    result = {"n": n, "rows": len(x), "steps_per_round": steps, "rounds": rounds, "ms_per_step": medians,
              "steps_per_s": {name: 1000 / t for name, t in medians.items()}, "step_ratio": ratio("toolkit", "pytorch"),
              "one_read_ratio": ratio("toolkit-one-read", "toolkit")}
    if compile:
        result |= {"compiled_step_ratio": ratio("toolkit-compiled", "pytorch-compiled"),
                   "compile_s": {"toolkit": trainers["toolkit-compiled"].loss.compile_seconds,
                                 "pytorch": first["pytorch-compiled"] - medians["pytorch-compiled"] * steps / 1000}}
    return result


def bench_restarts(n: int, rounds: int, device: torch.device, restarts: int = 8, steps: int = 20,
                   compile: bool = True, family: str = "dlgm", log=print) -> dict:
    """Training steps per second of ``restarts`` restarts of the single-bit study's cell of ``family`` at
    ``n`` bits (seeds 0, 1, ...; full batch, as the study has it: the 2-layer cell with its free bits and
    gradient cap by default, ``"gaussian"`` the 1-layer VAE), as one program against separate cells
    (``_bench_program``), ``steps`` epochs (of one step) of each per round."""
    config = single_bit_cell(n, family)
    config["train"] = {**config["train"], "compile": compile}
    configs = [{**config, "train": {**config["train"], "seed": seed}} for seed in range(restarts)]
    result = _bench_program(configs, rounds, device, steps, f"single-bit {family} n={n}", log)
    return {"n": n, "family": family, "compile": compile, **result}


def bench_dsprites_program(rounds: int, device: torch.device, epochs: int = 1, rows: int = 640, log=print) -> dict:
    """``dsprites-beta-gpu``'s six cells (2 betas x 3 seeds: the 64 x 64 conv pair, batches of 64) as one
    program against separate cells (``_bench_program``), on ``rows`` training images (``epochs`` passes a
    round: ``rows`` / 64 steps each), and what that makes per 10,000 steps and for the protocol's
    27 epochs of 11,364 steps (the study's wall time for training, diagnostics aside)."""
    from ppl_vae.lab import experiment_file

    _, experiment = experiment_file.load("dsprites-beta-gpu")
    configs = [c.config for c in experiment_file.cells(experiment)]
    train = configs[0]["train"]
    protocol_steps = train["epochs"] * math.ceil(configs[0]["data"]["train_size"] / train["batch_size"])
    for config in configs:
        config["data"] = {**config["data"], "train_size": rows, "test_size": train["batch_size"]}
    result = _bench_program(configs, rounds, device, epochs, "dsprites-beta-gpu", log)
    # seconds for a step of all six cells
    seconds = {name: ms * len(configs) / 1000 for name, ms in result["ms_per_restart_step"].items()}
    return {**result, "protocol_steps": protocol_steps,
            "s_per_10000_steps": {name: s * 10_000 for name, s in seconds.items()},
            "protocol_hours": {name: s * protocol_steps / 3600 for name, s in seconds.items()}}


def _bench_program(configs: list[dict], rounds: int, device: torch.device, epochs: int, label: str, log) -> dict:
    """Training steps per second of the cells ``configs`` (equal but for ``train.seed`` and
    ``train.kl_weight``) as one vectorised program (``train.vectorise``, ``Restarts.train_epochs``) against
    the same cells one after the other in this process (``Trainer.train_epochs``, as ``fit`` runs them),
    ``epochs`` passes of each per round, interleaved; a restart-step is one step of one cell. Both sides
    train the same restarts, so they end at the same parameters, to float rounding (reported)."""
    from ppl_vae.infer.restarts import Restarts
    from ppl_vae.lab.cell import build, load_data

    data = load_data(configs[0]).to(device)

    def trainers() -> list[Trainer]:
        made = []
        for config in configs:
            _, model, guide, train_config = build(config, data)
            made.append(Trainer(model, guide, data, train_config, device=device))
        return made

    separate, program = trainers(), Restarts(trainers())
    streams = []  # each separate cell's own random stream, as in a process of its own
    for trainer in separate:
        pyro.set_rng_seed(trainer.config.seed)
        streams.append(rng_state(device))
    program.seed()

    def one_by_one():
        for r, trainer in enumerate(separate):
            set_rng_state(streams[r], device)
            trainer.train_epochs(epochs)
            streams[r] = rng_state(device)

    restarts, steps = len(configs), epochs * separate[0].steps_per_epoch
    variants = {"separate": one_by_one, "vectorised": lambda: program.train_epochs(epochs)}
    times, first = _interleaved(variants, rounds, steps * restarts, device, lambda round_, times: log(
        f"  {restarts} restarts, {label} round {round_}/{rounds}: "
        + ", ".join(f"{k} {t[-1]:.2f}" for k, t in times.items()) + " ms/restart-step"))
    medians = {name: statistics.median(t) for name, t in times.items()}
    difference = max((p - q).abs().max().item() for t, u in zip(separate, program.trainers)
                     for p, q in zip(t.loss_fn.parameters(), u.loss_fn.parameters()))
    return {"restarts": restarts, "max_parameter_difference": difference,
            "same_step": all(t.step == program.step for t in separate), "steps_per_round": steps, "rounds": rounds,
            "threads": torch.get_num_threads(), "ms_per_restart_step": medians,
            "restart_steps_per_s": {name: 1000 / t for name, t in medians.items()},
            "speed_up": statistics.median(s / v for s, v in zip(times["separate"], times["vectorised"])),
            "first_round_s": first}


def bench_cuda_graphs(n: int, rounds: int, device: torch.device, restarts: int = 8, steps: int = 20,
                      compile: bool = True, log=print) -> dict:
    """Full-batch training steps per second of the single-bit study's 2-layer cell at ``n`` bits, its step
    replayed as one CUDA graph (``train.cuda_graphs``) against the same step launched kernel by kernel:
    one cell (``Trainer.train_epochs``) and ``restarts`` restarts as one program (``Restarts.train_epochs``),
    ``steps`` steps each per round, interleaved. The two sides of each pair start from the same parameters
    and random state and take the same steps (``max_parameter_difference``); ``graphed`` says whether the
    graphs were recorded (on the CPU ``train.cuda_graphs`` is ignored, and the two sides are the same)."""
    from ppl_vae.infer.cuda_graphs import GraphedStep
    from ppl_vae.infer.restarts import Restarts
    from ppl_vae.lab.cell import build, load_data

    config = single_bit_cell(n)
    data = load_data(config).to(device)

    def trainer(seed: int, graphs: bool) -> Trainer:
        config["train"] = {**config["train"], "compile": compile, "cuda_graphs": graphs, "seed": seed}
        _, model, guide, train_config = build(config, data)
        return Trainer(model, guide, data, train_config, device=device)

    cells = {graphs: trainer(0, graphs) for graphs in (False, True)}
    programs = {graphs: Restarts([trainer(seed, graphs) for seed in range(restarts)]) for graphs in (False, True)}
    pyro.set_rng_seed(0)
    streams = {graphs: rng_state(device) for graphs in (False, True)}  # the cell's stream, as in a process of its own
    for program in programs.values():
        program.seed()

    def one_cell(graphs: bool) -> None:
        set_rng_state(streams[graphs], device)
        cells[graphs].train_epochs(steps)
        streams[graphs] = rng_state(device)

    variants = {"cell": functools.partial(one_cell, False), "cell, CUDA graph": functools.partial(one_cell, True),
                "program": lambda: programs[False].train_epochs(steps),
                "program, CUDA graph": lambda: programs[True].train_epochs(steps)}
    times, _ = _interleaved(variants, rounds, steps, device, lambda round_, times: log(
        f"  single-bit dlgm n={n} round {round_}/{rounds}: " + ", ".join(f"{k} {t[-1]:.2f}" for k, t in times.items())
        + " ms/step"))
    medians = {name: statistics.median(t) for name, t in times.items()}
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731

    def difference(a: list[Trainer], b: list[Trainer]) -> float:
        return max((p - q).abs().max().item() for s, t in zip(a, b)
                   for p, q in zip(s.loss_fn.parameters(), t.loss_fn.parameters()))

    graphs = [None if joint is None else joint.graph for joint in cells[True].loss.graphs.values()]  # None: eager
    return {"n": n, "restarts": restarts, "compile": compile, "steps_per_round": steps, "rounds": rounds,
            "ms_per_step": medians, "steps_per_s": {name: 1000 / t for name, t in medians.items()},
            "speed_up": {"cell": ratio("cell", "cell, CUDA graph"), "program": ratio("program", "program, CUDA graph")},
            "max_parameter_difference": {"cell": difference([cells[False]], [cells[True]]),
                                         "program": difference(programs[False].trainers, programs[True].trainers)},
            "graphed": {"cell": bool(graphs) and all(isinstance(g, GraphedStep) for g in graphs),
                        "program": bool(programs[True].graphs)
                        and all(isinstance(s.recorded, GraphedStep) for s in programs[True].graphs.values())}}


def _resident_mib(field: str) -> float:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def _iw_worker(config: dict, device: str, queue) -> None:
    """Run one importance-weighted estimate in this (fresh) process; report time and peak memory."""
    torch.set_num_threads(config["threads"])
    device = torch.device(device)
    pyro.set_rng_seed(0)
    model = MODELS["vae"]((784,), latent_dim=LATENT, hidden=HIDDEN).to(device)
    guide = GUIDES["gaussian"](model).to(device)
    x = DATASETS["digits"](binarize="static").test.flatten(1)[: config["datapoints"]].to(device)
    options = dict(num_samples=config["num_samples"], chunk_size=config["chunk_size"], batch_size=config["datapoints"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set size (Linux)
        base = _resident_mib("VmRSS")
    start = time.perf_counter()
    estimate = importance_log_likelihood(model, guide, x, **options)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = _resident_mib("VmHWM") - base
    seconds = time.perf_counter() - start
    queue.put({**config, "seconds": seconds, "samples_per_s": config["datapoints"] * config["num_samples"] / seconds,
               "peak_mib": peak, "mean_log_px": estimate.log_px.mean().item()})


def bench_iw(num_samples: list[int], chunk_sizes: list[int], datapoints: int, device: torch.device,
             log=print) -> list[dict]:
    """Importance-weighted log-likelihood throughput and peak memory per (K, chunk size)."""
    if device.type == "cpu" and not Path("/proc/self/clear_refs").exists():
        log("  (peak memory on the CPU needs Linux's /proc; skipped)")
        return []
    context, rows = multiprocessing.get_context("spawn"), []
    for k in num_samples:
        for chunk in chunk_sizes:
            config = {"num_samples": k, "chunk_size": chunk, "datapoints": datapoints,
                      "threads": torch.get_num_threads()}
            queue = context.Queue()
            worker = context.Process(target=_iw_worker, args=(config, str(device), queue))
            worker.start()
            rows.append(queue.get())
            worker.join()
            log(f"  K {k} chunk {chunk}: {rows[-1]['samples_per_s']:,.0f} datapoint-samples/s, "
                f"peak {rows[-1]['peak_mib']:.0f} MiB")
    return rows


def _generator_worker(image_size: int, queue) -> None:
    """Render the whole dSprites-like set in this (fresh) process, sprites included; report the time."""
    from ppl_vae.data.dsprites import ShapesWorld

    start = time.perf_counter()
    packed = ShapesWorld(image_size).render_all_packed()
    queue.put((time.perf_counter() - start, len(packed), packed.nbytes))


def bench_generator(image_size: int, rounds: int, log=print) -> dict:
    """Wall time of rendering the whole dSprites-like set (737,280 images) packed as bits, sprites
    included (each round in a fresh process, so no round finds the sprites already drawn)."""
    context, times = multiprocessing.get_context("spawn"), []
    for _ in range(rounds):
        queue = context.Queue()
        worker = context.Process(target=_generator_worker, args=(image_size, queue))
        worker.start()
        seconds, images, nbytes = queue.get()
        worker.join()
        times.append(seconds)
    log(f"  dSprites-like set at {image_size} x {image_size}: {statistics.median(times):.2f} s "
        f"({nbytes / 2**20:.0f} MiB packed)")
    return {"image_size": image_size, "images": images, "seconds": times, "median_s": statistics.median(times),
            "packed_mib": nbytes / 2**20}


def sync_free_epochs(device: torch.device, log=print) -> list[dict]:
    """One epoch of ``digits-vae`` (captured; and compiled) and of the single-bit 2-layer cell at
    n = 1000 under ``torch.cuda.set_sync_debug_mode("error")``, after a first epoch that captures:
    whether any step read back to the host (CUDA only)."""
    from ppl_vae.lab import experiment_file
    from ppl_vae.lab.cell import build

    results = []
    _, digits = experiment_file.load("digits-vae")
    for name, config, compile in (("digits-vae", experiment_file.cells(digits)[0].config, False),
                                  ("digits-vae", experiment_file.cells(digits)[0].config, True),
                                  ("single-bit n=1000 dlgm", single_bit_cell(1000), False)):
        data, model, guide, train_config = build(config)
        trainer = Trainer(model, guide, data, dataclass_replace(train_config, compile=compile), device=device)
        trainer.train_epoch()  # captures (and checks) the graph: read-backs allowed here
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            for index in torch.randperm(len(trainer.data.train), device=device).split(trainer.batch_size):
                trainer.train_step(trainer.data.batch(index))  # the loss stays on the device: no read-back
            error = None
        except RuntimeError as caught:
            error = str(caught).splitlines()[0]
        finally:
            torch.cuda.set_sync_debug_mode(0)
        results.append({"run": name, "compile": compile, "sync_free": error is None, "error": error})
        log(f"  {name}{' compiled' if compile else ''}: " + ("no step read back to the host" if error is None
                                                              else f"a step synchronised: {error}"))
    return results


def bench_sweep(experiment: str, jobs: int, device: torch.device, log=print) -> dict:
    """Wall time of a whole study (``ppl-vae run EXPERIMENT --jobs JOBS``) into a scratch folder,
    compiling and diagnostics included."""
    import tempfile

    from ppl_vae.lab.experiment import run as run_experiment

    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        summaries = run_experiment(experiment, Path(scratch) / experiment, device=str(device), jobs=jobs)
        seconds = time.perf_counter() - start
    log(f"  {experiment} --jobs {jobs}: {seconds:.0f} s for {len(summaries)} cells")
    return {"experiment": experiment, "jobs": jobs, "cells": len(summaries), "seconds": seconds}


def run(out: str | Path = "runs/bench.json", device: str = "auto", rounds: int = 41, rows: int = 8192,
        quick: bool = False, sweep: bool = False, jobs: int = 2, log=print) -> dict:
    """Run every benchmark, print a table and write the results (JSON) to ``out``; ``sweep`` also
    times the whole ``single-bit`` study with ``jobs`` cells at a time (minutes)."""
    device = resolve_device(device)
    sizes = dict(rows=512, hidden=[32], latent=4) if quick else dict(rows=rows)
    rounds = 1 if quick else rounds
    log(f"training steps, {'quick' if quick else '784-512-512-32 VAE'} on {device}:")
    train = [bench_train(b, rounds=rounds, device=device, log=log, compile=not quick, **sizes) for b in (128, 1024)]
    log(f"training steps, {'quick' if quick else '64 x 64 conv VAE (Higgins et al. 2017)'} on {device}:")
    conv = dict(rows=128, hidden=[16], latent=2) if quick else dict(rows=640, hidden=CONV["hidden"],
                                                                        latent=CONV["latent"])
    train.append(bench_train(64, rounds=rounds, device=device, log=log, network="conv", data="dsprites", compile=False,
                             **conv))
    log("single-bit 2-layer cell (full batch):")
    single_bit = [bench_single_bit(n, rounds=rounds, device=device, steps=2 if quick else 50, compile=not quick,
                                   log=log) for n in ((5,) if quick else (5, 1000))]
    log(f"restarts as one vectorised program against separate cells ({torch.get_num_threads()} threads):")
    restarts = [bench_restarts(n, rounds=min(rounds, 11), device=device, steps=2 if quick else 20,
                               restarts=2 if quick else 8, compile=not quick, family=family, log=log)
                for family in ("dlgm", "gaussian") for n in ((5,) if quick else (5, 1000))]
    log("dSprites-like generator:")
    generator = [bench_generator(size, 1 if quick else 5, log) for size in (64, 32)]
    log("importance-weighted log-likelihood:")
    iw = bench_iw([200] if quick else [1000, 5000], [50, 100] if quick else [100, 1000], 4 if quick else 20, device,
                  log)
    result = {"machine": _machine(device), "quick": quick, "train": train, "single_bit": single_bit, "iw": iw,
              "generator": generator, "restarts": restarts}
    if device.type == "cuda":
        log("single-bit 2-layer cell, its step as one CUDA graph against kernel by kernel:")
        compiles = (False,) if quick else (False, True)
        result["cuda_graphs"] = [bench_cuda_graphs(n, rounds=min(rounds, 11), device=device, steps=2 if quick else 20,
                                                   restarts=2 if quick else 8, compile=compile, log=log)
                                 for n in ((5,) if quick else (5, 1000)) for compile in compiles]
        log("dsprites-beta-gpu's six cells as one program against separate cells:")
        result["dsprites_program"] = bench_dsprites_program(min(rounds, 5), device, epochs=1,
                                                            rows=128 if quick else 640, log=log)
        log("an epoch under torch.cuda.set_sync_debug_mode('error'):")
        result["sync_free"] = sync_free_epochs(device, log)
    if sweep:
        log("single-bit study, whole sweep:")
        result["sweep"] = bench_sweep("single-bit", jobs, device, log)
    for r in train:
        suffix = f"{'' if r['network'] == 'mlp' else '_' + r['network']}_b{r['batch_size']}"
        result[f"step_ratio{suffix}"] = r["step_ratio"]
        if "compiled_step_ratio" in r:
            result[f"compiled_step_ratio{suffix}"] = r["compiled_step_ratio"]
    write_json(out, result)
    log(table(result))
    log(f"written to {out}")
    return result


def _compiled_columns(values: dict, result: dict, digits: int) -> str:
    """The compiled variants' cells of a table row (nan where they were not timed)."""
    compile_s = result.get("compile_s", {})
    return (f"{values.get('pytorch-compiled', math.nan):.{digits}f} | "
            f"{values.get('toolkit-compiled', math.nan):.{digits}f} | "
            f"{result.get('compiled_step_ratio', math.nan):.3f} | {compile_s.get('pytorch', math.nan):.1f} / "
            f"{compile_s.get('toolkit', math.nan):.1f}")


def table(result: dict) -> str:
    """The results as Markdown tables."""
    m = result["machine"]
    lines = [f"{m['date']}, {m['cpu']} ({m['threads']} threads), {m.get('gpu', m['device'])}, torch {m['torch']}, "
             f"pyro {m['pyro']}", "",
             "Step ratio: the toolkit's ms/step over hand-written PyTorch's, the median of per-round ratios; "
             "compiled: both under `torch.compile` (the toolkit's captured graph through Inductor, "
             "`train.compile = true`).", "",
             "| network | batch | hand-written ms/step | toolkit ms/step | step ratio | equal losses "
             "| hand-written compiled | toolkit compiled | compiled step ratio | compile s (hand / toolkit) "
             "| eager toolkit ms/step | eager step ratio |",
             "|---|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["train"]:
        t = r["ms_per_step"]
        lines.append(f"| {r['network']} ({r['data']}) | {r['batch_size']} | {t['pytorch']:.2f} | {t['toolkit']:.2f} | "
                     f"{r['step_ratio']:.3f} | {'yes' if r['loss_check']['equal'] else 'NO'} | "
                     f"{_compiled_columns(t, r, 2)} | {t['toolkit-eager']:.2f} | {r['eager_step_ratio']:.3f} |")
    if result.get("single_bit"):
        lines += ["", "| single-bit 2-layer cell | rows | hand-written steps/s | toolkit steps/s | step ratio "
                  "| hand-written compiled steps/s | toolkit compiled steps/s | compiled step ratio "
                  "| compile s (hand / toolkit) | toolkit steps/s, one read a round | its ms ratio to a read a step |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in result["single_bit"]:
            v = r["steps_per_s"]
            lines.append(f"| n = {r['n']} | {r['rows']} | {v['pytorch']:.0f} | {v['toolkit']:.0f} | "
                         f"{r['step_ratio']:.3f} | "
                         f"{_compiled_columns(v, r, 0)} | {v.get('toolkit-one-read', math.nan):.0f} | "
                         f"{r.get('one_read_ratio', math.nan):.3f} |")
    if result.get("restarts"):
        lines += ["", "| single-bit cell, restarts | threads | compiled | separate restart-steps/s "
                  "| vectorised restart-steps/s | speed-up |", "|---|---:|:---:|---:|---:|---:|"]
        for r in result["restarts"]:
            v = r["restart_steps_per_s"]
            lines.append(f"| {r['family']}, n = {r['n']}, {r['restarts']} restarts | {r['threads']} | "
                         f"{'yes' if r['compile'] else 'no'} | {v['separate']:.0f} | {v['vectorised']:.0f} | "
                         f"{r['speed_up']:.3f} |")
    if result.get("cuda_graphs"):
        lines += ["", "| single-bit 2-layer cell | compiled | cell steps/s | with a CUDA graph | speed-up "
                  "| program steps/s | with a CUDA graph | speed-up | graphed |",
                  "|---|:---:|---:|---:|---:|---:|---:|---:|:---:|"]
        for r in result["cuda_graphs"]:
            v, up = r["steps_per_s"], r["speed_up"]
            lines.append(f"| n = {r['n']}, program of {r['restarts']} | {'yes' if r['compile'] else 'no'} | "
                         f"{v['cell']:.0f} | {v['cell, CUDA graph']:.0f} | {up['cell']:.2f} | {v['program']:.0f} | "
                         f"{v['program, CUDA graph']:.0f} | {up['program']:.2f} | "
                         f"{'yes' if all(r['graphed'].values()) else 'NO'} |")
    if result.get("dsprites_program"):
        r = result["dsprites_program"]
        v, per, whole = r["restart_steps_per_s"], r["s_per_10000_steps"], r["protocol_hours"]
        lines += ["", "| dsprites-beta-gpu, 6 cells | restart-steps/s | s per 10,000 steps | hours for "
                  f"{r['protocol_steps']:,} steps |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {v[name]:.0f} | {per[name]:.0f} | {whole[name]:.1f} |" for name in v]
    for r in result.get("sync_free", []):
        lines += ["", f"{r['run']}{' (compiled)' if r['compile'] else ''}: an epoch under "
                      f"`set_sync_debug_mode('error')`: " + ("no step read back to the host" if r["sync_free"]
                                                              else f"a step synchronised ({r['error']})")]
    if result.get("sweep"):
        w = result["sweep"]
        lines += ["", f"`ppl-vae run {w['experiment']} --jobs {w['jobs']}`: {w['seconds']:.0f} s wall time "
                      f"({w['cells']} cells)"]
    if result["iw"]:
        lines += ["", "| K | chunk | datapoints | datapoint-samples/s | peak MiB |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['num_samples']} | {r['chunk_size']} | {r['datapoints']} | {r['samples_per_s']:,.0f} | "
                  f"{r['peak_mib']:.0f} |" for r in result["iw"]]
    lines += ["", "| dSprites-like set | images | median s | packed MiB |", "|---|---:|---:|---:|"]
    lines += [f"| {g['image_size']} x {g['image_size']} | {g['images']:,} | {g['median_s']:.2f} | "
              f"{g['packed_mib']:.0f} |" for g in result.get("generator", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench.json", help="results file (default: runs/bench.json)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--rounds", type=int, default=41, help="timed rounds per batch size (default: 41)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: checks that the benchmark runs, times nothing")
    parser.add_argument("--sweep", action="store_true", help="also time the whole single-bit study (minutes)")
    parser.add_argument("--jobs", type=int, default=2, help="cells at a time for --sweep (default: 2)")
    args = parser.parse_args(argv)
    try:
        run(args.out, args.device, args.rounds, quick=args.quick, sweep=args.sweep, jobs=args.jobs)
    except ConfigError as error:  # a device torch does not have, say: one line, exit 2, as ppl-vae's
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
