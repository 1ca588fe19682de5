"""Deadline extensions on SQLite and PostgreSQL, on a fixed clock: what each regime allows,
what is refused and why, the audit trail, a property over random dates, and the
`dsrflow extend` command."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dsrflow.crypto import Keyring, new_key
from dsrflow.deadlines import RULES, Deadlines
from dsrflow.ledger import ExtensionRefused, Ledger, UnknownRequest
from dsrflow.ledger import store as ledger_store
from dsrflow.ledger.schema import audit_events
from dsrflow.model import Regime, Status
from dsrflow.sla import deadline_state
from dsrflow.tickets import Ticket, Verification
from pipeline.runtime import get_runtime
from tests import sqlworld
from tests.helpers import cli_config, invoke, ticket

DUBLIN = ZoneInfo("Europe/Dublin")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")
SHANGHAI = ZoneInfo("Asia/Shanghai")
DEADLINES = Deadlines()
REASON = "the request covers eleven systems and two partners"


def local(tz: ZoneInfo, y: int, m: int, d: int, hh: int = 12, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, ss, tzinfo=tz).astimezone(UTC)


def end_of(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(23, 59, 59), tzinfo=tz).astimezone(UTC)


def make_ticket(
    ticket_id: str, regime: Regime, received: datetime, verified: bool = True
) -> Ticket:
    """A ticket with fixed times, copied in past the 'not in the future' checks (which read
    the wall clock; the property below draws receipts up to the end of 2026)."""
    doc: dict[str, Any] = ticket(
        ticket_id, "erasure", [{"type": "email", "value": f"{ticket_id.lower()}@example.org"}],
        regime=regime.value,
    )
    verified_at = received + timedelta(minutes=5) if verified else None
    return Ticket.model_validate(doc).model_copy(update={
        "received_at": received,
        "verification": Verification.model_construct(method="sms_code",
                                                     verified_at=verified_at),
    })


def accept(ledger: Ledger, ticket_id: str, regime: Regime, received: datetime,
           verified: bool = True) -> str:
    request_id, created = ledger.accept(
        make_ticket(ticket_id, regime, received, verified), "dm", "pol"
    )
    assert created
    return request_id


# GDPR, received Tue 1 Sep 2026 in Dublin: due Thu 1 Oct, at most Tue 1 Dec.
GDPR_RECEIVED = local(DUBLIN, 2026, 9, 1, 10)
GDPR_DUE = end_of(date(2026, 10, 1), DUBLIN)
GDPR_CAP = end_of(date(2026, 12, 1), DUBLIN)
IN_FIRST_PERIOD = local(DUBLIN, 2026, 9, 20, 9)

# CCPA, received Tue 1 Sep 2026 in Los Angeles: due Fri 16 Oct, at most Mon 30 Nov.
CCPA_RECEIVED = local(LOS_ANGELES, 2026, 9, 1, 10)
CCPA_DUE = end_of(date(2026, 10, 16), LOS_ANGELES)
CCPA_CAP = end_of(date(2026, 11, 30), LOS_ANGELES)


# -- what is allowed ----------------------------------------------------------------------------
def test_gdpr_extension_defaults_to_the_cap_and_keeps_the_original_due_date(
    ledger: Ledger,
) -> None:
    request_id = accept(ledger, "T-gdpr", Regime.GDPR, GDPR_RECEIVED)
    assert ledger.get(request_id).due_at == GDPR_DUE

    new_due = ledger.extend(request_id, f"  {REASON} ", at=IN_FIRST_PERIOD)

    assert new_due == GDPR_CAP
    record = ledger.get(request_id)
    assert record.due_at == GDPR_DUE  # the first period, for the record
    assert record.extended_due_at == GDPR_CAP == record.effective_due_at
    assert record.extension_notice_at == IN_FIRST_PERIOD
    assert record.extension_reason == REASON
    assert deadline_state(record, DEADLINES, local(DUBLIN, 2026, 10, 20), 3) == "extended"
    assert ledger.verify_audit_chain() is None


def test_the_extension_is_audited_in_the_chain(ledger: Ledger) -> None:
    request_id = accept(ledger, "T-audit", Regime.GDPR, GDPR_RECEIVED)
    until = date(2026, 11, 2)

    ledger.extend(request_id, REASON, until=until, at=IN_FIRST_PERIOD)

    with ledger.engine.connect() as conn:
        [detail] = conn.execute(
            sa.select(audit_events.c.detail).where(
                audit_events.c.request_id == request_id,
                audit_events.c.event == "request.extended",
            )
        ).scalars()
    assert detail == {
        "from": GDPR_DUE.isoformat(),
        "to": end_of(until, DUBLIN).isoformat(),
        "notice_at": IN_FIRST_PERIOD.isoformat(),
        "reason": REASON,
    }
    assert ledger.verify_audit_chain() is None


def test_ccpa_extension_up_to_90_days_and_not_one_day_more(ledger: Ledger) -> None:
    request_id = accept(ledger, "T-ccpa", Regime.CCPA, CCPA_RECEIVED)
    assert ledger.get(request_id).due_at == CCPA_DUE
    at = local(LOS_ANGELES, 2026, 10, 1)

    with pytest.raises(ExtensionRefused, match="at most until 2026-11-30"):
        ledger.extend(request_id, REASON, until=date(2026, 12, 1), at=at)
    assert ledger.get(request_id).extended_due_at is None

    assert ledger.extend(request_id, REASON, until=date(2026, 11, 30), at=at) == CCPA_CAP


def test_ccpa_can_be_extended_while_awaiting_verification(ledger: Ledger) -> None:
    request_id = accept(ledger, "T-ccpa-wait", Regime.CCPA, CCPA_RECEIVED, verified=False)
    assert ledger.get(request_id).status is Status.AWAITING_VERIFICATION

    ledger.extend(request_id, REASON, until=date(2026, 11, 2), at=local(LOS_ANGELES, 2026, 9, 5))

    record = ledger.get(request_id)
    # Past the first 45 days: extended, not overdue.
    assert deadline_state(record, DEADLINES, local(LOS_ANGELES, 2026, 10, 20), 3) == "extended"
    assert deadline_state(record, DEADLINES, local(LOS_ANGELES, 2026, 11, 3), 3) == "overdue"


def test_two_extensions_within_the_first_period_up_to_the_cap(ledger: Ledger) -> None:
    request_id = accept(ledger, "T-twice", Regime.GDPR, GDPR_RECEIVED)

    first = ledger.extend(request_id, REASON, until=date(2026, 10, 30), at=IN_FIRST_PERIOD)
    second = ledger.extend(request_id, "a partner needs more time", at=GDPR_DUE)

    assert (first, second) == (end_of(date(2026, 10, 30), DUBLIN), GDPR_CAP)
    record = ledger.get(request_id)
    assert record.effective_due_at == GDPR_CAP
    assert record.extension_notice_at == GDPR_DUE
    assert record.extension_reason == "a partner needs more time"
    with pytest.raises(ExtensionRefused, match="not later than the current due date 2026-12-01"):
        ledger.extend(request_id, REASON, at=GDPR_DUE)
    assert ledger.verify_audit_chain() is None


def test_uk_gdpr_extension_counts_from_verification(ledger: Ledger) -> None:
    london = ZoneInfo("Europe/London")
    request_id = accept(ledger, "T-uk", Regime.UK_GDPR, local(london, 2026, 4, 1, 9),
                        verified=False)
    with pytest.raises(ExtensionRefused, match="clock has not started"):
        ledger.extend(request_id, REASON, at=local(london, 2026, 4, 2))

    ledger.mark_verified(request_id, "id_document", local(london, 2026, 4, 25, 10))

    # From Sat 25 Apr: three months is Sat 25 Jul -> Mon 27 Jul.
    assert ledger.extend(request_id, REASON, at=local(london, 2026, 5, 1)) == end_of(
        date(2026, 7, 27), london
    )


# -- what is refused, and why ------------------------------------------------------------------
def test_pipl_is_never_extended(ledger: Ledger) -> None:
    request_id = accept(ledger, "T-pipl", Regime.PIPL, local(SHANGHAI, 2026, 2, 10, 10))
    with pytest.raises(ExtensionRefused) as refused:
        ledger.extend(request_id, REASON, until=date(2026, 3, 20),
                      at=local(SHANGHAI, 2026, 2, 12))
    message = str(refused.value)
    assert "15 working days" in message and "no extension" in message
    assert "2026-03-09" in message  # its due date
    assert ledger.get(request_id).extended_due_at is None


def test_no_extension_after_the_first_period(ledger: Ledger) -> None:
    request_id = accept(ledger, "T-late", Regime.GDPR, GDPR_RECEIVED)
    # One second after the end of 1 Oct in Dublin.
    with pytest.raises(ExtensionRefused, match=r"within the first period.*2026-10-01"):
        ledger.extend(request_id, REASON, at=GDPR_DUE + timedelta(seconds=1))


def test_no_second_extension_after_the_first_period(ledger: Ledger) -> None:
    request_id = accept(ledger, "T-late2", Regime.GDPR, GDPR_RECEIVED)
    ledger.extend(request_id, REASON, until=date(2026, 10, 30), at=IN_FIRST_PERIOD)
    with pytest.raises(ExtensionRefused, match="first period"):
        ledger.extend(request_id, REASON, at=local(DUBLIN, 2026, 10, 10))
    assert ledger.get(request_id).effective_due_at == end_of(date(2026, 10, 30), DUBLIN)


def test_not_past_the_cap(ledger: Ledger) -> None:
    request_id = accept(ledger, "T-cap", Regime.GDPR, GDPR_RECEIVED)
    with pytest.raises(ExtensionRefused, match=r"2026-12-02 is past .* at most until 2026-12-01"):
        ledger.extend(request_id, REASON, until=date(2026, 12, 2), at=IN_FIRST_PERIOD)
    assert ledger.extend(request_id, REASON, until=date(2026, 12, 1), at=IN_FIRST_PERIOD) == (
        GDPR_CAP
    )


@pytest.mark.parametrize("until", [date(2026, 10, 1), date(2026, 9, 30), date(2026, 9, 1)])
def test_not_earlier_than_or_equal_to_the_current_due_date(ledger: Ledger, until: date) -> None:
    request_id = accept(ledger, "T-early", Regime.GDPR, GDPR_RECEIVED)
    with pytest.raises(ExtensionRefused, match=f"{until} is not later than .* 2026-10-01"):
        ledger.extend(request_id, REASON, until=until, at=IN_FIRST_PERIOD)


@pytest.mark.parametrize("reason", ["", "   ", "\n\t"])
def test_a_reason_is_required(ledger: Ledger, reason: str) -> None:
    request_id = accept(ledger, "T-why", Regime.GDPR, GDPR_RECEIVED)
    with pytest.raises(ExtensionRefused, match="reason"):
        ledger.extend(request_id, reason, at=IN_FIRST_PERIOD)


@pytest.mark.parametrize("final", [Status.COMPLETED, Status.REFUSED])
def test_a_closed_request_is_not_extended(ledger: Ledger, final: Status) -> None:
    request_id = accept(ledger, f"T-{final}", Regime.GDPR, GDPR_RECEIVED)
    if final is Status.COMPLETED:
        ledger.transition(request_id, Status.IN_PROGRESS)
    ledger.transition(request_id, final)
    with pytest.raises(ExtensionRefused, match=f"is {final}: only an open request"):
        ledger.extend(request_id, REASON, at=IN_FIRST_PERIOD)


def test_a_deadline_that_could_not_be_computed_is_not_extended(ledger: Ledger) -> None:
    # GDPR never lacks a calendar; a missing one is written in by hand here.
    request_id = accept(ledger, "T-nocal", Regime.GDPR, GDPR_RECEIVED)
    with ledger.engine.begin() as conn:
        conn.execute(sa.update(ledger_store.requests).values(
            due_at=None, deadline_error="no calendar for 2026"))
    with pytest.raises(ExtensionRefused, match="no due date to extend: no calendar for 2026"):
        ledger.extend(request_id, REASON, at=IN_FIRST_PERIOD)


def test_an_unknown_request(ledger: Ledger) -> None:
    with pytest.raises(UnknownRequest):
        ledger.extend("00000000-0000-4000-8000-000000000000", REASON, at=IN_FIRST_PERIOD)


# -- completion against the extended date --------------------------------------------------------
@pytest.mark.parametrize(
    ("completed", "expected"),
    [
        # After the original due date, before the extended one.
        (local(DUBLIN, 2026, 10, 20), "completed_on_time"),
        (end_of(date(2026, 10, 30), DUBLIN), "completed_on_time"),
        (end_of(date(2026, 10, 30), DUBLIN) + timedelta(seconds=1), "completed_late"),
    ],
)
def test_completion_is_judged_against_the_extended_date(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, completed: datetime, expected: str
) -> None:
    request_id = accept(ledger, "T-done", Regime.GDPR, GDPR_RECEIVED)
    ledger.extend(request_id, REASON, until=date(2026, 10, 30), at=IN_FIRST_PERIOD)
    monkeypatch.setattr(ledger_store, "now", lambda: completed)
    ledger.transition(request_id, Status.IN_PROGRESS)
    ledger.transition(request_id, Status.COMPLETED)

    record = ledger.get(request_id)
    assert record.completed_at == completed
    assert deadline_state(record, DEADLINES, completed + timedelta(days=90), 3) == expected
    assert ledger.verify_audit_chain() is None


# -- property: extend succeeds iff the date is allowed ------------------------------------------
@pytest.fixture(scope="module")
def quick_ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    """One SQLite ledger for every example: migrating per example would dominate."""
    path = tmp_path_factory.mktemp("extensions") / "ledger.db"
    ledger = Ledger(f"sqlite:///{path}", Keyring(token_key=new_key(), encryption_key=new_key()),
                    DEADLINES)
    ledger.migrate()
    yield ledger
    ledger.dispose()


_count = iter(range(10**9))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    regime=st.sampled_from(list(Regime)),
    received=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2026, 12, 31),
                          timezones=st.just(UTC)),
    offsets=st.lists(st.integers(min_value=-10, max_value=130), min_size=1, max_size=3),
)
def test_extend_succeeds_iff_the_date_is_within_the_cap_and_later_than_now_due(
    quick_ledger: Ledger, regime: Regime, received: datetime, offsets: list[int]
) -> None:
    request_id = accept(quick_ledger, f"P-{next(_count)}", regime, received)
    record = quick_ledger.get(request_id)
    tz = RULES[regime].timezone
    start = DEADLINES.clock_start(regime, received, record.verified_at)
    assert start is not None
    cap = DEADLINES.extension_cap(regime, start)
    cap_day = DEADLINES.local_date(regime, cap) if cap is not None else None
    # Within the first period: an hour after the clock started.
    at = start + timedelta(hours=1)
    current = record.due_at  # None: a Chinese year not published yet
    for offset in offsets:
        until = DEADLINES.local_date(regime, received) + timedelta(days=offset)
        allowed = (
            current is not None
            and cap_day is not None
            and until <= cap_day
            and until > DEADLINES.local_date(regime, current)
        )
        try:
            new_due = quick_ledger.extend(request_id, REASON, until=until, at=at)
        except ExtensionRefused:
            assert not allowed, (until, cap_day, current)
            event(f"{regime}: refused")
            continue
        assert allowed, (until, cap_day, current)
        event(f"{regime}: extended")
        assert new_due == datetime.combine(until, time(23, 59, 59), ZoneInfo(tz)).astimezone(UTC)
        assert quick_ledger.get(request_id).effective_due_at == new_due
        current = new_due
    assert quick_ledger.get(request_id).effective_due_at == current


# -- the command line ---------------------------------------------------------------------------
@pytest.fixture
def config(tmp_path: Path, cli_runtime: None) -> Path:
    return cli_config(tmp_path, sqlworld.datamap_doc(f"sqlite:///{tmp_path / 'userdb.sqlite'}"))


def submit(config: Path, ticket_id: str, regime: str, received: datetime) -> str:
    doc = ticket(ticket_id, "erasure", [{"type": "email", "value": "cli.subject@example.org"}],
                 regime=regime)
    doc["received_at"] = received.isoformat()
    doc["verification"]["verified_at"] = (received + timedelta(minutes=5)).isoformat()
    path = config.parent / f"{ticket_id}.json"
    path.write_text(json.dumps(doc))
    result = invoke("submit", "--config", config, path)
    assert result.exit_code == 0, result.output
    found = get_runtime().ledger.find_by_ticket(ticket_id)
    assert found is not None
    return found


def test_cli_extend_prints_the_new_due_date_and_the_notice(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_id = submit(config, "T-cli", "gdpr", GDPR_RECEIVED)
    monkeypatch.setattr(ledger_store, "now", lambda: IN_FIRST_PERIOD)

    result = invoke("extend", request_id, "--reason", REASON, "--until", "2026-11-02",
                    "--config", config)

    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    # Dublin is on UTC+0 in November.
    assert (f"request {request_id} extended: due end of 2026-11-02 Europe/Dublin "
            "(2026-11-02 23:59:59 UTC); notice given 2026-09-20") in out
    record = get_runtime().ledger.get(request_id)
    assert record.extended_due_at == end_of(date(2026, 11, 2), DUBLIN)
    assert record.extension_reason == REASON
    # `status` shows the date that binds now, not the first period's.
    shown = invoke("status", request_id, "--config", config)
    assert shown.exit_code == 0, shown.output
    assert "2026-11-02" in shown.stdout
    assert record.due_at is not None and record.due_at.date().isoformat() not in shown.stdout


def test_cli_extend_refused_is_red_on_stderr_and_exit_1(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    request_id = submit(config, "T-cli-cap", "gdpr", GDPR_RECEIVED)
    monkeypatch.setattr(ledger_store, "now", lambda: IN_FIRST_PERIOD)

    result = invoke("extend", request_id, "--reason", REASON, "--until", "2026-12-02",
                    "--config", config)

    assert result.exit_code == 1
    assert "at most until 2026-12-01" in " ".join(result.stderr.split())
    assert "2026-12-01" not in result.stdout
    assert get_runtime().ledger.get(request_id).extended_due_at is None


def test_cli_extend_of_pipl_is_refused(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    request_id = submit(config, "T-cli-pipl", "pipl", local(SHANGHAI, 2026, 2, 10, 10))
    monkeypatch.setattr(ledger_store, "now", lambda: local(SHANGHAI, 2026, 2, 12))

    result = invoke("extend", request_id, "--reason", REASON, "--config", config)

    assert result.exit_code == 1
    assert "15 working days" in " ".join(result.stderr.split())


def test_cli_extend_of_an_unknown_request_exits_2(config: Path) -> None:
    result = invoke("extend", "00000000-0000-4000-8000-000000000000", "--reason", REASON,
                    "--config", config)
    assert result.exit_code == 2
    assert "no request 00000000-0000-4000-8000-000000000000" in result.stderr


def test_cli_extend_needs_a_reason_and_a_real_date(config: Path) -> None:
    missing = invoke("extend", "00000000-0000-4000-8000-000000000000", "--config", config)
    assert missing.exit_code == 2 and "--reason" in missing.output
    bad = invoke("extend", "00000000-0000-4000-8000-000000000000", "--reason", REASON,
                 "--until", "1/12/2026", "--config", config)
    assert bad.exit_code == 2 and re.search(r"YYYY-MM-DD|%Y-%m-%d", bad.output)


def test_cli_help_warns_against_personal_data_in_the_reason() -> None:
    result = invoke("extend", "--help")
    assert result.exit_code == 0
    assert "no personal data" in " ".join(result.output.split())


# -- the deadline report follows the extended date -----------------------------------------------
def test_alerts_carry_the_extended_due_date_and_fire_again_for_it(ledger: Ledger) -> None:
    from tasks.deadlines import STATE_ORDER, assess, due_for_alert

    request_id = accept(ledger, "T-alert", Regime.GDPR, GDPR_RECEIVED)
    # Tue 29 Sep: 30 Sep and 1 Oct left.
    before = assess(ledger.all(), DEADLINES, local(DUBLIN, 2026, 9, 29), 3)
    [alert] = before.alerting
    assert (alert.state, alert.due_at) == ("at_risk", GDPR_DUE)
    previous = {request_id: (alert.state, alert.due, before.at)}

    ledger.extend(request_id, REASON, until=date(2026, 10, 30), at=local(DUBLIN, 2026, 9, 29))

    later = assess(ledger.all(), DEADLINES, local(DUBLIN, 2026, 10, 5), 3)
    assert later.counts == {"extended": 1} and later.alerting == []
    # Wed 28 Oct: 29 and 30 Oct left; a new due date, so a new alert.
    near = assess(ledger.all(), DEADLINES, local(DUBLIN, 2026, 10, 28), 3)
    [again] = near.alerting
    assert (again.state, again.due_at) == ("at_risk", end_of(date(2026, 10, 30), DUBLIN))
    assert due_for_alert(near, previous) == [again]
    assert "extended" in STATE_ORDER
