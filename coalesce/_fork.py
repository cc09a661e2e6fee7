"""Fork safety (S14): a child process starts with no flights and fresh locks.

Objects that hold locks or flights register here; after ``os.fork`` the child calls
their ``_after_fork`` so that nothing a parent's thread held stays held forever.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ("at_fork",)


class _ForkAware(Protocol):
    def _after_fork(self) -> None: ...


_registry: weakref.WeakSet[_ForkAware] = weakref.WeakSet()

epoch = 0
"""How many forks this process descends from: an execution started in an earlier
epoch belongs to a parent, and its end is not counted here (``in_flight``, S12)."""


def at_fork(obj: _ForkAware) -> None:
    """Call ``obj._after_fork()`` in every child forked after this."""
    _registry.add(obj)


def _reset_in_child() -> None:
    global epoch
    epoch += 1
    for obj in list(_registry):
        obj._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
