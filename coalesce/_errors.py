"""Exceptions raised by coalesce."""

from __future__ import annotations

__all__ = ("ReentrantCallError", "RemoteError")


class ReentrantCallError(RuntimeError):
    """A call would wait on an execution that its own thread or task is running.

    Waiting would deadlock, so the call raises at once instead (S9).
    """


class RemoteError(Exception):
    """An error raised by the leader in another process, reported through Redis (R9).

    Only the exception's type name and message cross the process boundary, so the
    original object cannot be re-raised; ``type_name`` and ``message`` say what it was.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(type_name, message)
        self.type_name = type_name
        self.message = message

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name

    def __repr__(self) -> str:
        return f"RemoteError(type_name={self.type_name!r}, message={self.message!r})"
