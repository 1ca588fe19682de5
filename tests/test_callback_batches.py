"""Callbacks that arrive together are recorded and closed together: a partner answering
many requests at once costs one look-up, one recording of the answers and one close
(certificates, final statuses) per group, not per request, and each callback is still
answered only once its own request is closed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from deployments.callbacks import create_app, serving
from dsrflow.intake import submit
from dsrflow.model import DELIVERABLE_KIND, Status
from examples.partner import ReferencePartner
from flows.request import process_requests
from pipeline import closing
from pipeline.group_commit import GroupCommit
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket
from tests.workerpool import wait_for

UIDS = [1, 2, 3, 4, 5]


@pytest.fixture
def served(
    tmp_path: Path, prefect_server: list[Path]
) -> Iterator[tuple[Runtime, ReferencePartner, Any, list[str]]]:
    world, url = sqlworld.sqlite_world(tmp_path, 8, 5)
    with ReferencePartner() as partner:
        (tmp_path / "partner.pem").write_bytes(partner.certificate_pem)
        rt = make_runtime(tmp_path, sqlworld.datamap_with_partner(
            url, partner.url, partner.domain))
        previous = set_runtime(rt)
        app = create_app(rt)
        try:
            with serving(app) as base:
                rt.settings.callback_base_url = base
                ids = [submit(rt.ledger, rt.datamap, ticket(
                    f"G-{uid}", "erasure",
                    [{"type": "email", "value": str(world.user(uid)["email"])}])).request_id
                    for uid in UIDS]
                process_requests(ids)
                assert {rt.ledger.get(rid).status for rid in ids} == {Status.IN_PROGRESS}
                yield rt, partner, app, ids
        finally:
            set_runtime(previous)
            rt.close()


def test_callbacks_arriving_during_a_close_are_closed_together_by_the_next(
    served: tuple[Runtime, ReferencePartner, Any, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, partner, app, ids = served
    grouped: GroupCommit[Any, int] = app.state.callbacks
    batches: list[list[str]] = []
    real = closing.close_finished

    def watched(runtime: Runtime, request_ids: Sequence[str]) -> dict[str, Status]:
        batches.append(list(request_ids))
        if len(batches) == 1:  # the first close runs while the others queue behind it
            wait_for("the other callbacks",
                     lambda: len(request_ids) + grouped.queued() == len(ids), every=0.02)
        return real(runtime, request_ids)

    monkeypatch.setattr(closing, "close_finished", watched)
    for row in rt.ledger.partner_requests(ids):
        partner.complete(str(row.subject_request_id), wait=False)
    wait_for("every request completed",
             lambda: all(r.status is Status.COMPLETED for r in rt.ledger.get_many(ids)), every=0.02)

    # The first callbacks to arrive (one, or a few arriving at once) are closed first;
    # all the others, queued meanwhile, by the one close after it.
    assert len(batches) == 2 and len(batches[0]) < len(ids), batches
    assert sorted(rid for b in batches for rid in b) == sorted(ids)
    # Each request certified once, and each callback answered 202 after its close.
    certified = [s.request_id for s in rt.ledger.steps(ids) if s.kind == DELIVERABLE_KIND]
    assert sorted(certified) == sorted(ids)
    wait_for("the partner's record of answers",
             lambda: len(partner.callbacks) >= len(ids), every=0.02)
    assert {a.status_code for a in partner.callbacks} == {202}


def test_a_request_whose_close_fails_fails_only_its_own_callback(
    served: tuple[Runtime, ReferencePartner, Any, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, partner, app, ids = served
    grouped: GroupCommit[Any, int] = app.state.callbacks
    poisoned = ids[2]
    real = closing.close_finished
    calls: list[list[str]] = []

    def failing(runtime: Runtime, request_ids: Sequence[str]) -> dict[str, Status]:
        calls.append(list(request_ids))
        if len(calls) == 1:
            wait_for("the other callbacks",
                     lambda: len(request_ids) + grouped.queued() == len(ids), every=0.02)
        if poisoned in request_ids:
            raise RuntimeError("the certificate store is full")
        return real(runtime, request_ids)

    monkeypatch.setattr(closing, "close_finished", failing)
    rows = {str(r.subject_request_id): r.request_id for r in rt.ledger.partner_requests(ids)}
    for srid in rows:
        partner.complete(srid, wait=False)
    others = [rid for rid in ids if rid != poisoned]
    wait_for("the other requests completed", lambda: all(
        r.status is Status.COMPLETED for r in rt.ledger.get_many(others)), every=0.02)
    wait_for("every callback answered",
             lambda: len(partner.callbacks) >= len(ids), every=0.02)

    assert rt.ledger.get(poisoned).status is Status.IN_PROGRESS  # its answer is recorded
    answered = {rows[a.subject_request_id]: a.status_code for a in partner.callbacks
                if a.status_code is not None}
    assert answered[poisoned] == 500  # the partner sends it again later
    assert {answered[rid] for rid in others} == {202}


def test_a_callback_sent_twice_into_one_group_is_recorded_and_certified_once(
    served: tuple[Runtime, ReferencePartner, Any, list[str]],
) -> None:
    """A partner that retries a callback (its first send timed out on its side) can have
    both copies in one group, beside a callback for a request it was never given: the
    answer is recorded once, the request certified and closed once, the stranger 404."""
    from connectors.opendsr import Status as PartnerAnswer
    from deployments.callbacks import _apply_group

    rt, _, _, ids = served
    [row] = [r for r in rt.ledger.partner_requests(ids) if r.request_id == ids[0]]
    done = PartnerAnswer(str(row.subject_request_id), "completed", results_count=0)
    stranger = PartnerAnswer("not-a-request-of-ours", "completed")

    codes = _apply_group(rt, [("adnet", done), ("adnet", stranger), ("adnet", done)])

    assert codes == [202, 404, 202]
    assert rt.ledger.get(ids[0]).status is Status.COMPLETED
    steps = rt.ledger.steps([ids[0]])
    assert [s.attempts for s in steps if s.kind == DELIVERABLE_KIND] == [1]
    [partner_step] = [s for s in steps if s.system == "adnet"]
    assert partner_step.status.value == "succeeded" and partner_step.attempts == 1
    assert {r.status for r in rt.ledger.get_many(ids[1:])} == {Status.IN_PROGRESS}
