"""The report's filters (`ReportFilter`, `filter_requests`) and its HTML page: the capped
requests table, its order and note, the per-system table and the line that says which
filter was applied. On hand-made frames shaped like `requests_frame`'s, so every row's
fate is known."""

from __future__ import annotations

import re
from datetime import date

import pandas as pd
import pytest
from pydantic import ValidationError

from dsrflow.model import Regime, RequestType, Status
from dsrflow.report import (
    DEADLINE_STATES,
    REQUEST_COLUMNS,
    STEP_COLUMNS,
    FilterError,
    ReportFilter,
    filter_requests,
    html_rows,
    make_filter,
    steps_of,
    systems_frame,
    to_html,
)


def request(
    n: int, *, status: str = "in_progress", regime: str | None = "pipl",
    type_: str | None = "erasure", state: str = "on_time",
    received: str = "2026-11-10T04:00:00+00:00", due: str | None = None,
    extended: str | None = None, completed: str | None = None,
) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(REQUEST_COLUMNS)
    row.update({
        "request_id": f"r{n:02d}", "ticket_id": f"T-{n:02d}", "type": type_, "regime": regime,
        "status": status, "received_at": received, "due_at": due, "extended_due_at": extended,
        "completed_at": completed, "deadline_state": state,
    })
    return row


def frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    result = pd.DataFrame(rows, columns=REQUEST_COLUMNS)
    for column in ("business_days_used", "business_days_left"):
        result[column] = result[column].astype("Int64")
    return result


@pytest.fixture
def mixed() -> pd.DataFrame:
    return frame([
        request(1, status="completed", state="completed_on_time", type_="access",
                received="2026-10-31T23:59:59+00:00"),
        request(2, status="in_progress", regime="gdpr", state="at_risk",
                received="2026-11-01T00:00:00+00:00"),
        request(3, status="awaiting_verification", regime="ccpa",
                state="awaiting_verification", type_="access",
                received="2026-11-15T12:00:00+00:00"),
        request(4, status="failed", regime="gdpr", state="overdue", type_="rectification",
                received="2026-11-30T23:59:59+00:00"),
        # 23:30 in New York on 30 November is 1 December in UTC.
        request(5, status="completed", state="completed_late",
                received="2026-11-30T23:30:00-05:00"),
        request(6, status="rejected", regime=None, type_=None, state="not_applicable",
                received="2026-12-01T00:00:00+00:00"),
        request(7, status="in_progress", regime="uk_gdpr", state="extended",
                received="2026-11-20T09:00:00+00:00"),
    ])


def ids(result: pd.DataFrame) -> list[str]:
    return result["request_id"].tolist()


# -- each dimension -------------------------------------------------------------------------
def test_no_filter_keeps_everything(mixed: pd.DataFrame) -> None:
    assert ids(filter_requests(mixed, None)) == ids(mixed)
    assert ids(filter_requests(mixed, ReportFilter())) == ids(mixed)
    assert ReportFilter().is_empty
    assert ReportFilter().describe() == "none (every request)"


@pytest.mark.parametrize(("values", "expected"), [
    ({"statuses": ["completed"]}, ["r01", "r05"]),
    ({"statuses": ["failed", "rejected"]}, ["r04", "r06"]),
    ({"regimes": ["gdpr"]}, ["r02", "r04"]),
    ({"regimes": ["uk_gdpr", "ccpa"]}, ["r03", "r07"]),
    ({"types": ["access"]}, ["r01", "r03"]),
    ({"types": ["rectification", "restriction"]}, ["r04"]),
    ({"deadline_states": ["overdue", "at_risk"]}, ["r02", "r04"]),
    ({"deadline_states": ["extended"]}, ["r07"]),
    ({"deadline_states": ["not_applicable"]}, ["r06"]),
])
def test_each_dimension(mixed: pd.DataFrame, values: dict[str, list[str]],
                        expected: list[str]) -> None:
    assert ids(filter_requests(mixed, make_filter(**values))) == expected


def test_dimensions_combine_and_values_within_one_are_alternatives(mixed: pd.DataFrame) -> None:
    chosen = ReportFilter(regimes=["gdpr", "pipl"], statuses=["completed", "failed"],
                          types=["erasure", "rectification"])
    assert ids(filter_requests(mixed, chosen)) == ["r04", "r05"]
    chosen = ReportFilter(regimes=["gdpr"], deadline_states=["on_time"])
    assert ids(filter_requests(mixed, chosen)) == []


def test_a_type_or_regime_filter_leaves_out_rejected_tickets_that_have_none(
    mixed: pd.DataFrame,
) -> None:
    every_type = ReportFilter(types=[t.value for t in RequestType])
    assert "r06" not in ids(filter_requests(mixed, every_type))


# -- dates ----------------------------------------------------------------------------------
def test_received_dates_are_inclusive_utc_days(mixed: pd.DataFrame) -> None:
    november = ReportFilter(received_from=date(2026, 11, 1), received_to=date(2026, 11, 30))
    # The first and the last second of November are in; the second before and after, and
    # a New York evening that is already December in UTC, are out.
    assert ids(filter_requests(mixed, november)) == ["r02", "r03", "r04", "r07"]
    assert november.describe() == "received 2026-11-01 to 2026-11-30 (UTC, inclusive)"


def test_one_day(mixed: pd.DataFrame) -> None:
    day = make_filter(received_from="2026-11-30", received_to="2026-11-30")
    assert ids(filter_requests(mixed, day)) == ["r04"]


def test_open_ended_date_bounds(mixed: pd.DataFrame) -> None:
    since = make_filter(received_from="2026-11-20")
    assert ids(filter_requests(mixed, since)) == ["r04", "r05", "r06", "r07"]
    assert since.describe() == "received on or after 2026-11-20 (UTC)"
    until = make_filter(received_to="2026-10-31")
    assert ids(filter_requests(mixed, until)) == ["r01"]
    assert until.describe() == "received on or before 2026-10-31 (UTC)"


def test_dates_and_values_together(mixed: pd.DataFrame) -> None:
    chosen = make_filter(statuses=["completed"], received_from="2026-11-01")
    assert ids(filter_requests(mixed, chosen)) == ["r05"]
    assert chosen.describe() == "status: completed · received on or after 2026-11-01 (UTC)"


# -- values ---------------------------------------------------------------------------------
def test_values_are_forgiving_about_case_commas_and_repeats() -> None:
    chosen = make_filter(statuses=["Completed,failed", " failed "], regimes="PIPL")
    assert chosen.statuses == ["completed", "failed"]
    assert chosen.regimes == ["pipl"]


@pytest.mark.parametrize(("values", "message"), [
    ({"statuses": ["complete"]},
     "unknown status 'complete'; allowed: " + ", ".join(s.value for s in Status)),
    ({"regimes": ["gdpr", "hipaa"]},
     "unknown regime 'hipaa'; allowed: " + ", ".join(r.value for r in Regime)),
    ({"types": ["deletion"]},
     "unknown type 'deletion'; allowed: " + ", ".join(t.value for t in RequestType)),
    ({"deadline_states": ["late"]},
     "unknown deadline state 'late'; allowed: " + ", ".join(DEADLINE_STATES)),
    ({"received_from": "2026-13-01"}, "received_from: '2026-13-01' is not a date (YYYY-MM-DD)"),
    ({"received_to": "01/11/2026"}, "received_to: '01/11/2026' is not a date (YYYY-MM-DD)"),
    ({"received_from": "2026-11-30", "received_to": "2026-11-01"},
     "received_from 2026-11-30 is after received_to 2026-11-01"),
])
def test_a_bad_value_says_what_is_allowed(values: dict[str, object], message: str) -> None:
    with pytest.raises(FilterError) as caught:
        make_filter(**values)
    assert str(caught.value) == message


def test_every_bad_value_is_reported_at_once() -> None:
    with pytest.raises(FilterError) as caught:
        make_filter(statuses=["x"], types=["y"])
    assert "unknown status 'x'" in str(caught.value)
    assert "unknown type 'y'" in str(caught.value)


def test_the_model_itself_refuses_unknown_values_and_fields() -> None:
    with pytest.raises(ValidationError):
        ReportFilter(statuses=["complete"])
    with pytest.raises(ValidationError):
        ReportFilter(status=["completed"])  # type: ignore[call-arg]


def test_every_state_the_report_knows_can_be_filtered_on() -> None:
    from dsrflow.charts import CLOSED_STATES, OPEN_STATES

    assert set(DEADLINE_STATES) == set(OPEN_STATES) | CLOSED_STATES


# -- the page -------------------------------------------------------------------------------
@pytest.fixture
def portfolio() -> pd.DataFrame:
    """Four open requests and five closed ones, in no useful order."""
    return frame([
        request(1, status="completed", state="completed_on_time",
                completed="2026-11-02T04:00:00+00:00"),
        request(2, state="on_time", due="2026-12-09T15:59:59+00:00"),
        request(3, status="completed", state="completed_late",
                completed="2026-11-19T04:00:00+00:00"),
        # Due first, but extended: it counts by the extended date.
        request(4, state="extended", due="2026-11-18T15:59:59+00:00",
                extended="2026-12-18T15:59:59+00:00"),
        request(5, state="overdue", due="2026-11-18T15:59:59+00:00"),
        request(6, status="rejected", state="not_applicable",
                received="2026-11-12T04:00:00+00:00"),
        request(7, state="unknown"),
        request(8, status="completed", state="completed_on_time",
                completed="2026-11-10T04:00:00+00:00"),
        request(9, state="at_risk", due="2026-11-23T15:59:59+00:00"),
    ])


ROW = re.compile(r"<td>(r\d\d)</td>")  # the request id cell of each row


def table_ids(page: str, table_id: str = "requests") -> list[str]:
    start = page.index(f'id="{table_id}"')
    return ROW.findall(page[start:page.index("</table>", start)])


def test_open_requests_come_first_most_urgent_first_then_the_latest_closed(
    portfolio: pd.DataFrame,
) -> None:
    assert ids(html_rows(portfolio, None)) == [
        "r05", "r09", "r02", "r04", "r07",  # open: due 18 Nov, 23 Nov, 9 Dec, 18 Dec, unknown
        "r03", "r06", "r08", "r01",  # closed: 19 Nov, (rejected, received) 12 Nov, 10, 2 Nov
    ]
    assert ids(html_rows(portfolio, 3)) == ["r05", "r09", "r02"]
    assert ids(html_rows(portfolio, 6)) == ["r05", "r09", "r02", "r04", "r07", "r03"]


def test_the_page_caps_the_requests_table_and_says_so(portfolio: pd.DataFrame) -> None:
    steps = pd.DataFrame([
        {**dict.fromkeys(STEP_COLUMNS), "request_id": rid, "system": "userdb", "kind": "sql",
         "status": "succeeded", "found": 1}
        for rid in ("r05", "r01", "r09")
    ], columns=STEP_COLUMNS)

    page = to_html(portfolio, steps, max_rows=6)

    assert table_ids(page) == ["r05", "r09", "r02", "r04", "r07", "r03"]
    assert "6 of 9 shown" in page
    assert "report.csv has all" in page
    # The steps follow the requests shown; every request still counts in the summary.
    assert "The steps of the requests shown: 2 of 3; steps.csv has all." in page
    assert "9 tickets" in page


def test_no_note_when_every_request_fits(portfolio: pd.DataFrame) -> None:
    page = to_html(portfolio, pd.DataFrame(columns=STEP_COLUMNS))
    assert len(table_ids(page)) == 9
    assert " shown: " not in page and "report.csv has all" not in page


def test_the_page_says_which_filter_was_applied(portfolio: pd.DataFrame) -> None:
    chosen = make_filter(statuses=["in_progress"], regimes=["pipl"],
                         received_from="2026-11-01")
    shown = filter_requests(portfolio, chosen)
    page = to_html(shown, pd.DataFrame(columns=STEP_COLUMNS), filter=chosen)
    assert ("Filter: status: in_progress · regime: pipl · received on or after 2026-11-01 "
            "(UTC)") in page
    assert page.index("Filter:") < page.index("<h2>Requests</h2>")
    assert "Filter: none (every request)" in to_html(portfolio,
                                                     pd.DataFrame(columns=STEP_COLUMNS))


def test_the_page_has_a_per_system_table_and_a_self_contained_row_filter(
    portfolio: pd.DataFrame,
) -> None:
    steps = pd.DataFrame([
        {**dict.fromkeys(STEP_COLUMNS), "request_id": "r01", "system": "userdb", "kind": "sql",
         "action": "erase", "status": "succeeded", "found": 4, "deleted": 4},
        {**dict.fromkeys(STEP_COLUMNS), "request_id": "r02", "system": "userdb", "kind": "sql",
         "action": "erase", "status": "failed", "found": 2, "deleted": 0},
    ], columns=STEP_COLUMNS)
    for column in ("found", "collected", "deleted", "anonymized", "retained", "remaining"):
        steps[column] = steps[column].astype("Int64")

    page = to_html(portfolio, steps)

    per_system = page[page.index("<h2>Per system</h2>"):page.index("<h2>Per request")]
    assert "<td>userdb</td><td>sql</td><td>2</td><td>6</td>" in per_system
    assert systems_frame(steps)["failed"].tolist() == [1]
    assert '<select data-filter="status">' in page
    assert '<tr data-status="overdue"' not in page  # attributes hold statuses, not states
    assert '<tr data-status="in_progress" data-regime="pipl" data-type="erasure">' in page
    assert "http://" not in page and "https://" not in page and "src=\"//" not in page


def test_steps_of_keeps_the_steps_of_the_requests_given(portfolio: pd.DataFrame) -> None:
    steps = pd.DataFrame({"request_id": ["r01", "r02", "zz"], "system": ["a", "b", "c"]})
    assert steps_of(steps, portfolio.head(1))["system"].tolist() == ["a"]
