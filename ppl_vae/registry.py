"""Name -> factory registries, so experiment files can pick models, guides, data and estimators.

A factory's keyword arguments are the keys its experiment-file section accepts;
``check_kwargs`` validates a section against the signature before any work.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from ppl_vae.errors import ConfigError


class Registry(dict):
    """A dict of named factories with a ``register`` decorator and helpful look-up errors."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable:
        def decorate(factory: Callable) -> Callable:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered already (by {self[name].__module__})")
            self[name] = factory
            return factory

        return decorate

    def __missing__(self, name: str):
        raise ConfigError(f"unknown {self.kind} {name!r}; registered: {', '.join(sorted(self))}")


MODELS = Registry("model")
GUIDES = Registry("guide")
DATASETS = Registry("dataset")
ESTIMATORS = Registry("estimator")


def _type_ok(value: Any, annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        (item, *_) = typing.get_args(annotation) or (Any,)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def check_kwargs(factory: Callable, kwargs: dict[str, Any], section: str, skip: tuple[str, ...] = ()) -> None:
    """Raise ConfigError if ``kwargs`` has a key ``factory`` does not take, or a value of the wrong type.

    Type and choice checks come from the factory's annotations (``Literal[...]`` lists the choices).
    """
    hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
    params = {n: p for n, p in inspect.signature(factory).parameters.items() if n not in skip}
    for key, value in kwargs.items():
        if key not in params:
            raise ConfigError(
                f"[{section}] has unknown key {key!r}; it accepts: {', '.join(sorted(params)) or 'nothing'}"
            )
        annotation = hints.get(key, inspect.Parameter.empty)
        if not _type_ok(value, annotation):
            expected = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
            raise ConfigError(f"[{section}] {key} = {value!r} is invalid: expected {expected}")
