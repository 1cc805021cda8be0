"""The documentation site builds offline with no warning (broken references, missing pages and
duplicate entries fail), every name ``ppl_vae`` exports has an entry in its API reference, and
every bundled study has a page with its table, its figures and the command that reruns it."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import ppl_vae
from ppl_vae.lab import study

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("sphinx") is None,
                    reason="Sphinx is the optional extra [docs] (pip install -e '.[docs]'); CI installs it")
def test_the_docs_build_without_a_warning_and_document_every_exported_name(tmp_path):
    built = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                            str(ROOT / "docs"), str(tmp_path)], capture_output=True, text=True)
    warnings = [line for line in built.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert built.returncode == 0 and not warnings, "\n".join(warnings) or built.stderr[-2000:]
    pages = (tmp_path / "api" / "ppl_vae.html").read_text() + (tmp_path / "api" / "core.html").read_text()
    missing = [name for name in ppl_vae.__all__
               if f'id="ppl_vae.{name}"' not in pages and f'id="module-ppl_vae.{name}"' not in pages]
    assert not missing, f"exported but not in the API reference: {', '.join(missing)}"


@pytest.mark.parametrize("name", study.bundled())
def test_every_study_has_a_page_with_its_table_figures_and_rerun_command(name):
    page = ROOT / "docs" / "studies" / f"{name}.md"
    text = page.read_text()
    assert f"\n{name}\n" in (ROOT / "docs" / "studies" / "index.md").read_text()  # in the studies' toctree
    assert re.search(r"^\| .* \|$", text, re.M), "no measured table"
    assert re.search(rf"ppl-vae run {name}\b", text), "no command that reruns it"
    figures = ROOT / "docs" / "studies" / "figures" / name / "figures.md"
    assert f"{{include}} figures/{name}/figures.md" in text and figures.is_file(), "run docs/figures.py " + name
    linked = re.findall(r"!\[[^\]]+\]\(([^)]+)\)", figures.read_text())
    assert linked and all((page.parent / link).is_file() for link in linked)


def test_the_docs_stay_small():
    """The committed figures are small PNGs: the whole docs/ folder (builds aside) under 5 MiB."""
    size = sum(p.stat().st_size for p in (ROOT / "docs").rglob("*") if p.is_file() and "_build" not in p.parts)
    assert size < 5 * 2**20, f"docs/ holds {size / 2**20:.1f} MiB"


def test_the_figures_script_draws_every_study_that_has_figures():
    spec = importlib.util.spec_from_file_location("docs_figures", ROOT / "docs" / "figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    assert set(figures.SIZES) == set(study.bundled())
    with pytest.raises(SystemExit):
        figures.main(["no-such-study"])  # refused by name, before any run
