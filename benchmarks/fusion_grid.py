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
callers are 10,000 threads of one pool, released together by a barrier each round
(on 2 cores a round of that many threads costs seconds, so ``def`` runs one round
unless ``--sync-rounds`` says more); ``async def`` callers are tasks on one loop.
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
        self.start = threading.Barrier(KEYS * CALLERS + 1)
        self.end = threading.Barrier(KEYS * CALLERS + 1)
        self.stop = False
        self.threads = [
            threading.Thread(target=self._serve, args=(key,), daemon=True)
            for key in range(KEYS)
            for _ in range(CALLERS)
        ]
        for thread in self.threads:
            thread.start()

    def _serve(self, key: int) -> None:
        while True:
            self.start.wait()
            if self.stop:
                return
            self.target(key)
            self.end.wait()

    def round(self, target: Callable[[int], Any]) -> float:
        self.target = target
        began = time.perf_counter()
        self.start.wait()
        self.end.wait()
        return time.perf_counter() - began

    def close(self) -> None:
        self.stop = True
        self.start.wait()


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
    parser.add_argument(
        "--sync-rounds", type=int, default=1, help="the most rounds def runs (default 1)"
    )
    args = parser.parse_args(argv)
    grid = args.rounds or [1, 50]
    print(f"P10: {KEYS} keys x {CALLERS} concurrent callers, a {FACTORY * 1000:.0f} ms factory\n")
    print("| rounds | kind | contender | factory calls per key | wall time over the factory's |")
    print("| ---: | --- | --- | ---: | ---: |")
    pool = _Pool()
    try:
        for rounds in grid:
            if rounds > args.sync_rounds:
                continue
            for name, factory in SYNC.items():
                if name != "coalesce" and not _peers.available(name.split("+")[0]):
                    continue
                print(_row(rounds, "def", name, _sync_grid(pool, factory, rounds)), flush=True)
    finally:
        pool.close()
    for rounds in grid:
        for name, factory in ASYNC.items():
            dist = name.split(" ")[0]
            if dist != "coalesce" and not _peers.available(dist):
                continue
            result = asyncio.run(_async_grid(factory, rounds))
            print(_row(rounds, "async def", name, result), flush=True)


if __name__ == "__main__":
    main()
