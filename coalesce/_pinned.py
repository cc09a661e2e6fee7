"""Builtins as they were when coalesce was imported.

User code may replace a builtin, even with a function decorated by this library
(``builtins.len = cached_len``). A call into coalesce must never call such a
replacement: it would reenter the library from inside its own bookkeeping (and
recurse, or hash an unhashable dict). So each module on the call path takes the
builtins it calls from here, as its own globals (``from ._pinned import len``), which
Python finds before the ``builtins`` module.
"""

from __future__ import annotations

# Imported by name: each becomes a global of this module, bound now.
from builtins import all as all
from builtins import any as any
from builtins import callable as callable
from builtins import enumerate as enumerate
from builtins import getattr as getattr
from builtins import hash as hash
from builtins import id as id
from builtins import isinstance as isinstance
from builtins import iter as iter
from builtins import len as len
from builtins import map as map
from builtins import max as max
from builtins import min as min
from builtins import next as next
from builtins import repr as repr
from builtins import sorted as sorted
from builtins import sum as sum
from builtins import zip as zip
