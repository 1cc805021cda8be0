"""Guards on the package's structure: its layers (no import runs back up one), no import cycle, no
module that imports the benchmark, and the private Pyro API it builds on still has the shape it was
written against."""

import ast
import importlib.util
import inspect
import pkgutil
from pathlib import Path

from pyro.infer import Trace_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from torch.distributions.utils import _sum_rightmost

import ppl_vae
import ppl_vae.lab.studies

PACKAGES = [ppl_vae, ppl_vae.models, ppl_vae.guides, ppl_vae.lab.studies]
MODULES = sorted({p.__name__ for p in PACKAGES}
                 | {m.name for p in PACKAGES for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".")})


def imported_modules(name: str) -> set[str]:
    """The package modules that module ``name`` imports anywhere in its source (function bodies too)."""
    spec = importlib.util.find_spec(name)
    with open(spec.origin) as source:
        tree = ast.parse(source.read())
    package = name if spec.submodule_search_locations else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = {f"{base}.{alias.name}" for alias in node.names}
            found |= names  # `from pkg import module`
            if not names <= set(MODULES):  # names defined by the module `base` itself
                found.add(base)
    return {m for m in found if m in MODULES and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


#: The package's layers, lowest first. A module imports from lower layers and from its own unit (a
#: subpackage or a module of its layer), never from a unit beside it or above it: the engine
#: (``infer``) knows no bundled model, and nothing below ``lab`` knows of experiment files.
LAYERS = [
    ["ppl_vae.errors"],
    ["ppl_vae.registry", "ppl_vae.io", "ppl_vae.tracing", "ppl_vae.networks"],  # the core every layer shares
    ["ppl_vae.data"],
    ["ppl_vae.infer", "ppl_vae.models", "ppl_vae.guides"],
    ["ppl_vae.evaluation"],
    ["ppl_vae.fitting", "ppl_vae.viz"],
    ["ppl_vae.lab", "ppl_vae.experiments"],
    ["ppl_vae.cli", "ppl_vae"],  # the command line, and the package's face (its __init__)
]


def unit_of(module: str) -> tuple[int, str]:
    """The layer and unit of ``module``: the longest unit it is, or sits inside."""
    units = [(layer, unit) for layer, names in enumerate(LAYERS) for unit in names
             if module == unit or module.startswith(unit + ".")]
    assert units, f"{module} is in no layer: add it (or its subpackage) to LAYERS in tests/test_architecture.py"
    return max(units, key=lambda u: len(u[1]))


def test_no_import_runs_up_a_layer_or_sideways():
    wrong = []
    for name in MODULES:
        layer, unit = unit_of(name)
        for imported in imported_modules(name):
            their_layer, their_unit = unit_of(imported)
            if their_unit != unit and their_layer >= layer:
                wrong.append(f"{name} (layer {layer}) imports {imported} (layer {their_layer})")
    assert not wrong, "\n".join(wrong)


def test_the_layer_check_sees_an_upward_import():
    assert unit_of("ppl_vae.infer.training") == (3, "ppl_vae.infer")
    assert unit_of("ppl_vae.lab.studies.single_bit") == (6, "ppl_vae.lab")
    assert "ppl_vae.lab.cell" in imported_modules("ppl_vae.lab.explore")
    assert "ppl_vae.data.datasets" in imported_modules("ppl_vae.infer.training")


def test_no_module_of_the_package_imports_the_benchmark():
    """Nothing in the package uses the benchmark (``benchmarks/bench.py``), and the benchmark reaches no
    private name of the package: no ``_name`` imported from it, no ``._name`` attribute anywhere."""
    for name in MODULES:
        with open(importlib.util.find_spec(name).origin) as source:
            tree = ast.parse(source.read())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {m for m in imported if m.split(".")[0] in ("bench", "benchmarks")}, name
    bench = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"
    tree = ast.parse(bench.read_text())
    private = [f"line {node.lineno}: {alias.name}" for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ppl_vae")
               for alias in node.names if alias.name.startswith("_")]
    private += [f"line {node.lineno}: .{node.attr}" for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert not private, "benchmarks/bench.py reaches private names: " + ", ".join(private)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_package():
    """Every import of a package module by another (module level or inside a function), as a
    graph: acyclic. A parent package is not an edge of its submodules (Python imports it first
    whatever the submodule says)."""
    graph = {name: imported_modules(name) for name in MODULES}
    assert "ppl_vae.lab.cell" in graph["ppl_vae.lab.studies.single_bit"]  # the walk sees what it must
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_private_pyro_and_torch_functions_we_call_keep_their_signatures():
    """``objectives`` overrides ``Trace_ELBO._get_traces`` and calls ``_compute_log_r``;
    ``models.likelihoods`` calls torch's ``_sum_rightmost``. pyproject.toml bounds pyro-ppl to the
    versions tested; a release that changes these fails here, by name, not deep inside training."""
    expected = {
        Trace_ELBO._get_traces: ["self", "model", "guide", "args", "kwargs"],
        _compute_log_r: ["model_trace", "guide_trace"],
        _sum_rightmost: ["value", "dim"],
    }
    for function, parameters in expected.items():
        found = list(inspect.signature(function).parameters)
        assert found == parameters, (f"{function.__module__}.{function.__qualname__} now takes {found}, not "
                                     f"{parameters}: ppl_vae was written against the old signature; update "
                                     "ppl_vae/infer/objectives.py (or models/likelihoods.py) and the pyro-ppl bound")
