"""Thread stampedes: 32 threads on one cold key (timed), and 16 threads x 64 keys (P4, counted).

Every execution parks on a per-key gate that the main thread opens, so the callers are all
waiting before a key completes. The main thread opens a gate only once every caller thread
has settled: it is blocked and its stack no longer moves.

The 16 x 64 run counts wake-ups. Each caller thread runs under a profile hook
(``sys.setprofile``) that only counts events, so a parked thread is silent. When the main
thread opens key K's gate it writes down, for every thread then waiting inside a call, the
key that thread waits for; the first sign of life from such a thread afterwards is one
wake-up, for its own key (it was woken by K's completion and K is its key) or for another
key's completion (K is not its key). The hook slows the callers, so this run is counted, not
timed.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import FrameType
from typing import Any

from benchmarks import _peers
from benchmarks._method import Budget, Table, interleave

ONE_KEY_THREADS = 32
P4_THREADS = 16
P4_KEYS = 64
FLOOR = "bare threading.Event (floor)"
WAIT = 30.0  # seconds: no wait here is unbounded; a hang becomes an error
QUIET_POLLS = 8  # 1 ms polls with no caller activity before the callers count as parked
Factory = Callable[[], _peers.Decorator]


def _factories() -> dict[str, Factory]:
    return {
        "coalesce": _peers.coalesce_ttl,
        "cachetools+lock": _peers.cachetools_lock,
        "cachetools+condition": _peers.cachetools_condition,
        "cachebox": _peers.cachebox_ttl,
        "dogpile.cache": _peers.dogpile_memory,
        "coalescer": _peers.coalescer_sync,
        "singleflight": _peers.singleflight_sync,
    }


def _installed(table: Table) -> dict[str, Factory]:
    found: dict[str, Factory] = {}
    for name, factory in _factories().items():
        try:
            factory()
        except ImportError as exc:
            table.notes.append(f"{name}: skipped, not installed ({exc.name}).")
            continue
        found[name] = factory
    return found


def _join(threads: list[threading.Thread], what: str) -> None:
    deadline = time.monotonic() + WAIT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            raise TimeoutError(f"{what}: a caller thread still runs after {WAIT:g} s")


def _settle(threads: list[threading.Thread], ready: Callable[[], bool], what: str) -> None:
    """Return once every live thread has entered its call and its stack stopped moving."""
    idents = [t.ident for t in threads]
    deadline = time.monotonic() + WAIT
    previous: object = None
    stable = 0
    while stable < 4:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: the caller threads never settled in {WAIT:g} s")
        time.sleep(0.002)
        if not ready():
            stable = 0
            continue
        frames = sys._current_frames()
        snapshot = tuple(
            (frame.f_code, frame.f_lasti) if (frame := frames.get(i)) is not None else None
            for i in idents
            if i is not None
        )
        stable = stable + 1 if snapshot == previous else 0
        previous = snapshot


class _OneKey:
    """32 threads call one cold key; time from opening the gate to the last return."""

    def __init__(self, factory: Factory | None) -> None:
        self.factory = factory
        self.most = 0
        self.wrong = 0

    def __call__(self) -> float:
        n = ONE_KEY_THREADS
        gate = threading.Event()
        count_lock = threading.Lock()
        executions = 0

        def work(key: int) -> int:
            nonlocal executions
            with count_lock:
                executions += 1
            if not gate.wait(WAIT):
                raise TimeoutError("the gate was never opened")
            return key

        def floor(key: int) -> int:
            if not gate.wait(WAIT):
                raise TimeoutError("the gate was never opened")
            return key

        f = floor if self.factory is None else self.factory()(work)
        barrier = threading.Barrier(n + 1, timeout=WAIT)
        entered = [False] * n
        returned = [0] * n
        results: list[object] = [None] * n
        failures: list[BaseException] = []

        def caller(i: int) -> None:
            try:
                barrier.wait()
                entered[i] = True
                results[i] = f(7)
                returned[i] = time.perf_counter_ns()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(n)]
        for thread in threads:
            thread.start()
        try:
            barrier.wait()
            _settle(threads, lambda: all(entered), "32 threads on one key")
        finally:
            t0 = time.perf_counter_ns()
            gate.set()
            _join(threads, "32 threads on one key")
        if failures:
            raise failures[0]
        self.most = max(self.most, executions)
        self.wrong += sum(1 for r in results if r != 7)
        return (max(returned) - t0) / 1000


def one_key(budget: Budget, rng: random.Random) -> Table:
    """32 threads on one cold key: latency from completion to the last caller served."""
    table = Table(
        key="thread_stampede_1x32",
        title=f"Thread stampede: {ONE_KEY_THREADS} threads on one cold key",
        unit="µs to serve all",
        baseline=FLOOR,
        extra_columns=("executions", "wrong results"),
    )
    runs: dict[str, _OneKey] = {FLOOR: _OneKey(None)}
    for name, factory in _installed(table).items():
        runs[name] = _OneKey(factory)
    interleave(
        table,
        runs,
        budget.thread_repeats,
        rng,
        slices=budget.stampede_slices,
        collect_each=True,
    )
    for name, run in runs.items():
        if name != FLOOR and name not in table.errors:
            table.extra[name] = {"executions": str(run.most), "wrong results": str(run.wrong)}
    table.notes.append(
        "Time from opening the execution's gate to the last of the 32 callers returning; "
        "executions is the most in one repeat (1 means no stampede)."
    )
    return table


class _ThreadState:
    __slots__ = ("in_body", "key")

    def __init__(self) -> None:
        self.key: int | None = None  # the key this thread is calling now
        self.in_body = False  # inside the function's own body (a leader), not waiting


class _WakeCounter:
    """Counts which key's completion woke which waiting thread (see the module docstring)."""

    def __init__(self) -> None:
        self.events = 0
        self.released: int | None = None
        self.waiting: dict[int, int] = {}
        self.own = 0
        self.other = 0

    def profile(self, frame: FrameType, event: str, arg: Any) -> None:
        self.events += 1
        if self.waiting:
            key = self.waiting.pop(threading.get_ident(), None)
            if key is not None:
                if key == self.released:
                    self.own += 1
                else:
                    self.other += 1


def _many_keys(factory: Factory, orders: list[list[int]]) -> dict[str, str]:
    """16 threads each call the 64 keys in their own order; gates open one key at a time."""
    gates = [threading.Event() for _ in range(P4_KEYS)]
    counter = _WakeCounter()
    states = {i: _ThreadState() for i in range(len(orders))}
    idents: dict[int, _ThreadState] = {}
    executions: Counter[int] = Counter()
    count_lock = threading.Lock()
    wrong = 0
    early = 0
    failures: list[BaseException] = []

    def work(key: int) -> int:
        state = idents[threading.get_ident()]
        state.in_body = True
        try:
            with count_lock:
                executions[key] += 1
            if not gates[key].wait(WAIT):
                raise TimeoutError(f"key {key}'s gate was never opened")
            return key
        finally:
            state.in_body = False

    f = factory()(work)

    def caller(i: int, order: list[int]) -> None:
        nonlocal wrong, early
        state = states[i]
        idents[threading.get_ident()] = state
        sys.setprofile(counter.profile)
        try:
            for key in order:
                state.key = key
                result = f(key)
                state.key = None
                if result != key:
                    wrong += 1
                if not gates[key].is_set():
                    early += 1
        except BaseException as exc:
            failures.append(exc)
        finally:
            state.key = None
            sys.setprofile(None)

    threads = [
        threading.Thread(target=caller, args=(i, order), daemon=True)
        for i, order in enumerate(orders)
    ]
    for thread in threads:
        thread.start()
    released = 0
    try:
        idle_since: float | None = None
        while any(t.is_alive() for t in threads):
            _quiet(counter, threads, states)
            started = sorted({s.key for s in states.values() if s.in_body and s.key is not None})
            if not started:
                if not any(t.is_alive() for t in threads):
                    break
                # Settled, yet no execution runs: a deadlock, or a thread the machine has
                # not scheduled for a while. Look again for a second before calling it one.
                idle_since = time.monotonic() if idle_since is None else idle_since
                if time.monotonic() - idle_since > 1.0:
                    raise RuntimeError("every caller waits and no execution runs: a deadlock")
                continue
            idle_since = None
            key = started[0]
            counter.waiting = {
                ident: s.key for ident, s in idents.items() if s.key is not None and not s.in_body
            }
            counter.released = key
            gates[key].set()
            released += 1
    finally:
        for gate in gates:
            gate.set()
        _join(threads, "16 threads x 64 keys")
    if failures:
        raise failures[0]
    once = sum(1 for k in range(P4_KEYS) if executions[k] == 1)
    return {
        "executions": str(sum(executions.values())),
        "keys run once": f"{once}/{P4_KEYS}",
        "wake-ups, own key": str(counter.own),
        "wake-ups, other key": str(counter.other),
        "wrong or early results": str(wrong + early),
    }


def _quiet(
    counter: _WakeCounter, threads: list[threading.Thread], states: dict[int, _ThreadState]
) -> None:
    """Wait until no caller thread has run any Python for a while: all parked or finished."""
    deadline = time.monotonic() + WAIT
    previous = -1
    stable = 0
    while stable < QUIET_POLLS:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the caller threads never settled in {WAIT:g} s")
        time.sleep(0.001)
        busy = any(
            t.is_alive() and s.key is None for t, s in zip(threads, states.values(), strict=True)
        )
        if busy or counter.events != previous:
            stable = 0
            previous = counter.events
            continue
        stable += 1


def many_keys(budget: Budget, rng: random.Random) -> Table:
    """P4: 16 threads x 64 keys; every key once, and no waiter woken by another key."""
    del budget
    table = Table(
        key="thread_stampede_16x64",
        title=f"Thread stampede: {P4_THREADS} threads x {P4_KEYS} keys (wake-ups counted)",
        unit="",
        extra_columns=(
            "executions",
            "keys run once",
            "wake-ups, own key",
            "wake-ups, other key",
            "wrong or early results",
        ),
    )
    orders = []
    for _ in range(P4_THREADS):
        order = list(range(P4_KEYS))
        rng.shuffle(order)
        orders.append(order)
    for name, factory in _installed(table).items():
        try:
            table.extra[name] = _many_keys(factory, orders)
        except Exception as exc:
            table.errors[name] = f"{type(exc).__name__}: {exc}"
    table.notes.append(
        "Each thread calls all 64 keys in its own shuffled order; gates open one started key "
        "at a time, once every thread is parked. A wake-up for another key is a waiting "
        "thread that stirred when a key it was not waiting for completed."
    )
    table.notes.append(
        "coalescer and singleflight keep no results, so keys called after their flight "
        "ended run again; that is by design, not a stampede."
    )
    return table
