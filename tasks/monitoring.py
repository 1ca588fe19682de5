"""What the Prefect UI shows of a run while it works: tags to filter by (request types and
regimes, never identities) and a progress bar that moves as each system finishes."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from prefect import get_client
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run, task_run

from pipeline.runs import read_runs_with
from pipeline.runtime import get_runtime


def current_run() -> dict[str, str]:
    """The ids of the flow and task run this code runs in (empty outside Prefect), for the
    ledger: the erasure certificate names the runs that did the work."""
    ids = {"flow_run_id": flow_run.get_id(), "task_run_id": task_run.get_id()}
    return {k: str(v) for k, v in ids.items() if v is not None}


read_runs_with(current_run)  # the pipeline's records name the Prefect runs


def tag_run(request_ids: Sequence[str]) -> list[str]:
    """Tag the current flow run `dsr`, with each request type and regime in the batch."""
    records = get_runtime().ledger.get_many(list(request_ids))
    tags = {"dsr"}
    tags |= {r.type.value for r in records if r.type is not None}
    tags |= {r.regime.value for r in records if r.regime is not None}
    run_id = flow_run.get_id()
    if run_id is None:  # called outside a flow run (a plain function call in a test)
        return sorted(tags)
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(UUID(run_id))
        merged = sorted(set(current.tags) | tags)
        client.update_flow_run(UUID(run_id), tags=merged)
    return merged


def crash_runs(run_ids: Sequence[str], why: str) -> int:
    """Set these flow runs `Crashed` (with `why`) where they are still pending or running:
    a run killed outright never reports its own end. Unknown ids are left alone."""
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    marked = 0
    with get_client(sync_client=True) as client:
        for run_id in run_ids:
            try:
                current = client.read_flow_run(UUID(run_id))
            except (ValueError, ObjectNotFound):  # not a flow run's id (a plain call)
                continue
            if current.state is not None and not current.state.is_final():
                client.set_flow_run_state(UUID(run_id), Crashed(message=why), force=True)
                marked += 1
    return marked


class RunProgress:
    """One progress artifact per run: 0% when the work starts, 100% when the last system
    (and its verification) has finished."""

    def __init__(self, total: int, unit: str = "system steps") -> None:
        self.total = max(total, 1)
        self.done = 0
        self.unit = unit
        created = create_progress_artifact(
            progress=0.0, description=f"0 of {total} {unit} finished"
        )
        assert isinstance(created, UUID)  # called from a sync flow: no coroutine
        self.artifact_id = created

    def advance(self, what: str) -> None:
        self.done += 1
        update_progress_artifact(
            self.artifact_id,
            progress=100.0 * min(self.done, self.total) / self.total,
            description=f"{what} finished ({self.done} of {self.total} {self.unit})",
        )
