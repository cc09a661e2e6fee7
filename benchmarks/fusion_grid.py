"""P10: FusionCache's stampede grid for coalesce and the in-process peers.

One command::

    python benchmarks/fusion_grid.py              # 1 and 50 rounds
    python benchmarks/fusion_grid.py --rounds 1   # one round only

Each round: 100 keys x 100 concurrent callers on a cold cache, every execution a
200 ms factory (``time.sleep`` for ``def``, ``asyncio.sleep`` for ``async def``). Per
contender it prints factory calls per key (1.0 is ideal: one execution per key) and the
wall time of all the rounds over the factory's 200 ms (1.0 is ideal). As in
FusionCache's grid, the rounds share one decorated function: the first round is cold,
the later ones find the cache warm, so the ideal stays 1.0 call per key. ``def``
callers are 10,000 threads started once and reused by every round and contender: each
waits on its own gate, the round opens every gate and ends when the last caller has
its value. While they run, the interpreter's switch interval is raised to
``SWITCH_INTERVAL`` (``sys.setswitchinterval``): every thread waiting for the GIL wakes
once per interval to ask for it, which with the default 5 ms and 10,000 threads costs
more than the grid itself on 2 cores (a round of no-op calls took 15 to 22 s, against
0.6 to 1.2 s with 0.5 s or 2 s). Every caller blocks or returns long before 1 s, so the raised
interval changes no contender's schedule, only how often waiting threads stir.
``async def`` callers are tasks on one loop.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make the repository's coalesce importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import _peers

KEYS, CALLERS, FACTORY = 100, 100, 0.2
SWITCH_INTERVAL = 1.0  # seconds, while the def rows run (see above)
ROUND_TIMEOUT = 600.0

SYNC: dict[str, Callable[[], _peers.Decorator]] = {
    "coalesce": _peers.coalesce_ttl,
    "cachetools": _peers.cachetools_plain,
    "cachetools+lock": _peers.cachetools_lock,
    "cachetools+condition": _peers.cachetools_condition,
    "cachebox": _peers.cachebox_ttl,
    "dogpile.cache": _peers.dogpile_memory,
}
ASYNC: dict[str, Callable[[], _peers.Decorator]] = {
    "coalesce": _peers.coalesce_ttl,
    "async-lru": _peers.async_lru_ttl,
    "cashews (lock=True)": lambda: _peers.cashews_memory(lock=True),
    "aiocache (cached_stampede)": lambda: _peers.aiocache_memory(stampede=True),
}


class _Pool:
    """KEYS x CALLERS threads that call ``target(key)`` together, once per round."""

    def __init__(self) -> None:
        self.target: Callable[[int], Any] = lambda key: None
        self.gates = [threading.Lock() for _ in range(KEYS * CALLERS)]
        for gate in self.gates:  # closed: a caller's acquire waits for the round
            gate.acquire()
        self.tally = threading.Lock()
        self.left = 0
        self.done = threading.Event()
        self.stop = False
        self.threads = [
            threading.Thread(target=self._serve, args=(i // CALLERS, gate), daemon=True)
            for i, gate in enumerate(self.gates)
        ]
        for thread in self.threads:
            thread.start()
        self.round(lambda key: None)  # every thread has run once before the first contender

    def _serve(self, key: int, gate: threading.Lock) -> None:
        while True:
            gate.acquire()  # held again on return: the next round has to release it
            if self.stop:
                return
            self.target(key)
            with self.tally:
                self.left -= 1
                last = not self.left
            if last:
                self.done.set()

    def round(self, target: Callable[[int], Any]) -> float:
        self.target = target
        self.left = len(self.gates)
        self.done.clear()
        began = time.perf_counter()
        for gate in self.gates:
            gate.release()
        if not self.done.wait(ROUND_TIMEOUT):
            raise SystemExit(f"a round did not finish within {ROUND_TIMEOUT:.0f} s")
        return time.perf_counter() - began

    def close(self) -> None:
        """End every thread: left running, they would slow the ``async def`` rows."""
        self.stop = True
        for gate in self.gates:
            gate.release()
        for thread in self.threads:
            thread.join(ROUND_TIMEOUT)


def _sync_grid(
    pool: _Pool, factory: Callable[[], _peers.Decorator], rounds: int
) -> tuple[float, int, float]:
    calls: Counter[int] = Counter()
    lock = threading.Lock()

    def work(key: int) -> int:
        with lock:
            calls[key] += 1
        time.sleep(FACTORY)
        return key

    decorated = factory()(work)
    wall = sum(pool.round(decorated) for _ in range(rounds))
    return sum(calls.values()) / KEYS, max(calls.values()), wall / FACTORY


async def _async_grid(
    factory: Callable[[], _peers.Decorator], rounds: int
) -> tuple[float, int, float]:
    calls: Counter[int] = Counter()

    async def work(key: int) -> int:
        calls[key] += 1
        await asyncio.sleep(FACTORY)
        return key

    decorated = factory()(work)
    began = time.perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*(decorated(key) for key in range(KEYS) for _ in range(CALLERS)))
    wall = time.perf_counter() - began
    return sum(calls.values()) / KEYS, max(calls.values()), wall / FACTORY


def _row(rounds: int, kind: str, name: str, result: tuple[float, int, float]) -> str:
    per_key, worst, over = result
    return f"| {rounds} | {kind} | {name} | {per_key:.2f} (most {worst}) | {over:.2f}x |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, action="append", help="default: 1 and 50")
    args = parser.parse_args(argv)
    grid = args.rounds or [1, 50]
    print(f"P10: {KEYS} keys x {CALLERS} concurrent callers, a {FACTORY * 1000:.0f} ms factory\n")
    print("| rounds | kind | contender | factory calls per key | wall time over the factory's |")
    print("| ---: | --- | --- | ---: | ---: |")
    interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    pool = _Pool()
    try:
        for rounds in grid:
            for name, factory in SYNC.items():
                if name != "coalesce" and not _peers.available(name.split("+")[0]):
                    continue
                print(_row(rounds, "def", name, _sync_grid(pool, factory, rounds)), flush=True)
    finally:
        pool.close()
        sys.setswitchinterval(interval)
    for rounds in grid:
        for name, factory in ASYNC.items():
            dist = name.split(" ")[0]
            if dist != "coalesce" and not _peers.available(dist):
                continue
            result = asyncio.run(_async_grid(factory, rounds))
            print(_row(rounds, "async def", name, result), flush=True)


if __name__ == "__main__":
    main()
