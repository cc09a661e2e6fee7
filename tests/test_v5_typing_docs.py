"""V5: the keys docs' method example (``Prices.currencies()``) type-checks as users see it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is in the lint extra")

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _methods_example(tmp_path: Path) -> Path:
    page = (ROOT / "docs" / "keys.md").read_text()
    blocks = [code for code in _BLOCK.findall(page) if "def currencies(cls)" in code]
    assert len(blocks) == 1, "docs/keys.md has one example with Prices.currencies()"
    path = tmp_path / "keys_methods_example.py"
    path.write_text(blocks[0])
    return path


@pytest.mark.timeout(300)
def test_v5_keys_docs_classmethod_example_passes_mypy_strict(tmp_path: Path) -> None:
    """V5: the Prices example of docs/keys.md (above @classmethod) passes mypy --strict."""
    example = _methods_example(tmp_path)
    stdout, stderr, status = mypy_api.run(
        ["--strict", "--no-incremental", "--python-version", "3.11", str(example)]
    )
    assert status == 0, stdout + stderr


@pytest.mark.timeout(300)
def test_v5_keys_docs_classmethod_example_passes_pyright_strict(tmp_path: Path) -> None:
    """V5: the same example passes pyright in strict mode."""
    pytest.importorskip("pyright", reason="pyright is in the lint extra")
    example = _methods_example(tmp_path)
    (tmp_path / "pyrightconfig.json").write_text(
        '{"typeCheckingMode": "strict", "pythonVersion": "3.11",'
        f' "extraPaths": ["{ROOT}"], "include": ["{example.name}"]}}'
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyright",
            "--pythonpath",
            sys.executable,
            "--project",
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors" in result.stdout, result.stdout
