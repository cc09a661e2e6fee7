"""The types of ``f.batch`` (SPEC B1), checked the way users' type checkers will see them."""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api", reason="mypy is in the lint extra")

HERE = Path(__file__).parent


@pytest.mark.timeout(300)
def test_batch_types_check_strictly() -> None:
    """B1: users([1, 2]) is typed dict[int, User] (a coroutine of it for async def)."""
    stdout, stderr, status = mypy_api.run(
        [
            "--strict",
            "--no-incremental",
            "--config-file",
            str(HERE.parent / "pyproject.toml"),
            str(HERE / "typing" / "check_batch.py"),
        ]
    )
    assert status == 0, stdout + stderr
