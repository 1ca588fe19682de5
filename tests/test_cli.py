"""The `dsrflow` command line, in process: data map check and draft, key files, and the
ledger commands (submit, status, report, audit) against the Wishe world. `run` and `demo`
start Prefect and are tested elsewhere."""

from __future__ import annotations

import contextlib
import io
import json
import re
import stat
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner, Result

from dsrflow.report import REQUEST_COLUMNS, STEP_COLUMNS
from dsrflow.settings import read_key_file
from entrypoints.cli import app
from examples.wishe.generate import build_world
from examples.wishe.subjects import SUBJECTS
from pipeline.runtime import get_runtime, set_runtime
from tests.helpers import cli_config, flat, invoke, wishe_datamap

WISHE = Path(__file__).resolve().parent.parent / "examples" / "wishe"
TICKETS = sorted((WISHE / "tickets").glob("*.json"))
TICKET_IDS = [json.loads(p.read_text())["ticket_id"] for p in TICKETS]
INVALID_ID = "WSH-2026-11-0010"

pytestmark = pytest.mark.usefixtures("cli_runtime")


@pytest.fixture(scope="module")
def world_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('wishe') / 'wishe.db'}"
    build_world(url, users=len(SUBJECTS) + 4)
    return url


@pytest.fixture
def config(tmp_path: Path, world_url: str) -> Path:
    """A dsrflow.yaml with everything relative to its own folder."""
    return cli_config(tmp_path, wishe_datamap(world_url), "sqlite:///state/ledger.db")


@pytest.fixture
def submitted(config: Path) -> Result:
    result = invoke("submit", "--config", config, *TICKETS)
    assert result.exit_code == 0, result.output
    return result


def identity_spellings() -> list[str]:
    """Every identity value the Wishe tickets carry, as typed and normalized."""
    from dsrflow.identities import Identity

    out: set[str] = set()
    for path in TICKETS:
        for given in json.loads(path.read_text())["identities"]:
            if given["type"] in ("user_id",):
                continue  # "5", "7": too short to scan for
            out.add(given["value"].strip())
            with contextlib.suppress(ValueError):
                out.update(Identity.model_validate(given).variants())
    return sorted(out)


# -- datamap --------------------------------------------------------------------------------
def test_datamap_check_accepts_the_wishe_map() -> None:
    result = invoke("datamap", "check", WISHE / "datamap.yaml")
    assert result.exit_code == 0, result.output
    assert "ok" in result.output
    assert "wishe-2026.11" in result.output


def test_datamap_check_names_the_broken_field(tmp_path: Path) -> None:
    text = (WISHE / "datamap.yaml").read_text()
    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("birthday: {category: profile", "birthday: {category: profiel"))

    result = invoke("datamap", "check", broken)

    assert result.exit_code == 1
    out = flat(result.output)
    assert "systems.userdb.tables.users.columns.birthday.category" in out
    assert "profiel" in out


def test_datamap_check_of_a_missing_file_fails(tmp_path: Path) -> None:
    result = invoke("datamap", "check", tmp_path / "nope.yaml")
    assert result.exit_code == 1
    assert "not found" in result.output


def test_datamap_draft_of_the_wishe_world_passes_check(tmp_path: Path, world_url: str) -> None:
    out = tmp_path / "draft.yaml"

    result = invoke("datamap", "draft", "--db", world_url, "--out", out)

    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in flat(result.output)
    doc = yaml.safe_load(out.read_text())
    assert set(doc["systems"]["userdb"]["tables"]) == {
        "users", "third_party_logins", "trusted_devices", "location_history", "contacts",
        "face_templates", "uploads", "comments", "browsing_history", "follows", "orders",
    }
    check = invoke("datamap", "check", out)
    assert check.exit_code == 0, check.output


def test_datamap_draft_to_stdout(world_url: str) -> None:
    result = invoke("datamap", "draft", "--db", world_url, "--system", "wishe")
    assert result.exit_code == 0, result.output
    assert "wishe" in yaml.safe_load(result.stdout)["systems"]


# -- keys -----------------------------------------------------------------------------------
def test_keys_new_writes_a_private_file_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = invoke("keys", "new", path)
    assert first.exit_code == 0, first.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = read_key_file(path)
    assert set(keys) == {"token_key", "encryption_key", "signing_key"}
    # The keys themselves are never printed.
    assert not any(k in first.output for k in keys.values())

    second = invoke("keys", "new", path)
    assert second.exit_code == 1
    assert "refusing to overwrite" in flat(second.output)
    assert read_key_file(path) == keys


# -- ledger commands ------------------------------------------------------------------------
def test_submit_lists_every_ticket_and_rejects_the_invalid_one(
    submitted: Result, config: Path
) -> None:
    lines = submitted.stdout.splitlines()
    for ticket_id in TICKET_IDS:
        [line] = [ln for ln in lines if ticket_id in ln]
        if ticket_id == INVALID_ID:
            assert "rejected" in line
            assert "identities.0" in line  # the reason names the field
        elif ticket_id == "WSH-2026-11-0009":
            assert "awaiting_verification" in line
        else:
            assert re.search(r"\bverified\b", line), line
    # The ledger lives where the config said, relative to the config file.
    assert (config.parent / "state" / "ledger.db").exists()


def test_submitting_again_records_nothing_twice(submitted: Result, config: Path) -> None:
    again = invoke("submit", "--config", config, *TICKETS[:3])
    assert again.exit_code == 0, again.output
    lines = again.stdout.splitlines()
    assert sum("already on record as request" in ln for ln in lines) == 3
    assert lines[-1] == "3 files: 3 already on record"
    first_ids = set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                               submitted.stdout))
    again_ids = set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                               again.stdout))
    assert again_ids <= first_ids


def test_submit_reads_a_ticket_from_stdin(config: Path) -> None:
    result = CliRunner().invoke(
        app, ["submit", "--config", str(config), "-"], input=TICKETS[1].read_bytes(),
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    [line] = [ln for ln in result.stdout.splitlines() if TICKET_IDS[1] in ln]
    assert "verified" in line


def test_submit_of_a_missing_file_is_a_clear_error(config: Path, tmp_path: Path) -> None:
    """A mistyped file name deserves a message naming it, not a traceback."""
    result = invoke("submit", "--config", config, TICKETS[0], tmp_path / "missing.json")
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "missing.json" in flat(result.output)


SECRET_EMAIL = "secret.person@example.com"


def _broken_tickets(folder: Path) -> dict[str, Path]:
    """Files that crashed `dsrflow submit` on main (and, with the traceback, every file
    after them), or that it accepted against docs/tickets.md."""
    base = json.loads(TICKETS[2].read_text())  # WSH-2026-11-0003, an erasure
    docs: dict[str, bytes] = {
        "huge-integer": b'{"ticket_id": "BAD-1", "n": ' + b"7" * 4301 + b"}",
        "year-1": json.dumps({**base, "ticket_id": "BAD-2", "verification": None,
                              "received_at": "0001-01-01T00:00:00+01:00"}).encode(),
        "epoch": json.dumps({**base, "ticket_id": "BAD-3", "received_at": 1762247147}).encode(),
        "key-column": json.dumps({**base, "ticket_id": "BAD-4", "type": "rectification",
                                  "corrections": {"userdb.users.id": "8"}}).encode(),
        "traversal": json.dumps({**base, "ticket_id": "BAD-5", "identities": [
            {"type": "email", "value": SECRET_EMAIL},
            {"type": "user_id", "value": "../../etc"}]}).encode(),
    }
    paths = {}
    for name, body in docs.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_bytes(body)
    return paths


def test_submit_reports_every_file_and_goes_on_whatever_happens(
    config: Path, tmp_path: Path
) -> None:
    broken = _broken_tickets(tmp_path)
    files = [TICKETS[0], *broken.values(), tmp_path / "missing.json", TICKETS[1]]

    result = invoke("submit", "--config", config, *files)

    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1  # one file was not recorded
    lines = result.stdout.splitlines()
    assert len(lines) == len(files) + 1
    for path, line in zip(files, lines, strict=False):
        assert line.startswith(f"{path}: "), line
    assert f"ticket {TICKET_IDS[0]}: accepted as request" in lines[0]
    reasons = {
        "huge-integer": "not valid JSON: a number too long to read",
        "year-1": "received_at: before 2000-01-01",
        "epoch": "received_at: must be an RFC 3339",
        "key-column": "corrections.userdb.users.id: a key column (the primary key)",
        "traversal": "identities.1: user_id: not a user id",
    }
    for line, (name, reason) in zip(lines[1:], reasons.items(), strict=False):
        assert ": rejected: " in line and reason in line, (name, line)
    assert "missing.json: not recorded: unreadable (No such file or directory)" in lines[-3]
    assert f"ticket {TICKET_IDS[1]}: accepted as request" in lines[-2]  # after all that
    assert lines[-1] == f"{len(files)} files: 2 accepted, 5 rejected, 1 not recorded"
    assert SECRET_EMAIL not in result.output and "../../etc" not in result.output
    # Every readable file is in the ledger: the two requests and the five rejections.
    records = get_runtime().ledger.all()
    assert sorted(r.status.value for r in records) == [
        "rejected"] * 5 + ["verified"] * 2


def test_submit_exits_0_when_every_file_is_recorded_even_rejected(
    config: Path, tmp_path: Path
) -> None:
    broken = _broken_tickets(tmp_path)
    result = invoke("submit", "--config", config, *broken.values())
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "5 files: 5 rejected"


def test_submit_goes_on_when_the_ledger_fails_for_one_file(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dsrflow import intake

    real = intake.submit

    def flaky(ledger: Any, datamap: Any, raw: bytes, **kw: Any) -> Any:
        if b"WSH-2026-11-0002" in raw:
            raise RuntimeError(SECRET_EMAIL)  # recording even the rejection failed
        return real(ledger, datamap, raw, **kw)

    monkeypatch.setattr(intake, "submit", flaky)
    result = invoke("submit", "--config", config, *TICKETS[:3])

    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[1] == f"{TICKETS[1]}: not recorded: internal error: RuntimeError"
    assert "accepted as request" in lines[0] and "accepted as request" in lines[2]
    assert SECRET_EMAIL not in result.output


def test_submit_without_keys_is_a_clear_error(tmp_path: Path, config: Path) -> None:
    (tmp_path / "keys.json").unlink()
    result = invoke("submit", "--config", config, TICKETS[0])
    assert result.exit_code == 2
    assert "key file not found" in flat(result.output)


def test_submit_with_a_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    result = invoke("submit", "--config", tmp_path / "nope.yaml", TICKETS[0])
    assert result.exit_code == 2
    assert "config file not found" in flat(result.output)


def test_status_lists_every_ticket(submitted: Result, config: Path) -> None:
    result = invoke("status", "--config", config)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for ticket_id in TICKET_IDS:
        assert any(ticket_id in ln for ln in lines), ticket_id
    [invalid] = [ln for ln in lines if INVALID_ID in ln]
    assert "rejected" in invalid
    assert "not_applicable" in invalid
    for spelling in identity_spellings():
        assert spelling not in result.output


def test_status_of_one_request(submitted: Result, config: Path) -> None:
    [line] = [ln for ln in submitted.stdout.splitlines() if "WSH-2026-11-0003" in ln]
    request_id = re.search(r"[0-9a-f]{8}-[0-9a-f-]{27}", line)
    assert request_id is not None
    result = invoke("status", request_id.group(0), "--config", config)
    assert result.exit_code == 0, result.output
    assert "WSH-2026-11-0003" in result.stdout
    assert "WSH-2026-11-0001" not in result.stdout
    assert "system" in result.stdout  # the (still empty) steps table


def _status_line(config: Path, ticket_id: str) -> str:
    result = invoke("status", "--config", config)
    assert result.exit_code == 0, result.output
    [line] = [ln for ln in result.stdout.splitlines() if ticket_id in ln]
    return line


def test_status_shows_due_dates_as_the_regime_local_day(config: Path, tmp_path: Path) -> None:
    """A CCPA due date is the end of a day in Los Angeles, already the next day in UTC:
    `status` shows the Los Angeles day, as the request's page does; the CSV keeps the UTC
    moment."""
    from dsrflow.settings import load_settings
    from pipeline.runtime import Runtime

    doc = json.loads((WISHE / "tickets" / "02-portability.json").read_text())
    doc.update(ticket_id="CA-1", received_at="2026-11-20T09:30:00+00:00",
               verification={"method": "email_link", "verified_at": "2026-11-20T09:35:00Z"})
    path = tmp_path / "ca.json"
    path.write_text(json.dumps(doc))
    submitted = invoke("submit", "--config", config, path)
    assert submitted.exit_code == 0, submitted.output
    request_id = re.search(r"[0-9a-f]{8}-[0-9a-f-]{27}", submitted.stdout)
    assert request_id is not None
    rid = request_id.group(0)

    # Received 01:30 on 20 Nov in Los Angeles; 45 days: the end of Mon 4 Jan 2027 there,
    # 07:59:59 on 5 Jan in UTC.
    line = _status_line(config, "CA-1")
    assert " 2027-01-04 " in line and "2027-01-05" not in line
    page = invoke("report", "--request", rid, "--config", config)
    assert "end of 2027-01-04 America/Los_Angeles (2027-01-05T07:59:59+00:00)" in page.stdout
    out = tmp_path / "reports"
    assert invoke("report", "--out", out, "--config", config).exit_code == 0
    row = pd.read_csv(out / "report.csv").set_index("ticket_id").loc["CA-1"]
    assert row["due_at"] == "2027-01-05T07:59:59+00:00"

    # Extended to 10 Feb (a Los Angeles day): the extended date, as that day.
    runtime = Runtime(load_settings(config))
    try:
        runtime.ledger.extend(rid, "complex request", date(2027, 2, 10),
                              at=datetime(2026, 11, 25, 18, 0, tzinfo=UTC))
    finally:
        runtime.close()
    line = _status_line(config, "CA-1")
    assert " 2027-02-10 " in line and "2027-02-11" not in line


def test_status_of_an_unknown_request_says_so(submitted: Result, config: Path) -> None:
    result = invoke("status", "00000000-0000-4000-8000-000000000000", "--config", config)
    assert result.exit_code != 0
    assert "00000000-0000-4000-8000-000000000000" in flat(result.output)


def test_report_as_markdown(submitted: Result, config: Path) -> None:
    result = invoke("report", "--format", "md", "--config", config)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "| " + " | ".join(REQUEST_COLUMNS) + " |"
    assert len(lines) == 2 + len(TICKETS)
    for ticket_id in TICKET_IDS:
        assert any(f"| {ticket_id} |" in ln for ln in lines)
    for spelling in identity_spellings():
        assert spelling not in result.stdout


def test_report_as_html_to_a_file(submitted: Result, config: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = invoke("report", "--format", "html", "--out", out, "--config", config)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert page.startswith("<!doctype html>")
    assert f"{len(TICKETS)} tickets" in page
    for ticket_id in TICKET_IDS:
        assert ticket_id in page
    for spelling in identity_spellings():
        assert spelling not in page


def test_report_as_csv_to_a_folder(submitted: Result, config: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports"
    result = invoke("report", "--out", out, "--config", config)
    assert result.exit_code == 0, result.output
    report = pd.read_csv(out / "report.csv")
    assert list(report.columns) == REQUEST_COLUMNS
    assert sorted(report["ticket_id"]) == sorted(TICKET_IDS)
    assert list(pd.read_csv(out / "steps.csv").columns) == STEP_COLUMNS
    assert (out / "report.html").exists()


def test_report_refuses_an_unknown_format(submitted: Result, config: Path) -> None:
    result = invoke("report", "--format", "pdf", "--config", config)
    assert result.exit_code == 2
    assert "csv, html or md" in result.output


def test_audit_says_intact_and_then_broken(submitted: Result, config: Path) -> None:
    result = invoke("audit", "--config", config)
    assert result.exit_code == 0, result.output
    assert "audit chain intact" in result.stdout

    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{config.parent / 'state' / 'ledger.db'}")
    with engine.begin() as conn:
        target = conn.execute(sa.text("SELECT min(id) + 2 FROM audit_events")).scalar_one()
        conn.execute(sa.text("UPDATE audit_events SET event = 'x' WHERE id = :id"),
                     {"id": target})
    engine.dispose()
    set_runtime(None)

    broken = invoke("audit", "--config", config)
    assert broken.exit_code == 1
    assert f"audit chain broken at event {target}" in flat(broken.output)


def test_the_ledger_file_holds_no_identity(submitted: Result, config: Path) -> None:
    state = config.parent / "state"
    blobs: list[tuple[str, Any]] = [(p.name, p.read_bytes()) for p in state.iterdir()]
    assert blobs
    for name, data in blobs:
        for spelling in identity_spellings():
            assert spelling.encode() not in data, (name, spelling)


def test_a_table_too_wide_for_the_terminal_keeps_whole_columns_and_says_which_went() -> None:
    """In 60 columns (a narrow terminal, a CI log) the status table shows the columns that
    matter most, every value whole, and names the ones it left out, instead of cutting
    every column to "WSH-2…"."""
    import pandas as pd
    from rich.console import Console

    from entrypoints.cli import STATUS_COLUMNS, frame_table

    frame = pd.DataFrame([{
        "ticket_id": "WSH-2026-11-0001", "type": "account_cancellation", "regime": "pipl",
        "status": "awaiting_verification", "due": "2026-12-02", "deadline_state": "at_risk",
        "business_days_used": "13", "business_days_left": "2",
        "reason": "the partners holding the restricted data have not answered yet",
    }])
    for width in (60, 250):
        out = Console(width=width, record=True, file=io.StringIO())
        out.print(frame_table(frame, STATUS_COLUMNS, width=width))
        text = out.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        assert "…" not in text
        for value in ("WSH-2026-11-0001", "awaiting_verification", "at_risk"):
            assert value in text
    caption = str(frame_table(frame, STATUS_COLUMNS, width=60).caption)
    assert caption == "left out to fit 60 columns: type, regime, due, days used, left, reason"


# -- the policy's gates on the command line ----------------------------------------------------
def test_hold_add_list_release(submitted: Result, config: Path) -> None:
    until = date(datetime.now(UTC).year + 1, 6, 30).isoformat()
    bad = invoke("hold", "add", "--config", config, "--ticket", "WSH-2026-11-0003",
                 "--reason", "curiosity", "--citation", "x", "--until", until,
                 "--approved-by", "dpo")
    assert bad.exit_code == 2 and "the policy's exemptions: legal_obligation" in flat(bad.output)
    unknown = invoke("hold", "add", "--config", config, "--ticket", "WSH-2026-11-0003",
                     "--reason", "criminal_investigation", "--citation", "x", "--until", until,
                     "--approved-by", "dpo", "--category", "lokation")
    assert unknown.exit_code == 2 and "not in the data map: lokation" in flat(unknown.output)

    added = invoke("hold", "add", "--config", config, "--ticket", "WSH-2026-11-0003",
                   "--reason", "criminal_investigation", "--citation", "PSB notice 118",
                   "--until", until, "--approved-by", "dpo", "--category", "location")
    assert added.exit_code == 0, added.output
    hold_id = re.search(r"hold ([0-9a-f-]{36}):", added.output).group(1)  # type: ignore[union-attr]
    assert f"criminal_investigation until {until}, location in every system" in added.output
    listed = invoke("hold", "list", "--config", config)
    assert hold_id[:8] in listed.output and "WSH-2026-11-0003" in listed.output

    released = invoke("hold", "release", hold_id[:8], "--by", "dpo", "--reason", "closed",
                      "--config", config)
    assert released.exit_code == 0, released.output
    assert hold_id[:8] not in invoke("hold", "list", "--config", config).output
    assert "released" in invoke("hold", "list", "--all", "--config", config).output
    again = invoke("hold", "release", hold_id[:8], "--by", "dpo", "--reason", "closed",
                   "--config", config)
    assert again.exit_code == 1 and f"no hold {hold_id} in force" in flat(again.output)


def test_guardian_verify_needs_a_guardian_named_by_the_ticket(
    submitted: Result, config: Path,
) -> None:
    ledger = get_runtime().ledger
    request_ids = {t: str(ledger.find_by_ticket(t))
                   for t in ("WSH-2026-11-0001", "WSH-2026-11-0012")}
    adult = invoke("guardian", "verify", request_ids["WSH-2026-11-0001"], "--method", "x",
                   "--config", config)
    assert adult.exit_code == 1
    assert "names no guardian: a parent or guardian files a ticket" in flat(adult.output)
    child = invoke("guardian", "verify", request_ids["WSH-2026-11-0012"], "--method",
                   "court_order", "--config", config)
    assert child.exit_code == 0, child.output


def test_sweep_dry_run_and_replay_on_the_wishe_world(
    submitted: Result, config: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The object store is down: its rule says it could not count, the others are counted,
    # and the command fails rather than report a sweep that did not look.
    monkeypatch.setenv("WISHE_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    down = invoke("sweep", "--dry-run", "--config", config)
    assert down.exit_code == 1, down.output
    rows = {line.split("│")[2].strip(): line for line in down.output.splitlines()
            if line.count("│") > 5}
    assert "could not count" in rows["orphan-uploads-30d"]
    assert "rows" in rows["location-90d"] and "could not" not in rows["location-90d"]
    assert "accounts" in rows["cancelled-30d"]
    monkeypatch.setenv("WISHE_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket="wishe-uploads")
    counted = invoke("sweep", "--dry-run", "--config", config)
    assert counted.exit_code == 0, counted.output
    assert "location-90d" in counted.output and "orders-3y" in counted.output
    not_sql = invoke("tombstones", "replay", "--system", "adnet", "--config", config)
    assert not_sql.exit_code == 2 and "adnet is not a SQL system" in flat(not_sql.output)
    # No erasure has completed yet: nothing to replay, nothing left.
    replayed = invoke("tombstones", "replay", "--system", "userdb", "--config", config)
    assert replayed.exit_code == 0, replayed.output
    assert "userdb: 0 erasures since ever, 0 of their subjects found again" in flat(
        replayed.output)
