"""The documentation site builds offline with no warning (broken references, missing pages and
duplicate entries fail), and every name ``ppl_vae`` exports has an entry in its API reference."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import ppl_vae

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
