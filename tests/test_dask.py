"""Scale-out: `process-requests` on a Dask cluster of worker processes, and the settings
that choose the task runner.

The workers are other processes: a system task there builds its own runtime from
`$DSRFLOW_CONFIG` and reports to the Prefect server in `$PREFECT_API_URL`, so the test
writes a real settings file (keys in a key file, a data map, SQLite databases) and exports
both variables before the cluster starts — the workers inherit the environment.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from pydantic import ValidationError

from dsrflow.intake import submit
from dsrflow.settings import CONFIG_ENV, load_settings, write_key_file
from flows.request import process_requests
from flows.runners import SettingsTaskRunner, TaskRunnerSettings, task_runner
from pipeline import steps
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import ticket

# Tables whose rows erasure deletes (the others keep rows and erase columns).
DELETING = ("devices", "posts", "post_tags", "follows", "albums", "photos")


def _write_config(tmp: Path, db_url: str) -> Path:
    doc = sqlworld.datamap_doc(db_url)
    (tmp / "datamap.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    write_key_file(tmp / "keys.json")
    config = tmp / "dsrflow.yaml"
    config.write_text(yaml.safe_dump({
        "ledger_url": "sqlite:///ledger.db",  # relative to the config file, in every process
        "datamap": "datamap.yaml",
        "key_file": "keys.json",
        "exports_dir": "exports",
        "state_dir": "state",
        "task_retries": 1,
        "task_retry_delays": [0.1],
    }))
    return config


def _worker_state() -> dict[str, Any]:
    """Runs inside a Dask worker: its pid, and what its runtime (if a task built one) holds."""
    from pipeline import runtime

    current = runtime._current
    return {
        "pid": os.getpid(),
        "config": current.settings.base_dir / "dsrflow.yaml" if current else None,
        "systems": sorted(current._connectors) if current else [],
    }


@dataclass
class DaskWorld:
    runtime: Runtime
    world: sqlworld.World
    engine: sa.Engine
    config: Path
    local_calls: list[str]  # system steps that ran in this process (must stay empty)

    def erasures(self, *uids: int) -> list[str]:
        return [
            submit(self.runtime.ledger, self.runtime.datamap, ticket(
                f"DASK-{u}", "erasure",
                [{"type": "email", "value": str(self.world.user(u)["email"])}])).request_id
            for u in uids
        ]


@pytest.fixture
def dask_world(
    tmp_path: Path, prefect_server: list[Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[DaskWorld]:
    import prefect.settings

    db_url = f"sqlite:///{tmp_path / 'userdb.sqlite'}"
    engine = sa.create_engine(db_url)
    w = sqlworld.generate(random.Random(5), 8)
    sqlworld.load(engine, w)
    config = _write_config(tmp_path, db_url)
    # Before any cluster starts: worker processes inherit the environment. (Prefect also
    # ships its settings, API URL included, with each task; the config path it does not.)
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.setenv("PREFECT_API_URL", str(prefect.settings.PREFECT_API_URL.value()))

    # The system tasks must not run in this process: spy on the plain logic they call.
    # (Workers import `pipeline.steps` afresh, unpatched.)
    local_calls: list[str] = []

    def spy(name: str) -> Callable[..., Any]:
        real = getattr(steps, name)

        def called_here(*args: Any, **kwargs: Any) -> Any:
            local_calls.append(name)
            return real(*args, **kwargs)

        return called_here

    for name in ("apply_to_system", "verify_system"):
        monkeypatch.setattr(steps, name, spy(name))

    rt = Runtime(load_settings(config))
    previous = set_runtime(rt)
    try:
        yield DaskWorld(rt, w, engine, config, local_calls)
    finally:
        set_runtime(previous)
        rt.close()
        engine.dispose()


def test_process_requests_on_a_dask_cluster(dask_world: DaskWorld) -> None:
    import distributed
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.objects import StateType

    dw, w = dask_world, dask_world.world
    erased = [2, 5]
    ids = dw.erasures(*erased)
    before = sqlworld.snapshot(dw.engine)

    # Our own LocalCluster (what `cluster_kwargs` starts per run) reached through
    # `dask_address`: it outlives the flow run, so its workers can be asked afterwards
    # what ran in them.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        # Through the placeholder `flows/request.py` uses, resolved when the run starts.
        chosen = TaskRunnerSettings(kind="dask", dask_address=cluster.scheduler_address)
        runner = SettingsTaskRunner(lambda: chosen)
        state = process_requests.with_options(task_runner=runner)(ids, return_state=True)
        with distributed.Client(cluster) as client:
            workers = list(client.run(_worker_state).values())

    assert state.result() == {rid: "completed" for rid in ids}
    assert dw.local_calls == []
    assert len(workers) == 2
    assert all(s["pid"] != os.getpid() for s in workers)
    # A worker built its runtime from the settings file, and the SQL connector in it: the
    # erasure and the verification ran there.
    ran = [s for s in workers if s["systems"]]
    assert ran and all(s["systems"] == ["db"] for s in ran)
    assert all(Path(s["config"]) == dw.config for s in ran)
    # ... and reported their task runs to this test's Prefect server.
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    with get_client(sync_client=True) as prefect_client:
        task_runs = prefect_client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states = {t.name: t.state_type for t in task_runs}
    assert states["apply-db"] == states["verify-db"] == StateType.COMPLETED

    for rid in ids:
        by_action = {s.action.value: s for s in dw.runtime.ledger.steps([rid])}
        assert by_action["erase"].status == "succeeded"
        assert by_action["verify"].remaining == 0

    after = sqlworld.snapshot(dw.engine)
    for table, rows in before.items():
        owners = w.owners.get(table, {})
        theirs = {k for k, who in owners.items() if who & set(erased)}
        others = set(owners) - theirs
        assert {k: after[table].get(k) for k in others} == {k: rows[k] for k in others}
        if table in DELETING:
            assert not theirs & set(after[table]), table
    # The accounts stay (the id is retained) with their columns erased.
    for u in erased:
        assert after["users"][(u,)]["email"] != w.user(u)["email"]
        assert after["users"][(u,)]["nickname"] is None


def test_a_local_cluster_is_started_for_the_run(dask_world: DaskWorld) -> None:
    """The default Dask setting: no address, a LocalCluster of processes for each run."""
    [rid] = dask_world.erasures(3)
    runner = SettingsTaskRunner(lambda: TaskRunnerSettings(kind="dask"))
    assert process_requests.with_options(task_runner=runner)([rid]) == {rid: "completed"}
    assert dask_world.local_calls == []
    assert not dask_world.runtime.ledger.subjects([rid])  # closed: identities dropped


# -- choosing the runner ----------------------------------------------------------------------
def test_threads_are_the_default() -> None:
    runner = task_runner(TaskRunnerSettings())
    assert isinstance(runner, ThreadPoolTaskRunner)
    limited = task_runner(TaskRunnerSettings(max_workers=3))
    assert isinstance(limited, ThreadPoolTaskRunner) and limited._max_workers == 3


def test_dask_starts_a_local_cluster_of_processes_or_joins_a_scheduler() -> None:
    local = task_runner(TaskRunnerSettings(kind="dask", dask_workers=4,
                                           dask_threads_per_worker=2))
    assert isinstance(local, DaskTaskRunner)
    assert local.address is None
    assert local.cluster_kwargs == {"n_workers": 4, "threads_per_worker": 2, "processes": True,
                                    "dashboard_address": None}
    remote = task_runner(TaskRunnerSettings(kind="dask", dask_address="tcp://10.0.0.5:8786"))
    assert isinstance(remote, DaskTaskRunner)
    assert remote.address == "tcp://10.0.0.5:8786" and remote.cluster_kwargs == {}


@pytest.mark.parametrize("bad", [
    {"kind": "processes"},
    {"dask_workers": 0},
    {"max_workers": 0},
    {"dask_address": "tcp://10.0.0.5:8786"},  # an address without kind: dask
    {"kind": "dask", "dask_adress": "tcp://10.0.0.5:8786"},  # a typo is not ignored
])
def test_bad_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TaskRunnerSettings(**bad)


def test_the_settings_runner_becomes_the_configured_one_at_run_start() -> None:
    chosen = TaskRunnerSettings(kind="dask", dask_workers=3)
    placeholder = SettingsTaskRunner(lambda: chosen)
    resolved = placeholder.duplicate()  # what Prefect's flow engine enters for each run
    assert isinstance(resolved, DaskTaskRunner)
    assert resolved.cluster_kwargs["n_workers"] == 3
    with pytest.raises(RuntimeError, match="resolved when a flow run starts"):
        placeholder.submit()


def test_the_settings_runner_reads_the_runtime(tmp_path: Path) -> None:
    config = _write_config(tmp_path, f"sqlite:///{tmp_path / 'userdb.sqlite'}")
    previous = set_runtime(Runtime(load_settings(config)))
    try:
        # No `task_runner:` in the file: threads.
        assert isinstance(SettingsTaskRunner().duplicate(), ThreadPoolTaskRunner)
    finally:
        set_runtime(previous)


def test_a_flow_run_uses_the_resolved_runner(prefect_server: list[Path]) -> None:
    from prefect import flow, task
    from prefect.context import FlowRunContext

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow(task_runner=SettingsTaskRunner(lambda: TaskRunnerSettings(max_workers=1)))
    def small() -> tuple[str, int | None, int]:
        ctx = FlowRunContext.get()
        assert ctx is not None
        runner = ctx.task_runner
        return type(runner).__name__, getattr(runner, "_max_workers", None), \
            double.submit(21).result()

    assert small() == ("ThreadPoolTaskRunner", 1, 42)
