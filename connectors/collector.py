"""Pausing Python's cyclic garbage collector around a connector call.

A batch call allocates hundreds of thousands of small objects that live until it returns
(rows' keys, owners' sets, outcomes): every few hundred allocations start a young
collection, and each tenth of those promotes them, so the full passes walk a heap that
keeps growing, to find nothing (they are referenced, not garbage). At 100,000 users and
1,000 subjects that was 15% of the SQL connector's time in `benchmarks/bench_sql.py`,
about 4 s of 44 at 1,000,000 users.

The collector is process-wide: pausing it pauses it for every thread until the last
paused call returns (a depth count, under a lock, so that overlapping calls in threads
cannot leave it off or turn it on under another's feet). Nothing is leaked: reference
counting still frees everything acyclic at once, and the cycles made meanwhile are
collected by the first collection after it resumes. `gc.freeze()` is not used: it would
keep the call's objects out of every later collection.
"""

from __future__ import annotations

import functools
import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_depth = 0
_resume = False  # whether the collector was on when the first paused call began


@contextmanager
def paused() -> Iterator[None]:
    """No cyclic collection inside the block (nor in other threads meanwhile); the
    collector's state as it was once the last overlapping block ends."""
    global _depth, _resume
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()


def without_collection(call: Callable[P, R]) -> Callable[P, R]:
    """`call` run inside `paused()`."""

    @functools.wraps(call)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with paused():
            return call(*args, **kwargs)

    return run
