"""Group commit: work that callers hand in one item at a time (a partner's callbacks, each
on its own server thread), done batch-shaped. The items that queue while one batch runs
are done together by the next, so a burst of a thousand costs a few ledger transactions,
not a thousand, and a lone item waits for nobody."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """Runs `work` on a thread of its own over the items queued since its last call (at
    most `max_batch`); `work` returns one result per item, in order. A batch that raises
    is done again item by item, so one item's fault fails only its own caller."""

    def __init__(self, work: Callable[[Sequence[T]], Sequence[R]], name: str,
                 max_batch: int = 500) -> None:
        self._work = work
        self._name = name
        self._max = max_batch
        self._queue: queue.SimpleQueue[_Waiting[T, R] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Do what is queued, then stop."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def queued(self) -> int:
        """Items waiting for the next batch."""
        return self._queue.qsize()

    def submit(self, item: T, timeout: float) -> R:
        """Queue the item and wait for the batch that takes it; its result. Raises what
        the work raised for it, or TimeoutError."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError(f"{self._name} is not running")
        waiting: _Waiting[T, R] = _Waiting(item, Future())
        self._queue.put(waiting)
        return waiting.future.result(timeout)

    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            batch = [first]
            stopping = False
            while len(batch) < self._max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._do(batch)
            if stopping:
                return

    def _do(self, batch: list[_Waiting[T, R]]) -> None:
        try:
            results = self._work([w.item for w in batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
            else:
                for waiting in batch:
                    self._do([waiting])
            return
        for waiting, result in zip(batch, results, strict=True):
            waiting.future.set_result(result)


@dataclass(frozen=True)
class _Waiting(Generic[T, R]):
    item: T
    future: Future[R]
