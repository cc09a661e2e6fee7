"""SPEC section 7's bars, P1 to P5, P9 and P11, judged on one run's tables.

A bar is reported, never asserted: a missed bar prints FAIL and the run still exits 0.
What does fail the run is a broken promise, not a slow one: a scenario that crashed, or
coalesce running a stampede key more than once.
"""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks import _otel, _stampede_threads, batches
from benchmarks._method import Table, is_ours


@dataclass(frozen=True, slots=True)
class Check:
    """One comparison: what was measured, the limit, and whether it held."""

    bar: str
    what: str
    measured: str
    limit: str
    status: str  # "PASS", "FAIL", or "n/a"
    stretch: bool = False

    def line(self) -> str:
        tag = "stretch " if self.stretch else ""
        return f"{self.bar} {self.what}: {self.measured} ({tag}bar {self.limit}) {self.status}"


def _ratio_check(
    bar: str,
    table: Table | None,
    what: str,
    name: str,
    other: str,
    limit: float,
    *,
    stretch: bool = False,
) -> Check:
    if table is None or not table.has(name, other):
        return Check(bar, what, "not measured", f"<= {limit:g}x", "n/a", stretch)
    value = table.ratio(name, other)
    status = "PASS" if value <= limit else "FAIL"
    return Check(bar, what, f"{value:.3f}x", f"<= {limit:g}x", status, stretch)


def _overhead_check(
    bar: str, table: Table | None, what: str, other: str, base: str, limit: float
) -> Check:
    if table is None or not table.has("coalesce", other, base):
        return Check(bar, what, "not measured", f"<= {limit:g}x", "n/a")
    value = table.overhead_ratio("coalesce", other, base)
    ours = table.overhead("coalesce", base)
    theirs = table.overhead(other, base)
    status = "PASS" if value <= limit else "FAIL"
    measured = f"{value:.3f}x ({ours:.0f} ns over the plain call vs {theirs:.0f} ns)"
    return Check(bar, what, measured, f"<= {limit:g}x", status)


def judge(tables: dict[str, Table]) -> list[Check]:
    """Every check of P1 to P5 that the tables allow, in order."""
    checks: list[Check] = []
    for key, call in (("sync_hit", "f(1)"), ("sync_hit_kw", "f(1, 2, z=3)")):
        t = tables.get(key)
        checks.append(
            _ratio_check("P1", t, f"sync hit {call} vs cachetools", "coalesce", "cachetools", 0.25)
        )
        checks.append(
            _ratio_check("P1", t, f"sync hit {call} vs cachebox", "coalesce", "cachebox", 0.5)
        )
        checks.append(
            _ratio_check(
                "P1", t, f"sync hit {call} vs lru_cache", "coalesce", "lru_cache", 2.0, stretch=True
            )
        )
    t = tables.get("async_hit")
    checks.append(_ratio_check("P2", t, "async hit vs async-lru", "coalesce", "async-lru", 0.25))
    checks.append(
        _ratio_check("P2", t, "async hit vs plain await", "coalesce", "plain coroutine", 2.5)
    )
    checks.extend(_p11(tables))
    checks.append(_p3(tables.get("async_stampede_1x10000")))
    checks.append(_p4(tables.get("thread_stampede_16x64")))
    checks.append(
        _overhead_check(
            "P5",
            tables.get("sync_dedup"),
            "dedup-only sync, overhead vs coalescer.sync",
            "coalescer",
            "plain function",
            0.3,
        )
    )
    async_dedup = tables.get("async_dedup")
    checks.append(
        _overhead_check(
            "P5",
            async_dedup,
            "dedup-only async, overhead vs singleflight (asyncio)",
            "singleflight",
            "plain coroutine",
            0.6,
        )
    )
    s7 = (
        None
        if async_dedup is None
        else async_dedup.extra.get("coalesce", {}).get("S7 (cancel the first caller)")
    )
    checks.append(
        Check(
            "P5",
            "dedup-only async, S7 holds",
            s7 or "not measured",
            "yes",
            "n/a" if s7 is None else ("PASS" if s7 == "yes" else "FAIL"),
        )
    )
    checks.extend(_p9(tables.get(batches.TABLE_KEY)))
    return checks


def _p9(table: Table | None) -> list[Check]:
    """P9: the 10 batch calls, and the cost per id beside each dataloader."""
    what = "1,000 concurrent calls on distinct ids, collect=0, max_batch=100 make 10 batch calls"
    row = None if table is None else table.extra.get(batches.OURS)
    calls = "not measured" if row is None else f"{row['batch calls']} batch calls"
    status = "n/a" if row is None else ("PASS" if row["batch calls"] == "10" else "FAIL")
    checks = [Check("P9", what, calls, "10 batch calls", status)]
    for peer in batches.PEERS:
        checks.append(_ratio_check("P9", table, f"cost per id vs {peer}", batches.OURS, peer, 1.0))
    return checks


def _p11(tables: dict[str, Table]) -> list[Check]:
    """P11: P1 and P2 with ``instrument()`` on, and the hit beside the same hit with it off."""
    on = _otel.ROW
    sync, hits = tables.get("sync_hit"), tables.get("async_hit")
    return [
        _ratio_check(
            "P11", sync, "sync hit f(1), instrumented, vs cachetools", on, "cachetools", 0.25
        ),
        _ratio_check("P11", sync, "sync hit f(1), instrumented, vs cachebox", on, "cachebox", 0.5),
        _ratio_check("P11", sync, "sync hit f(1), instrumented vs not", on, "coalesce", 1.1),
        _ratio_check("P11", hits, "async hit, instrumented, vs async-lru", on, "async-lru", 0.25),
        _ratio_check(
            "P11", hits, "async hit, instrumented, vs plain await", on, "plain coroutine", 2.5
        ),
        _ratio_check("P11", hits, "async hit, instrumented vs not", on, "coalesce", 1.1),
    ]


def _p3(table: Table | None) -> Check:
    what = "10,000 coroutines on one cold key, per waiter vs a bare Future"
    if table is None or not table.has("coalesce", _floor(table)):
        return Check("P3", what, "not measured", "1 execution, <= 1.5x", "n/a")
    assert table is not None
    value = table.ratio("coalesce", _floor(table))
    executions = table.extra.get("coalesce", {}).get("executions per key", "?")
    ok = value <= 1.5 and executions == "1"
    measured = f"{value:.3f}x, {executions} execution(s)"
    return Check("P3", what, measured, "1 execution, <= 1.5x", "PASS" if ok else "FAIL")


def _floor(table: Table | None) -> str:
    return "" if table is None or table.baseline is None else table.baseline


def _p4(table: Table | None) -> Check:
    what = f"{_stampede_threads.P4_THREADS} threads x {_stampede_threads.P4_KEYS} keys"
    limit = f"{_stampede_threads.P4_KEYS} executions, 0 wake-ups for another key"
    row = None if table is None else table.extra.get("coalesce")
    if row is None:
        return Check("P4", what, "not measured", limit, "n/a")
    ok = (
        row["keys run once"] == f"{_stampede_threads.P4_KEYS}/{_stampede_threads.P4_KEYS}"
        and row["executions"] == str(_stampede_threads.P4_KEYS)
        and row["wake-ups, other key"] == "0"
        and row["wrong or early results"] == "0"
    )
    measured = (
        f"{row['executions']} executions, {row['wake-ups, other key']} wake-ups for another "
        f"key, {row['wake-ups, own key']} for their own"
    )
    return Check("P4", what, measured, limit, "PASS" if ok else "FAIL")


def broken_promises(tables: dict[str, Table]) -> list[str]:
    """What makes the run exit non-zero: coalesce errors, or a stampede key run twice."""
    problems: list[str] = []
    for table in tables.values():
        for name, error in table.errors.items():
            if is_ours(name):
                problems.append(f"{table.title}: {name} raised {error}")
        for name, row in table.extra.items():
            if not is_ours(name):
                continue
            for column in ("executions per key", "executions, burst at expiry"):
                cell = row.get(column, "")
                if cell.isdigit() and int(cell) > 1:
                    problems.append(f"{table.title}: {name} ran a key {cell} times")
            if table.key == "thread_stampede_1x32" and row.get("executions") != "1":
                problems.append(f"{table.title}: {name} ran the key {row.get('executions')} times")
            if table.key == "thread_stampede_16x64" and row.get("keys run once") != (
                f"{_stampede_threads.P4_KEYS}/{_stampede_threads.P4_KEYS}"
            ):
                problems.append(f"{table.title}: {name} ran some key more than once")
            if (
                row.get("wrong results", "0") != "0"
                or row.get("wrong or early results", "0") != "0"
            ):
                problems.append(f"{table.title}: {name} returned wrong results")
    return problems
