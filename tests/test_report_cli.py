"""`dsrflow report` from the command line: the filters (repeatable, validated, exit 2 with
the allowed values), the CSV files they narrow, the HTML row cap, and `--request` for one
request's page. In process, with the Wishe data map and its sample tickets."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import Result

from dsrflow.identities import Identity
from dsrflow.model import Status
from tests.helpers import cli_config, flat, invoke, wishe_datamap

WISHE = Path(__file__).resolve().parent.parent / "examples" / "wishe"
TICKETS = sorted((WISHE / "tickets").glob("*.json"))
TICKET_IDS = [json.loads(p.read_text())["ticket_id"] for p in TICKETS]
INVALID_ID = "WSH-2026-11-0010"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

pytestmark = pytest.mark.usefixtures("cli_runtime")


@pytest.fixture
def config(tmp_path: Path) -> Path:
    doc = wishe_datamap(f"sqlite:///{tmp_path / 'wishe.db'}")  # never connected to here
    return cli_config(tmp_path, doc, "sqlite:///state/ledger.db")


@pytest.fixture
def request_ids(config: Path) -> dict[str, str]:
    """The sample tickets, submitted: ticket id -> request id."""
    result = invoke("submit", "--config", config, *TICKETS)
    assert result.exit_code == 0, result.output
    found = {}
    for line in result.stdout.splitlines():
        ticket = next((t for t in TICKET_IDS if t in line), None)
        match = UUID.search(line)
        if ticket and match:
            found[ticket] = match.group(0)
    assert set(found) == set(TICKET_IDS)
    return found


def md_tickets(result: Result) -> set[str]:
    assert result.exit_code == 0, result.output
    return {t for t in TICKET_IDS if f"| {t} |" in result.stdout}


def test_filters_by_status_regime_type_and_state(config: Path, request_ids: dict[str, str]
                                                 ) -> None:
    def report(*args: str) -> set[str]:
        return md_tickets(invoke("report", "--format", "md", "--config", config, *args))

    assert report("--status", "rejected") == {INVALID_ID}
    assert report("--status", "verified", "--status", "awaiting_verification") == (
        set(TICKET_IDS) - {INVALID_ID})
    assert report("--regime", "gdpr") == {"WSH-2026-11-0003", "WSH-2026-11-0008"}
    assert report("--regime", "ccpa", "--type", "portability") == {
        "WSH-2026-11-0002", "WSH-2026-11-0013"}
    assert report("--type", "erasure", "--type", "access") == {
        "WSH-2026-11-0001", "WSH-2026-11-0003", "WSH-2026-11-0009", "WSH-2026-11-0012"}
    assert report("--state", "not_applicable") == {INVALID_ID}
    assert report("--type", "erasure", "--status", "awaiting_verification") == {
        "WSH-2026-11-0009"}


def test_received_dates_are_utc_days_both_included(config: Path,
                                                   request_ids: dict[str, str]) -> None:
    def report(*args: str) -> set[str]:
        return md_tickets(invoke("report", "--format", "md", "--config", config, *args))

    # 0004: 5 Nov 06:30 UTC; 0005: 9 Nov; 0006: 08:02 in Shanghai, 00:02 UTC on 10 Nov.
    # 0007 is 12 Nov; 0002 was sent on the evening of 3 Nov in California: 4 Nov in UTC.
    assert report("--since", "2026-11-05", "--until", "2026-11-10") == {
        "WSH-2026-11-0004", "WSH-2026-11-0005", "WSH-2026-11-0006"}
    assert report("--until", "2026-11-03") == {"WSH-2026-11-0001"}
    assert report("--since", "2026-11-16", "--status", "verified") == {
        "WSH-2026-11-0008", "WSH-2026-11-0012", "WSH-2026-11-0013"}


@pytest.mark.parametrize(("args", "message"), [
    (["--status", "complete"], "unknown status 'complete'; allowed: received, "
     "awaiting_verification, awaiting_guardian, verified, in_progress, completed"),
    (["--regime", "hipaa"], "unknown regime 'hipaa'; allowed: pipl, gdpr, ccpa"),
    (["--type", "delete"], "unknown type 'delete'; allowed: access, portability, erasure"),
    (["--state", "late"], "unknown deadline state 'late'; allowed: on_time, extended"),
    (["--since", "2026-11-31"], "received_from: '2026-11-31' is not a date (YYYY-MM-DD)"),
    (["--until", "yesterday"], "received_to: 'yesterday' is not a date (YYYY-MM-DD)"),
    (["--since", "2026-11-20", "--until", "2026-11-01"],
     "received_from 2026-11-20 is after received_to 2026-11-01"),
])
def test_a_bad_filter_exits_2_and_says_what_is_allowed(
    config: Path, args: list[str], message: str
) -> None:
    result = invoke("report", "--config", config, *args)
    assert result.exit_code == 2
    assert message in flat(result.output)


def test_csv_files_follow_the_filter(config: Path, request_ids: dict[str, str],
                                     tmp_path: Path) -> None:
    out = tmp_path / "reports"
    result = invoke("report", "--out", out, "--config", config, "--regime", "gdpr",
                    "--html-rows", "1")
    assert result.exit_code == 0, result.output
    for name in ("report.csv", "steps.csv", "systems.csv", "report.html"):
        assert str(out / name) in flat(result.stdout)
    report = pd.read_csv(out / "report.csv")
    assert sorted(report["ticket_id"]) == ["WSH-2026-11-0003", "WSH-2026-11-0008"]
    assert set(report["datamap_version"]) == {"wishe-2026.11"}
    page = (out / "report.html").read_text()
    assert "Filter: regime: gdpr" in page
    assert "1 of 2 shown" in page


def test_html_to_a_file_shows_the_filter(config: Path, request_ids: dict[str, str],
                                         tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = invoke("report", "--format", "html", "--out", out, "--config", config,
                    "--status", "rejected")
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "Filter: status: rejected" in page
    assert INVALID_ID in page and "WSH-2026-11-0001" not in page


def test_one_request_as_markdown_by_default(config: Path, request_ids: dict[str, str]) -> None:
    request_id = request_ids["WSH-2026-11-0003"]
    result = invoke("report", "--request", request_id, "--config", config)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"# Request {request_id}"
    for fact in ("| ticket id | WSH-2026-11-0003 |", "| regime | gdpr |",
                 "| data-map version | wishe-2026.11 |", "| policy version | 2026-11 |",
                 f"| status | {Status.VERIFIED.value} |"):
        assert fact in lines, fact
    assert_no_identity(result.stdout)


def test_one_request_as_html_to_a_file(config: Path, request_ids: dict[str, str],
                                       tmp_path: Path) -> None:
    request_id = request_ids["WSH-2026-11-0001"]
    out = tmp_path / "request.html"
    result = invoke("report", "--request", request_id, "--format", "html", "--out", out,
                    "--config", config)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert page.startswith("<!doctype html>")
    assert f"<h1>Request {request_id}</h1>" in page
    assert "wishe-2026.11" in page
    assert_no_identity(page)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--request", "00000000-0000-4000-8000-000000000000"], 1,
     "no request 00000000-0000-4000-8000-000000000000"),
    (["--request", "x", "--format", "csv"], 2, "--format must be html or md with --request"),
    (["--request", "x", "--status", "completed"], 2,
     "--request shows one request; the filters do not apply to it"),
    (["--format", "pdf"], 2, "--format must be csv, html or md"),
])
def test_request_option_mistakes(config: Path, request_ids: dict[str, str], args: list[str],
                                 code: int, message: str) -> None:
    result = invoke("report", "--config", config, *args)
    assert result.exit_code == code
    assert message in flat(result.output)


def assert_no_identity(text: str) -> None:
    for path in TICKETS:
        for given in json.loads(path.read_text())["identities"]:
            if given["type"] == "user_id":
                continue  # "5", "7": too short to look for
            spellings = {given["value"].strip()}
            # A value intake rejects has no normalized spellings, only the one typed.
            with contextlib.suppress(ValueError):
                spellings |= set(Identity.model_validate(given).variants())
            for spelling in spellings:
                assert spelling not in text, spelling
