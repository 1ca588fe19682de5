"""Handing a batch to a partner concurrently (issue 16), over real HTTP to the reference
partner: at most the bound in flight, and that many; each answer recorded as it arrives;
a partner down for some requests leaves the acknowledged ones recorded and the rest for
the retry, under the same ids, none sent twice; a callback that comes before its POST's
answer wins; a refusal blocks its request only. The ids a batch lacks are minted in one
transaction, and two runs at once agree on them (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors import opendsr
from deployments.callbacks import create_app, serving
from dsrflow.crypto import Keyring
from dsrflow.errors import StepFailed
from dsrflow.intake import submit
from dsrflow.ledger import Ledger, StepRecord
from dsrflow.model import PartnerStatus
from dsrflow.tickets import Ticket
from examples.partner import ReferencePartner
from examples.partner.loopback import Exchange
from pipeline import partners, steps
from pipeline.runtime import Runtime
from tests.helpers import make_runtime, ticket

HOLD_TIMEOUT = 30.0  # a held POST that waits this long fails the test (never reached)
POST = ("POST", "/v1/requests")


class HookedPartner(ReferencePartner):
    """The reference partner with hooks on its POSTs, chosen by the request's subject (the
    SHA-256 of its email, as the data map sends it): `hold` runs before a POST is looked at,
    `refuse` answers 400 and `fail` 500 (before keeping the request). It counts the POSTs
    it is answering at once: a POST counts from its arrival until its answer starts to go
    out, inside the client's own window for it, so the count never exceeds what the client
    has in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.hold: Callable[[str], object] = lambda subject: None
        self.refuse: set[str] = set()
        self.fail: set[str] = set()
        self.failed: dict[str, int] = {}  # subject -> 500s answered
        self.in_flight = 0
        self.most_in_flight = 0
        self.complete_before_answering = False
        self._counting = threading.local()
        self._count_lock = threading.Lock()

    def _route(self, ex: Exchange) -> None:
        if (ex.method, ex.path) != POST:
            super()._route(ex)
            return
        subject = _subject_of(ex.body)
        with self._count_lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self._counting.on = True
        try:
            self.hold(subject)
            if subject in self.refuse:
                self._count_post(ex.body)
                self._error(ex, 400, "request refused")
            elif subject in self.fail:
                self._count_post(ex.body)
                with self._count_lock:
                    self.failed[subject] = self.failed.get(subject, 0) + 1
                self._error(ex, 500, "injected failure")
            else:
                super()._route(ex)
        finally:
            self._stop_counting()

    def _send(self, ex: Exchange, status: int, payload: dict[str, Any]) -> None:
        self._stop_counting()  # before the answer goes out: see the class's docstring
        super()._send(ex, status, payload)

    def _stop_counting(self) -> None:
        if getattr(self._counting, "on", False):
            self._counting.on = False
            with self._count_lock:
                self.in_flight -= 1

    def _create(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        status, payload = super()._create(raw)
        if status == 201 and self.complete_before_answering:
            # Done at once: the signed callback goes to dsrflow, and is answered, before
            # the POST is.
            self.complete(payload["subject_request_id"])
        return status, payload


def _subject_of(body: bytes) -> str:
    identities = json.loads(body).get("subject_identities") or [{}]
    return str(identities[0].get("identity_value", ""))


def _digest(email: str) -> str:
    return hashlib.sha256(email.lower().encode()).hexdigest()


@pytest.fixture
def partner() -> Iterator[HookedPartner]:
    running = HookedPartner()
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _runtime(tmp_path: Path, partner: ReferencePartner, max_concurrency: int | None = None,
             **settings: Any) -> Runtime:
    (tmp_path / "partner.pem").write_bytes(partner.certificate_pem)
    adnet: dict[str, Any] = {
        "kind": "partner", "protocol": "opendsr", "categories": ["contact"],
        "endpoint": partner.url, "certificate": "partner.pem",
        "identities": [{"type": "email", "format": "sha256"}],
        "callback_domains": [partner.domain],
    }
    if max_concurrency is not None:
        adnet["max_concurrency"] = max_concurrency
    doc = {"version": "test-1", "policy_version": "test", "systems": {"adnet": adnet}}
    return make_runtime(tmp_path, doc, **settings)


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client retries a 5xx at once (its retries are the same; only the waits go)."""
    monkeypatch.setattr(opendsr, "exponential_backoff", lambda: lambda attempt: 0.0)


def _email(n: int) -> str:
    return f"subject.{n}@example.com"


def _erasures(rt: Runtime, n: int) -> list[str]:
    return [submit(rt.ledger, rt.datamap, ticket(
        f"CC-{k}", "erasure", [{"type": "email", "value": _email(k)}])).request_id
        for k in range(n)]


def _rows(rt: Runtime, ids: list[str]) -> dict[str, Any]:
    return {p.request_id: p for p in rt.ledger.partner_requests(ids) if p.system == "adnet"}


def _steps(rt: Runtime, ids: list[str]) -> dict[str, StepRecord]:
    return {s.request_id: s for s in rt.ledger.steps(ids)
            if s.system == "adnet" and s.action == "erase"}


# -- the bound ------------------------------------------------------------------------------
class CallCounter:
    """Counts the calls of a function under way at once, from the caller's side."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.under_way = 0
        self.most = 0
        self.lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.under_way += 1
            self.most = max(self.most, self.under_way)
        try:
            return self.real(*args, **kwargs)
        finally:
            with self.lock:
                self.under_way -= 1


@pytest.mark.parametrize(("where", "bound"), [("setting", 4), ("data map", 3)])
def test_the_bound_is_reached_and_never_exceeded(
    tmp_path: Path, partner: HookedPartner, monkeypatch: pytest.MonkeyPatch, where: str,
    bound: int,
) -> None:
    """Each POST is held until `bound` of them are with the partner at once: a client that
    sends fewer at once never gets an answer (the hold times out and the test fails), one
    that sends more is counted, by the partner and on dsrflow's side of the exchange (a
    request beyond the bound may reach the partner only after a round was answered; the
    hand-over it was part of was under way all the same)."""
    rt = (_runtime(tmp_path, partner, partner_concurrency=bound) if where == "setting"
          else _runtime(tmp_path, partner, max_concurrency=bound, partner_concurrency=8))
    try:
        connector = rt.partner("adnet")
        counted = CallCounter(connector.hand_over)
        monkeypatch.setattr(connector, "hand_over", counted)
        gate = threading.Barrier(bound, timeout=HOLD_TIMEOUT)
        partner.hold = lambda subject: gate.wait()
        ids = _erasures(rt, 3 * bound)  # three full rounds of the gate
        steps.apply_to_system(rt, "adnet", ids)
        assert not gate.broken
        assert partner.most_in_flight == bound
        assert counted.most == bound
        rows = _rows(rt, ids)
        assert {r.status for r in rows.values()} == {PartnerStatus.SUBMITTED}
        assert all(partner.posts[r.subject_request_id] == 1 for r in rows.values())
        assert {s.status for s in _steps(rt, ids).values()} == {"pending_external"}
    finally:
        rt.close()


# -- a partner down for some requests ---------------------------------------------------------
def test_a_partner_down_mid_batch_keeps_what_it_acknowledged_and_the_retry_sends_the_rest(
    tmp_path: Path, partner: HookedPartner, no_backoff: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first request's POSTs all answer 500 (every attempt); two others are with the
    partner meanwhile (its first attempt waits for them), held until dsrflow has taken the
    failure in. The task raises (so it is retried), after recording the acknowledgements
    that arrived, those two among them; the retry sends only what was not acknowledged,
    each under the id it had, and nothing twice."""
    rt = _runtime(tmp_path, partner, partner_concurrency=3)
    try:
        ids = _erasures(rt, 9)
        down = _digest(_email(0))
        attempts = rt.partner("adnet").client.retries + 1  # type: ignore[attr-defined]
        failure_taken_in = threading.Event()
        in_flight_with_it = {_digest(_email(1)), _digest(_email(2))}
        record_all = partners._record_all

        def recorded(rt_: Runtime, system: str, arrived: Any, outcomes: Any) -> Any:
            failure = record_all(rt_, system, arrived, outcomes)
            if failure is not None:
                failure_taken_in.set()  # the in-flight answers may come now
            return failure

        monkeypatch.setattr(partners, "_record_all", recorded)

        together = threading.Barrier(3, timeout=HOLD_TIMEOUT)

        def hold(subject: str) -> None:
            if subject == down and down not in partner.failed:  # its first attempt
                together.wait()
            elif subject in in_flight_with_it:
                together.wait()
                assert failure_taken_in.wait(HOLD_TIMEOUT)

        partner.hold = hold
        partner.fail = {down}
        with pytest.raises(StepFailed):
            steps.apply_to_system(rt, "adnet", ids)
        assert partner.failed[down] == attempts

        first = _rows(rt, ids)
        acknowledged = {rid for rid, r in first.items() if r.subject_request_id in partner.requests}
        assert {ids[1], ids[2]} <= acknowledged  # their answers came after the failure
        assert ids[0] not in acknowledged
        for rid, row in first.items():  # every answer that arrived is on record
            expected = PartnerStatus.SUBMITTED if rid in acknowledged else PartnerStatus.CREATED
            assert row.status is expected, rid
        posts_before = dict(partner.posts)

        partner.fail = set()  # the partner is back: the task's retry
        steps.apply_to_system(rt, "adnet", ids)
        second = _rows(rt, ids)
        assert {r.status for r in second.values()} == {PartnerStatus.SUBMITTED}
        for rid, row in second.items():
            srid = row.subject_request_id
            assert srid == first[rid].subject_request_id  # the same id
            sent_again = partner.posts[srid] - posts_before.get(srid, 0)
            assert sent_again == (0 if rid in acknowledged else 1), rid
            assert partner.distinct_requests(srid) == 1
    finally:
        rt.close()


def test_a_partner_that_is_down_is_not_sent_the_rest_of_the_batch(
    tmp_path: Path, partner: HookedPartner, no_backoff: None
) -> None:
    """Every POST answers 500: the two under way (each first attempt waits for the other)
    use up their retries, and no other request of the batch is started (each would only
    fail the same way); the retry sends them all, under the ids committed before the
    first attempt."""
    rt = _runtime(tmp_path, partner, partner_concurrency=2)
    try:
        ids = _erasures(rt, 6)
        attempts = rt.partner("adnet").client.retries + 1  # type: ignore[attr-defined]
        together = threading.Barrier(2, timeout=HOLD_TIMEOUT)
        partner.hold = lambda subject: subject in partner.failed or together.wait()
        partner.fail = {_digest(_email(k)) for k in range(6)}
        with pytest.raises(StepFailed):
            steps.apply_to_system(rt, "adnet", ids)
        first = _rows(rt, ids)
        assert {r.status for r in first.values()} == {PartnerStatus.CREATED}
        assert sorted(partner.posts.values()) == [attempts, attempts]  # two requests only
        partner.fail = set()
        steps.apply_to_system(rt, "adnet", ids)
        second = _rows(rt, ids)
        assert {r.status for r in second.values()} == {PartnerStatus.SUBMITTED}
        assert all(second[rid].subject_request_id == first[rid].subject_request_id
                   for rid in ids)
        assert sorted(partner.posts.values()) == [1, 1, 1, 1, attempts + 1, attempts + 1]
    finally:
        rt.close()


def test_a_request_that_fails_for_a_reason_of_its_own_fails_alone(
    tmp_path: Path, partner: HookedPartner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the partner's fault, nor a refusal (here: the connector cannot build one
    request): isolation halves the batch to find it, each half sent only its own requests,
    so the others are handed over and wait, and only that one fails (and is retried)."""
    rt = _runtime(tmp_path, partner, partner_concurrency=3)
    try:
        ids = _erasures(rt, 6)
        connector = rt.partner("adnet")
        real = connector.hand_over

        def hand_over(subject: Any, *args: Any, **kwargs: Any) -> Any:
            if subject.request_id == ids[3]:
                raise ValueError("cannot build this one")
            return real(subject, *args, **kwargs)

        monkeypatch.setattr(connector, "hand_over", hand_over)
        with pytest.raises(StepFailed):
            steps.apply_to_system(rt, "adnet", ids)
        now = _steps(rt, ids)
        assert now[ids[3]].status == "failed"
        assert {now[rid].status for rid in ids if rid != ids[3]} == {"pending_external"}
        rows = _rows(rt, ids)
        assert all(partner.posts[rows[rid].subject_request_id] == 1
                   for rid in ids if rid != ids[3])
    finally:
        rt.close()


# -- a callback before the POST's answer -------------------------------------------------------
def test_callbacks_that_come_before_their_posts_answers_win(
    tmp_path: Path, partner: HookedPartner
) -> None:
    """Every POST of a concurrent batch is completed, and its signed callback applied by
    dsrflow's callback endpoint, before the partner answers it: each late `submitted` is a
    lost write, and every step ends succeeded, not waiting for a poll."""
    rt = _runtime(tmp_path, partner, partner_concurrency=3)
    try:
        with serving(create_app(rt)) as base:
            rt.settings.callback_base_url = base
            partner.complete_before_answering = True
            ids = _erasures(rt, 6)
            steps.apply_to_system(rt, "adnet", ids)
        rows = _rows(rt, ids)
        assert {r.status for r in rows.values()} == {PartnerStatus.COMPLETED}
        assert {s.status for s in _steps(rt, ids).values()} == {"succeeded"}
        assert all(partner.posts[r.subject_request_id] == 1 for r in rows.values())
        assert {a.status_code for a in partner.callbacks} == {202}
        lost = [u for _, detail in rt.ledger.audit_events("partner.updates")
                for u in detail["updates"] if "lost" in u]
        assert sorted(u["request_id"] for u in lost) == sorted(ids)
        assert partners.check(rt) == {}  # nothing left to poll
    finally:
        rt.close()


# -- a refusal --------------------------------------------------------------------------------
def test_a_refusal_in_a_concurrent_batch_blocks_that_request_only(
    tmp_path: Path, partner: HookedPartner
) -> None:
    rt = _runtime(tmp_path, partner, partner_concurrency=4)
    try:
        ids = _erasures(rt, 8)
        partner.refuse = {_digest(_email(5))}
        steps.apply_to_system(rt, "adnet", ids)  # a block is not a failure: no retry
        rows, steps_now = _rows(rt, ids), _steps(rt, ids)
        assert rows[ids[5]].status is PartnerStatus.BLOCKED
        assert steps_now[ids[5]].status == "blocked"
        assert "400" in (steps_now[ids[5]].error or "")
        assert _email(5) not in (steps_now[ids[5]].error or "")
        others = [rid for rid in ids if rid != ids[5]]
        assert {rows[rid].status for rid in others} == {PartnerStatus.SUBMITTED}
        assert {steps_now[rid].status for rid in others} == {"pending_external"}
        steps.apply_to_system(rt, "adnet", ids)  # a rerun asks nobody again
        assert all(partner.posts[r.subject_request_id] == 1 for r in rows.values())
        assert _rows(rt, ids)[ids[5]].status is PartnerStatus.BLOCKED
    finally:
        rt.close()


# -- the scheduled check and a run's hand-over ---------------------------------------------
def test_the_check_leaves_a_runs_unsent_requests_to_the_run(
    tmp_path: Path, partner: HookedPartner
) -> None:
    """A batch's ids are committed before its first POST: while the run holds the request,
    a scheduled check must not find it unknown to the partner and send it too."""
    rt = _runtime(tmp_path, partner)
    try:
        [rid] = _erasures(rt, 1)
        srid = "5e1f0000-0000-4000-8000-000000000001"
        rt.ledger.partner_request_ids([rid], "adnet", lambda: srid)
        rt.ledger.take_leases([rid], "run-1", ttl=timedelta(minutes=5))
        assert partners.check(rt) == {}
        assert partner.posts == {} and _rows(rt, [rid])[rid].status is PartnerStatus.CREATED
        rt.ledger.release_leases([rid], "run-1")  # the run ended without sending it
        assert partners.check(rt) == {rid: "adnet: resent"}
        assert partner.posts[srid] == 1
    finally:
        rt.close()


# -- minting a batch's ids ----------------------------------------------------------------------
def _accept(ledger: Ledger, n: int, prefix: str) -> list[str]:
    out = []
    for k in range(n):
        doc = ticket(f"{prefix}-{k}", "erasure", [{"type": "email", "value": _email(k)}])
        rid, _ = ledger.accept(Ticket.model_validate(doc, context={"phone_region": "CN"}),
                               "dm", "pol")
        out.append(rid)
    return out


def _minter() -> Callable[[], str]:
    return lambda: str(uuid.uuid4())


def test_a_batch_of_ids_is_minted_once_and_kept(ledger: Ledger) -> None:
    a, b, c = _accept(ledger, 3, "M")
    first = ledger.partner_request_ids([a, b], "adnet", _minter())
    again = ledger.partner_request_ids([c, b, a], "adnet", _minter())
    assert list(again) == [c, b, a]  # in the order asked
    assert again[a] == first[a] and again[b] == first[b] and again[c] not in first.values()
    assert ledger.partner_request_id(b, "adnet", _minter()) == first[b]
    assert ledger.partner_request_ids([a], "other", _minter())[a] != first[a]  # per partner
    assert ledger.partner_request_ids([a, b, c], "adnet", _minter()) == {
        a: first[a], b: first[b], c: again[c]}
    minted = [d for _, d in ledger.audit_events("partner.request_ids") if d["system"] == "adnet"]
    assert [sorted(d["requests"]) for d in minted] == [sorted([a, b]), [c]]
    with pytest.raises(LookupError):
        ledger.partner_request_ids([a, "no-such-request"], "adnet", _minter())


def test_runs_minting_a_batch_at_once_agree_on_one_id_per_request(
    db_url: str, keyring: Keyring
) -> None:
    """Eight runs, each with an engine of its own, mint ids for overlapping batches (in
    different orders) at the same moment: one id per request, the same for all of them."""
    ledgers = [Ledger(db_url, keyring) for _ in range(8)]
    try:
        ledgers[0].migrate()
        ids = _accept(ledgers[0], 12, "R")
        barrier = threading.Barrier(len(ledgers), timeout=HOLD_TIMEOUT)

        def run(n: int) -> dict[str, str]:
            batch = random.Random(n).sample(ids, 8)
            barrier.wait()
            return ledgers[n].partner_request_ids(batch, "adnet", _minter())

        with ThreadPoolExecutor(len(ledgers)) as pool:
            results = list(pool.map(run, range(len(ledgers))))
        agreed: dict[str, str] = {}
        for result in results:
            for rid, srid in result.items():
                assert agreed.setdefault(rid, srid) == srid
        rows = {p.request_id: p.subject_request_id
                for p in ledgers[0].partner_requests(ids) if p.system == "adnet"}
        assert rows == agreed
        assert ledgers[0].verify_audit_chain() is None
    finally:
        for ledger in ledgers:
            ledger.dispose()
