"""`dsrflow run` over a backlog: micro-batches of the configured size, each its own flow run
on a real Prefect server, so many at once; every request in exactly one of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dsrflow.intake import submit
from dsrflow.model import Status
from dsrflow.settings import BatchSettings
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket


@pytest.fixture
def runtime(tmp_path: Path, prefect_server: list[Path]) -> Iterator[Runtime]:
    _, url = sqlworld.sqlite_world(tmp_path, 9, 5)
    rt = make_runtime(tmp_path, sqlworld.datamap_doc(url),
                      batches={"size": 2, "concurrent": 2})
    previous = set_runtime(rt)
    yield rt
    set_runtime(previous)
    rt.close()


def test_a_backlog_runs_as_micro_batches_each_its_own_flow_run(
    runtime: Runtime,
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from entrypoints.cli import run_batch

    ids = [submit(runtime.ledger, runtime.datamap, ticket(
        f"MB-{uid}", "erasure", [{"type": "user_id", "value": str(uid)}])).request_id
        for uid in range(1, 6)]

    assert run_batch(ids)

    assert {r.status for r in runtime.ledger.get_many(ids)} == {Status.COMPLETED}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(like_="dsr-batch-MB-")))
        runs += [r for r in client.read_flow_runs() if r.name.startswith("dsr-erasure-MB-")]
    batches = sorted(sorted(r.parameters["request_ids"]) for r in runs)
    # 5 requests, 2 to a batch: three flow runs, every request in exactly one.
    assert sorted(len(b) for b in batches) == [1, 2, 2]
    assert sorted(rid for b in batches for rid in b) == sorted(ids)


def test_batches_split_in_order_without_repeats() -> None:
    sizes = BatchSettings(size=3)
    assert sizes.split(["a", "b", "c", "d", "a", "e", "f", "g"]) == [
        ["a", "b", "c"], ["d", "e", "f"], ["g"]]
    assert sizes.split([]) == []
    with pytest.raises(ValueError, match="size"):
        BatchSettings(size=0)


def test_an_empty_batch_completes_and_does_nothing(runtime: Runtime) -> None:
    """A served deployment started with no request (a health check, a resume that found
    nothing) is a completed run with nothing in it, not a crash in its name."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    from flows.request import process_requests

    assert process_requests([]) == {}
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            name=FlowRunFilterName(any_=["dsr-batch-empty"])))
    assert run.state is not None and run.state.is_completed()
    assert runtime.ledger.steps() == []
