"""The public types, checked the way users' type checkers will see them."""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is in the lint extra")

HERE = Path(__file__).parent


@pytest.mark.timeout(300)
def test_public_api_types_check_strictly() -> None:
    """Decorated sync, async and method calls keep their types; wrong arguments are flagged."""
    stdout, stderr, status = mypy_api.run(
        [
            "--strict",
            "--no-incremental",
            "--config-file",
            str(HERE.parent / "pyproject.toml"),
            str(HERE / "typing" / "check_api.py"),
        ]
    )
    assert status == 0, stdout + stderr
