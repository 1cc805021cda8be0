"""The code passes the project's linter configuration (``[tool.ruff]`` in pyproject.toml: line length 120)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                    reason="ruff comes with the test extra (pip install -e '.[test]'); CI installs it")
def test_the_code_passes_ruff():
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
