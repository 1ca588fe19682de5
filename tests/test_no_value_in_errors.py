"""No input value in any error (issue 11): every failure path driven through the real flow on
the real Prefect test server with identities made of one unique marker, then every place an
error can end up is scanned for it — Prefect's database and home, the ledger file with its
-wal and -shm (and the audit chain, the steps, the reasons, read back through SQL), the
reports, the certificates, the other files dsrflow wrote, the logs (every record, with its
traceback) and what the terminal printed (`dsrflow status`, `dsrflow report`).

The failure paths: a SQL system whose database is down, one whose table lacks a column the
data map names, a gzip log file that cannot be read, an S3 endpoint that refuses
connections, a webhook partner that answers 400 echoing the subject, one that answers 500
echoing it, connector methods that raise a plain `ValueError(f"bad {value}")` (erase,
rectify with a marker correction, collect), a certificate that cannot be issued, an
exception escaping a Prefect task and its flow, and tickets with a marker in a bad field.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
import sqlalchemy as sa
import yaml

from connectors.sql import SqlConnector
from dsrflow.identities import IdentityType
from dsrflow.intake import submit
from dsrflow.leakscan import files_containing
from dsrflow.model import Status
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import invoke, ticket

MARK = uuid.uuid4().hex[:16]  # every marker holds it: one needle finds them all
EMAIL = f"mkr{MARK}@example.com"  # lower case: emails are case-folded on entry
USER_ID = f"MARKERu{MARK}"
DEVICE = f"MARKERd{MARK}"
NICKNAME = f"MARKERn{MARK}"
CORRECTION = f"MARKERc{MARK}"
WEBHOOK_SECRET_ENV = "DSRFLOW_TEST_MARKER_WEBHOOK_SECRET"


def _marker_phone() -> tuple[str, str]:
    """A valid Chinese mobile number no one else has (E.164, national)."""
    rng = random.Random(MARK)
    while True:
        national = "139" + "".join(rng.choice("0123456789") for _ in range(8))
        parsed = phonenumbers.parse("+86" + national)
        if phonenumbers.is_valid_number(parsed):
            return "+86" + national, national


PHONE, PHONE_NATIONAL = _marker_phone()
NEEDLES = [MARK, MARK.upper(), PHONE, PHONE_NATIONAL]


# -- partners that echo the subject in their answers ----------------------------------------
class EchoingPartner:
    """A webhook endpoint on loopback that refuses every request with `status`, echoing the
    identities it was sent and the account name it knows in its error body."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        partner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                partner.bodies.append(body)
                sent = " ".join(str(i["value"]) for i in body.get("identities", []))
                reply = json.dumps({"error": {
                    "code": f"unknown_{EMAIL.split('@')[0]}",
                    "message": f"no account {EMAIL.split('@')[0]} ({USER_ID}, {PHONE}); "
                               f"you sent {sent}",
                }}).encode()
                self.send_response(partner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dsr"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> EchoingPartner:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the world ------------------------------------------------------------------------------
def _world(tmp: Path) -> str:
    """The sqlworld in `tmp/world`, plus the marker's own account (a device too)."""
    (tmp / "world").mkdir()
    _, url = sqlworld.sqlite_world(tmp / "world", 5, 6)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.insert(sqlworld.users).values(
            id=900, email=EMAIL, phone=PHONE, nickname=NICKNAME))
        conn.execute(sa.insert(sqlworld.devices).values(id=9000, user_id=900, device_id=DEVICE))
    engine.dispose()
    return url


def _datamap(url: str, tmp: Path, crm: str, ads: str) -> dict[str, Any]:
    doc: dict[str, Any] = {**sqlworld.DATAMAP_DOC}
    db = {**doc["systems"]["db"], "url": url}
    users = db["tables"]["users"]
    ghost = {**users, "columns": {**users["columns"],
                                  "ghost": {"category": "profile", "action": "null"}}}
    doc["systems"] = {
        "db": db,
        # Down: its file's folder does not exist, so SQLite cannot open it.
        "db_down": {"kind": "sql", "url": f"sqlite:///{tmp / 'gone' / 'down.db'}",
                    "tables": {"users": users}},
        # The data map names a column the table does not have.
        "db_cols": {"kind": "sql", "url": url, "tables": {"users": ghost}},
        "applogs": {"kind": "logs", "sources": {"app": {
            "path": "logs/*.log*", "format": "text",
            "identities": ["email", "phone", "user_id", "device_id"]}}},
        "media": {"kind": "objects", "endpoint_url": f"http://127.0.0.1:{_closed_port()}",
                  "region": "us-east-1",
                  "buckets": {"uploads": {"category": "media", "ownership": [
                      {"key_template": "uploads/{user_id}/"}]}}},
        "crm": {"kind": "partner", "protocol": "webhook", "categories": ["contact"],
                "endpoint": crm, "credentials_env": WEBHOOK_SECRET_ENV,
                "identities": [{"type": "email"}, {"type": "user_id"}]},
        "ads": {"kind": "partner", "protocol": "webhook", "categories": ["contact"],
                "endpoint": ads, "credentials_env": WEBHOOK_SECRET_ENV,
                "identities": [{"type": "email", "format": "sha256"}]},
    }
    return doc


def _config(tmp: Path, name: str, doc: dict[str, Any]) -> Path:
    """`tmp/<name>.yaml` over the data map `doc`; every config shares the ledger and keys."""
    from dsrflow.settings import write_key_file

    (tmp / f"datamap-{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    if not (tmp / "keys.json").exists():
        write_key_file(tmp / "keys.json")
    config = tmp / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "ledger_url": "sqlite:///ledger.db", "datamap": f"datamap-{name}.yaml",
        "key_file": "keys.json",
        "exports_dir": "exports", "certificates_dir": "certificates", "state_dir": "state",
        "prefect_home": "prefect", "task_retries": 1, "task_retry_delays": [0.1],
        "packages": {"local_dir": "packages", "handover_dir": "handover"},
    }))
    return config


class Everything(logging.Handler):
    """Every log record of the process, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def everything_logged() -> Iterator[Everything]:
    handler = Everything()
    loggers = [logging.getLogger(), logging.getLogger("prefect")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Connector methods that fail as careless code does: the value in the message."""
    issued_for: dict[str, str] = {}

    def erase(self: SqlConnector, subjects: Any, scope: Any, keys: Any, **_: Any) -> Any:
        raise ValueError(f"bad {[s.values(IdentityType.EMAIL) for s in subjects]}")

    def rectify(self: SqlConnector, subject: Any, corrections: dict[str, str]) -> Any:
        raise ValueError(f"cannot write {corrections} for {subject.values(IdentityType.EMAIL)}")

    def collect(self: SqlConnector, subjects: Any, scope: Any) -> Any:
        raise KeyError(subjects[0].values(IdentityType.EMAIL)[0])

    import pipeline.deliverables as deliverables

    original = deliverables.issue_certificate

    def issue_certificate(rt: Runtime, record: Any, *args: Any) -> Any:
        if record.id == issued_for.get("fail"):
            raise ValueError(f"cannot certify {EMAIL}")
        return original(rt, record, *args)

    monkeypatch.setattr(SqlConnector, "erase", erase)
    monkeypatch.setattr(SqlConnector, "rectify", rectify)
    monkeypatch.setattr(SqlConnector, "collect", collect)
    monkeypatch.setattr(deliverables, "issue_certificate", issue_certificate)
    return issued_for


BAD_TICKETS: list[dict[str, Any]] = [
    {"identities": [{"type": "email", "value": f"MARKERe{MARK}@"}]},
    {"identities": [{"type": "phone", "value": f"+86 MARKERp{MARK}"}]},
    {"identities": [{"type": "ip", "value": f"10.0.0.1{MARK}"}]},
    {"identities": [{"type": "third_party", "value": f"MARKERt{MARK}"}]},
    {"identities": [{"type": f"MARKERk{MARK}", "value": "x"}]},
    {"received_at": f"MARKERr{MARK}"},
    {"country": f"MARKERc{MARK}"},
    {"regime": f"MARKERg{MARK}"},
    {"type": f"MARKERy{MARK}"},
    {"verification": {"method": "sms_code", "verified_at": f"MARKERv{MARK}"}},
    {"corrections": {"db.users.nickname": CORRECTION}},  # not a rectification
]


def test_no_marker_reaches_prefect_the_ledger_reports_logs_or_the_terminal(
    tmp_path: Path,
    prefect_server: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    faults: dict[str, str],
    everything_logged: Everything,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    cli_runtime: None,
) -> None:
    from prefect.logging.handlers import APILogHandler

    import connectors.webhook as webhook
    from dsrflow.report import write_reports
    from dsrflow.settings import load_settings
    from flows.partners import check_partners
    from flows.request import process_requests

    caplog.set_level(logging.DEBUG)
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
                        "AWS_RETRY_MODE": "standard",
                        WEBHOOK_SECRET_ENV: "whsec-marker-test"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(webhook, "exponential_backoff", lambda: (lambda n: 0.0))
    monkeypatch.setenv("PREFECT_HOME", os.environ["PREFECT_HOME"])  # the CLI points it away

    url = _world(tmp_path)
    (tmp_path / "logs").mkdir()
    # A gzip file that is not one: reading it fails, and its bytes are the subject's.
    (tmp_path / "logs" / "app.log.gz").write_bytes(b"\x1f\x8b" + f"{EMAIL} {PHONE}".encode())
    (tmp_path / "logs" / "app.log").write_text(f"login {EMAIL} uid={USER_ID}\n")

    with EchoingPartner(400) as crm, EchoingPartner(500) as ads:
        full = _datamap(url, tmp_path, crm.url, ads.url)
        # A SQL system that cannot be read stops every request at identity resolution
        # (nothing may look for less than the account holds): the broken databases are
        # met by a request of their own, then the installation runs without them.
        config = _config(tmp_path, "full", full)
        working = _config(tmp_path, "working", {**full, "systems": {
            k: v for k, v in full["systems"].items() if k not in ("db_down", "db_cols")}})
        ids: list[str] = []
        escaped: list[str] = []
        for chosen, run in ((config, _run_broken_databases), (working, _run)):
            rt = Runtime(load_settings(chosen))
            previous = set_runtime(rt)
            try:
                more, flagged = run(rt, faults, process_requests, check_partners)
            finally:
                set_runtime(previous)
                rt.close()
            ids += more
            escaped += flagged
        # The partners were asked, and did echo the subject back.
        assert crm.bodies and ads.bodies
        assert any(i["value"] == EMAIL for b in crm.bodies for i in b["identities"])
    APILogHandler().flush()  # Prefect's logs are shipped in the background: send them now

    reports = tmp_path / "reports"
    rt = Runtime(load_settings(config))
    write_reports(reports, rt.ledger, rt.deadlines, at_risk_days=rt.settings.at_risk_days)
    assert (reports / "steps.csv").exists()
    stored = _stored_text(rt)
    rt.close()

    printed = [invoke("status", "--config", config)]
    for rid in ids:
        printed += [invoke("status", rid, "--config", config),
                    invoke("report", "--request", rid, "--config", config),
                    invoke("report", "--request", rid, "--format", "html", "--config", config)]
    printed.append(invoke("report", "--out", tmp_path / "cli-reports", "--config", config))
    for result in printed:
        assert result.exit_code == 0, result.output
    # The failures are there to be seen, without their values.
    status = invoke("status", ids[1], "--config", config).stdout
    assert "ValueError" in status and "failed" in status

    # The CLI's runtime still holds the ledger open: its -wal and -shm are there to scan.
    assert (tmp_path / "ledger.db-wal").exists() and (tmp_path / "ledger.db-shm").exists()
    problems = list(escaped)
    for path, found in {
        **files_containing(prefect_server, NEEDLES),
        **_dsrflow_files_containing(tmp_path, NEEDLES),
    }.items():
        problems.append(f"{path} holds {found}")
    for where, text in {
        "the ledger, read through SQL (audit chain, steps, reasons, partners)": stored,
        "a log record": "\n".join(everything_logged.lines),
        "caplog": caplog.text,
        "the terminal": "\n".join(r.output for r in printed) + "".join(capfd.readouterr()),
    }.items():
        found = [n for n in NEEDLES if n in text]
        if found:
            problems.append(f"{where} holds {found}")
    assert problems == []
    # The scans are worth something only if what they read was written: Prefect recorded
    # the runs, the ledger the failures, the logs the tracebacks.
    assert all(files_containing(prefect_server, [rid]) for rid in ids[:2])
    assert "StepFailed" in "\n".join(everything_logged.lines)


def _run_broken_databases(rt: Runtime, faults: dict[str, str], process_requests: Any,
                          check_partners: Any) -> tuple[list[str], list[str]]:
    """A SQL system whose database is down and one whose table lacks a mapped column."""
    doc = ticket("MK-5", "erasure", [{"type": "email", "value": EMAIL},
                                     {"type": "user_id", "value": USER_ID}])
    rid = submit(rt.ledger, rt.datamap, doc).request_id
    with pytest.raises(Exception) as caught:
        process_requests([rid])
    assert type(caught.value).__name__ == "BatchIncomplete"
    failed = {(s.system, s.action) for s in rt.ledger.steps([rid])
              if s.status == "failed"}
    assert {("db_down", "resolve"), ("db_cols", "resolve")} <= failed, failed
    return [rid], []


def _run(rt: Runtime, faults: dict[str, str], process_requests: Any,
         check_partners: Any) -> tuple[list[str], list[str]]:
    """The tickets, the batch, and a flow whose task raises with a value in the message."""
    import pipeline.partners

    good = [
        ticket("MK-1", "erasure", [{"type": "email", "value": EMAIL.upper()},
                                   {"type": "user_id", "value": USER_ID},
                                   {"type": "phone", "value": PHONE}]),
        ticket("MK-2", "rectification", [{"type": "email", "value": EMAIL}],
               corrections={"db.users.nickname": CORRECTION}),
        ticket("MK-3", "access", [{"type": "email", "value": EMAIL}]),
        ticket("MK-4", "account_cancellation", [{"type": "phone", "value": PHONE}]),
    ]
    ids = [submit(rt.ledger, rt.datamap, t).request_id for t in good]
    for n, bad in enumerate(BAD_TICKETS):
        doc = {**ticket(f"MKX-{n}", "erasure", [{"type": "email", "value": "a@b.example"}]),
               **bad}
        result = submit(rt.ledger, rt.datamap, doc)
        assert result.status is Status.REJECTED, bad
    faults["fail"] = ids[0]  # MK-1's certificate cannot be issued; MK-4's is

    with pytest.raises(Exception) as caught:
        process_requests(ids)
    assert type(caught.value).__name__ == "BatchIncomplete"
    steps = {(s.request_id, s.system, s.action): s for s in rt.ledger.steps(ids)}
    failed = {(k[1], k[2]) for k, s in steps.items() if s.status in ("failed", "blocked")}
    # Every failure path was taken.
    assert {("db", "erase"), ("db", "rectify"), ("db", "collect"), ("applogs", "erase"),
            ("media", "erase"), ("crm", "erase"), ("ads", "erase"),
            ("erasure-certificate", "certify")} <= failed, failed
    assert (rt.settings.certificates_path / f"{ids[3]}.json").exists()

    def check(rt: Runtime) -> Any:
        raise ValueError(f"cannot poll for {EMAIL}")

    original = pipeline.partners.check
    pipeline.partners.check = check  # type: ignore[assignment]
    try:
        with pytest.raises(Exception) as escaped:
            check_partners()
    finally:
        pipeline.partners.check = original  # type: ignore[assignment]
    if MARK in str(escaped.value):
        return ids, [f"what escaped a flow says {escaped.value!s}"]
    return ids, []


def _stored_text(rt: Runtime) -> str:
    """What the ledger stores about errors, read back through SQL."""
    from dsrflow.ledger.schema import audit_events, partner_requests, requests, steps

    with rt.ledger.engine.connect() as conn:
        rows = [
            *conn.execute(sa.select(audit_events.c.event, audit_events.c.detail)),
            *conn.execute(sa.select(steps.c.error, steps.c.details)),
            *conn.execute(sa.select(requests.c.reason, requests.c.deadline_error)),
            *conn.execute(sa.select(partner_requests.c.error, partner_requests.c.reference)),
        ]
    return "\n".join(json.dumps(list(r), default=str) for r in rows)


def _dsrflow_files_containing(tmp: Path, needles: list[str]) -> dict[str, list[str]]:
    """`files_containing` over everything in `tmp` but the world's own data (its database,
    its logs): the ledger and its -wal/-shm, reports, certificates, exports, packages, the
    outbox, checkpoints, the CLI's Prefect home."""
    world = (str(tmp / "world") + os.sep, str(tmp / "logs") + os.sep)
    scanned = files_containing([tmp], needles)
    assert any(p.startswith(world) for p in scanned)  # the scan does see the world's data
    return {p: found for p, found in scanned.items() if not p.startswith(world)}


# -- the pieces -----------------------------------------------------------------------------
def test_a_careless_message_is_withheld_and_a_written_one_kept() -> None:
    from connectors.logs import LogsError
    from dsrflow.errors import HINT, safe_error

    try:
        int("²")
    except ValueError as exc:
        assert safe_error(exc) == f"ValueError: {HINT}"
    assert safe_error(KeyError(EMAIL)) == f"KeyError: {HINT}"
    assert safe_error(LogsError("systems.applogs.sources.app: a.log: read failed (EIO)")) == (
        "LogsError: systems.applogs.sources.app: a.log: read failed (EIO)")
    error = FileNotFoundError(2, "No such file or directory", f"/exports/{EMAIL}.json")
    assert safe_error(error) == "FileNotFoundError: No such file or directory"


def test_database_errors_keep_a_named_primary_message_and_never_a_value(tmp_path: Path) -> None:
    from sqlalchemy.exc import DataError, IntegrityError, OperationalError

    from dsrflow.errors import safe_error

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (email TEXT UNIQUE)"))
        conn.execute(sa.text("INSERT INTO t VALUES (:e)"), {"e": EMAIL})
    with pytest.raises(IntegrityError) as caught, engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO t VALUES (:e)"), {"e": EMAIL})
    engine.dispose()
    assert MARK in str(caught.value)  # SQLAlchemy's own text quotes the parameters
    assert safe_error(caught.value) == "IntegrityError: UNIQUE constraint failed: t.email"

    class Diag:
        message_primary = f'invalid input syntax for type integer: "{USER_ID}"'

    class PgDataError(Exception):  # what psycopg raises for a value PostgreSQL refuses
        sqlstate = "22P02"
        diag = Diag()

    wrapped = DataError("SELECT …", {"id": USER_ID}, PgDataError(Diag.message_primary))
    assert safe_error(wrapped) == "PgDataError: SQLSTATE 22P02"

    class Named(Diag):
        message_primary = 'relation "users" does not exist'

    class PgMissing(Exception):
        sqlstate = "42P01"
        diag = Named()

    missing = OperationalError("SELECT …", {"id": USER_ID}, PgMissing("x"))
    assert safe_error(missing) == 'PgMissing: relation "users" does not exist'

    class MySqlIntegrity(Exception):  # MySQL's message quotes the duplicate value
        pass

    duplicate = IntegrityError("INSERT …", {}, MySqlIntegrity(1062, f"Duplicate entry '{EMAIL}'"))
    assert safe_error(duplicate) == "MySqlIntegrity: error 1062"


def test_postgresql_keeps_named_messages_and_only_the_sqlstate_of_a_quoted_value(
    postgres_url: str,
) -> None:
    from dsrflow.errors import safe_error

    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (id integer PRIMARY KEY, email text UNIQUE)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1, :e)"), {"e": EMAIL})
        with pytest.raises(sa.exc.DBAPIError) as quoted, engine.connect() as conn:
            conn.execute(sa.text("SELECT * FROM t WHERE id = CAST(:v AS integer)"),
                         {"v": USER_ID})
        with pytest.raises(sa.exc.IntegrityError) as duplicate, engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO t VALUES (2, :e)"), {"e": EMAIL})
        with pytest.raises(sa.exc.DBAPIError) as missing, engine.connect() as conn:
            conn.execute(sa.text("SELECT * FROM nowhere WHERE id = :v"), {"v": USER_ID})
    finally:
        engine.dispose()
    assert MARK in str(quoted.value) and MARK in str(duplicate.value)  # the driver's text
    assert safe_error(quoted.value) == "InvalidTextRepresentation: SQLSTATE 22P02"
    assert safe_error(duplicate.value) == (
        'UniqueViolation: duplicate key value violates unique constraint "t_email_key"')
    assert safe_error(missing.value) == 'UndefinedTable: relation "nowhere" does not exist'


def test_a_partner_error_says_status_and_code_never_the_partner_text() -> None:
    from connectors.opendsr import PartnerRejected, ProtocolError, Status, check_domain
    from dsrflow.errors import safe_error

    plain = PartnerRejected("crm", "submit", 422, "refused", f"no account {USER_ID}")
    assert str(plain) == "crm: submit rejected (HTTP 422, error refused)"
    assert safe_error(plain) == f"PartnerRejected: {plain}"
    echoed = PartnerRejected("crm", "submit", 400, f"unknown_{USER_ID}", None)
    assert str(echoed) == "crm: submit rejected (HTTP 400)"
    with pytest.raises(ProtocolError) as caught:
        Status.from_json({"subject_request_id": str(uuid.uuid4()), "request_status": EMAIL})
    assert MARK not in str(caught.value)
    with pytest.raises(Exception) as refused:
        check_domain(f"{MARK}.example", ["partner.example"])
    assert MARK not in str(refused.value)


def test_what_escapes_a_task_or_flow_keeps_no_text_and_no_cause() -> None:
    from connectors.sql import SchemaMismatch
    from dsrflow.errors import SafeError, raises_safely

    @raises_safely
    def careless(value: str) -> None:
        raise ValueError(f"bad {value}")

    @raises_safely
    def careful(value: str) -> None:
        try:
            int(value)
        except ValueError as exc:
            raise SchemaMismatch("systems.db.tables.users: no such table") from exc

    with pytest.raises(SafeError) as caught:
        careless(EMAIL)
    assert MARK not in str(caught.value) and caught.value.__context__ is None
    with pytest.raises(SchemaMismatch) as kept:
        careful(USER_ID)
    assert kept.value.__cause__ is None and kept.value.__context__ is None


def test_every_trusted_class_exists() -> None:
    """The trusted list names classes: a rename must not leave a stale name behind."""
    import importlib

    from dsrflow.errors import TRUSTED

    for name in TRUSTED:
        module, _, cls = name.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), cls), type), name


def test_the_command_line_says_an_unexpected_error_without_its_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_runtime: None
) -> None:
    import dsrflow.datamap

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError(f"invalid literal for int() with base 10: {USER_ID!r}")

    # `datamap check` imports it when it runs (the CLI starts without the data map's imports)
    monkeypatch.setattr(dsrflow.datamap, "load_datamap", broken)
    result = invoke("datamap", "check", tmp_path / "datamap.yaml")
    assert result.exit_code == 1
    assert MARK not in result.output
    assert "ValueError" in result.output and "Traceback" not in result.output
