"""Guards on the package's structure: no import cycle, and the private Pyro API it builds on
still has the shape it was written against."""

import ast
import importlib.util
import inspect
import pkgutil

import ppl_vae
import ppl_vae.studies
from pyro.infer import Trace_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from torch.distributions.utils import _sum_rightmost

PACKAGES = [ppl_vae, ppl_vae.models, ppl_vae.guides, ppl_vae.studies]
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
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
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


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_the_package():
    """Every import of a package module by another (module level or inside a function), as a
    graph: acyclic. A parent package is not an edge of its submodules (Python imports it first
    whatever the submodule says)."""
    graph = {name: imported_modules(name) for name in MODULES}
    assert "ppl_vae.cell" in graph["ppl_vae.studies.single_bit"]  # the walk sees what it must
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
                                     "ppl_vae/objectives.py (or models/likelihoods.py) and the pyro-ppl bound")
