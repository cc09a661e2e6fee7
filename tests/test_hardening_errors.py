"""Hardening of kept errors (issue 19, F4 and S16): a kept error holds no argument or result."""

from __future__ import annotations

import asyncio
import gc
import traceback
import weakref
from typing import Any

import pytest
from freezegun import freeze_time

from coalesce import singleflight


class Thing:
    """An argument or a result that can be weakly referenced."""

    def __init__(self, name: str) -> None:
        self.name = name


def test_s16_kept_error_holds_no_argument_and_no_expired_result(kind: str) -> None:
    """S16/F4: a kept error's traceback keeps neither the arguments nor the result it replaced."""
    failing = [False]

    def body(n: int, payload: Thing) -> Thing:
        if failing[0]:
            raise LookupError(f"no row {n}")
        return Thing(f"result {n}")

    if kind == "sync":
        f: Any = singleflight(ttl=1, error_ttl=60, key="n")(body)
        call = f
    else:

        @singleflight(ttl=1, error_ttl=60, key="n")
        async def g(n: int, payload: Thing) -> Thing:
            await asyncio.sleep(0)
            return body(n, payload)

        f = g

        def call(n: int, payload: Thing) -> Thing:
            return asyncio.run(g(n, payload))

    with freeze_time("2026-03-01 12:00:00") as clock:
        result = call(1, Thing("first"))
        result_ref = weakref.ref(result)
        del result
        clock.tick(2)  # the result has expired
        failing[0] = True
        payload = Thing("second")
        payload_ref = weakref.ref(payload)
        with pytest.raises(LookupError) as caught:
            # Called from this frame: any exception holds its callers' frames while it
            # propagates (a helper taking payload would); the library's frames must not.
            asyncio.run(f(1, payload)) if kind == "async" else f(1, payload)
        error = caught.value
        del caught, payload
        gc.collect()
        assert payload_ref() is None  # not held by the kept error's frames
        assert result_ref() is None  # nor the expired result it replaced
        with pytest.raises(LookupError) as again:
            call(1, Thing("third"))
        assert again.value is error  # still kept, the same object (F4)
        del again
        text = "".join(traceback.format_exception(error))
        assert 'raise LookupError(f"no row {n}")' in text  # where it was raised still shows
        assert f.cache_info().in_flight == 0
