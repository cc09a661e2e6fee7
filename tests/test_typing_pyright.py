"""The typing files of tests/typing, checked the way users' pyright will see them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pyright", reason="pyright is in the lint extra")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_typing_files_check_under_pyright_strict() -> None:
    """V5: every file of tests/typing passes pyright --strict and each ignored line is rejected."""
    # pyproject.toml's [tool.pyright] names the files and the strictness; --pythonpath
    # makes pyright resolve imports in the interpreter running this test.
    result = subprocess.run(
        [sys.executable, "-m", "pyright", "--pythonpath", sys.executable, "--project", str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors" in result.stdout, result.stdout
