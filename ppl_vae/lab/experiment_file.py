"""The experiment-file grammar: find and parse a TOML file, apply ``--set`` overrides and quick
mode, expand ``[grid]`` into cells, and validate every key before any work.

An experiment file has the sections ``[data]``, ``[model]``, ``[guide]`` (each a registered
``name`` plus that factory's keyword arguments; or, for the pair, Pyro code of the user's own, see
``pair_reference``), ``[train]`` (the fields of
``config.TrainConfig``), and optionally ``[diagnostics]`` (the fields of
``config.DiagnosticsConfig``), ``[grid]``, ``report`` (a study, ``ppl_vae.lab.studies``),
``description`` and ``imports`` (modules to import first, e.g. ones registering new pairs).

``[grid]`` axes are crossed; each combination is one independent cell. An axis is a dotted key
with a list of values (``"data.n" = [1, 5]``), or named variants, each a table of dotted keys
set together::

    [grid.family.dlgm]
    "model.name" = "dlgm"
    "guide.name" = "structured"

This module reads files and dictionaries only: it builds no model and imports no torch.
"""

from __future__ import annotations

import copy
import importlib
import importlib.resources
import itertools
import os
import sys
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from ppl_vae.errors import ConfigError
from ppl_vae.infer.config import DiagnosticsConfig, TrainConfig
from ppl_vae.lab import study
from ppl_vae.registry import DATASETS, GUIDES, MODELS, check_kwargs

SECTIONS = ("data", "model", "guide", "train", "diagnostics")
TOP_LEVEL = {"description", "imports", "grid", "report", *SECTIONS}
#: what ``--quick`` shrinks an experiment to: seconds, not minutes
QUICK = {"epochs": 2, "limit": 256, "width": 64, "grid_values": 2, "labelled": 50,
         "diagnostics": {"rows": 64, "particles": 10, "iw_samples": 50, "mean_samples": 50, "metric_train": 60,
                         "metric_eval": 40}}


@dataclass(frozen=True)
class Cell:
    """One combination of the grid's values: an independent run.

    :param name: ``axis=value`` pairs joined by ``__`` (empty for an experiment without a grid).
    :param values: ``{column: value}``, one per grid axis (the columns of ``results.csv``).
    :param config: the experiment's sections with this combination's keys set.
    """

    name: str
    values: dict[str, Any]
    config: dict

    def folder(self, out: str | Path) -> Path:
        """Where the cell writes: its own subfolder of the run folder ``out``, or ``out`` itself
        when the experiment has no grid (its one cell has no name)."""
        return Path(out) / self.name if self.name else Path(out)


def bundled() -> dict[str, Path]:
    """The experiment files shipped with the package (the package data ``ppl_vae.experiments``, from
    the top-level ``experiments/`` folder), by name: the same in a wheel as in an editable install."""
    found = (Path(str(p)) for p in importlib.resources.files("ppl_vae.experiments").iterdir())
    return {p.stem: p for p in sorted(found) if p.suffix == ".toml"}


def find(experiment: str | Path) -> Path:
    """An experiment named by path, or by bare name from ``experiments/``."""
    path = Path(experiment)
    if path.is_file():
        return path
    if str(experiment) in bundled():
        return bundled()[str(experiment)]
    raise ConfigError(f"no experiment {str(experiment)!r}: not a file, nor one of {', '.join(bundled())}")


def load(experiment: str | Path) -> tuple[str, dict]:
    """Parse an experiment file, import its ``imports`` and check its report's needs
    (``check_report``); returns (name, raw config)."""
    path = find(experiment)
    try:
        config = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from error
    import_plugins(config)
    check_report(config)
    return path.stem, config


def check_report(config: dict) -> None:
    """The grid axes and variants that the experiment's ``report`` reads exist in its ``[grid]``
    (``study.Study.check``), so a renamed axis fails now, not after the grid has trained."""
    if "report" in config:
        columns = {column: dict(options) for column, options in grid_axes(config.get("grid", {}))}
        study.find(config["report"]).check(columns, config["report"])


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (``3``, ``1e-3``, ``true``, ``[64, 32]``, ``"x"``), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def set_key(config: dict, dotted: str, value: Any) -> None:
    """SECTION.KEY = value; or SECTION = an inline table, which replaces the whole section (another
    data set for a study: ``data={name = "digits", binarize = "dynamic"}``)."""
    section, _, key = dotted.partition(".")
    if section in SECTIONS and not key and isinstance(value, dict):
        config[section] = dict(value)
        return
    if section not in SECTIONS or not key:
        raise ConfigError(f"cannot set {dotted!r}: keys look like SECTION.KEY with SECTION one of "
                          f"{', '.join(SECTIONS)}, or SECTION={{KEY = VALUE, ...}} to replace a whole section")
    config.setdefault(section, {})[key] = value


def override(config: dict, dotted: str, value: Any) -> None:
    """``--set``: SECTION.KEY, SECTION (an inline table: the whole section), or ``grid.AXIS`` to
    replace an axis's values (for named variants: a list of the names to keep, e.g.
    ``grid.family=["dlgm"]``). SECTION.KEY also replaces the key in every named variant that sets
    it: the command line wins over the file, so ``--set train.epochs=400`` shortens every cell."""
    if not dotted.startswith("grid."):
        set_key(config, dotted, value)
        for variants in config.get("grid", {}).values():
            for keys in variants.values() if isinstance(variants, dict) else ():
                if isinstance(keys, dict) and dotted in keys:
                    keys[dotted] = value
        return None
    grid, axis = config.setdefault("grid", {}), dotted.removeprefix("grid.")
    if isinstance(grid.get(axis), dict):
        values = value if isinstance(value, list) else [value]
        unknown = [v for v in values if v not in grid[axis]]
        if unknown:
            raise ConfigError(f"--set {dotted}: no variant(s) {unknown}; [grid.{axis}] has {', '.join(grid[axis])}")
        grid[axis] = {name: grid[axis][name] for name in values}
    else:
        set_key({}, axis, None)  # the same check of the key's form as elsewhere
        grid[axis] = value if isinstance(value, list) else [value]


def apply_overrides(config: dict, overrides: list[str]) -> None:
    """Apply ``--set KEY=VALUE`` items in order."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
        override(config, key.strip(), parse_value(value.strip()))


def quick(config: dict) -> dict:
    """Shrink any experiment to smoke size: few epochs, few examples, narrow networks, two values per
    grid axis, nothing compiled (compiling takes longer than such a run)."""
    config = copy.deepcopy(config)
    config.setdefault("train", {})["epochs"] = min(config["train"].get("epochs", QUICK["epochs"]), QUICK["epochs"])
    config["train"]["eval_every"] = 1
    config["train"]["compile"] = False
    config.setdefault("data", {})["limit"] = QUICK["limit"]
    for section in ("model", "guide"):
        hidden = config.get(section, {}).get("hidden")
        if isinstance(hidden, list):  # widths, one per layer
            config[section]["hidden"] = [min(w, QUICK["width"]) for w in hidden]
        elif isinstance(hidden, int):  # one width (a pair of the user's own, say)
            config[section]["hidden"] = min(hidden, QUICK["width"])
    n = QUICK["grid_values"]
    config["grid"] = {k: {name: {key: _quick_value(key, value) for key, value in keys.items()}
                          for name, keys in list(v.items())[:n]} if isinstance(v, dict)
                      else [_quick_value(k, value) for value in v[:n]] for k, v in config.get("grid", {}).items()}
    config["diagnostics"] = {**config.get("diagnostics", {}), **QUICK["diagnostics"]}
    return config


def _quick_value(key: str, value: Any) -> Any:
    """A grid value as ``quick`` runs it: an axis or variant that sets the run's length is shrunk too."""
    if key == "train.epochs":
        return min(value, QUICK["epochs"])
    if key == "train.compile":
        return False
    if key == "data.labelled" and isinstance(value, int):  # a few per class: the smoke run's 256 digits hold them
        return min(value, QUICK["labelled"])
    return 1 if key == "train.eval_every" else value


def grid_axes(grid: dict) -> list[tuple[str, list[tuple[Any, dict]]]]:
    """``[grid]`` as (column, [(value, {dotted key: value to set})]) per axis; the column is the key's
    last part (``data.n`` -> ``n``) unless two axes share it."""
    axes = []
    for key, values in grid.items():
        if isinstance(values, dict) and values and all(isinstance(v, dict) for v in values.values()):
            axes.append((key, list(values.items())))  # named variants
        elif isinstance(values, list) and values:
            axes.append((key, [(v, {key: v}) for v in values]))
        else:
            raise ConfigError(f"[grid] {key} must be a non-empty list of values, or named variants "
                              f"([grid.{key}.NAME] tables of SECTION.KEY = value), got {values!r}")
    short = [key.rpartition(".")[2] for key, _ in axes]
    return [(name if short.count(name) == 1 else key, options) for (key, options), name in zip(axes, short)]


def cells(config: dict) -> list[Cell]:
    """Expand ``[grid]`` into cells; one unnamed cell without a grid."""
    axes = grid_axes(config.get("grid", {}))
    out = []
    for combo in itertools.product(*(options for _, options in axes)):
        cell = copy.deepcopy({k: v for k, v in config.items() if k != "grid"})
        for _, overrides in combo:
            for key, value in overrides.items():
                set_key(cell, key, value)
        values = {column: value for (column, _), (value, _) in zip(axes, combo)}
        name = "__".join(f"{k}={v}" for k, v in values.items()).replace("/", "-").replace(" ", "")
        out.append(Cell(name, values, cell))
    return out


def validate(cell: dict) -> TrainConfig:
    """Check keys, names, types and ranges of one cell's config before any work; returns its TrainConfig."""
    unknown = set(cell) - TOP_LEVEL
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(TOP_LEVEL)}")
    import_plugins(cell)
    for section, registry in (("data", DATASETS), ("model", MODELS), ("guide", GUIDES)):
        options = dict(cell.get(section, {}))
        if "name" not in options:
            raise ConfigError(f"[{section}] needs a name; registered: {', '.join(sorted(registry))}")
        name = options.pop("name")
        reference = pair_reference(name, section) if section != "data" else None
        if reference is None:
            check_kwargs(registry[name], options, section, skip=("data_shape", "model"))
        elif reference.kind != "callable":
            check_kwargs(reference.target, options, section, skip=("data_shape", "model"))
        elif options:
            raise ConfigError(f"[{section}] {name!r} is used as it is, so it takes no options, but "
                              f"{', '.join(sorted(options))} given: name a factory instead (\"module:Factory.method\")")
    train = section_config(TrainConfig, cell, "train")
    diagnostics_config(cell)
    return train


def section_config(config_class: type, cell: dict, section: str):
    """The cell's ``[section]`` as ``config_class``, its keys, types and ranges checked."""
    options = cell.get(section, {})
    known = {f.name for f in fields(config_class)}
    if set(options) - known:
        raise ConfigError(f"[{section}] has unknown key(s) {sorted(set(options) - known)}; "
                          f"it accepts: {', '.join(sorted(known))}")
    check_kwargs(config_class, options, section)
    return config_class(**options)


def diagnostics_config(cell: dict) -> DiagnosticsConfig:
    """The cell's ``[diagnostics]`` section, checked."""
    return section_config(DiagnosticsConfig, cell, "diagnostics")


def import_plugins(cell: dict) -> None:
    """Import the modules named by ``imports`` (from the working directory too): they register new pairs."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in cell.get("imports", []):
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(f"imports: cannot import {module!r} ({error}); run from the folder that "
                              "holds it") from error


@dataclass(frozen=True)
class PairReference:
    """A model or guide that an experiment file names as Pyro code rather than a registered name.

    - ``"module:function"``: the callable itself (``model(x)``, ``guide(x)``), used as it is;
    - ``"module:Factory.attribute"``: ``Factory(**options)`` built once per cell (with the cell's
      ``data_shape`` too where it takes one), then its ``attribute``: the model and the guide of
      one module, ``"my_pairs:VAE.model"`` and ``"my_pairs:VAE.guide"``, share one instance, made
      with the options of ``[model]``;
    - for a guide, the name of an autoguide of ``pyro.infer.autoguide`` (``"AutoNormal"``), built
      as ``AutoNormal(model, **options)``.
    """

    kind: Literal["callable", "factory", "autoguide"]
    target: Any  # the callable, the factory or the autoguide class
    attribute: str = ""  # what to take from the factory's product


def pair_reference(name: str, section: str) -> PairReference | None:
    """``name`` of a ``[model]`` or ``[guide]`` read as Pyro code (see ``PairReference``), or None for
    a registered name. A module is imported from the working directory too."""
    if ":" in name:
        module_name, _, path = name.partition(":")
        import_plugins({"imports": [module_name]})
        root, _, attribute = path.partition(".")
        target = getattr(sys.modules[module_name], root, None)
        if target is None or not callable(target):
            raise ConfigError(f"[{section}] name = {name!r}: module {module_name!r} has no callable {root!r}")
        return PairReference("factory" if attribute else "callable", target, attribute)
    if section == "guide" and name.startswith("Auto") and name not in GUIDES:
        from pyro.infer import autoguide

        target = getattr(autoguide, name, None)
        if not isinstance(target, type):
            raise ConfigError(f"[guide] name = {name!r} is neither a registered guide ({', '.join(sorted(GUIDES))}) "
                              "nor an autoguide of pyro.infer.autoguide (AutoNormal, AutoDiagonalNormal, ...)")
        return PairReference("autoguide", target)
    return None
