"""Partners in the request flow: the reference OpenDSR partner on loopback (real HTTP) and
a manual partner. Exactly once per request and partner, whatever fails; no worker waits
while a partner works; the request closes when the last partner answers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dsrflow.intake import submit
from dsrflow.leakscan import files_containing
from dsrflow.ledger import StepRecord
from dsrflow.model import Status
from examples.partner import Faults, ReferencePartner
from flows.request import BatchIncomplete, process_requests
from pipeline import partners
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket


@pytest.fixture
def partner() -> Iterator[ReferencePartner]:
    with ReferencePartner() as running:
        yield running


@pytest.fixture
def runtime(
    tmp_path: Path, partner: ReferencePartner, prefect_server: list[Path]
) -> Iterator[tuple[Runtime, sqlworld.World]]:
    world, url = sqlworld.sqlite_world(tmp_path, 3, 6)
    (tmp_path / "partner.pem").write_bytes(partner.certificate_pem)
    doc: dict[str, Any] = {**sqlworld.DATAMAP_DOC}
    doc["systems"] = {
        "db": {**doc["systems"]["db"], "url": url},
        "adnet": {
            "kind": "partner",
            "protocol": "opendsr",
            "categories": ["behaviour", "contact"],
            "endpoint": partner.url,
            "identities": [{"type": "email", "format": "sha256"},
                           {"type": "user_id", "as_type": "controller_customer_id"}],
            "callback_domains": [partner.domain],
            "certificate": "partner.pem",
        },
        "courier": {
            "kind": "partner",
            "protocol": "manual",
            "categories": ["contact"],
            "identities": [{"type": "phone"}],
            "contact": "privacy@courier.example (portal)",
        },
    }
    rt = make_runtime(tmp_path, doc)
    previous = set_runtime(rt)
    yield rt, world
    set_runtime(previous)
    rt.close()


def _erasure(rt: Runtime, world: sqlworld.World, uid: int, tid: str) -> str:
    email = str(world.user(uid)["email"])
    return submit(rt.ledger, rt.datamap,
                  ticket(tid, "erasure", [{"type": "email", "value": email}])).request_id


def _steps(rt: Runtime, rid: str) -> dict[str, StepRecord]:
    return {s.system: s for s in rt.ledger.steps([rid]) if s.action == "erase"}


def test_a_request_waits_for_its_partners_and_closes_when_they_answer(
    runtime: tuple[Runtime, sqlworld.World], partner: ReferencePartner
) -> None:
    rt, world = runtime
    rid = _erasure(rt, world, 2, "P-1")
    assert process_requests([rid]) == {rid: "in_progress"}

    steps = _steps(rt, rid)
    assert steps["db"].status == "succeeded"
    assert steps["adnet"].status == steps["courier"].status == "pending_external"
    assert "privacy@courier.example" in (steps["courier"].error or "")
    [sent] = [p for p in rt.ledger.partner_requests([rid]) if p.system == "adnet"]
    srid = sent.subject_request_id
    assert partner.distinct_requests(srid) == 1
    assert rt.ledger.get(rid).status is Status.IN_PROGRESS

    # The partner finishes; the scheduled check finds out; the manual partner is confirmed.
    partner.complete(srid)
    assert partners.check(rt) == {rid: "adnet: completed"}
    assert rt.ledger.get(rid).status is Status.IN_PROGRESS  # the courier has not confirmed
    partners.confirm(rt, rid, "courier", by="lin.q", reference="CR-2026-118")
    assert rt.ledger.get(rid).status is Status.COMPLETED
    details = _steps(rt, rid)["courier"].details
    assert (details["confirmed_by"], details["reference"]) == ("lin.q", "CR-2026-118")
    assert details["confirmed_at"].startswith("20")
    # Done means done: a late poll or a repeated confirmation changes nothing.
    assert partners.check(rt) == {}
    partners.confirm(rt, rid, "courier", by="someone.else", reference="X")
    assert _steps(rt, rid)["courier"].details["confirmed_by"] == "lin.q"


def test_a_failing_partner_is_asked_exactly_once(
    runtime: tuple[Runtime, sqlworld.World], partner: ReferencePartner
) -> None:
    rt, world = runtime
    rid = _erasure(rt, world, 3, "P-2")
    # The partner keeps the request, then the reply is lost (a 500 after storing): the
    # client retries, the task retries, the run is rerun — all under one id.
    partner.set_faults(Faults(fail=3, stage="after"))
    process_requests([rid])
    process_requests([rid])
    [sent] = [p for p in rt.ledger.partner_requests([rid]) if p.system == "adnet"]
    assert partner.distinct_requests(sent.subject_request_id) == 1
    assert partner.posts[sent.subject_request_id] >= 2  # it was asked again...
    assert _steps(rt, rid)["adnet"].status == "pending_external"  # ...and is waiting


def test_a_refusal_blocks_that_partner_only(
    runtime: tuple[Runtime, sqlworld.World], partner: ReferencePartner
) -> None:
    rt, world = runtime
    rid = _erasure(rt, world, 4, "P-3")
    partner.set_faults(Faults(reject=1, reject_status=400, leak_identity_in_errors=True))
    # A blocked partner fails the run, though the courier is still pending.
    with pytest.raises(BatchIncomplete):
        process_requests([rid])
    steps = _steps(rt, rid)
    assert steps["adnet"].status == "blocked"
    assert steps["db"].status == "succeeded"  # the other systems went ahead
    assert str(world.user(4)["email"]).lower() not in (steps["adnet"].error or "").lower()
    partners.confirm(rt, rid, "courier", by="lin.q", reference="CR-1")
    assert rt.ledger.get(rid).status is Status.PARTIALLY_COMPLETED


def test_a_bad_signature_is_not_trusted(
    runtime: tuple[Runtime, sqlworld.World], partner: ReferencePartner
) -> None:
    rt, world = runtime
    rid = _erasure(rt, world, 5, "P-4")
    partner.set_faults(Faults(response_signature="bad"))
    # A blocked partner fails the run, though the courier is still pending.
    with pytest.raises(BatchIncomplete):
        process_requests([rid])
    step = _steps(rt, rid)["adnet"]
    assert step.status == "blocked"
    assert "Signature" in (step.error or "")


def test_no_identity_reaches_prefect_or_the_partner_in_the_clear(
    runtime: tuple[Runtime, sqlworld.World], partner: ReferencePartner,
    prefect_server: list[Path],
) -> None:
    rt, world = runtime
    rid = _erasure(rt, world, 6, "P-5")
    process_requests([rid])
    email = str(world.user(6)["email"])
    [sent] = [p for p in rt.ledger.partner_requests([rid]) if p.system == "adnet"]
    body = partner.requests[sent.subject_request_id].raw
    assert email.lower().encode() not in body.lower()  # the data map asked for sha256
    assert files_containing(prefect_server, [email, email.lower()]) == {}


def test_a_lost_callback_is_made_up_for_by_the_scheduled_check(
    runtime: tuple[Runtime, sqlworld.World], partner: ReferencePartner
) -> None:
    from flows.partners import check_partners

    rt, world = runtime
    rid = _erasure(rt, world, 1, "P-6")
    partner.set_faults(Faults(lose_callbacks=True))
    process_requests([rid])
    [sent] = [p for p in rt.ledger.partner_requests([rid]) if p.system == "adnet"]
    partner.complete(sent.subject_request_id)  # done at the partner; the callback is lost
    assert _steps(rt, rid)["adnet"].status == "pending_external"
    assert check_partners() == {rid: "adnet: completed"}
    assert _steps(rt, rid)["adnet"].status == "succeeded"


def test_a_person_confirms_a_manual_partner_in_the_prefect_ui(
    runtime: tuple[Runtime, sqlworld.World], partner: ReferencePartner
) -> None:
    """The confirm-partner run pauses with a form; submitting it (what the UI does:
    resume with input) records the confirmation and closes the request."""
    import threading

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.flow_runs import resume_flow_run

    from flows.partners import confirm_partner

    rt, world = runtime
    rid = _erasure(rt, world, 2, "P-7")
    process_requests([rid])
    [sent] = [p for p in rt.ledger.partner_requests([rid]) if p.system == "adnet"]
    partner.complete(sent.subject_request_id)
    partners.check(rt)

    result: list[str] = []
    waiting = threading.Thread(
        target=lambda: result.append(confirm_partner(rid, "courier", poll_seconds=1))
    )
    waiting.start()
    name = f"confirm-courier-{rid}"
    paused = threading.Event()
    with get_client(sync_client=True) as client:
        for _ in range(300):  # bounded: the run pauses within seconds
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
            )
            if runs and runs[0].state is not None and runs[0].state.is_paused():
                break
            paused.wait(0.1)
        else:
            pytest.fail("the confirm-partner run never paused")
        resume_flow_run(runs[0].id, run_input={"confirmed_by": "lin.q", "reference": "UI-42"})
    waiting.join(timeout=60)
    assert result == ["completed"]
    details = _steps(rt, rid)["courier"].details
    assert (details["confirmed_by"], details["reference"]) == ("lin.q", "UI-42")


@pytest.mark.parametrize("reply", ["received", "pending"])
def test_a_webhook_partner_is_told_once_and_acknowledges(
    tmp_path: Path, prefect_server: list[Path], monkeypatch: pytest.MonkeyPatch, reply: str
) -> None:
    from examples.partner.webhook import WebhookFaults, WebhookReceiver

    world, url = sqlworld.sqlite_world(tmp_path, 9, 4)
    monkeypatch.setenv("TEST_MAILER_SECRET", "s3cret-for-tests")
    with WebhookReceiver("s3cret-for-tests", reply_status=reply,  # type: ignore[arg-type]
                         faults=WebhookFaults(fail=2)) as receiver:
        doc: dict[str, Any] = {**sqlworld.DATAMAP_DOC}
        doc["systems"] = {
            "db": {**doc["systems"]["db"], "url": url},
            "mailer": {"kind": "partner", "protocol": "webhook", "categories": ["contact"],
                       "endpoint": receiver.url, "identities": [{"type": "email"}],
                       "credentials_env": "TEST_MAILER_SECRET"},
        }
        rt = make_runtime(tmp_path, doc)
        previous = set_runtime(rt)
        try:
            rid = _erasure(rt, world, 2, f"W-{reply}")
            process_requests([rid])
            [sent] = rt.ledger.partner_requests([rid])
            assert receiver.distinct(sent.subject_request_id) == 1  # despite two 500s
            step = _steps(rt, rid)["mailer"]
            if reply == "received":
                assert step.status == "succeeded"
                assert rt.ledger.get(rid).status is Status.COMPLETED
            else:
                assert step.status == "pending_external"
                partners.confirm(rt, rid, "mailer", by="lin.q", reference="WH-ack")
                assert rt.ledger.get(rid).status is Status.COMPLETED
        finally:
            set_runtime(previous)
            rt.close()


def test_a_partner_token_can_live_in_a_prefect_secret_block(
    tmp_path: Path, prefect_server: list[Path]
) -> None:
    from prefect.blocks.system import Secret
    from pydantic import SecretStr

    Secret(value=SecretStr("token-from-a-block")).save("adnet-token-test", overwrite=True)
    world, url = sqlworld.sqlite_world(tmp_path, 2, 3)
    with ReferencePartner(token="token-from-a-block") as partner:  # refuses any other token
        (tmp_path / "p.pem").write_bytes(partner.certificate_pem)
        doc: dict[str, Any] = {**sqlworld.DATAMAP_DOC}
        doc["systems"] = {
            "db": {**doc["systems"]["db"], "url": url},
            "adnet": {"kind": "partner", "protocol": "opendsr", "categories": ["behaviour"],
                      "endpoint": partner.url, "identities": [{"type": "email"}],
                      "callback_domains": [partner.domain], "certificate": "p.pem",
                      "credentials_block": "adnet-token-test"},
        }
        rt = make_runtime(tmp_path, doc)
        previous = set_runtime(rt)
        try:
            rid = _erasure(rt, world, 1, "S-1")
            process_requests([rid])
            assert _steps(rt, rid)["adnet"].status == "pending_external"
        finally:
            set_runtime(previous)
            rt.close()


# -- exactly once (issue 12) ------------------------------------------------------------------
def _srid(rt: Runtime, rid: str, system: str = "adnet") -> str:
    [row] = [p for p in rt.ledger.partner_requests([rid]) if p.system == system]
    return str(row.subject_request_id)


def test_a_callback_before_the_post_returns_is_not_lost(
    runtime: tuple[Runtime, sqlworld.World], partner: ReferencePartner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An instant partner: it finishes, and its signed answer is applied, before dsrflow
    has recorded its own POST as submitted. The late `submitted` must not overwrite
    `completed`, and the step must not wait for a poll."""
    from connectors.opendsr import OpenDsrPartner

    rt, world = runtime
    rid = _erasure(rt, world, 2, "E-1")
    real_submit = OpenDsrPartner.submit

    def instant(self: OpenDsrPartner, subject: Any, type_: str, regime: str, srid: str,
                *args: Any, **kwargs: Any) -> Any:
        receipt = real_submit(self, subject, type_, regime, srid, *args, **kwargs)
        partner.complete(srid)
        partners.apply_status(rt, "adnet", subject.request_id, self.where(srid))
        return receipt

    monkeypatch.setattr(OpenDsrPartner, "submit", instant)
    process_requests([rid])
    [row] = [p for p in rt.ledger.partner_requests([rid]) if p.system == "adnet"]
    assert row.status == "completed"
    assert _steps(rt, rid)["adnet"].status == "succeeded"
    assert partner.posts[row.subject_request_id] == 1
    # The lost write is on record as lost, not applied.
    assert partners.check(rt) == {}  # nothing left to poll


def test_a_callback_between_the_post_and_the_step_write_is_not_lost(
    runtime: tuple[Runtime, sqlworld.World], partner: ReferencePartner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The partner's answer lands after dsrflow recorded its POST as submitted and before
    it wrote the step as waiting: the late `pending_external` must not overwrite the
    answer, or the request would wait for a poll of a partner request already done."""
    rt, world = runtime
    rid = _erasure(rt, world, 2, "E-1")
    real_send = partners.send

    def answered_meanwhile(rt_: Runtime, system: str, members: Any) -> Any:
        outcomes = real_send(rt_, system, members)
        for member in members if system == "adnet" else ():
            [row] = [p for p in rt_.ledger.partner_requests([member.id]) if p.system == system]
            partner.complete(row.subject_request_id)
            partners.apply_status(rt_, system, member.id,
                                  rt_.partner(system).where(row.subject_request_id))
        return outcomes

    monkeypatch.setattr(partners, "send", answered_meanwhile)
    process_requests([rid])
    assert _steps(rt, rid)["adnet"].status == "succeeded"
    [row] = [p for p in rt.ledger.partner_requests([rid]) if p.system == "adnet"]
    assert row.status == "completed" and partner.posts[row.subject_request_id] == 1
    assert partners.check(rt) == {}  # nothing to poll: adnet is done
    # Only the courier is left: once a person confirms it, the request closes.
    partners.confirm(rt, rid, "courier", by="lin.q", reference="CR-1")
    assert rt.ledger.get(rid).status is Status.COMPLETED


def test_reruns_never_ask_a_partner_again(
    runtime: tuple[Runtime, sqlworld.World], partner: ReferencePartner
) -> None:
    """A slow partner and two reruns: one POST. A rejecting partner and two reruns: still
    one, the request blocked with the partner's reason until a person retries it."""
    rt, world = runtime
    slow = _erasure(rt, world, 3, "E-2")
    process_requests([slow])
    for _ in range(2):
        process_requests([slow])
    assert partner.posts[_srid(rt, slow)] == 1
    assert _steps(rt, slow)["adnet"].status == "pending_external"

    refused = _erasure(rt, world, 4, "E-3")
    partner.set_faults(Faults(reject=1, reject_status=400))
    for _ in range(3):
        with pytest.raises(BatchIncomplete):
            process_requests([refused])
    assert partner.posts[_srid(rt, refused)] == 1
    step = _steps(rt, refused)["adnet"]
    assert step.status == "blocked" and "400" in (step.error or "")

    # A person deals with the objection and retries: sent once more, under the same id.
    srid = _srid(rt, refused)
    partners.retry(rt, refused, "adnet")
    assert process_requests([refused]) == {refused: "in_progress"}
    assert partner.posts[srid] == 2 and _srid(rt, refused) == srid
    assert _steps(rt, refused)["adnet"].status == "pending_external"
    with pytest.raises(LookupError, match="not blocked"):
        partners.retry(rt, refused, "adnet")


def test_one_untrusted_partner_does_not_stop_the_others(
    tmp_path: Path, prefect_server: list[Path]
) -> None:
    """Two OpenDSR partners: one's status answers are badly signed, the other finishes.
    The check goes on past the first: the good partner's request closes, the untrusted
    one's is blocked with the reason; a partner that is down is tried again, then blocked
    after `partner_check_failures` checks."""
    from flows.partners import check_partners

    with ReferencePartner(domain="good.example") as good, \
            ReferencePartner(domain="bad.example") as bad, \
            ReferencePartner(domain="down.example") as down:
        world, url = sqlworld.sqlite_world(tmp_path, 9, 6)
        doc: dict[str, Any] = {**sqlworld.DATAMAP_DOC}
        doc["systems"] = {"db": {**doc["systems"]["db"], "url": url}}
        for name, server in (("good", good), ("bad", bad), ("down", down)):
            (tmp_path / f"{name}.pem").write_bytes(server.certificate_pem)
            doc["systems"][name] = {
                "kind": "partner", "protocol": "opendsr", "categories": ["contact"],
                "endpoint": server.url, "certificate": f"{name}.pem",
                "identities": [{"type": "email", "format": "sha256"}],
                "callback_domains": [server.domain],
            }
        rt = make_runtime(tmp_path, doc, partner_check_failures=2)
        previous = set_runtime(rt)
        try:
            rid = _erasure(rt, world, 2, "E-4")
            assert process_requests([rid]) == {rid: "in_progress"}
            good.complete(_srid(rt, rid, "good"))
            bad.set_faults(response_signature="bad")
            down.set_faults(fail=100, fail_status=503)

            first = check_partners()  # the flow completes; it says what it could not check
            assert first[rid]  # one line per request: the last partner's
            steps = _steps(rt, rid)
            assert steps["good"].status == "succeeded"
            assert steps["bad"].status == "blocked"
            assert steps["down"].status == "pending_external"  # tried again next time
            check_partners()
            steps = _steps(rt, rid)
            assert steps["down"].status == "blocked"
            assert "2 status checks" in (steps["down"].error or "")
            # Nothing is waiting any more: the request closes, partial, with the reasons.
            record = rt.ledger.get(rid)
            assert record.status is Status.PARTIALLY_COMPLETED
            assert "bad" in str(record.reason) and "down" in str(record.reason)
        finally:
            set_runtime(previous)
            rt.close()
