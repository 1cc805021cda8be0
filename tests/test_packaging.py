"""Packaging guards: ``models``/``guides`` exist only inside ``ppl_vae``, and docstring examples run."""

import doctest
import importlib
import pkgutil
import sys

import pytest

import ppl_vae

PACKAGES = [ppl_vae, ppl_vae.models, ppl_vae.guides]  # the last two are mapped from top-level folders
MODULES = sorted({p.__name__ for p in PACKAGES[1:]}
                 | {m.name for p in PACKAGES for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".")})


def test_every_module_imports_without_top_level_models_or_guides():
    assert {"ppl_vae.models.vae", "ppl_vae.guides.encoders", "ppl_vae.training", "ppl_vae.cli"} <= set(MODULES)
    for name in MODULES:
        importlib.import_module(name)
    assert "models" not in sys.modules and "guides" not in sys.modules
    assert ppl_vae.models.__file__.endswith("models/__init__.py")


@pytest.mark.parametrize("name", ["ppl_vae", *MODULES])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
