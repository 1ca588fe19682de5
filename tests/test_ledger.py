"""The ledger on SQLite and PostgreSQL: one request per ticket (even under a race), invalid
tickets kept, identities encrypted at rest and gone once a request closes, the status
machine, step attempts, per-request pseudonym keys, and a tamper-evident audit chain that
concurrent writers never fork."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from holidays.countries.china import ChinaStaticHolidays
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsrflow.crypto import Keyring
from dsrflow.deadlines import CalendarOverrides, Deadlines
from dsrflow.identities import Identity, IdentityType
from dsrflow.ledger import PROGRESS, ClosedRequest, Ledger, StepCounts, UnknownRequest
from dsrflow.ledger.schema import audit_events, audit_head, identity_tokens, requests, steps
from dsrflow.model import RUN_KEY, InvalidTransition, Status, StepAction, StepStatus
from dsrflow.tickets import Rejection, Ticket
from tests import helpers
from tests.helpers import CN_2027, DUE_2027, RECEIVED_2027, ticket

EMAIL = "Alice.Wang@Example.COM"
EMAIL_NORMALIZED = "alice.wang@example.com"
PHONE = "138 0013 8000"
PHONE_E164 = "+8613800138000"
PHONE_NATIONAL = "13800138000"

T = TypeVar("T")


def make_ticket(ticket_id: str, verified: bool = True, **extra: Any) -> Ticket:
    doc = ticket(
        ticket_id,
        "erasure",
        [{"type": "email", "value": EMAIL}, {"type": "phone", "value": PHONE}],
        verified=verified,
        **extra,
    )
    return Ticket.model_validate(doc, context={"phone_region": "CN"})


def race(n: int, fn: Callable[[], T]) -> list[T]:
    """Run `fn` in `n` threads released at the same moment."""
    barrier = threading.Barrier(n)

    def go() -> T:
        barrier.wait()
        return fn()

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(go) for _ in range(n)]
        return [f.result() for f in futures]


def raw_dump(ledger: Ledger) -> str:
    """Every value of every ledger table, as text (bytes decoded byte for byte)."""
    out: list[str] = []
    with ledger.engine.connect() as conn:
        for table in (requests, identity_tokens, steps, audit_events, audit_head):
            for row in conn.execute(sa.select(table)):
                for value in row:
                    out.append(value.decode("latin-1") if isinstance(value, bytes) else repr(value))
    return "\n".join(out)


def request_rows(ledger: Ledger, ticket_id: str) -> list[Any]:
    with ledger.engine.connect() as conn:
        return list(conn.execute(sa.select(requests).where(requests.c.ticket_id == ticket_id)))


def run_to(ledger: Ledger, request_id: str, *path: Status) -> None:
    for status in path:
        ledger.transition(request_id, status)


# -- schema ---------------------------------------------------------------------------------
def test_migrate_creates_the_schema_and_is_idempotent(db_url: str, keyring: Keyring) -> None:
    ledger = Ledger(db_url, keyring)
    try:
        ledger.migrate()
        ledger.migrate()
        from alembic.autogenerate import compare_metadata
        from alembic.migration import MigrationContext
        from alembic.script import ScriptDirectory

        from dsrflow.ledger.schema import metadata
        from dsrflow.ledger.store import MIGRATIONS

        head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
        with ledger.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).all() == [
                (head,)
            ]
            # The migrations build exactly the schema the code queries through.
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
            # The chain's head was seeded exactly once.
            assert conn.execute(sa.select(sa.func.count()).select_from(audit_head)).scalar() == 1
        # And the migrated ledger works.
        ledger.accept(make_ticket("T-1"), "dm-1", "pol-1")
        assert ledger.count() == 1
        assert ledger.verify_audit_chain() is None
    finally:
        ledger.dispose()


MIGRATE_WHEN_TOLD = """
import sys
from dsrflow.crypto import Keyring, new_key
from dsrflow.ledger import Ledger
ledger = Ledger(sys.argv[1], Keyring(token_key=new_key(), encryption_key=new_key()))
print("ready", flush=True)
sys.stdin.readline()
ledger.migrate()
ledger.dispose()
"""


def test_workers_starting_together_on_a_fresh_database_all_migrate(db_url: str) -> None:
    """Every process that builds a runtime migrates the ledger first; several workers
    started at once on a new database must all come up."""
    root = Path(__file__).resolve().parent.parent
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE_WHEN_TOLD, db_url], cwd=root, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    try:
        for proc in procs:  # all imported and connected...
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:  # ...then all migrate at once
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    errors = [
        next((ln for ln in err.splitlines() if "Error" in ln), err[-300:])
        for proc, (_, err) in zip(procs, outcomes, strict=True) if proc.returncode != 0
    ]
    assert errors == []


# -- intake ---------------------------------------------------------------------------------
def test_accept_records_a_ticket_once(ledger: Ledger) -> None:
    request_id, created = ledger.accept(make_ticket("T-1"), "dm-1", "pol-1")
    again, created_again = ledger.accept(make_ticket("T-1"), "dm-1", "pol-1")

    assert created is True
    assert (again, created_again) == (request_id, False)
    assert len(request_rows(ledger, "T-1")) == 1
    record = ledger.get(request_id)
    assert record.ticket_id == "T-1"
    assert record.status is Status.VERIFIED
    assert record.datamap_version == "dm-1"
    assert record.policy_version == "pol-1"
    assert record.received_at == datetime(2026, 11, 20, 9, 30, tzinfo=UTC)
    assert record.due_at is not None and record.due_at > record.received_at
    assert record.deadline_error is None


def test_an_unverified_ticket_awaits_verification(ledger: Ledger) -> None:
    request_id, _ = ledger.accept(make_ticket("T-1", verified=False), "dm", "pol")
    record = ledger.get(request_id)
    assert record.status is Status.AWAITING_VERIFICATION
    assert record.verified_at is None
    assert request_id not in ledger.runnable()


def test_racing_accepts_of_one_ticket_make_one_request(ledger: Ledger) -> None:
    results = race(8, lambda: ledger.accept(make_ticket("T-race"), "dm", "pol"))

    assert len({request_id for request_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(request_rows(ledger, "T-race")) == 1
    assert ledger.count() == 1
    assert ledger.verify_audit_chain() is None


def test_rejections_are_kept_and_do_not_block_a_later_valid_ticket(ledger: Ledger) -> None:
    first = ledger.reject(Rejection("type: unknown", ticket_id="T-1", regime="pipl"))
    second = ledger.reject(Rejection("identities.0: not an email", ticket_id="T-1"))
    anonymous = ledger.reject(Rejection("not valid JSON: Expecting value"))
    accepted, created = ledger.accept(make_ticket("T-1"), "dm", "pol")

    assert len({first, second, anonymous, accepted}) == 4
    assert created is True
    assert ledger.find_by_ticket("T-1") == accepted
    by_id = {r.id: r for r in ledger.all()}
    assert set(by_id) == {first, second, anonymous, accepted}
    assert by_id[first].status is by_id[second].status is Status.REJECTED
    assert by_id[first].reason == "type: unknown"
    assert by_id[first].regime == "pipl"
    assert by_id[anonymous].ticket_id is None
    assert by_id[accepted].status is Status.VERIFIED
    # A redelivery of the now valid ticket is still the same request.
    assert ledger.accept(make_ticket("T-1"), "dm", "pol") == (accepted, False)
    assert ledger.runnable() == [accepted]


def test_a_deadline_in_an_unpublished_year_is_flagged_not_rejected(ledger: Ledger) -> None:
    # The last Chinese year the installed `holidays` publishes: 15 working days from
    # 20 December run into the next, unpublished, year.
    last = max(ChinaStaticHolidays.special_public_holidays)
    late = make_ticket("T-dec").model_copy(
        update={"received_at": datetime(last, 12, 20, 2, 0, tzinfo=UTC)}
    )
    request_id, created = ledger.accept(late, "dm", "pol")

    record = ledger.get(request_id)
    assert created
    assert record.status is Status.VERIFIED
    assert record.due_at is None
    assert record.deadline_error is not None
    assert str(last + 1) in record.deadline_error
    assert request_id in ledger.runnable()


def ticket_2027(ticket_id: str, verified: bool = True) -> Ticket:
    return helpers.ticket_2027(make_ticket(ticket_id, verified=verified))


def deadline_events(ledger: Ledger) -> list[tuple[str, Any]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            sa.select(audit_events.c.request_id, audit_events.c.detail)
            .where(audit_events.c.event == "request.deadline_computed")
            .order_by(audit_events.c.id)
        ).all()
    return [(row.request_id, row.detail) for row in rows]


def test_an_unknown_deadline_is_computed_once_a_calendar_has_the_year(
    ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_id, _ = ledger.accept(ticket_2027("T-2027"), "dm", "pol")
    unknown = ledger.get(request_id)
    assert unknown.due_at is None
    assert unknown.deadline_error is not None and "2027" in unknown.deadline_error
    # Without a calendar for the year, nothing changes.
    assert ledger.recompute_unknown_deadlines() == {}
    assert ledger.get(request_id) == unknown

    path = tmp_path / "calendar-overrides.yaml"
    path.write_text(CN_2027)
    ledger.deadlines = Deadlines(CalendarOverrides.load(path))
    read_by_another_run = ledger._unknown_deadlines()

    assert ledger.recompute_unknown_deadlines() == {request_id: DUE_2027}

    record = ledger.get(request_id)
    assert (record.due_at, record.deadline_error) == (DUE_2027, None)
    assert record.status is Status.VERIFIED
    # Idempotent; and a run that read the request as unknown before this one wrote (a
    # second deadline report, another worker) finds it no longer unknown and writes nothing.
    assert ledger.recompute_unknown_deadlines() == {}
    monkeypatch.setattr(ledger, "_unknown_deadlines", lambda: read_by_another_run)
    assert ledger.recompute_unknown_deadlines() == {}
    assert ledger.get(request_id) == record
    # Audited once, with dates only.
    assert deadline_events(ledger) == [(request_id, {
        "regime": "pipl", "clock_started_at": "2027-03-01T02:00:00+00:00",
        "due_at": "2027-03-23T15:59:59+00:00"})]
    assert ledger.verify_audit_chain() is None


def test_a_computed_deadline_counts_from_receipt_and_survives_a_later_verification(
    ledger: Ledger, tmp_path: Path, keyring: Keyring, db_url: str
) -> None:
    """PIPL's clock runs from receipt, verified or not; a verification recorded afterwards
    by a process still without the calendar does not make the due date unknown again."""
    request_id, _ = ledger.accept(ticket_2027("T-2027-u", verified=False), "dm", "pol")
    path = tmp_path / "calendar-overrides.yaml"
    path.write_text(CN_2027)
    ledger.deadlines = Deadlines(CalendarOverrides.load(path))
    assert ledger.recompute_unknown_deadlines() == {request_id: DUE_2027}

    elsewhere = Ledger(db_url, keyring)  # the installed calendars only
    try:
        elsewhere.mark_verified(request_id, "sms_code", RECEIVED_2027 + timedelta(days=3))
    finally:
        elsewhere.dispose()
    record = ledger.get(request_id)
    assert (record.status, record.due_at, record.deadline_error) == (
        Status.VERIFIED, DUE_2027, None)


# -- identities -----------------------------------------------------------------------------
def test_identities_are_encrypted_at_rest(ledger: Ledger, db_url: str) -> None:
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    ledger.add_identities(request_id, [Identity(type=IdentityType.DEVICE_ID, value="dev-777")])
    ledger.record_step(request_id, "userdb", "sql", StepAction.ERASE, StepStatus.RUNNING)

    # The request decrypts to what the ticket said...
    [subject] = ledger.subjects([request_id])
    assert EMAIL_NORMALIZED in subject.values(IdentityType.EMAIL)
    # ...but no table holds an identity in the clear, in any spelling.
    dump = raw_dump(ledger)
    for needle in (EMAIL_NORMALIZED, EMAIL, PHONE_E164, PHONE_NATIONAL, "dev-777"):
        assert needle not in dump
    if db_url.startswith("sqlite"):
        path = Path(db_url.removeprefix("sqlite:///"))
        files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
        assert files
        for file in files:  # the database, its WAL and shared memory
            data = file.read_bytes()
            for needle in (EMAIL_NORMALIZED, PHONE_E164, PHONE_NATIONAL, "dev-777"):
                assert needle.encode() not in data, file.name


def test_find_by_identity_matches_any_spelling_via_tokens(ledger: Ledger) -> None:
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    other, _ = ledger.accept(
        Ticket.model_validate(
            ticket("T-2", "access", [{"type": "email", "value": "bob@example.com"}])
        ),
        "dm", "pol",
    )

    assert ledger.find_by_identity(Identity(type=IdentityType.EMAIL, value=EMAIL.upper())) == [
        request_id
    ]
    assert ledger.find_by_identity(
        Identity(type=IdentityType.PHONE, value="+86 138-0013-8000")
    ) == [request_id]
    assert ledger.find_by_identity(
        Identity(type=IdentityType.EMAIL, value="BOB@example.com")
    ) == [other]
    assert ledger.find_by_identity(Identity(type=IdentityType.EMAIL, value="eve@example.com")) == []
    # A token is per identity type: the same text as a user id is someone else.
    as_user_id = Identity(type=IdentityType.USER_ID, value=EMAIL_NORMALIZED)
    assert ledger.find_by_identity(as_user_id) == []


def test_a_closed_request_keeps_only_tokens(ledger: Ledger) -> None:
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    before = ledger.pseudonymizer(request_id)("alice")
    assert [s.request_id for s in ledger.subjects([request_id])] == [request_id]

    run_to(ledger, request_id, Status.IN_PROGRESS, Status.COMPLETED)

    assert ledger.subjects([request_id]) == []
    assert ledger.corrections(request_id) == {}
    with ledger.engine.connect() as conn:
        row = conn.execute(sa.select(requests).where(requests.c.id == request_id)).one()
    assert row.subject_enc is None
    assert row.pseudonym_key_enc is None
    assert ledger.get(request_id).completed_at is not None
    # The subject can still be recognised (a backup replay, a repeat request)...
    assert ledger.find_by_identity(Identity(type=IdentityType.EMAIL, value=EMAIL)) == [
        request_id
    ]
    # ...but the old pseudonyms cannot be reproduced: the key is gone, and no new one is
    # made for a closed request.
    with pytest.raises(ClosedRequest):
        ledger.pseudonymizer(request_id)
    assert before is not None and before.startswith("pn_")

def test_a_refused_request_drops_its_identities_too(ledger: Ledger) -> None:
    request_id, _ = ledger.accept(make_ticket("T-1", verified=False), "dm", "pol")
    ledger.transition(request_id, Status.REFUSED, reason="identity could not be verified")

    assert ledger.subjects([request_id]) == []
    record = ledger.get(request_id)
    assert record.status is Status.REFUSED
    assert record.reason == "identity could not be verified"


def test_subjects_keep_the_requested_order_and_skip_closed_ones(ledger: Ledger) -> None:
    ids = []
    for i in range(4):
        doc = ticket(f"T-{i}", "access", [{"type": "user_id", "value": f"u{i}"}])
        ids.append(ledger.accept(Ticket.model_validate(doc), "dm", "pol")[0])
    run_to(ledger, ids[1], Status.IN_PROGRESS, Status.COMPLETED)

    wanted = [ids[3], ids[1], ids[0], ids[2]]
    got = ledger.subjects(wanted)
    assert [s.request_id for s in got] == [ids[3], ids[0], ids[2]]
    assert [s.values(IdentityType.USER_ID) for s in got] == [["u3"], ["u0"], ["u2"]]


def test_a_batch_learning_identities_leaves_a_request_closed_meanwhile_without_them(
    ledger: Ledger,
) -> None:
    """A batch's resolve step learns identities for every request, but a callback closed
    one of them in between: the closed request's identities are gone and stay gone (no
    identity, no token), the others learn theirs."""
    ids = [ledger.accept(Ticket.model_validate(ticket(
        f"T-{i}", "erasure", [{"type": "user_id", "value": f"u{i}"}])), "dm", "pol")[0]
        for i in range(3)]
    run_to(ledger, ids[1], Status.IN_PROGRESS, Status.COMPLETED)
    devices = {rid: Identity(type=IdentityType.DEVICE_ID, value=f"dev-{n}")
               for n, rid in enumerate(ids)}

    ledger.add_identities_many({rid: [device] for rid, device in devices.items()})

    got = {s.request_id: s.values(IdentityType.DEVICE_ID) for s in ledger.subjects(ids)}
    assert got == {ids[0]: ["dev-0"], ids[2]: ["dev-2"]}
    assert ledger.find_by_identity(devices[ids[1]]) == []
    with ledger.engine.connect() as conn:
        assert conn.execute(sa.select(requests.c.subject_enc)
                            .where(requests.c.id == ids[1])).scalar_one() is None


def test_identities_learnt_for_one_request_by_batches_at_once_are_all_kept(
    ledger: Ledger,
) -> None:
    """Two runs (or two systems of one run) learn identities of the same request at the
    same moment: each adds to the encrypted list under a row lock, so none is lost to the
    other's write."""
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    learnt = [Identity(type=IdentityType.DEVICE_ID, value=f"dev-{n}") for n in range(12)]
    start = threading.Barrier(4)

    def learn(part: list[Identity]) -> None:
        start.wait(timeout=30)
        for identity in part:
            ledger.add_identities_many({request_id: [identity]})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(learn, [learnt[n::4] for n in range(4)]))

    [subject] = ledger.subjects([request_id])
    assert sorted(subject.values(IdentityType.DEVICE_ID)) == sorted(i.value for i in learnt)
    assert all(ledger.find_by_identity(i) == [request_id] for i in learnt)


def test_add_identities_adds_and_deduplicates(ledger: Ledger) -> None:
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    device = Identity(type=IdentityType.DEVICE_ID, value="dev-1")
    user = Identity(type=IdentityType.USER_ID, value="42")
    same_email = Identity(type=IdentityType.EMAIL, value=EMAIL.upper())

    ledger.add_identities(request_id, [device, user, same_email])
    ledger.add_identities(request_id, [device, user])  # a retried step learns them again

    [subject] = ledger.subjects([request_id])
    pairs = [(i.type, i.value) for i in subject.identities]
    assert len(pairs) == len(set(pairs)) == 4
    assert set(pairs) == {
        (IdentityType.EMAIL, EMAIL_NORMALIZED), (IdentityType.PHONE, PHONE_E164),
        (IdentityType.DEVICE_ID, "dev-1"), (IdentityType.USER_ID, "42"),
    }
    assert ledger.find_by_identity(device) == [request_id]
    assert ledger.find_by_identity(user) == [request_id]
    with ledger.engine.connect() as conn:
        tokens = conn.execute(
            sa.select(sa.func.count()).select_from(identity_tokens)
            .where(identity_tokens.c.request_id == request_id)
        ).scalar()
    assert tokens == 4


def test_identities_learnt_by_parallel_steps_are_all_kept(ledger: Ledger) -> None:
    """Steps for different systems run in parallel and each may learn identities of the
    same request (tasks/steps.py calls add_identities per system): none may be lost, or
    verification later misses the subject's rows reached through them."""
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    counter = iter(range(8))
    lock = threading.Lock()

    def learn() -> None:
        with lock:
            n = next(counter)
        ledger.add_identities(
            request_id,
            [Identity(type=IdentityType.DEVICE_ID, value=f"dev-{n}"),
             Identity(type=IdentityType.USER_ID, value="42")],  # every system finds this one
        )

    race(8, learn)

    [subject] = ledger.subjects([request_id])
    assert sorted(subject.values(IdentityType.DEVICE_ID)) == [f"dev-{n}" for n in range(8)]
    assert subject.values(IdentityType.USER_ID) == ["42"]


def test_add_identities_after_close_stores_nothing(ledger: Ledger) -> None:
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    run_to(ledger, request_id, Status.IN_PROGRESS, Status.COMPLETED)

    ledger.add_identities(request_id, [Identity(type=IdentityType.DEVICE_ID, value="dev-9")])

    assert ledger.subjects([request_id]) == []
    assert "dev-9" not in raw_dump(ledger)


# -- status ---------------------------------------------------------------------------------
INVALID_MOVES = [
    ((), Status.COMPLETED),  # verified -> completed would skip the work
    ((), Status.RECEIVED),
    ((Status.IN_PROGRESS, Status.COMPLETED), Status.IN_PROGRESS),  # completed is final
    ((Status.REFUSED,), Status.VERIFIED),  # refused is final
    ((Status.IN_PROGRESS, Status.FAILED), Status.COMPLETED),  # it must run again first
]


def test_invalid_transitions_raise_and_change_nothing(ledger: Ledger) -> None:
    for n, (path, target) in enumerate(INVALID_MOVES):
        request_id, _ = ledger.accept(make_ticket(f"T-{n}"), "dm", "pol")
        run_to(ledger, request_id, *path)
        before = ledger.get(request_id)
        with ledger.engine.connect() as conn:
            events = conn.execute(sa.select(sa.func.count()).select_from(audit_events)).scalar()

        with pytest.raises(InvalidTransition) as exc:
            ledger.transition(request_id, target)

        assert exc.value.current is before.status and exc.value.target is target
        assert ledger.get(request_id) == before
        with ledger.engine.connect() as conn:
            after = conn.execute(sa.select(sa.func.count()).select_from(audit_events)).scalar()
        assert after == events


def test_an_unknown_request_id_is_reported_as_such(ledger: Ledger) -> None:
    """Flows receive request ids from outside (Prefect parameters, the CLI): an id that is
    not in the ledger should raise the ledger's own UnknownRequest, like `get` does."""
    with pytest.raises(UnknownRequest):
        ledger.get("no-such-request")
    with pytest.raises(UnknownRequest):
        ledger.transition("no-such-request", Status.IN_PROGRESS)


def test_a_rejected_ticket_cannot_be_started(ledger: Ledger) -> None:
    rejected = ledger.reject(Rejection("type: unknown", ticket_id="T-1"))
    with pytest.raises(InvalidTransition):
        ledger.transition(rejected, Status.IN_PROGRESS)
    assert ledger.get(rejected).status is Status.REJECTED


def test_awaiting_verification_must_be_verified_before_work(ledger: Ledger) -> None:
    request_id, _ = ledger.accept(make_ticket("T-1", verified=False), "dm", "pol")
    with pytest.raises(InvalidTransition):
        ledger.transition(request_id, Status.IN_PROGRESS)
    run_to(ledger, request_id, Status.VERIFIED, Status.IN_PROGRESS)
    assert ledger.get(request_id).status is Status.IN_PROGRESS


def test_repeating_a_transition_is_harmless(ledger: Ledger) -> None:
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    run_to(ledger, request_id, Status.IN_PROGRESS, Status.IN_PROGRESS, Status.COMPLETED)
    ledger.transition(request_id, Status.COMPLETED)  # a retried final step
    assert ledger.get(request_id).status is Status.COMPLETED


def test_failed_and_partial_requests_can_run_again(ledger: Ledger) -> None:
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    run_to(ledger, request_id, Status.IN_PROGRESS, Status.FAILED)
    assert request_id in ledger.runnable()
    # A failed request still holds its identities: the retry needs them.
    assert len(ledger.subjects([request_id])) == 1
    run_to(ledger, request_id, Status.IN_PROGRESS, Status.PARTIALLY_COMPLETED)
    assert request_id in ledger.runnable()
    assert len(ledger.subjects([request_id])) == 1
    run_to(ledger, request_id, Status.IN_PROGRESS, Status.COMPLETED)
    assert request_id not in ledger.runnable()


def test_a_request_that_succeeds_on_a_rerun_drops_the_earlier_failure(ledger: Ledger) -> None:
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    ledger.transition(request_id, Status.IN_PROGRESS)
    ledger.transition(request_id, Status.PARTIALLY_COMPLETED, "userdb erase: TimeoutError")
    assert ledger.get(request_id).reason == "userdb erase: TimeoutError"

    # The rerun: running again, the old failure no longer describes the request...
    ledger.transition(request_id, Status.IN_PROGRESS)
    assert ledger.get(request_id).reason is None
    ledger.transition(request_id, Status.FAILED, "logs erase: PermissionError")
    ledger.transition(request_id, Status.IN_PROGRESS)
    # ...and once everything succeeded (close_requests gives no reason), none is shown.
    ledger.transition(request_id, Status.COMPLETED)
    record = ledger.get(request_id)
    assert (record.status, record.reason) == (Status.COMPLETED, None)
    # A reason given with the final status is kept.
    other, _ = ledger.accept(make_ticket("T-2"), "dm", "pol")
    ledger.transition(other, Status.IN_PROGRESS)
    ledger.transition(other, Status.COMPLETED, "no system holds data in the request's scope")
    assert ledger.get(other).reason == "no system holds data in the request's scope"
    assert ledger.verify_audit_chain() is None


# -- steps ----------------------------------------------------------------------------------
def test_record_step_counts_attempts_and_keeps_the_outcome(ledger: Ledger) -> None:
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    ledger.record_step(request_id, "userdb", "sql", StepAction.ERASE, StepStatus.RUNNING)
    ledger.record_step(
        request_id, "userdb", "sql", StepAction.ERASE, StepStatus.FAILED, error="TimeoutError: slow"
    )
    ledger.record_step(request_id, "userdb", "sql", StepAction.ERASE, StepStatus.RUNNING)
    ledger.record_step(
        request_id, "userdb", "sql", StepAction.ERASE, StepStatus.SUCCEEDED,
        StepCounts(found=4, deleted=2, anonymized=1, retained=1),
        details={"users": {"retain_reasons": ["tax law"]}},
    )
    ledger.record_step(
        request_id, "userdb", "sql", StepAction.VERIFY, StepStatus.SUCCEEDED,
        StepCounts(remaining=0),
    )

    by_action = {s.action.value: s for s in ledger.steps([request_id])}
    assert set(by_action) == {"erase", "verify"}
    erase = by_action["erase"]
    assert erase.attempts == 2
    assert erase.status == "succeeded"
    assert erase.error is None  # the earlier failure does not linger
    assert (erase.found, erase.deleted, erase.anonymized, erase.retained) == (
        4, 2, 1, 1,
    )
    assert erase.details == {"users": {"retain_reasons": ["tax law"]}}
    assert erase.finished_at is not None
    assert by_action["verify"].remaining == 0
    assert by_action["verify"].attempts == 0  # recorded without a RUNNING
    assert ledger.steps(["someone-else"]) == []
    # A reader of statuses and counts (closing a batch, its table) skips the details and
    # gets everything else as it is.
    light = ledger.steps([request_id], details=False)
    assert light == [replace(s, details={}) for s in ledger.steps([request_id])]


def _part(deleted: int, statement: str) -> dict[str, Any]:
    return {"found": deleted, "deleted": deleted, "anonymized": 0, "retained": 0,
            "remaining": 0, "retain_reasons": [], "statements": [statement]}


def test_a_rerun_with_nothing_to_do_keeps_the_step_as_its_success_recorded_it(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partner confirmed on 21 Nov; a rerun on 25 Nov (another system had failed) finds
    the partner done and reports nothing for it: the step still says 21 Nov, who confirmed
    it, and which run. A rerun that does report work adds it to what the first attempt
    did, recorded at its own time."""
    from dsrflow.ledger import store

    clock = {"now": datetime(2026, 11, 21, 16, 0, tzinfo=UTC)}
    monkeypatch.setattr(store, "now", lambda: clock["now"])
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    confirmed = {"confirmed_by": "privacy desk", "reference": "CR-77",
                 "confirmed_at": "2026-11-21T16:00:00+00:00"}
    ledger.record_step(request_id, "courier", "partner", StepAction.ERASE, StepStatus.SUCCEEDED,
                       details=confirmed)
    ledger.record_step(request_id, "db", "sql", StepAction.ERASE, StepStatus.SUCCEEDED,
                       StepCounts(found=3, deleted=3), details={"posts": _part(3, "s1")})
    before = {s.system: s for s in ledger.steps([request_id])}

    clock["now"] = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    run2 = {RUN_KEY: {"flow_run_id": "run-2"}}
    for system, kind in (("courier", "partner"), ("db", "sql")):
        ledger.record_step(request_id, system, kind, StepAction.ERASE, StepStatus.RUNNING)
    running = {s.system: s for s in ledger.steps([request_id])}
    assert running["courier"].status == "running"
    assert running["courier"].finished_at == before["courier"].finished_at
    ledger.record_step(request_id, "courier", "partner", StepAction.ERASE, StepStatus.SUCCEEDED,
                       StepCounts(), details=run2)
    ledger.record_step(request_id, "db", "sql", StepAction.ERASE, StepStatus.SUCCEEDED,
                       StepCounts(found=1, deleted=1), details={"posts": _part(1, "s2"), **run2})

    after = {s.system: s for s in ledger.steps([request_id])}
    courier = after["courier"]
    assert courier.status == "succeeded"
    assert courier.finished_at == before["courier"].finished_at
    assert courier.details == confirmed
    assert courier.attempts == 1  # it did run again
    # New work adds to the first attempt's, at the rerun's time.
    db = after["db"]
    assert (db.found, db.deleted) == (4, 4)
    assert db.details == {"posts": {**_part(4, "s1"), "statements": ["s1", "s2"]}, **run2}
    assert db.finished_at is not None and db.finished_at != before["db"].finished_at
    assert ledger.verify_audit_chain() is None


def test_a_step_that_succeeds_after_failing_is_finished_when_it_succeeded(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dsrflow.ledger import store

    clock = {"now": datetime(2026, 11, 21, 16, 0, tzinfo=UTC)}
    monkeypatch.setattr(store, "now", lambda: clock["now"])
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    ledger.record_step(request_id, "courier", "partner", StepAction.ERASE, StepStatus.RUNNING)
    ledger.record_step(request_id, "courier", "partner", StepAction.ERASE, StepStatus.FAILED,
                       error="ConnectError")
    clock["now"] = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    ledger.record_step(request_id, "courier", "partner", StepAction.ERASE, StepStatus.RUNNING)
    assert ledger.steps([request_id])[0].finished_at is None
    ledger.record_step(request_id, "courier", "partner", StepAction.ERASE, StepStatus.SUCCEEDED,
                       StepCounts())
    [step] = ledger.steps([request_id])
    assert (step.status, step.error) == ("succeeded", None)
    assert step.finished_at == clock["now"]  # read back in UTC, whatever the database


# -- pseudonyms -----------------------------------------------------------------------------
def test_each_request_has_one_stable_pseudonym_key(ledger: Ledger) -> None:
    first, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    second, _ = ledger.accept(make_ticket("T-2"), "dm", "pol")

    a = ledger.pseudonymizer(first)("alice@example.com")
    assert ledger.pseudonymizer(first)("alice@example.com") == a
    assert ledger.pseudonymizer(second)("alice@example.com") != a
    assert ledger.pseudonymizer(first)(a) == a  # a pseudonym is left alone
    # The key is stored encrypted, never as the raw bytes.
    key = ledger.pseudonymizer(first).key
    assert key not in raw_dump(ledger).encode("latin-1")


def test_concurrent_first_use_of_a_pseudonym_key_agrees(ledger: Ledger) -> None:
    """The flow runs one task per system in parallel; each asks for the request's key.
    They must all get the same one, or one person's pseudonyms no longer join up across
    systems (and a retry writes different ones)."""
    for round_ in range(10):  # a lost update needs an unlucky interleaving; try several
        request_id, _ = ledger.accept(make_ticket(f"T-{round_}"), "dm", "pol")

        def key(rid: str = request_id) -> bytes:
            return ledger.pseudonymizer(rid).key

        keys = race(8, key)

        assert len(set(keys)) == 1, f"round {round_}: {len(set(keys))} different keys"
        assert ledger.pseudonymizer(request_id).key == keys[0]


# -- audit ----------------------------------------------------------------------------------
def busy_ledger(ledger: Ledger) -> list[str]:
    ids = []
    for i in range(5):
        request_id, _ = ledger.accept(make_ticket(f"T-{i}"), "dm", "pol")
        ids.append(request_id)
        ledger.record_step(request_id, "userdb", "sql", StepAction.ERASE, StepStatus.RUNNING)
        ledger.record_step(
            request_id, "userdb", "sql", StepAction.ERASE, StepStatus.SUCCEEDED,
            StepCounts(found=1),
            details={"users": {"retain_reasons": ["x"], "statements": ["ab" * 32]}},
        )
    ledger.reject(Rejection("type: unknown", ticket_id="T-bad"))
    run_to(ledger, ids[0], Status.IN_PROGRESS, Status.COMPLETED)
    ledger.audit("note", None, {"text": "über", "n": 1, "nested": {"a": [1, 2.5, None]}})
    return ids


def test_the_audit_chain_verifies_after_many_operations(ledger: Ledger) -> None:
    assert ledger.verify_audit_chain() is None  # empty
    busy_ledger(ledger)
    assert ledger.verify_audit_chain() is None
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(audit_events).order_by(audit_events.c.id)).all()
    assert len(rows) == 5 * 3 + 1 + 2 + 1
    assert {r.event for r in rows} >= {
        "request.received", "ticket.rejected", "request.status", "step.running",
        "step.succeeded", "note",
    }


def test_concurrent_writers_do_not_fork_the_chain(ledger: Ledger) -> None:
    ids = [ledger.accept(make_ticket(f"T-{i}"), "dm", "pol")[0] for i in range(6)]
    counter = iter(range(6))
    lock = threading.Lock()

    def work() -> None:
        with lock:
            request_id = ids[next(counter)]
        for n in range(5):
            ledger.record_step(request_id, f"sys{n}", "sql", StepAction.ERASE, StepStatus.RUNNING)
            ledger.audit("note", request_id, {"n": n})
        ledger.transition(request_id, Status.IN_PROGRESS)

    race(6, work)

    assert ledger.verify_audit_chain() is None
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(audit_events).order_by(audit_events.c.id)).all()
    assert len(rows) == 6 + 6 * 11
    prevs = [r.prev_hash for r in rows]
    assert len(set(prevs)) == len(prevs)  # no two events claim the same predecessor


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(detail=st.dictionaries(st.text(), JSON, max_size=4))
def test_any_audit_detail_either_fails_loudly_or_chains(ledger: Ledger, detail: Any) -> None:
    """Whatever a caller puts in an event's detail, the chain is never silently broken by
    the database's round trip (JSON number and text handling, key order, unicode)."""
    try:
        ledger.audit("note", None, detail)
    except (sa.exc.StatementError, ValueError):
        return  # refused: fine, nothing was written
    assert ledger.verify_audit_chain() is None


def _event_ids(ledger: Ledger) -> list[int]:
    with ledger.engine.connect() as conn:
        return list(conn.execute(sa.select(audit_events.c.id).order_by(audit_events.c.id))
                    .scalars())


def test_an_edited_audit_event_is_detected(ledger: Ledger) -> None:
    busy_ledger(ledger)
    target = _event_ids(ledger)[4]
    with ledger.engine.begin() as conn:
        conn.execute(
            sa.update(audit_events).where(audit_events.c.id == target)
            .values(detail={"ticket_id": "T-forged"})
        )
    assert ledger.verify_audit_chain() == target


def test_an_edited_status_in_the_audit_trail_is_detected(ledger: Ledger) -> None:
    busy_ledger(ledger)
    target = _event_ids(ledger)[2]
    with ledger.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE audit_events SET event = 'step.failed' WHERE id = :id"),
            {"id": target},
        )
    assert ledger.verify_audit_chain() == target


def test_a_deleted_audit_event_is_detected(ledger: Ledger) -> None:
    busy_ledger(ledger)
    ids = _event_ids(ledger)
    with ledger.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_events WHERE id = :id"), {"id": ids[3]})
    # The first event that no longer chains is the one after the gap.
    assert ledger.verify_audit_chain() == ids[4]


def test_a_truncated_audit_trail_is_detected(ledger: Ledger) -> None:
    busy_ledger(ledger)
    ids = _event_ids(ledger)
    with ledger.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_events WHERE id = :id"), {"id": ids[-1]})
    assert ledger.verify_audit_chain() is not None


def test_a_chain_rebuilt_without_the_key_is_detected(ledger: Ledger, keyring: Keyring) -> None:
    """Someone with write access to the database but not the key cannot re-chain an edit:
    a ledger opened with another token key rejects the chain from its first event."""
    busy_ledger(ledger)
    other = Ledger(ledger.engine.url.render_as_string(hide_password=False),
                   Keyring(token_key=b"\x01" * 32, encryption_key=keyring.encryption_key))
    try:
        assert other.verify_audit_chain() == _event_ids(ledger)[0]
    finally:
        other.dispose()


@pytest.mark.parametrize("committed", [True, False])
def test_an_erasure_killed_around_its_commit_is_counted_once(
    ledger: Ledger, committed: bool
) -> None:
    """An attempt prepares 5 deletions and is killed, after its commit or before it. The
    rerun finds nothing left (committed) or deletes the same 5 again (not committed):
    either way the step says 5, not 0 and not 10."""
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    ledger.record_step(request_id, "db", "sql", StepAction.ERASE, StepStatus.RUNNING)
    ledger.prepare_steps("db", StepAction.ERASE, {request_id: (StepCounts(found=5, deleted=5),
                                                      {"posts": _part(5, "s1")})})
    # SIGKILL here. The rerun:
    ledger.record_step(request_id, "db", "sql", StepAction.ERASE, StepStatus.RUNNING)
    again = 0 if committed else 5
    if again:
        ledger.prepare_steps("db", StepAction.ERASE, {request_id: (
            StepCounts(found=again, deleted=again), {"posts": _part(again, "s1")})})
    ledger.record_step(request_id, "db", "sql", StepAction.ERASE, StepStatus.SUCCEEDED,
                       StepCounts(found=again, deleted=again),
                       details={"posts": _part(again, "s1")} if again else {})
    [step] = ledger.steps([request_id])
    assert (step.found, step.deleted, step.attempts) == (5, 5, 2)
    assert step.details["posts"]["deleted"] == 5
    assert "_prepared" not in step.details
    assert ledger.verify_audit_chain() is None


def _lines(n: int) -> dict[str, Any]:
    return {"access": {"found": n, "deleted": 0, "anonymized": n, "retained": 0,
                       "remaining": 0, "retain_reasons": [], "statements": ["s2"]}}


def _progress(ledger: Ledger, request_id: str, n: int) -> None:
    ledger.prepare_steps("logs", StepAction.ERASE, {request_id: (
        StepCounts(found=n, anonymized=n), _lines(n))}, mode=PROGRESS)


def _finish(ledger: Ledger, request_id: str, n: int) -> None:
    ledger.record_step(request_id, "logs", "logs", StepAction.ERASE, StepStatus.SUCCEEDED,
                       StepCounts(found=n, anonymized=n), details=_lines(n) if n else {})


@pytest.mark.parametrize("stopped", ["killed", "raised"])
def test_what_an_erasure_reported_as_done_before_it_stopped_adds_to_what_the_rest_does(
    ledger: Ledger, stopped: str
) -> None:
    """Log files are rewritten one by one: an attempt reports 3 lines done and is killed
    (or raises, and the isolation retry goes on in the same attempt). What comes after
    finds only the 4 lines it had not reached: the step says 7, the lines really changed."""
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    ledger.record_step(request_id, "logs", "logs", StepAction.ERASE, StepStatus.RUNNING)
    _progress(ledger, request_id, 1)
    _progress(ledger, request_id, 3)  # cumulative, as the connector reports it
    if stopped == "killed":  # SIGKILL; the rerun starts
        ledger.record_step(request_id, "logs", "logs", StepAction.ERASE, StepStatus.RUNNING)
    else:
        ledger.settle_progress("logs", StepAction.ERASE, [request_id])
    _progress(ledger, request_id, 4)
    _finish(ledger, request_id, 4)
    [step] = ledger.steps([request_id])
    assert (step.found, step.anonymized) == (7, 7)
    assert step.details["access"]["anonymized"] == 7
    assert "_prepared" not in step.details
    # A rerun over the finished step changes nothing and counts nothing more.
    ledger.record_step(request_id, "logs", "logs", StepAction.ERASE, StepStatus.RUNNING)
    _finish(ledger, request_id, 0)
    [step] = ledger.steps([request_id])
    assert (step.found, step.anonymized, step.status) == (7, 7, "succeeded")
    assert ledger.verify_audit_chain() is None


def test_progress_is_superseded_by_the_outcome_of_the_same_attempt(ledger: Ledger) -> None:
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    ledger.record_step(request_id, "logs", "logs", StepAction.ERASE, StepStatus.RUNNING)
    _progress(ledger, request_id, 2)
    _progress(ledger, request_id, 5)
    _finish(ledger, request_id, 5)
    [step] = ledger.steps([request_id])
    assert (step.found, step.anonymized, step.attempts) == (5, 5, 1)
    assert "_prepared" not in step.details


def test_a_step_answered_while_the_run_was_busy_keeps_the_answer(ledger: Ledger) -> None:
    """A run sends a partner request and, before it writes the step as waiting, the
    partner's callback records it succeeded: the run's late `pending_external` is a lost
    race, on record, not applied. A rerun may still start the step again."""
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    ledger.record_step(request_id, "adnet", "partner", StepAction.ERASE, StepStatus.RUNNING)
    ledger.record_step(request_id, "adnet", "partner", StepAction.ERASE, StepStatus.SUCCEEDED,
                       details={"partner_status": "completed"})
    for late in (StepStatus.PENDING_EXTERNAL, StepStatus.FAILED, StepStatus.BLOCKED):
        ledger.record_step(request_id, "adnet", "partner", StepAction.ERASE, late,
                           error="waiting for adnet")
    [step] = ledger.steps([request_id])
    assert (step.status, step.error, step.details["partner_status"]) == (
        "succeeded", None, "completed")
    with ledger.engine.connect() as conn:
        details = conn.execute(sa.select(audit_events.c.detail)
                               .where(audit_events.c.event.like("step.%"))
                               .order_by(audit_events.c.id)).scalars().all()
    lost = [entry for detail in details for entry in detail["steps"] if "lost" in entry]
    assert [entry["status"] for entry in lost] == ["pending_external", "failed", "blocked"]
    assert all(entry["lost"] == "the step is succeeded" for entry in lost)
    ledger.record_step(request_id, "adnet", "partner", StepAction.ERASE, StepStatus.RUNNING)
    [step] = ledger.steps([request_id])
    assert step.status == "running" and step.attempts == 2


def test_a_transition_that_lost_the_race_changes_nothing_and_is_on_record(
    ledger: Ledger,
) -> None:
    """A run closes a request as partial while a partner's callback closes it as complete:
    whichever comes second finds it closed, changes nothing, and the audit trail says so."""
    request_id, _ = ledger.accept(make_ticket("T-1"), "dm", "pol")
    run_to(ledger, request_id, Status.IN_PROGRESS)
    open_ = frozenset({Status.IN_PROGRESS})
    assert ledger.transition(request_id, Status.PARTIALLY_COMPLETED, "db failed", expect=open_)
    assert not ledger.transition(request_id, Status.COMPLETED, expect=open_)
    record = ledger.get(request_id)
    assert (record.status, record.reason) == (Status.PARTIALLY_COMPLETED, "db failed")
    with ledger.engine.connect() as conn:
        events = [r.event for r in conn.execute(
            sa.select(audit_events.c.event).where(audit_events.c.request_id == request_id))]
    assert events[-1] == "request.status_lost"
    # The same target again is no race: it is already there.
    assert ledger.transition(request_id, Status.PARTIALLY_COMPLETED, expect=open_)
    assert ledger.verify_audit_chain() is None
