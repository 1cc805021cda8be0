"""The ``ppl-vae`` command: ``run`` an experiment, ``report`` a finished run again, ``explore`` a
finished image run (interpolations, traversals), ``list`` what is bundled. (The benchmark is
``python benchmarks/bench.py`` in a checkout.)"""

from __future__ import annotations

import argparse
import inspect
import re
import sys

from ppl_vae.errors import ConfigError, Fault


def first_sentence(text: str | None) -> str:
    """The first sentence of ``text``, on one line, however the text is wrapped."""
    flat = " ".join((text or "").split())
    match = re.search(r"(?<!\be\.g)(?<!\bi\.e)(?<!\bet al)(?<!\bEq)(?<!\bEqs)(?<!\bSec)(?<!\bvs)[.!?](?=\s|$)", flat)
    return flat[: match.end()] if match else flat


def list_all() -> str:
    from ppl_vae.lab import study
    from ppl_vae.lab.experiment_file import bundled, load
    from ppl_vae.registry import DATASETS, ESTIMATORS, GUIDES, MODELS

    lines = ["experiments:"]
    lines += [f"  {name:<18} {first_sentence(load(path)[1].get('description'))}" for name, path in bundled().items()]
    for title, registry in (("models", MODELS), ("guides", GUIDES), ("estimators", ESTIMATORS),
                            ("datasets", DATASETS)):
        lines.append(f"{title}:")
        lines += [f"  {name:<18} {first_sentence(factory.__doc__)}" for name, factory in sorted(registry.items())]
    lines.append("reports:")
    lines += [f"  {name:<18} {first_sentence(inspect.getmodule(study.find(name).report).__doc__)}"
              for name in study.bundled()]
    return "\n".join(lines)


def _pair(text: str) -> tuple[int, int]:
    first, sep, second = text.partition(":")
    if not (sep and first.strip().isdigit() and second.strip().isdigit()):
        raise ConfigError(f"expected two whole numbers as A:B (e.g. 1:7), got {text!r}")
    return int(first), int(second)


def _pairs(text: str | None) -> list[tuple[int, int]] | None:
    return [_pair(item) for item in text.split(",")] if text else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ppl-vae", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run an experiment file into a run folder")
    run.add_argument("experiment", help="path to a .toml file, or the name of one in experiments/")
    run.add_argument("--out", help="run folder (default: runs/EXPERIMENT)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set train.epochs=5 (repeatable)")
    run.add_argument("--device", default="auto", help="auto (CUDA when there is a GPU, else the CPU), cpu or cuda "
                     "(default: auto)")
    run.add_argument("--quick", action="store_true", help="shrink to a smoke-sized run that takes seconds")
    run.add_argument("--force", action="store_true", help="overwrite an existing run folder")
    run.add_argument("--resume", action="store_true", help="continue an existing run folder from its checkpoints")
    run.add_argument("--jobs", type=int, default=1, help="grid cells to run in parallel (default: 1)")
    run.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                     help="run the grid's cells as Ray tasks: on a new local Ray instance, or on the cluster at "
                          "ADDRESS (auto, HOST:PORT or ray://HOST:PORT); needs pip install -e '.[ray]'")
    run.add_argument("--gpus-per-cell", type=float, default=1.0,
                     help="with --ray on CUDA: the share of a GPU each cell asks for (default: 1)")
    again = commands.add_parser("report", help="write a finished run's report.md and figures again")
    again.add_argument("folder", help="the run folder (the --out of the run)")
    explore = commands.add_parser("explore", help="draw interpolations and latent traversals for a finished image run")
    explore.add_argument("folder", help="the run folder (the --out of the run), or one cell's folder")
    explore.add_argument("--cell", help="only this cell of a grid (default: every finished cell)")
    explore.add_argument("--between", default="1:7", metavar="A:B",
                         help="interpolate from held-out images labelled A to ones labelled B (default: 1:7)")
    explore.add_argument("--pairs", metavar="I:J,...", help="interpolate between these held-out indices instead")
    explore.add_argument("--rows", type=int, default=4, help="pairs drawn with --between (default: 4)")
    explore.add_argument("--steps", type=int, default=10, help="images per interpolation (default: 10)")
    explore.add_argument("--example", type=int, default=0, help="held-out image to traverse (default: 0)")
    explore.add_argument("--dims", type=int, default=10, help="traversed dimensions, most KL first (default: 10)")
    explore.add_argument("--site", help="latent site (default: the model's first)")
    commands.add_parser("list", help="list bundled experiments, models, guides, estimators and datasets")
    args = parser.parse_args(argv)

    try:
        if args.command == "list":
            print(list_all())
            return 0
        if args.command == "report":
            from ppl_vae.lab.experiment import report

            print(report(args.folder))
            return 0
        if args.command == "explore":
            from ppl_vae.lab.explore import explore as draw

            for path in draw(args.folder, args.cell, _pair(args.between), _pairs(args.pairs), args.rows, args.steps,
                             args.example, args.dims, args.site):
                print(path)
            return 0
        from ppl_vae.lab.experiment import run as run_experiment

        summaries = run_experiment(args.experiment, args.out, args.overrides, args.device, args.quick, args.force,
                                   args.resume, args.jobs, progress=True, ray=args.ray,
                                   gpus_per_cell=args.gpus_per_cell)
    except ConfigError as error:  # every user error (a bad file, value, pair or run folder): one line, exit 2
        print(f"ppl-vae: error: {error}", file=sys.stderr)
        return 2
    except Fault as error:  # valid input, failed work (cells that raised: the others are gathered): exit 1
        print(f"ppl-vae: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: what was written is whole (atomic writes, checkpoints)
        print("\nppl-vae: interrupted. Finished cells and checkpoints are kept: rerun the same command with "
              "--resume to finish", file=sys.stderr)
        return 130
    print(f"{'cell':<40} {'-ELBO':>9} {'recon':>8} {'KL':>7} {'active':>6} {'log p(x)':>9} {'train -ELBO':>11} "
          f"{'s':>6}")
    for s in summaries:
        print(f"{s['cell'] or s['experiment']:<40} {s['loss']:>9.3f} {s['recon']:>8.3f} {s['kl']:>7.3f} "
              f"{s['active_units']:>6} {s['log_px_iw']:>9.3f} {s['train_loss']:>11.3f} {s['seconds']:>6.1f}")
    print("nats per example: -ELBO = recon + KL and log p(x) (importance-weighted) on held-out data; "
          "active = active latent units")
    return 0


if __name__ == "__main__":
    sys.exit(main())
