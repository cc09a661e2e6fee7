"""Shared fixtures for the test suite; helpers for the core tests live in _core_support."""

from __future__ import annotations

import pytest
from _core_support import KINDS


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """``"sync"`` or ``"async"``: run a test once for ``def`` and once for ``async def``."""
    param: str = request.param
    return param
