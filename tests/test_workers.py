"""Production topology: two `prefect worker start` processes on the `dsrflow` process pool,
a Prefect server on PostgreSQL, the ledger and the user database on PostgreSQL, the
deployments of deployments/prefect.yaml, and an OpenDSR partner.

One test, two acts (each needs the whole topology, which takes most of the time to start):

1. Four tickets go on the ticket queue (SQS on a moto server); the `intake` deployment,
   run by a worker, records them and starts two process-requests batches (its batch size
   is two). The workers take the batches. The database is limited to one
   batch at a time (`limits.systems.db: 1`): while one batch is inside the database (held
   there by a gate, see `Gate`), the other's task waits for the slot and never reaches the
   database; afterwards the two batches' database steps do not overlap in the ledger.
   Every request completes once, the partner is asked once per request, the ledger's
   counts equal the rows that left the database, and no one else's row changed.
2. A batch is inside the database when its worker is SIGKILLed with its flow run's
   process. The other worker recovers it: its leases run out (rewound here, not waited
   for), resume-requests (run by the surviving worker) marks the dead flow run crashed
   and starts the batch again, which waits until Prefect takes back the dead run's
   database slot (its lease: `limits.lease_seconds`, 60 s, the server's minimum) and
   then completes — once, with no double effect.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa
import yaml

from dsrflow.intake import submit
from dsrflow.leakscan import files_containing
from dsrflow.ledger.schema import audit_events, requests
from dsrflow.model import Status, StepAction, StepStatus
from dsrflow.queue import put_ticket
from dsrflow.settings import load_settings
from entrypoints.demo import moto_server
from examples.partner import ReferencePartner
from pipeline import partners
from pipeline.runtime import Runtime, set_runtime
from tasks.intake import batch_key
from tests import sqlworld
from tests.helpers import cli_config, ticket
from tests.postgres import create_database
from tests.workerpool import ROOT, Process, deploy, prefect_env, prefect_server, wait_for, worker

pytestmark = [pytest.mark.slow, pytest.mark.server]

USERS = 10
FIRST_ACT, SECOND_ACT = [1, 2, 3, 4], [5, 6]
GATE_KEY = 4242
PROCESS = "process-requests/process-requests"
AWS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
       "region_name": "us-east-1"}


# -- the database's gate ----------------------------------------------------------------------
GATE_SQL = f"""
CREATE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_lock_shared({GATE_KEY});
    PERFORM pg_advisory_unlock_shared({GATE_KEY});
    RETURN NULL;
END $$;
CREATE TRIGGER test_gate BEFORE UPDATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION test_gate();
"""


class Gate:
    """An erasure in the user database updates `users`; a trigger makes that statement wait
    while the test holds an advisory lock. So a batch can be held inside the database (its
    slot taken, its transaction open) for as long as the test needs, and the test can count
    the erasures waiting there (`pg_locks`): the limit's promise made observable."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.holder: sa.Connection | None = None

    def close(self) -> None:
        self.holder = self.engine.connect()
        self.holder.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": GATE_KEY})
        self.holder.commit()

    def open(self) -> None:
        assert self.holder is not None
        self.holder.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": GATE_KEY})
        self.holder.close()
        self.holder = None

    def waiting(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND objid = :key AND NOT granted"), {"key": GATE_KEY}).scalar_one())


# -- the topology -----------------------------------------------------------------------------
@dataclass
class Topology:
    rt: Runtime
    api: str
    userdb: str
    world: sqlworld.World
    partner: ReferencePartner
    workers: dict[str, Process]
    gate: Gate
    prefect_db: str
    folder: Path
    sqs: Any
    queue_url: str


@pytest.fixture
def topology(tmp_path: Path, postgres_server: str) -> Iterator[Topology]:
    tag = uuid.uuid4().hex[:8]
    userdb = create_database(postgres_server, f"w_users_{tag}")
    ledger_url = create_database(postgres_server, f"w_ledger_{tag}")
    prefect_db = create_database(postgres_server, f"w_prefect_{tag}")

    world = sqlworld.loaded(userdb, 17, USERS)
    sqlworld.unfollow_among(userdb, FIRST_ACT + SECOND_ACT)  # a follow between two subjects
    engine = sa.create_engine(userdb)                       # would be counted by both
    with engine.begin() as conn:
        conn.exec_driver_sql(GATE_SQL)
    engine.dispose()

    with ReferencePartner() as partner, moto_server() as sqs_endpoint, prefect_server(
            prefect_db.replace("postgresql+psycopg://", "postgresql+asyncpg://"), tmp_path
    ) as api:
        sqs = boto3.client("sqs", endpoint_url=sqs_endpoint, **AWS)
        queue_url = sqs.create_queue(QueueName=f"tickets-{tag}")["QueueUrl"]
        dead_letters = sqs.create_queue(QueueName=f"dead-letters-{tag}")["QueueUrl"]
        (tmp_path / "partner.pem").write_bytes(partner.certificate_pem)
        doc = sqlworld.datamap_with_partner(userdb, partner.url, partner.domain,
                                            category="contact", email_format="sha256")
        config = cli_config(tmp_path, doc, ledger_url=ledger_url)
        settings = yaml.safe_load(config.read_text())
        settings["limits"] = {"systems": {"db": 1}, "lease_seconds": 60}
        settings["queue"] = {
            "queue_url": queue_url, "dead_letter_url": dead_letters,
            "endpoint_url": sqs_endpoint, "region": AWS["region_name"],
            "batch_size": 2, "batch_seconds": 1, "wait_seconds": 1,
            "process_deployment": PROCESS,
        }
        config.write_text(yaml.safe_dump(settings))

        env = prefect_env(tmp_path / "home", api, DSRFLOW_ROOT=str(ROOT),
                          DSRFLOW_CONFIG=str(config), PREFECT_WORKER_QUERY_SECONDS="1",
                          AWS_ACCESS_KEY_ID=AWS["aws_access_key_id"],
                          AWS_SECRET_ACCESS_KEY=AWS["aws_secret_access_key"])
        deploy(env)
        workers = {name: worker(name, env, tmp_path) for name in ("worker-a", "worker-b")}
        rt = Runtime(load_settings(config))
        previous = set_runtime(rt)
        gate = Gate(userdb)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        try:
            with temporary_settings({PREFECT_API_URL: api}):
                yield Topology(rt, api, userdb, world, partner, workers, gate, prefect_db,
                               tmp_path, sqs, queue_url)
        except BaseException:
            for w in workers.values():
                print(f"--- {w.name}\n{w.tail()}")
            raise
        finally:
            if gate.holder is not None:
                gate.open()
            gate.engine.dispose()
            for w in workers.values():  # workers before the server they talk to
                w.stop()
            set_runtime(previous)
            rt.close()


# -- reading Prefect and the ledger -------------------------------------------------------
def _flow_run(run_id: Any) -> Any:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _task_state(run_id: Any, name: str) -> str | None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    states = [r.state_type.value for r in runs if r.name == name and r.state_type]
    return states[0] if states else None


def _final(run_id: Any) -> Any:
    return wait_for(f"flow run {run_id} to end", lambda: (
        run if (run := _flow_run(run_id)).state and run.state.is_final() else None),
        timeout=240, every=0.5)


def _worker_of(run: Any) -> str:
    """Prefect 3.9 records the worker that took a flow run in the run's labels."""
    return str(run.labels.get("prefect.worker.name"))


def _process_runs() -> list[Any]:
    """The process-requests flow runs there are, oldest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return list(client.read_flow_runs(
            deployment_filter=DeploymentFilter(
                name=DeploymentFilterName(any_=[PROCESS.split("/")[1]])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC))


def _start(ids: list[str]) -> Any:
    """A batch started the way intake starts one (the same idempotency key)."""
    from prefect.deployments import run_deployment

    return run_deployment(PROCESS, parameters={"request_ids": ids},
                          idempotency_key=batch_key(ids), timeout=0)


def _db_erase(t: Topology, ids: list[str]) -> list[Any]:
    return [s for s in t.rt.ledger.steps(ids) if (s.system, s.action) == ("db", StepAction.ERASE)]


def _inside(t: Topology, ids: list[str]) -> bool:
    return any(s.status is StepStatus.RUNNING for s in _db_erase(t, ids))


def _submit(t: Topology, uids: list[int]) -> list[str]:
    return [submit(t.rt.ledger, t.rt.datamap, ticket(
        f"W-{uid}", "erasure", [{"type": "email", "value": t.world.user(uid)["email"]}])
    ).request_id for uid in uids]


def _finish_with_partner(t: Topology, ids: list[str]) -> None:
    """The partner completes; the scheduled check (run here) closes the requests."""
    for rid in ids:
        [row] = [p for p in t.rt.ledger.partner_requests([rid]) if p.system == "adnet"]
        t.partner.complete(str(row.subject_request_id))
    partners.check(t.rt)


def _completions(t: Topology) -> Counter[str]:
    """How many times the audit trail records each request moving to completed (a batch's
    moves are one entry listing them; a single move names its request on the entry)."""
    seen: Counter[str] = Counter()
    with t.rt.ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(audit_events.c.request_id, audit_events.c.detail)
                            .where(audit_events.c.event == "request.status")).all()
    for request_id, raw in rows:
        detail = json.loads(raw) if isinstance(raw, str) else raw
        for move in detail.get("moves") or [{**detail, "request_id": request_id}]:
            if move.get("to") == Status.COMPLETED.value:
                seen[move["request_id"]] += 1
    return seen


def _assert_done_once(t: Topology, ids: list[str], uids: list[int],
                      before: dict[str, Any], rows_before: int) -> None:
    for record in t.rt.ledger.get_many(ids):
        assert record.status is Status.COMPLETED, record.reason
    for rid in ids:
        [row] = [p for p in t.rt.ledger.partner_requests([rid]) if p.system == "adnet"]
        srid = str(row.subject_request_id)
        assert t.partner.posts[srid] == 1 and t.partner.distinct_requests(srid) == 1
    completions = _completions(t)
    assert all(completions[rid] == 1 for rid in ids), completions
    assert t.rt.ledger.verify_audit_chain() is None
    deleted, certified = sqlworld.deleted_as_recorded(t.rt.ledger.steps(ids))
    gone = rows_before - sqlworld.total_rows(t.userdb)
    assert gone > 0 and deleted == gone and certified == gone, (gone, deleted, certified)
    _assert_others_untouched(t, before, uids)


def _assert_others_untouched(t: Topology, before: dict[str, Any], uids: list[int]) -> None:
    """Every row that belongs to no subject erased so far is as it was."""
    engine = sa.create_engine(t.userdb)
    after = sqlworld.snapshot(engine)
    engine.dispose()
    erased = set(uids)
    for table, rows in before.items():
        owners = t.world.owners.get(table, {})
        for key, row in rows.items():
            if not owners.get(key, set()) & erased:
                assert after[table].get(key) == row, (table, key)


# -- the test ---------------------------------------------------------------------------------
def test_two_workers_share_batches_under_the_system_limit_and_recover_a_killed_one(
    topology: Topology,
) -> None:
    t = topology
    started = time.monotonic()
    engine = sa.create_engine(t.userdb)
    before = sqlworld.snapshot(engine)
    engine.dispose()
    rows_before = sqlworld.total_rows(t.userdb)

    # -- act 1: tickets through the queue, two batches, two workers, one database slot ------
    for uid in FIRST_ACT:
        put_ticket(t.sqs, t.queue_url, ticket(
            f"W-{uid}", "erasure", [{"type": "email", "value": t.world.user(uid)["email"]}]))
    t.gate.close()
    from prefect.deployments import run_deployment

    intake: Any = run_deployment("intake/intake", timeout=0,
                                 parameters={"max_batches": 2, "max_seconds": 120})
    assert _final(intake.id).state.is_completed()
    started_runs = _process_runs()
    batches = [list(r.parameters["request_ids"]) for r in started_runs]
    ids = [rid for b in batches for rid in b]
    assert sorted(len(b) for b in batches) == [2, 2]
    assert {r.ticket_id for r in t.rt.ledger.get_many(ids)} == {f"W-{u}" for u in FIRST_ACT}
    runs = [r.id for r in started_runs]
    [first] = wait_for("a batch inside the database", lambda: [
        i for i, b in enumerate(batches) if _inside(t, b)])
    other = 1 - first
    wait_for("the other batch's database task to start", lambda: _task_state(
        runs[other], "apply-db") == "RUNNING")
    # The other batch's task runs, and waits for the slot: for the next 3 s (a period
    # to hold the promise over, not a synchronisation) it must not reach the database.
    hold_until = time.monotonic() + 3
    while time.monotonic() < hold_until:
        assert t.gate.waiting() == 1 and not _inside(t, batches[other])
        time.sleep(0.2)
    t.gate.open()
    finished = [_final(r) for r in runs]
    assert {_worker_of(r) for r in finished} == {"worker-a", "worker-b"}, [
        r.labels for r in finished]

    _finish_with_partner(t, ids)
    _assert_done_once(t, ids, FIRST_ACT, before, rows_before)
    spans = [(min(s.started_at for s in _db_erase(t, b)), max(s.finished_at for s in
              _db_erase(t, b))) for b in batches]
    assert spans[first][1] <= spans[other][0], spans  # one after the other, never both
    assert all(s.attempts == 1 for s in _db_erase(t, ids))
    act1 = time.monotonic() - started

    # -- act 2: a worker killed with a batch inside the database ------------------------------
    ids2 = _submit(t, SECOND_ACT)
    t.gate.close()
    doomed = _start(ids2).id
    wait_for("the batch inside the database", lambda: _inside(t, ids2))
    run = _flow_run(doomed)
    victim = _worker_of(run)
    survivor = next(name for name in t.workers if name != victim)
    t.workers[victim].kill()
    # The flow run's own process: Prefect's process worker starts it in a session of
    # its own, so the worker's group does not include it. Its pid is on the flow run.
    pid = int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    wait_for("the flow run's process to be gone", lambda: not _pid_alive(pid), timeout=30)
    t.gate.open()
    assert {r.status for r in t.rt.ledger.get_many(ids2)} == {Status.IN_PROGRESS}
    assert _flow_run(doomed).state.type.value == "RUNNING"  # nobody told Prefect

    # Time passes: the dead run's leases run out (rewound here, not waited for).
    with t.rt.ledger.engine.begin() as conn:
        conn.execute(sa.update(requests).where(requests.c.id.in_(ids2)).values(
            lease_expires_at=datetime.now(UTC) - timedelta(minutes=1)))
    from prefect.deployments import run_deployment

    resume: Any = run_deployment("resume-requests/resume-requests", timeout=0)
    resumed = _final(resume.id)
    assert resumed.state.type.value == "COMPLETED", resumed.state
    assert _worker_of(resumed) == survivor
    assert _flow_run(doomed).state.type.value == "CRASHED"

    rerun = wait_for("the batch's new run", lambda: _runs_of(ids2, but=doomed))
    redone = _final(rerun.id)
    assert _worker_of(redone) == survivor
    _finish_with_partner(t, ids2)
    _assert_done_once(t, ids + ids2, FIRST_ACT + SECOND_ACT, before, rows_before)
    assert all(s.attempts <= 2 for s in t.rt.ledger.steps(ids2))
    _assert_prefect_has_no_identity(t, FIRST_ACT + SECOND_ACT)
    act2 = time.monotonic() - started - act1
    print(f"act 1 {act1:.1f} s, act 2 {act2:.1f} s")


def _tables_holding(t: Topology, needles: list[str]) -> list[str]:
    """The tables of Prefect's database with a row whose text holds one of the needles."""
    patterns = [f"%{n}%" for n in needles]
    engine = sa.create_engine(t.prefect_db)
    with engine.connect() as conn:
        tables = conn.execute(sa.text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
            "AND table_type = 'BASE TABLE'")).scalars().all()
        hits = [table for table in tables if conn.execute(sa.text(
            f'SELECT 1 FROM "{table}" AS r WHERE lower(r::text) LIKE ANY(:p) LIMIT 1'),
            {"p": patterns}).first()]
    engine.dispose()
    return hits


def _assert_prefect_has_no_identity(t: Topology, uids: list[int]) -> None:
    """Invariant 1 with workers: no subject's email or phone anywhere in Prefect's database
    (every row of every table, as text), its homes or the workers' and server's output."""
    needles = sorted({str(v).lower() for uid in uids for v in (
        t.world.user(uid)["email"], sqlworld.phone_for(uid))})
    # The scan finds what is there: the batches' run names carry their first ticket id.
    assert "flow_run" in _tables_holding(t, ["dsr-batch-w-"])
    assert _tables_holding(t, needles) == []
    folders = [t.folder / "home", t.folder / "server-home"]
    logs = {str(path): path.read_text(errors="replace").lower() for path in
            [t.folder / "server.log", *(w.log for w in t.workers.values())]}
    assert files_containing(folders, needles) == {}
    assert [path for path, text in logs.items() if any(n in text for n in needles)] == []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _runs_of(ids: list[str], but: Any) -> Any:
    """The process-requests run for exactly these requests other than `but`."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs():
            if run.id != but and sorted(run.parameters.get("request_ids") or []) == sorted(ids):
                return run
    return None
