"""coalesce: stop duplicate work.

``@singleflight`` makes concurrent equal calls of a ``def`` or ``async def`` function
share one execution and its outcome; with ``ttl=`` the result is also cached, and a
cold or expired key still runs once, never once per caller.
"""

from __future__ import annotations

from ._backend import AsyncBinding as AsyncBinding
from ._backend import Backend as Backend
from ._backend import Binding as Binding
from ._backend import Fleet as Fleet
from ._backend import Tally as Tally
from ._batch import AsyncBatchFunction as AsyncBatchFunction
from ._batch import BatchDecorator as BatchDecorator
from ._batch import BatchFunction as BatchFunction
from ._decorator import AsyncSingleflightFunction as AsyncSingleflightFunction
from ._decorator import BoundSingleflightFunction as BoundSingleflightFunction
from ._decorator import CacheInfo as CacheInfo
from ._decorator import SingleflightClassMethod as SingleflightClassMethod
from ._decorator import SingleflightFunction as SingleflightFunction
from ._decorator import singleflight as singleflight
from ._errors import ReentrantCallError as ReentrantCallError
from ._errors import RemoteError as RemoteError
from ._flight import AsyncGroup as AsyncGroup
from ._flight import Group as Group

__version__ = "0.1.0"

__all__ = (
    "AsyncBatchFunction",
    "AsyncBinding",
    "AsyncGroup",
    "AsyncSingleflightFunction",
    "Backend",
    "BatchDecorator",
    "BatchFunction",
    "Binding",
    "BoundSingleflightFunction",
    "CacheInfo",
    "Fleet",
    "Group",
    "ReentrantCallError",
    "RemoteError",
    "SingleflightClassMethod",
    "SingleflightFunction",
    "Tally",
    "__version__",
    "singleflight",
)
