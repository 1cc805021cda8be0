"""Any model/guide pair that ``pyro.infer.SVI`` runs: functions, bound methods, ``nn.Module`` instances,
``PyroModule`` instances and autoguides, with their parameters found the way Pyro finds them.

Pyro keeps what ``pyro.param`` and ``pyro.module`` register in one global param store, by name,
so two pairs that both call ``pyro.module("decoder", ...)`` would share a decoder. Here each pair
has a store of its own: ``PairParams`` holds the pair's parameters as a ``torch.nn.Module`` (so the
optimiser, ``state_dict``, ``.to(device)`` and the captured training graph see them), and every
call of the model or the guide runs inside ``ParamStoreDict.scope`` with the store holding that
pair's parameters and nothing else. Pyro's global store, and its settings, are left as they were.

``as_pair(model, guide, x)`` runs the guide, then the model on the guide's draws, on two small
batches of ``x`` (as SVI's first step runs them), which creates every parameter and shows the
sites: the observed one, the per-datapoint latents (inside the plate whose size is the batch's)
and the global latents (outside it: Bayesian weights, say). A pair that already keeps the
toolkit's contract (``nn.Module`` instances with ``data_shape`` and ``latent_dims``, observing ``"x"``,
no param-store parameters and no global latents: every bundled pair) is returned as it is.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyro
import torch
from torch import nn

from ppl_vae.errors import ConfigError, IncompatiblePairError
from ppl_vae.infer.random_state import preserved_rng
from ppl_vae.tracing import trace_pair


@dataclass(frozen=True)
class Sites:
    """A pair's sample sites, in model order: ``observed``, the per-datapoint latents ``local``
    (name -> size of one datapoint's value), the ``global_`` latents shared by all data (with
    the guide's own auxiliary sites outside the data plate, whose log q belongs to their KL), and
    the model's discrete sites that the guide leaves to enumeration (``summed_out``: a mixture's
    assignment, marginalised by estimator ``enum``; elsewhere drawn from the prior, q = p)."""

    observed: str
    local: dict[str, int]
    global_: tuple[str, ...]
    summed_out: tuple[str, ...] = ()


def describe(fn: Callable) -> str:
    """A callable's name for an error message: ``my_pairs.model``, ``VAE.guide``, ``AutoNormal``."""
    owner = getattr(fn, "__self__", None)
    if owner is not None:
        return f"{type(owner).__name__}.{fn.__name__}"
    if isinstance(fn, nn.Module):
        return type(fn).__name__
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def owners(fn: Callable) -> list[nn.Module]:
    """The ``nn.Module`` instances a callable runs: itself, the module a method is bound to, and the modules
    a function refers to by a global name or a closure (as ``pyro.module("decoder", decoder)`` does)."""
    if isinstance(fn, nn.Module):
        return [fn]
    if isinstance(getattr(fn, "__self__", None), nn.Module):
        return [fn.__self__]
    found = []
    code = getattr(fn, "__code__", None)
    if code is not None:
        names = [fn.__globals__.get(name) for name in code.co_names]
        cells = [cell.cell_contents for cell in fn.__closure__ or () if cell.cell_contents is not None]
        found = [m for m in names + cells if isinstance(m, nn.Module)]
    return found


def _parameters(fn: Callable) -> list[inspect.Parameter] | None:
    """The parameters after the data ``x`` of a model or guide callable (an ``nn.Module``'s ``forward``);
    None where it takes ``**kwargs``: it accepts any field and asks for none (an autoguide, a guide of x
    alone beside a conditional model)."""
    target = fn.forward if isinstance(fn, nn.Module) else fn
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):  # a builtin or a callable without a signature: x alone
        return []
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p for p in params[1:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def requested_fields(model: Callable, guide: Callable, available, data: str = "the data") -> tuple[str, ...]:
    """The data fields (``Dataset.train_fields``) a pair is called with, as keywords: those its model or
    guide names among its parameters, in the order the data hold them. Raises ``ConfigError`` for a
    parameter without a default that the data lack, and ``IncompatiblePairError`` where the model
    takes a field that the guide cannot (SVI calls both with the same arguments)."""
    available = list(available)
    found = {}
    for role, fn in (("model", model), ("guide", guide)):
        params = _parameters(fn)
        found[role] = {p.name for p in params or () if p.name in available}
        missing = [p.name for p in params or () if p.default is p.empty and p.name not in available]
        if missing:
            raise ConfigError(
                f"the {role} {describe(fn)} asks for {', '.join(map(repr, missing))}, but {data} "
                f"{'has the fields ' + ', '.join(map(repr, available)) if available else 'has no fields beside x'}: "
                "use data that carry them (the digits and mnist data sets carry their labels as 'y' and "
                "'labelled'), or give the parameter a default")
    names = found["model"] | found["guide"]
    for role, fn in (("model", model), ("guide", guide)):
        params = _parameters(fn)
        refused = sorted(names - {p.name for p in params}) if params is not None else []
        if refused:
            raise IncompatiblePairError(
                f"the {role} {describe(fn)} takes no {', '.join(map(repr, refused))}, which the other takes: "
                f"SVI calls model and guide with the same arguments, so give the {role} that parameter "
                f"(e.g. {refused[0]}=None)")
    return tuple(name for name in available if name in names)


def accepted_fields(fn: Callable, names) -> tuple[str, ...]:
    """Those of the field ``names`` that ``fn`` can be called with as keywords (all, for ``**kwargs``)."""
    params = _parameters(fn)
    return tuple(names) if params is None else tuple(name for name in names if name in {p.name for p in params})


class PairParams(nn.Module):
    """One pair's parameters, by their param-store names (``paths``: where each one lives here).

    ``owners``: the modules the pair's callables belong to or refer to, so their buffers move and
    save with them too; ``loose``: parameters that ``pyro.param`` made, which belong to no module.
    """

    def __init__(self, modules: list[nn.Module]):
        super().__init__()
        self.owners = nn.ModuleList(dict.fromkeys(modules))  # each once, in order
        self.loose = nn.ParameterDict()
        self.paths: dict[str, str] = {}
        self.constraints: dict = {}

    @contextmanager
    def scope(self) -> Iterator[None]:
        """Pyro's param store holding this pair's parameters alone; new ones are kept on the way out.
        The parameters are looked up here each time, so a ``functional_call`` that swaps them (the
        captured training graph) is seen by ``pyro.param`` too."""
        state = {"params": {name: self.lookup(path) for name, path in self.paths.items()},
                 "constraints": dict(self.constraints)}
        with pyro.get_param_store().scope(state):
            yield
        self._keep(state)

    def lookup(self, path: str) -> torch.Tensor:
        """The tensor at ``path`` as it is now: under ``functional_call``, the one swapped in (which
        ``get_parameter`` would refuse, as it is no ``nn.Parameter``)."""
        return functools.reduce(getattr, path.split("."), self)

    def _keep(self, state: dict) -> None:
        new = {name: value for name, value in state["params"].items() if name not in self.paths}
        if not new:
            return
        where = {id(p): path for path, p in self.named_parameters(remove_duplicate=False)}
        for name, value in new.items():
            if id(value) not in where:  # made by pyro.param: a parameter of the pair's own
                key = name.replace(".", "__")
                if key in self.loose:
                    raise IncompatiblePairError(f"param-store names {name!r} and another both map to {key!r}: "
                                                "rename one of the pyro.param sites")
                self.loose[key] = value if isinstance(value, nn.Parameter) else nn.Parameter(value.detach())
                where[id(value)] = f"loose.{key}"
            self.paths[name] = where[id(value)]
            self.constraints[name] = state["constraints"][name]


class Program(nn.Module):
    """A model or a guide callable, run in its pair's own param store; for the model, the sites,
    data shape and number of training examples the toolkit's diagnostics read
    (``observed_site``, ``latent_dims``, ``global_sites``, ``data_shape``, ``data_size``).
    """

    def __init__(self, fn: Callable, params: PairParams, holds_params: bool = True):
        super().__init__()
        object.__setattr__(self, "fn", fn)  # not a submodule: its modules are ``params.owners``
        if holds_params:
            self.params = params
        else:  # the model's Program holds them: registered twice, ``functional_call`` would swap them twice
            object.__setattr__(self, "params", params)
        self.sites: Sites | None = None
        self.data_shape: tuple[int, ...] = ()
        self.data_size: int | None = None
        self.mean_field = getattr(fn, "mean_field", getattr(getattr(fn, "__self__", None), "mean_field", None))

    @property
    def observed_site(self) -> str:
        return self.sites.observed

    @property
    def latent_dims(self) -> dict[str, int]:
        return self.sites.local

    @property
    def global_sites(self) -> tuple[str, ...]:
        return self.sites.global_ if self.sites else ()

    def forward(self, *args, **kwargs):
        with self.params.scope():
            return self.fn(*args, **kwargs)

    @property
    def name(self) -> str:
        """The callable's name, for messages: ``VAE.guide``, ``AutoNormal``."""
        return describe(self.fn)

    def extra_repr(self) -> str:
        return self.name


def discover(model, guide, x: torch.Tensor, names: tuple[str, str] = ("model", "guide"),
             fields: dict[str, torch.Tensor] | None = None) -> Sites:
    """The pair's sites from traces on the first 2 and 3 rows of ``x`` (and of ``fields``, given as
    keywords): a latent site is per datapoint when it lies in a plate whose size follows the batch's.
    The observed site is the data's: where the model observes several (labels beside ``x``), the
    one named ``"x"`` or else the one observing ``x`` itself. Raises ``IncompatiblePairError`` for a
    model with no observed site, or with a latent site the guide does not sample."""
    fields = fields or {}
    batches = [x[:rows] for rows in (2, 3)]
    traces = [trace_pair(model, guide, batch, **{k: v[:len(batch)] for k, v in fields.items()}) for batch in batches]
    data_plates = set.intersection(*[{frame.name for site in trace.nodes.values() if site["type"] == "sample"
                                      for frame in site["cond_indep_stack"] if _plate_size(frame, site) == rows}
                                     for (trace, _), rows in zip(traces, (2, 3))])
    model_trace, guide_trace = traces[1]
    samples = {name: site for name, site in model_trace.nodes.items() if site["type"] == "sample"
               and not site["infer"].get("_deterministic")}  # pyro.deterministic records, not densities
    observed = [name for name, site in samples.items() if site["is_observed"]]
    if len(observed) > 1:  # labels observed beside the data (obs_mask's "y_observed", say)
        data_site = [name for name in observed if name == "x"] or [
            name for name in observed if samples[name]["value"] is batches[1]]
        observed = data_site if len(data_site) == 1 else observed
    if len(observed) != 1:
        found = f"observes {', '.join(map(repr, observed))}" if observed else "has no observed site"
        raise IncompatiblePairError(
            f"the {names[0]} {found}: it must observe the data at one site, "
            "pyro.sample(NAME, distribution, obs=x), with x the batch it is called with (beside labels or "
            "other observed sites, name the data's site 'x')")
    guided = {name for name, site in guide_trace.nodes.items() if site["type"] == "sample"}
    summed_out = tuple(name for name, site in samples.items() if not site["is_observed"] and name not in guided
                       and site["infer"].get("enumerate"))
    missed = [name for name, site in samples.items() if not site["is_observed"] and name not in guided
              and name not in summed_out]
    if missed:
        raise IncompatiblePairError(
            f"the {names[0]}'s latent site(s) {', '.join(map(repr, missed))} are not sampled by the {names[1]}, "
            f"which samples {', '.join(map(repr, sorted(guided))) or 'nothing'}: the guide must sample every "
            "latent site of the model, under the same name (an autoguide, or AutoGuideList, can cover the rest)")
    local, global_ = {}, []
    for name, site in samples.items():
        if site["is_observed"] or name in summed_out:
            continue
        if {frame.name for frame in site["cond_indep_stack"]} & data_plates:
            local[name] = site["fn"].event_shape.numel()
        else:
            global_.append(name)
    # a guide's own (auxiliary) sites, as an autoguide's "mu_unconstrained": global outside the data plate
    global_ += [name for name, site in guide_trace.nodes.items() if site["type"] == "sample" and name not in samples
                and not {frame.name for frame in site["cond_indep_stack"]} & data_plates]
    return Sites(observed[0], local, tuple(global_), summed_out)


def _plate_size(frame, site: dict) -> int:
    """A plate's size at ``site``: its own, or for a plate sized by broadcasting (``pyro.plate("data")``
    with no size, as Pyro's tutorials write it) the size of the site's batch at the plate's dimension."""
    if frame.size != -1:
        return frame.size
    shape = site["fn"].batch_shape
    return shape[frame.dim] if len(shape) >= -frame.dim else 1


def native(model, guide, sites: Sites) -> bool:
    """The pair keeps the toolkit's contract and needs no param store of its own."""
    return (isinstance(model, nn.Module) and isinstance(guide, nn.Module) and hasattr(model, "data_shape")
            and getattr(model, "latent_dims", None) == sites.local and sites.observed == "x" and not sites.global_
            and not isinstance(model, pyro.nn.PyroModule) and not isinstance(guide, pyro.nn.PyroModule))


def as_pair(model: Callable, guide: Callable, x: torch.Tensor,
            fields: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, nn.Module]:
    """``model`` and ``guide`` as the toolkit trains and diagnoses them, their parameters created by
    one run on rows of ``x`` (and of the data ``fields`` the pair takes, ``requested_fields``): a
    native pair as it is, any other as two ``Program`` objects sharing one ``PairParams`` (the
    model's holds it). Raises ``IncompatiblePairError`` for a pair that is not callable, observes
    nothing, leaves a latent unguided, or has no parameter to train."""
    names = (describe(model) if callable(model) else repr(model), describe(guide) if callable(guide) else repr(guide))
    for role, fn, name in zip(("model", "guide"), (model, guide), names):
        if not callable(fn) or inspect.isclass(fn):
            raise IncompatiblePairError(f"the {role} {name} is not a Pyro program: give a callable {role}(x) "
                                        "(a function, a bound method, an nn.Module or a PyroModule), not a class")
    params = PairParams([*owners(model), *owners(guide)])
    model_program, guide_program = Program(model, params), Program(guide, params, holds_params=False)
    # invisible to the run: the random stream is put back, and batch-norm statistics stay as they were
    modes = {m: m.training for m in params.modules()}
    params.eval()
    try:
        with preserved_rng(x.device):
            sites = discover(model_program, guide_program, x, names=(f"model {names[0]}", f"guide {names[1]}"),
                             fields=fields)
    finally:
        for module, training in modes.items():
            module.train(training)
    if native(model, guide, sites):
        return model, guide
    if not any(p.requires_grad for p in params.parameters()):
        raise IncompatiblePairError(
            f"neither the model {names[0]} nor the guide {names[1]} has a parameter to train: register networks "
            "with pyro.module(NAME, net) or use PyroModules, and parameters with pyro.param(NAME, init)")
    model_program.sites, model_program.data_shape = sites, tuple(x.shape[1:])
    guide_program.sites, guide_program.data_shape = sites, tuple(x.shape[1:])
    return model_program, guide_program
