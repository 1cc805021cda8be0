"""What a study report is and how one is found by name; the bundled ones are ``ppl_vae/lab/studies/``.

An experiment file's ``report = "NAME"`` names the module ``ppl_vae.lab.studies.NAME`` (hyphens as
underscores: ``single-bit`` is ``single_bit.py``); a dotted name (``my_pkg.my_study``) names a
module of your own, imported from the working directory. Either way the module defines
``STUDY``, a ``Study``: the report function and the grid axes and variants it reads, which
``check`` holds against the experiment's ``[grid]`` when the file is loaded, before any cell
trains.
"""

from __future__ import annotations

import importlib
import pkgutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppl_vae.errors import ConfigError

#: report(run folder, one row per cell: its grid values and summary.json, the cells' configs) -> Markdown
Report = Callable[[Path, list[dict], list[dict]], str]
#: measure(model, guide, data, cell config) -> numbers for the cell's summary.json, once it has trained
Measure = Callable[[Any, Any, Any, dict], dict]


@dataclass(frozen=True)
class Study:
    """A study's report and what it reads of the grid.

    :param report: writes the study's figures into the run folder and returns its Markdown.
    :param axes: grid columns the report reads (as in ``results.csv``: ``data.n`` is ``n``).
    :param variants: per named-variant axis, the variants whose rows its checks compare.
    :param measure: what the study measures of each trained cell beyond ``collapse.diagnose``
        (disentanglement scores, say), added to its ``summary.json``.
    :param columns: the keys of ``measure``'s numbers that ``results.csv`` shows.
    """

    report: Report
    axes: tuple[str, ...] = ()
    variants: dict[str, tuple[str, ...]] = field(default_factory=dict)
    measure: Measure | None = None
    columns: tuple[str, ...] = ()

    def check(self, grid: dict[str, dict[Any, Any]], name: str) -> None:
        """Raise ``ConfigError`` unless ``grid`` (``{column: {value or variant name: ...}}``) has
        every axis and variant this report reads."""
        for axis in (*self.axes, *self.variants):
            if axis not in grid:
                raise ConfigError(f"report {name!r} reads grid axis {axis!r}, which [grid] lacks "
                                  f"(its axes: {', '.join(grid) or 'none'}): add the axis, or drop the report")
        for axis, names in self.variants.items():
            absent = [v for v in names if v not in grid[axis]]
            if absent:
                raise ConfigError(f"report {name!r} compares variant(s) {', '.join(absent)} of grid axis {axis!r}, "
                                  f"which [grid.{axis}] lacks (it has {', '.join(map(str, grid[axis]))}): "
                                  "add them, or drop the report")


STUDIES_DIR = Path(__file__).resolve().parent / "studies"


def bundled() -> list[str]:
    """The names of the studies shipped in ``ppl_vae/lab/studies/``."""
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules([str(STUDIES_DIR)]))


def find(name: str) -> Study:
    """The ``STUDY`` of the module that ``name`` names (see the module docstring)."""
    module_name = name if "." in name else f"ppl_vae.lab.studies.{name.replace('-', '_')}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not (module_name + ".").startswith(error.name + "."):
            raise  # the module exists but something it imports does not
        raise ConfigError(f"unknown report {name!r}; bundled: {', '.join(bundled())} (or a dotted name: "
                          "a module of yours that defines STUDY)") from error
    study = getattr(module, "STUDY", None)
    if not isinstance(study, Study):
        raise ConfigError(f"report {name!r}: module {module_name} defines no STUDY (a ppl_vae.lab.study.Study)")
    return study


def best_per_cell(rows: list[dict], keys: tuple[str, ...], score: str = "loss") -> dict[tuple, dict]:
    """The row with the lowest ``score`` for each combination of ``keys`` (the best restart)."""
    best: dict[tuple, dict] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        if key not in best or row[score] < best[key][score]:
            best[key] = row
    return best


def by_axis(rows: list[dict], axis: str) -> dict[str, list[dict]]:
    """The rows grouped by their value on the grid axis ``axis`` (as text), in the rows' order."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row[axis]), []).append(row)
    return groups


def mean_sd(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """``mean +- sd`` of ``values`` (over seeds) times ``scale``; the mean alone for one value, blank for none."""
    if not values:
        return ""
    mean = statistics.fmean(values) * scale
    return f"{mean:.{digits}f}" + (f" +- {statistics.stdev(values) * scale:.{digits}f}" if len(values) > 1 else "")


def figure(out: Path, path: Path, caption: str) -> str:
    """The figure ``path`` (written inside the run folder ``out``) as Markdown the report shows: the
    image, linked relative to ``report.md`` so any Markdown viewer draws it, over its caption."""
    return f"![{caption}]({path.relative_to(out).as_posix()})\n\n*{caption}*"


def check_line(ok: bool, text: str) -> str:
    """A claim as a Markdown checklist line: ``- [x] PASS: ...`` or ``- [ ] FAIL: ...``."""
    return f"- [{'x' if ok else ' '}] {'PASS' if ok else 'FAIL'}: {text}"


@dataclass(frozen=True)
class Margin:
    """How far the claim "every value of ``below`` is less than every value of ``above``" (values
    over seeds, or a fixed threshold as a one-value list) is from failing: ``worst``, by how much its
    worst pair of seeds clears it, min(above) - max(below) (negative where it fails), beside
    ``spread``, the larger standard deviation over seeds of the two sides (0 for one value), or the
    measurement's own ``noise`` (a standard error) where that is larger. It holds when ``worst``
    exceeds ``spread``: a difference inside the seed spread, or inside the measurement's noise, is
    no finding."""

    worst: float
    spread: float

    @classmethod
    def of(cls, below: list[float], above: list[float], noise: float = 0.0) -> Margin:
        spreads = [statistics.stdev(side) for side in (below, above) if len(side) > 1]
        return cls(min(above) - max(below), max([*spreads, noise, 0.0]))

    @property
    def holds(self) -> bool:
        return self.worst > self.spread


def margin_line(below: list[float], above: list[float], text: str, scale: float = 1.0, digits: int = 3,
                noise: float = 0.0) -> str:
    """``check_line`` for the claim ``below`` < ``above`` (see ``Margin``), its margin and the spread it must
    exceed appended (times ``scale``: 100 for percentages)."""
    margin = Margin.of(below, above, noise)
    return check_line(margin.holds, f"{text}; margin {margin.worst * scale:.{digits}f} on the worst seed against a "
                                    f"spread of {margin.spread * scale:.{digits}f}")
