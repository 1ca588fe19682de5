"""The request flow on a real Prefect server: the gate, the fan-out, verification, the
ledger, artifacts, failure handling, and that Prefect never receives an identity."""

from __future__ import annotations

import io
import json
import random
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dsrflow.certificates import verify_certificate
from dsrflow.exports import exported_systems
from dsrflow.intake import submit
from dsrflow.leakscan import files_containing
from dsrflow.model import Status
from dsrflow.packages import check_package, unseal
from flows.request import BatchIncomplete, process_requests
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket


@pytest.fixture
def world(tmp_path: Path) -> tuple[sqlworld.World, str]:
    return sqlworld.sqlite_world(tmp_path, 11, 8)


@pytest.fixture
def runtime(
    tmp_path: Path, world: tuple[sqlworld.World, str], prefect_server: list[Path]
) -> Iterator[Runtime]:
    doc = sqlworld.datamap_doc(world[1])
    rt = make_runtime(tmp_path, doc)
    previous = set_runtime(rt)
    yield rt
    set_runtime(previous)
    rt.close()


def _submit(rt: Runtime, *tickets: dict[str, Any]) -> list[str]:
    return [submit(rt.ledger, rt.datamap, t).request_id for t in tickets]


def _table_rows(data: Any) -> list[dict[str, Any]]:
    """A table artifact's rows (the API gives them as JSON text)."""
    rows = json.loads(data) if isinstance(data, str) else data
    assert isinstance(rows, list)
    return rows


def _email(world: sqlworld.World, uid: int) -> str:
    return str(world.user(uid)["email"])


def test_a_batch_erases_collects_and_holds_the_unverified(
    runtime: Runtime, world: tuple[sqlworld.World, str], prefect_server: list[Path]
) -> None:
    w, url = world
    erase, access, unverified, withdraw = _submit(
        runtime,
        ticket("T-1", "erasure", [{"type": "email", "value": _email(w, 2).upper()}]),
        ticket("T-2", "access", [{"type": "phone", "value": "+86 " + sqlworld.phone_for(3)}]),
        ticket("T-3", "erasure", [{"type": "email", "value": _email(w, 4)}], verified=False),
        ticket("T-4", "consent_withdrawal", [{"type": "user_id", "value": "5"}],
               scope=["media"]),
    )
    outcome = process_requests([erase, access, unverified, withdraw])

    assert outcome[erase] == outcome[access] == outcome[withdraw] == "completed"
    assert outcome[unverified] == "identity not verified yet"
    ledger = runtime.ledger
    assert ledger.get(unverified).status is Status.AWAITING_VERIFICATION

    # The erasure went everywhere and was proven.
    steps = {(s.system, s.action.value): s for s in ledger.steps([erase])}
    assert steps[("db", "erase")].status == "succeeded"
    assert steps[("db", "verify")].remaining == 0
    # The email was pseudonymized, yet verification found the account's tombstone again
    # through the user id the erasure read on its way: the proof looked at the right rows.
    assert (steps[("db", "verify")].found or 0) >= 1
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        posts = conn.execute(sa.select(sa.func.count()).select_from(sqlworld.posts)
                             .where(sqlworld.posts.c.user_id == 2)).scalar_one()
        photos_left = conn.execute(
            sa.select(sa.func.count()).select_from(sqlworld.albums)
            .where(sqlworld.albums.c.user_id == 5)).scalar_one()
        posts_of_5 = conn.execute(sa.select(sa.func.count()).select_from(sqlworld.posts)
                                  .where(sqlworld.posts.c.user_id == 5)).scalar_one()
    engine.dispose()
    assert posts == 0
    assert photos_left == 0
    assert posts_of_5 == len([p for p in w.rows.get("posts", []) if p["user_id"] == 5])

    # The access request's records went into its package, and only there: the collected
    # copy waiting for it is gone.
    package = next(s for s in ledger.steps([access]) if s.system == "access-package")
    outbox = json.loads(Path(package.details["key_handed_to"].removeprefix("outbox:"))
                        .read_text())
    opened = unseal(Path(package.details["location"]).read_bytes(), outbox["key"].encode())
    with zipfile.ZipFile(io.BytesIO(opened)) as zf:
        assert [r["id"] for r in json.loads(zf.read("data/db/users.json"))] == [3]
    assert exported_systems(runtime.settings.exports_path, access) == []

    # Closed requests keep no identities; the open one still can be processed later.
    assert ledger.subjects([erase]) == []
    assert len(ledger.subjects([unverified])) == 1
    assert ledger.verify_audit_chain() is None


def test_each_request_ends_with_what_it_asked_for(
    runtime: Runtime, world: tuple[sqlworld.World, str], prefect_server: list[Path]
) -> None:
    """The flow's deliver step: an access package that opens with the key from the outbox,
    and an erasure certificate that verifies, both recorded against their requests."""
    w, _ = world
    access, erase = _submit(
        runtime,
        ticket("D-1", "access", [{"type": "email", "value": _email(w, 3)}]),
        ticket("D-2", "account_cancellation", [{"type": "email", "value": _email(w, 4)}]),
    )
    assert process_requests([access, erase]) == {access: "completed", erase: "completed"}
    made = {s.system: s for s in runtime.ledger.steps([access, erase])
            if s.kind == "deliverable"}
    assert set(made) == {"access-package", "erasure-certificate"}

    package = made["access-package"]
    assert package.request_id == access
    outbox = json.loads(Path(package.details["key_handed_to"].removeprefix("outbox:"))
                        .read_text())
    opened = unseal(Path(package.details["location"]).read_bytes(), outbox["key"].encode())
    manifest = check_package(opened)
    assert {f["path"] for f in manifest["files"]} >= {"data/db/users.json", "index.html"}

    certificate = made["erasure-certificate"]
    assert certificate.request_id == erase
    document = json.loads(Path(certificate.details["path"]).read_text())
    verified = verify_certificate(document, [runtime.settings.signing_key_pair().public_key()])
    assert (verified.request_id, verified.outcome) == (erase, "complete")
    # Both name the Prefect run that made them.
    assert package.details["_run"]["flow_run_id"] == certificate.details["_run"][
        "flow_run_id"]


def test_a_rerun_changes_nothing(runtime: Runtime, world: tuple[sqlworld.World, str]) -> None:
    [rid] = _submit(runtime, ticket("T-9", "erasure", [{"type": "user_id", "value": "6"}]))
    process_requests([rid])
    steps_before = runtime.ledger.steps([rid])
    assert process_requests([rid]) == {rid: "request is completed"}
    assert runtime.ledger.steps([rid]) == steps_before


def test_a_failing_system_is_recorded_without_values_and_fails_the_run(
    runtime: Runtime, world: tuple[sqlworld.World, str]
) -> None:
    w, url = world
    [rid] = _submit(runtime, ticket("T-5", "erasure", [{"type": "email",
                                                         "value": _email(w, 7)}]))
    runtime.connector("db")  # reflect the schema first, then break the database under it
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE post_tags"))
    engine.dispose()

    with pytest.raises(BatchIncomplete):
        process_requests([rid])
    record = runtime.ledger.get(rid)
    assert record.status in (Status.FAILED, Status.PARTIALLY_COMPLETED)
    assert record.reason and "post_tags" in record.reason
    assert _email(w, 7).lower() not in (record.reason or "").lower()
    steps = {s.action.value: s for s in runtime.ledger.steps([rid]) if s.system == "db"}
    # The look-up of the account's identities failed first: no system ran for it.
    assert steps["resolve"].status == "failed" and "post_tags" in (steps["resolve"].error or "")
    assert steps["erase"].status == "failed" and steps["erase"].attempts == 0
    assert "not run" in (steps["erase"].error or "")
    # Nothing half-erased: the transaction rolled back, so the user row is untouched.
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        email = conn.execute(sa.select(sqlworld.users.c.email)
                             .where(sqlworld.users.c.id == 7)).scalar_one()
    engine.dispose()
    assert email == w.user(7)["email"]


def test_prefect_never_receives_an_identity(
    runtime: Runtime, world: tuple[sqlworld.World, str], prefect_server: list[Path]
) -> None:
    from prefect.logging.handlers import APILogHandler

    w, _ = world
    uids = [1, 3, 8]
    ids = _submit(
        runtime,
        *[ticket(f"P-{u}", "erasure" if u != 3 else "access",
                 [{"type": "email", "value": _email(w, u)},
                  {"type": "phone", "value": sqlworld.phone_for(u)}]) for u in uids],
    )
    process_requests(ids)
    APILogHandler().flush()  # logs are shipped in the background: send them now
    needles: list[str] = []
    for u in uids:
        user = w.user(u)
        needles += [user["email"], user["email"].lower(), sqlworld.phone_for(u),
                    "+86" + sqlworld.phone_for(u), f"nick{u}"]
    assert files_containing(prefect_server, needles) == {}
    # The scan is only worth something if Prefect did record the run: its logs are there.
    assert files_containing(prefect_server, [ids[0]]) != {}


def test_the_ui_shows_named_runs_artifacts_and_events(
    runtime: Runtime, world: tuple[sqlworld.World, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import get_client
    from prefect.events.clients import AssertingPassthroughEventsClient
    from prefect.events.worker import EventsWorker

    # Record the events on their way to the server (which stores them asynchronously).
    AssertingPassthroughEventsClient.reset()
    worker = EventsWorker.instance(AssertingPassthroughEventsClient)
    monkeypatch.setattr(
        EventsWorker, "instance",
        partial(EventsWorker.instance, client_type=AssertingPassthroughEventsClient),
    )
    ids = _submit(
        runtime,
        ticket("UI-1", "erasure", [{"type": "user_id", "value": "2"}]),
        ticket("UI-2", "access", [{"type": "user_id", "value": "3"}]),
        ticket("UI-3", "erasure", [{"type": "user_id", "value": "4"}], verified=False),
    )
    process_requests(ids)
    worker.drain()

    events = [e for c in AssertingPassthroughEventsClient.all for e in c.events]
    completed = {e.resource.id for e in events if e.event == "dsr.request.completed"}
    assert completed == {f"dsrflow.request.{i}" for i in ids[:2]}
    mine = [e for e in events if e.event.startswith("dsr.")]
    assert {e.payload["type"] for e in mine} == {"erasure", "access"}
    delivered = {(e.event, e.resource.id) for e in mine
                 if e.event in ("dsr.request.package_delivered", "dsr.request.certified")}
    assert delivered == {("dsr.request.certified", f"dsrflow.request.{ids[0]}"),
                         ("dsr.request.package_delivered", f"dsrflow.request.{ids[1]}")}

    with get_client(sync_client=True) as client:
        [run] = [r for r in client.read_flow_runs() if r.name == "dsr-batch-UI-1-3"]
        # Filterable in the UI by type and regime; never by anything personal.
        assert {"dsr", "erasure", "access", "pipl"} <= set(run.tags)
        progress = [a for a in client.read_artifacts() if a.flow_run_id == run.id
                    and a.type == "progress"]
        assert [a.data for a in progress] == [100.0]
        # One artifact for the batch, a row per request, not one artifact per request.
        tables = [a for a in client.read_artifacts() if a.flow_run_id == run.id
                  and a.type == "table"]
        assert [a.key for a in tables] == ["dsr-batch"]
        rows = {r["ticket"]: r for r in _table_rows(tables[0].data)}
        assert set(rows) == {"UI-1", "UI-2", "UI-3"}
        assert rows["UI-1"]["status"] == "completed"
        assert "db:erase=succeeded (found" in rows["UI-1"]["systems"]
        assert rows["UI-3"]["status"] == "awaiting_verification"
        assert rows["UI-3"]["systems"] == ""


def test_a_waiting_request_runs_once_verified(
    runtime: Runtime, world: tuple[sqlworld.World, str]
) -> None:
    from datetime import UTC, datetime

    from flows.request import process_request

    w, _ = world
    [rid] = _submit(runtime, ticket("W-1", "erasure", [{"type": "email", "value": _email(w, 3)}],
                                    verified=False))
    assert process_request(rid) == {rid: "identity not verified yet"}
    assert runtime.ledger.steps([rid]) == []  # no connector ran before verification

    runtime.ledger.mark_verified(rid, "video_call", datetime.now(UTC))
    assert process_request(rid) == {rid: "completed"}
    from prefect import get_client

    with get_client(sync_client=True) as client:
        assert "dsr-erasure-W-1" in {r.name for r in client.read_flow_runs()}


def test_the_flow_on_postgresql(
    tmp_path: Path, postgres_url: str, prefect_server: list[Path]
) -> None:
    """Production's set-up: the user database and the ledger both on PostgreSQL."""
    engine = sa.create_engine(postgres_url)
    w = sqlworld.generate(random.Random(21), 6)
    sqlworld.load(engine, w)
    doc = sqlworld.datamap_doc(postgres_url)
    rt = make_runtime(tmp_path, doc, ledger_url=postgres_url)
    previous = set_runtime(rt)
    try:
        ids = _submit(
            rt,
            ticket("PG-1", "account_cancellation", [{"type": "phone",
                                                     "value": sqlworld.phone_for(2)}]),
            ticket("PG-2", "portability", [{"type": "email", "value": _email(w, 4)}]),
        )
        before = sqlworld.snapshot(engine)
        assert set(process_requests(ids).values()) == {"completed"}
        after = sqlworld.snapshot(engine)
        for table, rows in before.items():
            others = {k for k, who in w.owners.get(table, {}).items() if 2 not in who}
            assert {k: after[table].get(k) for k in others} == {k: rows[k] for k in others}
        verify = next(s for s in rt.ledger.steps([ids[0]]) if s.action == "verify")
        assert verify.remaining == 0 and (verify.found or 0) >= 1
    finally:
        set_runtime(previous)
        rt.close()
        engine.dispose()


def test_an_unreachable_system_fails_its_steps_not_the_run(
    tmp_path: Path, world: tuple[sqlworld.World, str], prefect_server: list[Path]
) -> None:
    doc: dict[str, Any] = {**sqlworld.DATAMAP_DOC}
    system = {k: v for k, v in doc["systems"]["db"].items() if k != "url"}
    doc["systems"] = {"db": {**system, "url_env": "DSRFLOW_TEST_UNSET_URL"}}
    rt = make_runtime(tmp_path, doc)
    previous = set_runtime(rt)
    try:
        [rid] = _submit(rt, ticket("U-1", "erasure", [{"type": "user_id", "value": "2"}]))
        with pytest.raises(BatchIncomplete):
            process_requests([rid])
        record = rt.ledger.get(rid)
        assert record.status is Status.FAILED
        assert "DSRFLOW_TEST_UNSET_URL" in (record.reason or "")
    finally:
        set_runtime(previous)
        rt.close()
