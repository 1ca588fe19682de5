"""Intake from the ticket queue (moto's SQS): every message ends as a request or in the
dead-letter queue with a reason, a redelivery changes nothing, no input stops the loop,
batches respect N and T, and the intake flow on a real Prefect server gives Prefect no
identity."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from sqlalchemy.exc import OperationalError

from dsrflow import queue
from dsrflow.leakscan import files_containing
from dsrflow.model import Status
from dsrflow.queue import IntakeCounts, QueueSettings
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket

SECRET_EMAIL = "secret.person@example.com"


@dataclass
class Sqs:
    client: Any
    qs: QueueSettings

    def dead_letters(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            got = self.client.receive_message(
                QueueUrl=self.qs.dead_letter_url, MaxNumberOfMessages=10,
                MessageAttributeNames=["All"], WaitTimeSeconds=0, VisibilityTimeout=600,
            ).get("Messages", [])
            if not got:
                return out
            out.extend(got)

    def waiting(self, url: str | None = None) -> int:
        attrs = self.client.get_queue_attributes(
            QueueUrl=url or self.qs.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )


@pytest.fixture
def sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Sqs]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("sqs", region_name="us-east-1")
        main = client.create_queue(QueueName="tickets")["QueueUrl"]
        dlq = client.create_queue(QueueName="tickets-dlq")["QueueUrl"]
        qs = QueueSettings(queue_url=main, dead_letter_url=dlq, region="us-east-1",
                           batch_size=3, batch_seconds=5, wait_seconds=0)
        yield Sqs(client, qs)


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    runtime = make_runtime(tmp_path, sqlworld.DATAMAP_DOC)
    yield runtime
    runtime.close()


def _drain(rt: Runtime, sqs: Sqs, n: int = 10) -> IntakeCounts:
    return queue.drain(rt.ledger, rt.datamap, sqs.client, sqs.qs, n, 0)


def _email_ticket(tid: str, email: str = "a@example.com", **kw: Any) -> dict[str, Any]:
    return ticket(tid, "erasure", [{"type": "email", "value": email}], **kw)


# -- one message --------------------------------------------------------------------------
def test_a_redelivered_ticket_yields_one_request(rt: Runtime, sqs: Sqs) -> None:
    t = _email_ticket("T-1")
    queue.put_ticket(sqs.client, sqs.qs.queue_url, t)
    queue.put_ticket(sqs.client, sqs.qs.queue_url, t)

    first = _drain(rt, sqs, 1)
    again = _drain(rt, sqs, 1)

    assert (first.accepted, first.duplicates, again.accepted, again.duplicates) == (1, 0, 0, 1)
    assert len(first.ready) == 1 and again.ready == []  # started once, not twice
    records = rt.ledger.all()
    assert [(r.ticket_id, r.status) for r in records] == [("T-1", Status.VERIFIED)]
    assert sqs.waiting() == 0 and sqs.dead_letters() == []


def test_a_malformed_ticket_is_dead_lettered_with_its_reason_and_recorded(
    rt: Runtime, sqs: Sqs
) -> None:
    bad = _email_ticket("T-2", email=SECRET_EMAIL)
    bad["regime"] = "martian"
    body = json.dumps(bad)
    queue.put_ticket(sqs.client, sqs.qs.queue_url, body)

    counts = _drain(rt, sqs)

    assert (counts.received, counts.rejected, counts.ready) == (1, 1, [])
    [dead] = sqs.dead_letters()
    reason = dead["MessageAttributes"]["reason"]["StringValue"]
    assert reason.startswith("regime:")
    assert dead["MessageAttributes"]["ticket_id"]["StringValue"] == "T-2"
    assert dead["Body"] == body  # the original, for a person to look at and redrive
    assert SECRET_EMAIL not in reason
    [record] = rt.ledger.all()
    assert (record.ticket_id, record.status, record.reason) == ("T-2", Status.REJECTED, reason)
    assert sqs.waiting() == 0  # deleted from the main queue once dead-lettered


def test_an_unexpected_error_dead_letters_with_a_generic_reason(
    rt: Runtime, sqs: Sqs, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: Any, **__: Any) -> None:
        raise ZeroDivisionError(SECRET_EMAIL)

    monkeypatch.setattr("dsrflow.intake.submit", boom)
    queue.put_ticket(sqs.client, sqs.qs.queue_url, _email_ticket("T-3", SECRET_EMAIL))

    counts = _drain(rt, sqs)

    assert counts.errors == 1
    [dead] = sqs.dead_letters()
    assert dead["MessageAttributes"]["reason"]["StringValue"] == "internal error: ZeroDivisionError"
    assert sqs.waiting() == 0
    # Recorded too, with what of the ticket could be read: the report lists every ticket.
    [record] = rt.ledger.all()
    assert (record.ticket_id, record.status, record.reason) == (
        "T-3", Status.REJECTED, "internal error: ZeroDivisionError")


def test_a_ledger_outage_leaves_the_message_on_the_queue(
    rt: Runtime, sqs: Sqs, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*_: Any, **__: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(rt.ledger, "record_ticket", down)
    monkeypatch.setattr(rt.ledger, "reject", down)
    for body in (json.dumps(_email_ticket("T-5")), "not json"):
        queue.put_ticket(sqs.client, sqs.qs.queue_url, body)

    counts = _drain(rt, sqs)

    assert (counts.received, counts.errors, counts.kept) == (2, 2, 2)
    assert sqs.waiting() == 2 and sqs.dead_letters() == []


def test_a_bug_and_then_a_ledger_outage_leaves_the_message_on_the_queue(
    rt: Runtime, sqs: Sqs, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_: Any, **__: Any) -> None:
        raise ZeroDivisionError(SECRET_EMAIL)

    def down(*_: Any, **__: Any) -> None:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr("dsrflow.intake.submit", boom)
    monkeypatch.setattr(rt.ledger, "reject", down)
    queue.put_ticket(sqs.client, sqs.qs.queue_url, _email_ticket("T-6", SECRET_EMAIL))

    counts = _drain(rt, sqs)

    assert (counts.errors, counts.kept) == (1, 1)
    assert sqs.waiting() == 1 and sqs.dead_letters() == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ('{"ticket_id": "T-7", "n": ' + "7" * 4301 + "}", "not valid JSON: a number too long"),
        (json.dumps({**_email_ticket("T-8"), "received_at": "0001-01-01T00:00:00+01:00",
                     "verification": None}), "received_at: before 2000-01-01"),
        (json.dumps({**_email_ticket("T-9"), "received_at": 1762247147}),
         "received_at: must be an RFC 3339"),
        (json.dumps(_email_ticket("T-10", "a@b..com")), "identities.0: email: not an email"),
        (json.dumps(ticket("T-11", "erasure", [{"type": "user_id", "value": "²"}])),
         "identities.0: user_id: not a user id"),
        (json.dumps({**_email_ticket("T-12"), "channel": "app\u0085"}),
         "channel: contains a control character"),
    ],
    ids=["huge-integer", "year-1", "epoch", "email", "unicode-digit", "c1-control"],
)
def test_what_crashed_or_slipped_through_intake_is_dead_lettered_and_recorded(
    rt: Runtime, sqs: Sqs, body: str, reason: str
) -> None:
    queue.put_ticket(sqs.client, sqs.qs.queue_url, body)

    counts = _drain(rt, sqs)

    assert (counts.received, counts.rejected, counts.errors, counts.ready) == (1, 1, 0, [])
    [dead] = sqs.dead_letters()
    said = dead["MessageAttributes"]["reason"]["StringValue"]
    assert said.startswith(reason)
    [record] = rt.ledger.all()
    assert (record.status, record.reason) == (Status.REJECTED, said)
    assert sqs.waiting() == 0


def test_a_message_stays_on_the_queue_when_the_dead_letter_queue_is_unreachable(
    rt: Runtime, sqs: Sqs
) -> None:
    queue.put_ticket(sqs.client, sqs.qs.queue_url, "not json")
    broken = sqs.qs.model_copy(update={"dead_letter_url": sqs.qs.queue_url + "-missing"})

    counts = queue.drain(rt.ledger, rt.datamap, sqs.client, broken, 10, 0)

    assert (counts.rejected, counts.kept) == (1, 1)
    assert sqs.waiting() == 1  # not lost: it comes back after its visibility timeout


def test_dead_letter_truncates_and_encodes_what_sqs_cannot_carry(sqs: Sqs) -> None:
    huge = json.dumps({"ticket_id": "T-4", "type": "x" * 400_000})
    queue.dead_letter(sqs.client, sqs.qs.dead_letter_url, huge, "ticket is too large")
    binary = bytes(range(256)) * 2
    queue.dead_letter(sqs.client, sqs.qs.dead_letter_url, binary, "not valid JSON")

    by_reason = {d["MessageAttributes"]["reason"]["StringValue"]: d for d in sqs.dead_letters()}
    cut = next(d for r, d in by_reason.items() if r.startswith("ticket is too large"))
    assert f"truncated from {len(huge)} to" in cut["MessageAttributes"]["reason"]["StringValue"]
    assert huge.startswith(cut["Body"]) and len(cut["Body"]) < queue.SQS_MAX_MESSAGE_BYTES
    assert "ticket_id" not in cut["MessageAttributes"]  # too large to be read as a ticket
    raw = by_reason["not valid JSON"]
    assert raw["MessageAttributes"]["encoding"]["StringValue"] == "base64"
    assert base64.b64decode(raw["Body"]) == binary


# -- hostile input ------------------------------------------------------------------------
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=12,
)
_FIELDS = ["ticket_id", "type", "regime", "identities", "verification", "scope", "corrections",
           "channel", "received_at"]


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    """A real ticket with one field broken: wrong type, missing, or an unknown field."""
    t = _email_ticket(f"H-{draw(st.integers(0, 10**9))}", SECRET_EMAIL)
    name = draw(st.sampled_from([*_FIELDS, "extra"]))
    action = draw(st.sampled_from(["wrong", "missing"]))
    if action == "missing":
        t.pop(name, None)
    else:
        t[name] = draw(_json)
    return json.dumps(t)


def _deep(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


_hostile: st.SearchStrategy[bytes | str] = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=50).map(lambda s: s + "\ud800"),
    st.integers(1, 100_000).map(_deep),
    st.integers(1, 100_000).map(lambda d: "[" * d + "]" * d),
    st.integers(60_000, 300_000).map(
        lambda n: json.dumps({**_email_ticket("BIG-1", SECRET_EMAIL), "channel": "x" * n})
    ),
    _json.map(json.dumps),
    _mutated(),
    st.integers(0, 10**9).map(lambda i: json.dumps(_email_ticket(f"OK-{i}"))),
    st.sampled_from(["", " ", "null", "{}", "[]", '"x"', "1e999999", "\x00", "{\"ticket_id\":"]),
)


@pytest.mark.slow  # hundreds of hostile messages through moto's queue: ten seconds
def test_no_message_however_hostile_is_lost_or_stops_intake(rt: Runtime, sqs: Sqs) -> None:
    @dataclass
    class Tally:
        sent: int = 0
        kinds: dict[str, int] = field(default_factory=dict)
        dead: int = 0

    tally = Tally()

    @settings(max_examples=1000, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=_hostile)
    def one(body: bytes | str) -> None:
        tally.sent += 1
        outcome = queue.handle_body(rt.ledger, rt.datamap, sqs.client, sqs.qs, body)
        assert outcome.ack and outcome.kind in ("accepted", "duplicate", "rejected")
        tally.kinds[outcome.kind] = tally.kinds.get(outcome.kind, 0) + 1
        # Emptied as we go: moto's queues slow down as they grow.
        dead = sqs.dead_letters()
        for d in dead:
            sqs.client.delete_message(QueueUrl=sqs.qs.dead_letter_url,
                                      ReceiptHandle=d["ReceiptHandle"])
        tally.dead += len(dead)
        if outcome.kind != "rejected":
            assert dead == []
            return
        [d] = dead
        reason = d["MessageAttributes"]["reason"]["StringValue"]
        assert reason.startswith(outcome.reason or "?") and SECRET_EMAIL not in reason
        assert len(d["Body"].encode()) <= queue.SQS_MAX_MESSAGE_BYTES

    one()

    assert tally.sent >= 1000
    records = rt.ledger.all()
    requests = [r for r in records if r.status is not Status.REJECTED]
    rejected = [r for r in records if r.status is Status.REJECTED]
    # Nothing lost: every message is a request (new or redelivered) or a dead letter.
    accepted, duplicates = tally.kinds.get("accepted", 0), tally.kinds.get("duplicate", 0)
    assert tally.sent == accepted + duplicates + tally.dead
    assert len(requests) == accepted
    assert len(rejected) == tally.dead == tally.kinds.get("rejected", 0)
    assert all(r.reason and SECRET_EMAIL not in r.reason for r in rejected)


def test_the_loop_keeps_going_after_bad_input(rt: Runtime, sqs: Sqs) -> None:
    for body in ["\x01garbage", _deep(50_000), json.dumps(_email_ticket("OK-1")), "[]",
                 json.dumps(_email_ticket("OK-2", "b@example.com"))]:
        queue.put_ticket(sqs.client, sqs.qs.queue_url, body)
    clock = FakeClock()
    dispatched: list[list[str]] = []

    def drain_once(n: int, wait: int) -> IntakeCounts:
        clock.now += max(wait, 1)
        return queue.drain(rt.ledger, rt.datamap, sqs.client, sqs.qs, n, 0)

    summary = queue.run_loop(drain_once, dispatched.append, sqs.qs, max_seconds=20,
                             clock=clock, sleep=clock.sleep)

    assert summary.counts.received == 5 and summary.counts.rejected == 3
    ok = {r.id for r in rt.ledger.all() if r.status is Status.VERIFIED}
    assert len(ok) == 2 and {rid for batch in dispatched for rid in batch} == ok
    assert sqs.waiting() == 0 and len(sqs.dead_letters()) == 3


# -- batching -----------------------------------------------------------------------------
@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _scripted(clock: FakeClock, arrivals: list[list[str]], step: float) -> Any:
    """A queue that yields the next arrivals on each poll, `step` seconds apart."""
    polls: list[tuple[float, int, int]] = []

    def drain_once(n: int, wait: int) -> IntakeCounts:
        polls.append((clock.now, n, wait))
        clock.now += step
        ids = arrivals.pop(0) if arrivals else []
        assert len(ids) <= n
        return IntakeCounts(received=len(ids), accepted=len(ids), ready=list(ids))

    return drain_once, polls


def test_batches_hold_at_most_n_request_ids() -> None:
    clock = FakeClock()
    qs = QueueSettings(queue_url="q", dead_letter_url="d", batch_size=4, batch_seconds=60,
                       wait_seconds=10)
    ids = [f"r{i}" for i in range(10)]
    drain_once, polls = _scripted(clock, [ids[0:3], ids[3:4], ids[4:7], ids[7:8]], step=0.1)
    sent: list[tuple[float, list[str]]] = []

    summary = queue.run_loop(drain_once, lambda b: sent.append((clock.now, b)), qs,
                             max_batches=2, clock=clock, sleep=clock.sleep)

    assert [b for _, b in sent] == [ids[0:4], ids[4:8]]
    assert all(t < 1 for t, _ in sent)  # full batches go at once, not after T
    assert [n for _, n, _ in polls] == [4, 1, 4, 1]  # never asks for more than fits
    assert summary.batches == [ids[0:4], ids[4:8]]


def test_a_partial_batch_goes_after_t_seconds() -> None:
    clock = FakeClock()
    qs = QueueSettings(queue_url="q", dead_letter_url="d", batch_size=25, batch_seconds=5,
                       wait_seconds=10)
    drain_once, polls = _scripted(clock, [["a"], [], ["b"], [], [], ["c"]], step=1.5)
    sent: list[tuple[float, list[str]]] = []

    queue.run_loop(drain_once, lambda b: sent.append((clock.now, b)), qs, max_batches=2,
                   max_seconds=60, clock=clock, sleep=clock.sleep)

    (t1, first), (_, second) = sent
    assert first == ["a", "b"] and t1 == pytest.approx(1.5 + 5)  # T after "a" arrived
    assert second == ["c"]
    # While "a" waited, no long poll would have outlasted its T.
    assert all(t + wait <= 1.5 + 5 for t, _, wait in polls if 1.5 <= t < t1)
    assert polls[0][2] == 10  # nothing pending: the full long poll


def test_the_way_out_starts_what_is_pending_and_survives_a_failed_dispatch() -> None:
    clock = FakeClock()
    qs = QueueSettings(queue_url="q", dead_letter_url="d", batch_size=2, batch_seconds=30,
                       wait_seconds=10)
    drain_once, _ = _scripted(clock, [["a", "b"], ["c"]], step=1)

    def dispatch(batch: list[str]) -> None:
        if batch == ["a", "b"]:
            raise RuntimeError("server unreachable")

    summary = queue.run_loop(drain_once, dispatch, qs, max_seconds=5, clock=clock,
                             sleep=clock.sleep)

    assert summary.batches == [["a", "b"], ["c"]] and summary.failed_batches == 1


def test_a_failed_poll_backs_off_and_goes_on() -> None:
    clock = FakeClock()
    qs = QueueSettings(queue_url="q", dead_letter_url="d", batch_size=1, batch_seconds=5)
    results = [IntakeCounts(poll_failed=True), IntakeCounts(received=1, ready=["a"])]

    def drain_once(n: int, wait: int) -> IntakeCounts:
        return results.pop(0) if results else IntakeCounts()

    summary = queue.run_loop(drain_once, lambda b: None, qs, max_batches=1, clock=clock,
                             sleep=clock.sleep, poll_backoff=7)

    assert summary.batches == [["a"]] and clock.now == 7


# -- the flow on a real Prefect server ----------------------------------------------------
def test_the_intake_flow_processes_tickets_and_gives_prefect_no_identity(
    tmp_path: Path, sqs: Sqs, prefect_server: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from functools import partial

    from prefect.events.clients import AssertingPassthroughEventsClient
    from prefect.events.worker import EventsWorker

    from flows.intake import intake

    AssertingPassthroughEventsClient.reset()
    worker = EventsWorker.instance(AssertingPassthroughEventsClient)
    monkeypatch.setattr(
        EventsWorker, "instance",
        partial(EventsWorker.instance, client_type=AssertingPassthroughEventsClient),
    )
    world, url = sqlworld.sqlite_world(tmp_path, 5, 6)
    doc = sqlworld.datamap_doc(url)
    runtime = make_runtime(tmp_path, doc)
    previous = set_runtime(runtime)
    try:
        emails = [str(world.user(uid)["email"]) for uid in (2, 3)]
        erase = _email_ticket("Q-1", emails[0].upper())
        access = ticket("Q-2", "access", [{"type": "email", "value": emails[1]}])
        bad = _email_ticket("Q-3", SECRET_EMAIL, regime="nowhere")
        for t in (erase, access, erase, bad):
            queue.put_ticket(sqs.client, sqs.qs.queue_url, t)
        qs = sqs.qs.model_copy(update={"batch_size": 10, "batch_seconds": 1, "wait_seconds": 1})

        result = intake(queue_config=qs, max_batches=1, max_seconds=30)

        assert result["accepted"] == 2 and result["redelivered"] == 1
        assert result["rejected"] == 1 and result["batches"] == 1
        by_ticket = {r.ticket_id: r for r in runtime.ledger.all()}
        assert by_ticket["Q-1"].status is Status.COMPLETED
        assert by_ticket["Q-2"].status is Status.COMPLETED
        assert by_ticket["Q-3"].status is Status.REJECTED
        assert sqs.waiting() == 0 and len(sqs.dead_letters()) == 1
        worker.drain()
        events = [e for c in AssertingPassthroughEventsClient.all for e in c.events]
        received = {e.resource["prefect.resource.name"] for e in events
                    if e.event == "dsr.request.received"}
        assert received == {"Q-1", "Q-2"}  # once each, redelivery or not
        needles = [*emails, *(e.upper() for e in emails), SECRET_EMAIL]
        assert files_containing(prefect_server, needles) == {}
    finally:
        set_runtime(previous)
        runtime.close()


def test_a_batch_starts_one_deployment_run_whatever_the_order_of_its_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks.intake import batch_key, start_deployment_run

    calls: list[dict[str, Any]] = []

    def run_deployment(name: str, **kw: Any) -> Any:
        calls.append({"name": name, **kw})
        return type("Run", (), {"id": "run-1"})()

    monkeypatch.setattr("prefect.deployments.run_deployment", run_deployment)
    assert start_deployment_run.fn("process-requests/process-requests", ["b", "a"]) == "run-1"

    [call] = calls
    assert call["name"] == "process-requests/process-requests"
    assert call["parameters"] == {"request_ids": ["b", "a"]} and call["timeout"] == 0
    assert call["idempotency_key"] == batch_key(["a", "b"]) != batch_key(["a", "c"])
    # A later start of the same requests (resume-requests, after their run died) is keyed
    # apart, or Prefect would hand back the dead run; a retry of that start is not.
    assert batch_key(["a", "b"], "resume-1") not in (batch_key(["a", "b"]),
                                                     batch_key(["a", "b"], "resume-2"))
    assert batch_key(["b", "a"], "resume-1") == batch_key(["a", "b"], "resume-1")
