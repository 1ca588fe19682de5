"""The connectors' pause of the cyclic garbage collector (connectors/collector.py) leaves
it as it found it, whatever overlaps and whatever fails."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from connectors.collector import paused, without_collection


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


def test_paused_inside_and_on_again_after_even_on_error() -> None:
    gc.enable()
    with paused():
        assert not gc.isenabled()
    assert gc.isenabled()

    @without_collection
    def fails() -> None:
        assert not gc.isenabled()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fails()
    assert gc.isenabled()


def test_left_off_when_it_was_off() -> None:
    gc.disable()
    with paused():
        pass
    assert not gc.isenabled()


def test_overlapping_calls_in_threads_resume_it_once_the_last_ends() -> None:
    gc.enable()
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with paused():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    with paused():
        thread.start()
        assert entered.wait(10)
    assert not gc.isenabled()  # the other call still runs
    release.set()
    thread.join(10)
    assert gc.isenabled()
