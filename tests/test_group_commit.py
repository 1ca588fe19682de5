"""GroupCommit: items handed in one at a time from many threads are done in batches (those
that queue while one batch runs go together in the next), each caller gets its own
result, and one item's fault fails only its own caller."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.group_commit import GroupCommit
from tests.workerpool import wait_for


def test_items_queued_during_a_batch_go_together_and_each_caller_gets_its_own_result() -> None:
    batches: list[list[int]] = []
    release = threading.Event()

    def work(items: Sequence[int]) -> list[int]:
        batches.append(list(items))
        if len(batches) == 1:
            assert release.wait(30)  # the first batch runs until the others have queued
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(work, "test-group")
    group.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(group.submit, 0, 30)
            wait_for("the first batch to start", lambda: batches, timeout=30, every=0.005)
            rest = [pool.submit(group.submit, i, 30) for i in range(1, 8)]
            wait_for("the others to queue", lambda: group.queued() == 7, timeout=30,
                     every=0.005)
            release.set()
            assert first.result() == 0
            assert [f.result() for f in rest] == [i * 10 for i in range(1, 8)]
    finally:
        group.stop()
    assert batches[0] == [0] and sorted(batches[1]) == list(range(1, 8))


def test_a_failing_item_fails_only_its_own_caller() -> None:
    seen: list[list[str]] = []

    def work(items: Sequence[str]) -> list[str]:
        seen.append(list(items))
        if "bad" in items:
            raise ValueError("cannot do bad")
        return [i.upper() for i in items]

    group: GroupCommit[str, str] = GroupCommit(work, "test-group")
    with pytest.raises(RuntimeError, match="not running"):
        group.submit("a", 1)  # nothing would ever take it
    results: dict[str, object] = {}

    def call(item: str) -> None:
        try:
            results[item] = group.submit(item, 30)
        except ValueError as exc:
            results[item] = exc

    group.start()
    try:
        threads = [threading.Thread(target=call, args=(i,)) for i in ("a", "bad", "c")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        group.stop()
    assert results["a"] == "A" and results["c"] == "C"
    assert isinstance(results["bad"], ValueError)
    assert ["bad"] in seen  # alone, or retried alone after its batch failed
