"""O1, O2: ``coalesce.otel`` publishes the library's counters through OpenTelemetry.

Read with the SDK's ``InMemoryMetricReader``: after a scripted mix of calls, every
instrument equals what the script did and what ``cache_info()`` says. Each test names
its functions uniquely, since every live decorated function in the process is published.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip(
    "opentelemetry.sdk.metrics",
    reason="the OpenTelemetry tests need the SDK: "
    "pip install 'python-coalesce[otel]' opentelemetry-sdk",
)

from _core_support import WAIT, Caller, aeventually, eventually, wait
from _freshness_support import START, Driver, Hold, Runs
from freezegun import freeze_time
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from coalesce import singleflight
from coalesce.otel import instrument, uninstrument

COUNTERS = ("coalesce.calls", "coalesce.executions", "coalesce.refreshes")
OBSERVED = (
    *COUNTERS,
    "coalesce.lease.takeovers",
    "coalesce.in_flight",
    "coalesce.cache.size",
)


class Readings:
    """One collection of the reader: every ``coalesce.*`` data point, by name and attributes."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.points: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name.startswith("coalesce."):
                        self.points[metric.name] = [
                            (dict(point.attributes or {}), point)
                            for point in metric.data.data_points
                        ]

    def of(self, metric: str, function: str) -> list[tuple[dict[str, Any], Any]]:
        """The data points of ``metric`` for ``function``."""
        return [
            (attrs, point)
            for attrs, point in self.points.get(metric, [])
            if attrs.get("coalesce.function") == function
        ]

    def by(self, metric: str, function: str, attribute: str) -> dict[str, int]:
        """``metric``'s values for ``function``, by the value of ``attribute``."""
        return {attrs[attribute]: point.value for attrs, point in self.of(metric, function)}

    def value(self, metric: str, function: str) -> int:
        """The one value of ``metric`` for ``function``."""
        (only,) = self.of(metric, function)
        assert only[0] == {"coalesce.function": function}
        value: int = only[1].value
        return value

    def durations(self, function: str) -> int:
        """How many executions of ``function`` the duration histogram has recorded."""
        points = self.of("coalesce.execution.duration", function)
        assert all(attrs == {"coalesce.function": function} for attrs, _ in points)
        return sum(point.count for _, point in points)

    def functions(self) -> set[str]:
        """Every ``coalesce.function`` value in the observable instruments."""
        return {
            attrs["coalesce.function"]
            for metric in OBSERVED
            for attrs, _ in self.points.get(metric, [])
        }


class Metrics:
    """A meter provider read in memory (``instrument(metrics.provider)`` publishes there)."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])

    def read(self) -> Readings:
        """Collect now."""
        return Readings(self.reader)


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    """A fresh provider, not instrumented yet; uninstrumented and shut down afterwards."""
    made = Metrics()
    try:
        yield made
    finally:
        uninstrument()
        made.provider.shutdown()


@pytest.fixture
def driver(kind: str) -> Iterator[Driver]:
    """A :class:`Driver` of the test's kind; its event loop is closed afterwards."""
    d = Driver(kind)
    try:
        yield d
    finally:
        d.close()


def _matches_cache_info(readings: Readings, name: str, fn: Any) -> None:
    """Every instrument of ``name`` agrees with ``fn.cache_info()``."""
    info = fn.cache_info()
    calls = readings.by("coalesce.calls", name, "coalesce.result")
    executions = readings.by("coalesce.executions", name, "coalesce.outcome")
    assert calls["hit"] + calls["stale"] == info.hits
    assert calls["stale"] == info.stale
    assert calls["joined"] + calls["executed"] == info.misses
    assert calls["joined"] == info.coalesced
    assert executions["error"] == info.errors
    assert readings.value("coalesce.refreshes", name) == info.refreshes
    assert readings.value("coalesce.in_flight", name) == info.in_flight
    assert readings.value("coalesce.cache.size", name) == info.currsize


def test_o1_scripted_mix_matches_the_script_and_cache_info(
    driver: Driver, metrics: Metrics
) -> None:
    """O1: hits, stale serves, joins, executions and errors each land in their instrument."""
    name = f"o1_mix_{driver.kind}"
    instrument(metrics.provider)
    runs, hold = Runs(), Hold()

    def body(x: int) -> str:
        if x < 0:
            raise ValueError("no negative keys")
        return runs(x)

    with freeze_time(START, real_asyncio=True) as frozen:
        load = driver.make(body, name=name, hold=hold, ttl=10, stale=20)
        assert driver.call(load, 1) == "v1"  # executed, ok
        assert driver.call(load, 1) == "v1"  # hit
        assert driver.call(load, 1) == "v1"  # hit
        assert driver.concurrent(load, 3, hold, 2) == ["v2"] * 3  # executed + 2 joined
        with pytest.raises(ValueError, match="no negative keys"):
            driver.call(load, -1)  # executed, error
        frozen.tick(15)
        assert driver.call(load, 1) == "v1"  # stale, and one refresh (an execution)
        driver.settle(load)
        readings = metrics.read()
        _matches_cache_info(readings, name, load)  # under the same clock

    assert readings.by("coalesce.calls", name, "coalesce.result") == {
        "hit": 2,
        "stale": 1,
        "joined": 2,
        "executed": 3,
    }
    assert readings.by("coalesce.executions", name, "coalesce.outcome") == {
        "ok": 3,
        "error": 1,
        "cancelled": 0,
    }
    assert readings.value("coalesce.refreshes", name) == 1
    assert readings.value("coalesce.lease.takeovers", name) == 0
    assert readings.value("coalesce.in_flight", name) == 0
    assert readings.value("coalesce.cache.size", name) == 2
    assert readings.durations(name) == 4


def test_o1_in_flight_gauge_counts_a_running_execution(driver: Driver, metrics: Metrics) -> None:
    """O1: ``coalesce.in_flight`` reads executions running at collection time."""
    name = f"o1_in_flight_{driver.kind}"
    instrument(metrics.provider)
    hold = Hold()
    load = driver.make(Runs(), name=name, hold=hold, ttl=10)
    hold.arm()
    if driver.loop is None:
        caller = Caller(load, 1)
        caller.start()
        driver.entered(hold)
        running = metrics.read()
        hold.release()
        assert caller.result() == "v1"
    else:
        task = driver.loop.create_task(load(1))
        driver.entered(hold)
        running = metrics.read()
        hold.release()
        assert driver.run(task) == "v1"
    assert running.value("coalesce.in_flight", name) == 1
    assert running.durations(name) == 0
    landed = metrics.read()
    assert landed.value("coalesce.in_flight", name) == 0
    assert landed.durations(name) == 1
    _matches_cache_info(landed, name, load)


def test_o1_async_cancellations_are_an_outcome(metrics: Metrics) -> None:
    """O1: an async execution whose every caller was cancelled counts as ``cancelled``."""
    name = "o1_cancelled"
    instrument(metrics.provider)

    async def main() -> None:
        entered, stopped = asyncio.Event(), asyncio.Event()

        async def slow(x: int) -> int:
            entered.set()
            try:
                await asyncio.Event().wait()  # until cancelled
            except asyncio.CancelledError:
                stopped.set()
                raise
            return x

        slow.__qualname__ = name
        load = singleflight(ttl=10)(slow)
        first = asyncio.ensure_future(load(1))
        await asyncio.wait_for(entered.wait(), WAIT)
        second = asyncio.ensure_future(load(1))
        await aeventually(lambda: load.cache_info().coalesced == 1, "the second caller to join")
        first.cancel()
        second.cancel()
        for task in (first, second):
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.wait_for(stopped.wait(), WAIT)
        # The task's done callback settles the execution a loop step after it ends
        # (3.12+'s eager tasks), so wait for the flight to be gone, not for ``stopped``.
        await aeventually(lambda: load.cache_info().in_flight == 0, "the execution to settle")
        readings = metrics.read()
        assert readings.by("coalesce.calls", name, "coalesce.result") == {
            "hit": 0,
            "stale": 0,
            "joined": 1,
            "executed": 1,
        }
        assert readings.by("coalesce.executions", name, "coalesce.outcome") == {
            "ok": 0,
            "error": 0,
            "cancelled": 1,
        }
        assert readings.durations(name) == 1
        _matches_cache_info(readings, name, load)

    asyncio.run(main())


def test_o1_sync_abort_is_an_error_and_the_rerun_an_execution(metrics: Metrics) -> None:
    """O1 (S8): a leader's KeyboardInterrupt is an ``error``; the waiter's re-run is ``ok``."""
    name = "o1_abort"
    instrument(metrics.provider)
    entered, release = threading.Event(), threading.Event()
    first_run = [True]

    def body(x: int) -> int:
        if first_run[0]:
            first_run[0] = False
            entered.set()
            wait(release, "the release")
            raise KeyboardInterrupt
        return x

    body.__qualname__ = name
    load = singleflight(body)
    leader = Caller(load, 1)
    leader.start()
    wait(entered, "the leader to start")
    follower = Caller(load, 1)
    follower.start()
    eventually(lambda: load.cache_info().coalesced == 1, "the follower to join")
    release.set()
    with pytest.raises(KeyboardInterrupt):
        leader.result()
    assert follower.result() == 1
    readings = metrics.read()
    assert readings.by("coalesce.calls", name, "coalesce.result") == {
        "hit": 0,
        "stale": 0,
        "joined": 1,
        "executed": 1,
    }
    assert readings.by("coalesce.executions", name, "coalesce.outcome") == {
        "ok": 1,
        "error": 1,
        "cancelled": 0,
    }
    assert readings.durations(name) == 2
    _matches_cache_info(readings, name, load)


def test_o1_no_key_value_in_any_attribute(driver: Driver, metrics: Metrics) -> None:
    """O1: attributes name the function and the result or outcome, never a key's value."""
    name = f"o1_no_keys_{driver.kind}"
    instrument(metrics.provider)
    secret = "user-4242-secret"
    load = driver.make(lambda x: x, name=name, ttl=10)
    driver.call(load, secret)
    driver.call(load, secret)
    readings = metrics.read()
    seen = [attrs for points in readings.points.values() for attrs, _ in points]
    assert any(attrs.get("coalesce.function") == name for attrs in seen)
    for attrs in seen:
        assert set(attrs) <= {"coalesce.function", "coalesce.result", "coalesce.outcome"}
        assert all(secret not in str(value) for value in attrs.values())


def test_o1_name_option_is_the_function_attribute(metrics: Metrics) -> None:
    """O1: ``coalesce.function`` is the qualified name, or ``name=`` where it is given."""

    class Prices:
        @singleflight(ttl=10)
        def quote(self, symbol: str) -> str:
            return symbol

    instrument(metrics.provider)
    Prices().quote("X")
    readings = metrics.read()
    qualified = Prices.quote.__qualname__
    assert qualified.endswith("Prices.quote")
    assert readings.by("coalesce.calls", qualified, "coalesce.result")["executed"] == 1


# ------------------------------------------------------------------- O2: coverage


def test_o2_functions_decorated_before_and_after_instrument_are_covered(
    metrics: Metrics,
) -> None:
    """O2: a function decorated before ``instrument()`` and one after are both published."""

    def before(x: int) -> int:
        return x

    before.__qualname__ = "o2_before"
    early = singleflight(ttl=10)(before)
    early(1)
    instrument(metrics.provider)

    def after(x: int) -> int:
        return x

    after.__qualname__ = "o2_after"
    late = singleflight(ttl=10)(after)
    late(1)
    late(1)
    readings = metrics.read()
    assert readings.by("coalesce.calls", "o2_before", "coalesce.result")["executed"] == 1
    assert readings.by("coalesce.calls", "o2_after", "coalesce.result") == {
        "hit": 1,
        "stale": 0,
        "joined": 0,
        "executed": 1,
    }
    # Counted since decoration: the call before instrument() is in the total.
    _matches_cache_info(readings, "o2_before", early)
    _matches_cache_info(readings, "o2_after", late)


def test_o2_uninstrument_stops_publishing(metrics: Metrics) -> None:
    """O2: after ``uninstrument()`` the observable instruments report nothing and no
    duration is recorded; ``instrument()`` again resumes with the same totals."""

    def body(x: int) -> int:
        return x

    body.__qualname__ = "o2_stop"
    load = singleflight(ttl=10)(body)
    instrument(metrics.provider)
    load(1)
    assert metrics.read().durations("o2_stop") == 1
    uninstrument()
    load(2)
    load(2)
    stopped = metrics.read()
    for metric in OBSERVED:
        assert stopped.of(metric, "o2_stop") == []
    assert stopped.durations("o2_stop") == 1  # kept by the SDK, no longer growing
    instrument(metrics.provider)
    resumed = metrics.read()
    assert resumed.by("coalesce.calls", "o2_stop", "coalesce.result")["executed"] == 2
    assert resumed.by("coalesce.calls", "o2_stop", "coalesce.result")["hit"] == 1
    assert resumed.durations("o2_stop") == 1  # load(2) ran while uninstrumented


def test_o2_instrument_moves_to_another_provider(metrics: Metrics) -> None:
    """O2: ``instrument(other)`` publishes there, and the first provider stops reporting."""

    def body(x: int) -> int:
        return x

    body.__qualname__ = "o2_move"
    load = singleflight(ttl=10)(body)
    instrument(metrics.provider)
    instrument(metrics.provider)  # again: no duplicate instruments
    load(1)
    assert metrics.read().by("coalesce.calls", "o2_move", "coalesce.result")["executed"] == 1
    other = Metrics()
    try:
        instrument(other.provider)
        load(2)
        assert other.read().by("coalesce.calls", "o2_move", "coalesce.result")["executed"] == 2
        assert other.read().durations("o2_move") == 1
        assert metrics.read().of("coalesce.calls", "o2_move") == []
    finally:
        uninstrument()
        other.provider.shutdown()


def test_o2_garbage_collected_function_leaves_the_instruments(metrics: Metrics) -> None:
    """O2: a decorated function that is garbage-collected is no longer published."""
    instrument(metrics.provider)

    def body(x: int) -> int:
        return x

    body.__qualname__ = "o2_collected"
    load: Any = singleflight(ttl=10)(body)
    load(1)
    assert "o2_collected" in metrics.read().functions()
    del load
    gc.collect()
    assert "o2_collected" not in metrics.read().functions()


def test_o2_same_name_is_added_together(metrics: Metrics) -> None:
    """O2: two live functions with one name report one series, their sum."""
    instrument(metrics.provider)

    def make() -> Any:
        def body(x: int) -> int:
            return x

        body.__qualname__ = "o2_twins"
        return singleflight(ttl=10)(body)

    one, two = make(), make()
    one(1)
    two(1)
    two(2)
    calls = metrics.read().by("coalesce.calls", "o2_twins", "coalesce.result")
    assert calls["executed"] == 3


def test_o1_cache_clear_does_not_reset_the_counters(metrics: Metrics) -> None:
    """O1: ``cache_clear()`` resets ``cache_info()``, never an OpenTelemetry counter."""
    instrument(metrics.provider)

    def body(x: int) -> int:
        return x

    body.__qualname__ = "o1_cleared"
    load = singleflight(ttl=10)(body)
    load(1)
    load(1)
    load.cache_clear()
    load(1)
    calls = metrics.read().by("coalesce.calls", "o1_cleared", "coalesce.result")
    assert calls == {"hit": 1, "stale": 0, "joined": 0, "executed": 2}
    assert load.cache_info()[:2] == (0, 1)


def test_o1_instrument_refuses_what_is_not_a_meter_provider() -> None:
    """O1: ``instrument()`` given something else says what it takes."""
    with pytest.raises(TypeError, match="MeterProvider"):
        instrument("http://localhost:4317")  # type: ignore[arg-type]
