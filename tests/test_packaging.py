"""Packaging guards: ``models``/``guides`` exist only inside ``ppl_vae``, docstring examples run, and a
wheel install finds its bundled experiments and runs one as the editable install does."""

import doctest
import importlib
import importlib.util
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import ppl_vae

PACKAGES = [ppl_vae, ppl_vae.models, ppl_vae.guides]  # the last two are mapped from top-level folders
MODULES = sorted({p.__name__ for p in PACKAGES[1:]}
                 | {m.name for p in PACKAGES for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".")})


def test_every_module_imports_without_top_level_models_or_guides():
    assert {"ppl_vae.models.vae", "ppl_vae.guides.encoders", "ppl_vae.infer.training", "ppl_vae.cli"} <= set(MODULES)
    for name in MODULES:
        importlib.import_module(name)
    assert not {"models", "guides", "experiments"} & set(sys.modules)
    assert ppl_vae.models.__file__.endswith("models/__init__.py")


@pytest.mark.parametrize("name", ["ppl_vae", *MODULES])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


ROOT = Path(__file__).resolve().parent.parent


def clone_of_checkout(destination: Path) -> Path:
    """The files a fresh clone would hold (those git tracks, and new ones it does not ignore), copied
    into ``destination``: a wheel built there cannot take a stale ``build/`` folder or an ignored file."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():  # a tracked file deleted in the working tree is not there
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, destination / name)
    return destination


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """A wheel built from what a clone of this checkout holds, installed (without its dependencies,
    which this environment has) into a folder of its own: the folder."""
    folder = tmp_path_factory.mktemp("wheel")
    source = clone_of_checkout(folder / "clone")
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(folder / "dist"),
                    str(source)], check=True, capture_output=True)
    (wheel,) = (folder / "dist").glob("ppl_vae-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert all(n.split("/")[0] in ("ppl_vae", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info")
               for n in names), "the wheel holds something besides ppl_vae/: " + ", ".join(sorted(names)[:5])
    assert len([n for n in names if n.startswith("ppl_vae/experiments/") and n.endswith(".toml")]) == len(
        list((ROOT / "experiments").glob("*.toml")))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(folder / "site"), str(wheel)],
                   check=True, capture_output=True)
    return folder / "site"


def test_a_wheel_install_finds_its_experiments_and_runs_one_from_an_empty_folder(installed_wheel, tmp_path):
    """What ``pip install ppl_vae-*.whl`` gives a user: ``list`` shows the bundled experiments and
    ``run digits-vae --quick`` works from a folder outside the checkout, with the numbers of the
    editable install."""
    from ppl_vae import run

    env = {**os.environ, "PYTHONPATH": str(installed_wheel)}
    command = [str(installed_wheel / "bin" / "ppl-vae")]
    where = subprocess.run([sys.executable, "-c", "import ppl_vae; print(ppl_vae.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(installed_wheel))  # the wheel's package, not this checkout's
    listed = subprocess.run([*command, "list"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert re.search(r"^  digits-vae +\S", listed.stdout, re.M) and re.search(r"^  single-bit +\S", listed.stdout, re.M)
    options = ["--quick", "--set", "train.threads=1", "--set", "train.epochs=1"]
    subprocess.run([*command, "run", "digits-vae", *options, "--out", "wheel-run", "--device", "cpu"], env=env,
                   cwd=tmp_path, capture_output=True, check=True)
    (editable,) = run("digits-vae", tmp_path / "editable-run", options[2::2], device="cpu", quick_run=True,
                      progress=False)
    wheel = json.loads((tmp_path / "wheel-run" / "summary.json").read_text())
    numbers = ("loss", "recon", "kl", "log_px_iw", "active_units", "train_loss")
    assert {k: wheel[k] for k in numbers} == {k: editable[k] for k in numbers}


def test_pyproject_lists_every_package_the_wheel_needs():
    """A subpackage missing from ``[tool.setuptools] packages`` would be left out of a wheel (the
    editable install would not notice): every folder of the package with an ``__init__.py`` is listed."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(("ppl_vae", *p.parent.relative_to(ROOT / "ppl_vae").parts))
             for p in (ROOT / "ppl_vae").rglob("__init__.py")}
    found |= {f"ppl_vae.{folder}" for folder in ("models", "guides", "experiments")}  # mapped from the top level
    assert set(setuptools["packages"]) == found
    assert {k: v for k, v in setuptools["package-dir"].items() if k != "ppl_vae"} == {
        "ppl_vae.models": "models", "ppl_vae.guides": "guides", "ppl_vae.experiments": "experiments"}
