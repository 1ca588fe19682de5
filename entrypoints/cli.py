"""The `dsrflow` command line.

Each command imports what it needs when it runs (issue 16): `dsrflow --help` loads neither
Prefect nor pandas, only the commands that run flows load Prefect, and only those that show
the report's frames load pandas. tests/test_startup.py checks it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Column, Table

from entrypoints.holds import hold_app
from entrypoints.retention import sweep
from entrypoints.terminal import (
    ConfigOption,
    Typer,
    console,
    err,
    fail,
    load_config,
    open_runtime,
    say,
)
from entrypoints.tombstones import tombstones_app

if TYPE_CHECKING:  # only the commands that need them load pandas and `holidays` (calendars)
    import pandas as pd

    from dsrflow.deadlines import Deadlines


app = Typer(help="Data-subject requests, answered by Prefect flows.", no_args_is_help=True)
datamap_app = Typer(help="Draft and check data maps.", no_args_is_help=True)
keys_app = Typer(help="Key files.", no_args_is_help=True)
partner_app = Typer(help="Requests handed to partners.", no_args_is_help=True)
package_app = Typer(help="Encrypted access packages.", no_args_is_help=True)
certificate_app = Typer(help="Signed erasure certificates.", no_args_is_help=True)
guardian_app = Typer(help="Guardians acting for children (policy 7.x).", no_args_is_help=True)
app.add_typer(certificate_app, name="certificate")
app.add_typer(guardian_app, name="guardian")
app.add_typer(hold_app, name="hold")
app.command("sweep")(sweep)
app.add_typer(tombstones_app, name="tombstones")
app.add_typer(datamap_app, name="datamap")
app.add_typer(keys_app, name="keys")
app.add_typer(partner_app, name="partner")
app.add_typer(package_app, name="package")
@app.command()
def submit(
    files: Annotated[list[Path], typer.Argument(help="ticket JSON files ('-' for stdin)")],
    queue: Annotated[
        bool, typer.Option("--queue", help="put them on the ticket queue instead")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Record tickets in the ledger (a ticket id already on record is not recorded twice),
    or put them on the ticket queue for intake. One line per file, as it is done: accepted,
    already on record, rejected (recorded, with the reason) or not recorded (unreadable, or
    the ledger failed); whatever happens to one file, the next is submitted. Exit 1 if any
    file was not recorded."""
    rt = open_runtime(config)
    if queue:
        _enqueue(rt, files)
        return
    tally: dict[str, int] = {}
    for path in files:
        outcome, line = _submit_file(rt, path)
        tally[outcome] = tally.get(outcome, 0) + 1
        # One stream, in order: the report of every file, whatever became of it.
        # Plain text: a ticket id such as `a:smile:b` is not an emoji code.
        console.print(line, markup=False, emoji=False, highlight=False, soft_wrap=True)
    counts = ", ".join(f"{tally[o]} {o}" for o in SUBMIT_OUTCOMES if o in tally)
    console.print(f"{len(files)} files: {counts}", markup=False, highlight=False)
    if NOT_RECORDED in tally:
        raise typer.Exit(1)


NOT_RECORDED = "not recorded"
SUBMIT_OUTCOMES = ("accepted", "already on record", "rejected", NOT_RECORDED)


def _submit_file(rt: Any, path: Path) -> tuple[str, str]:
    """One file into the ledger: its outcome (one of SUBMIT_OUTCOMES) and the line that
    reports it. Never raises: a file's failure is that file's line."""
    from sqlalchemy.exc import OperationalError

    from dsrflow.intake import internal_error
    from dsrflow.intake import submit as submit_ticket
    from dsrflow.model import Status

    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        return NOT_RECORDED, f"{path}: not recorded: unreadable ({exc.strerror or 'error'})"
    try:
        result = submit_ticket(rt.ledger, rt.datamap, raw,
                               phone_regions=rt.settings.phone_regions)
    except OperationalError:
        return NOT_RECORDED, f"{path}: not recorded: the ledger is unavailable"
    except Exception as exc:  # the ledger could not record even a rejection
        return NOT_RECORDED, f"{path}: not recorded: {internal_error(exc)}"
    ticket = f"ticket {result.ticket_id or '?'}"
    if result.status is Status.REJECTED:
        return "rejected", (f"{path}: {ticket}: rejected: {result.reason}; recorded as "
                            f"{result.request_id}")
    outcome = "accepted" if result.created else "already on record"
    note = f"; {result.reason}" if result.reason else ""
    return outcome, (f"{path}: {ticket}: {outcome} as request {result.request_id} "
                     f"({result.status.value}{note})")


def _enqueue(rt: Any, files: list[Path]) -> None:
    """Put ticket files on the queue as they are: intake validates them."""
    from botocore.exceptions import BotoCoreError, ClientError

    from dsrflow.queue import make_client, put_ticket

    qs = rt.settings.queue
    if qs is None:
        raise fail("no `queue:` in the settings", 2)
    client = make_client(qs)
    failed = False
    for path in files:
        try:
            raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
            message_id = put_ticket(client, qs.queue_url, raw)
        except (OSError, UnicodeDecodeError, BotoCoreError, ClientError) as exc:
            err.print(f"[red]not queued:[/red] {path}: {type(exc).__name__}")
            failed = True
            continue
        console.print(f"{path}: queued as message {message_id}")
    if failed:
        raise typer.Exit(1)


@app.command()
def run(
    request_ids: Annotated[list[str] | None, typer.Argument(help="default: every runnable")] = None,
    config: ConfigOption = None,
) -> None:
    """Process requests now: micro-batches of `batches.size` (settings), each its own
    Prefect flow run, `batches.concurrent` at once."""
    rt = open_runtime(config)
    ids = request_ids or rt.ledger.runnable()
    if not ids:
        console.print("nothing to run")
        return
    ok = run_batch(ids)
    _print_status(rt, ids)
    if not ok:
        raise typer.Exit(1)


def run_batch(ids: list[str]) -> bool:
    """Run the flow over `ids` in micro-batches (settings `batches:` size, so many at once),
    each its own flow run; False if some request did not complete or a system of one
    failed (details are in the ledger). Requests another run holds are skipped, and said
    so."""
    from concurrent.futures import ThreadPoolExecutor

    from dsrflow.model import Status
    from dsrflow.prefect_env import embedded_server_turn
    from flows.request import BatchIncomplete, process_requests
    from pipeline.runtime import get_runtime

    settings = get_runtime().settings

    def warn(message: str) -> None:
        err.print(message, style="yellow", markup=False, highlight=False)

    def one(batch: list[str]) -> tuple[bool, dict[str, str]]:
        try:
            return True, process_requests(batch)
        except BatchIncomplete as exc:
            warn(say(exc))
            return False, {}

    batches = settings.batches.split(ids)
    if len(batches) > 1:
        console.print(f"{len(ids)} requests in {len(batches)} batches of at most "
                      f"{settings.batches.size}, {settings.batches.concurrent} at once")
    at_once = min(settings.batches.concurrent, len(batches))
    with (embedded_server_turn(settings.path(settings.prefect_home), warn),
          ThreadPoolExecutor(max_workers=at_once) as pool):
        done = list(pool.map(one, batches))
    statuses = {s.value for s in Status}
    for _, outcome in done:
        for rid, what in outcome.items():
            if what not in statuses:
                warn(f"{rid}: not run: {what}")
    return all(ok for ok, _ in done)


@app.command()
def verify(
    request_id: str,
    method: Annotated[str, typer.Option(help="how the identity was confirmed")],
    config: ConfigOption = None,
) -> None:
    """Record that a waiting request's identity has been verified. It runs with the next
    `resume-requests` (every 10 minutes, after 30 minutes' grace), or now: `dsrflow run ID`."""
    from datetime import UTC, datetime

    from dsrflow.model import InvalidTransition

    rt = open_runtime(config)
    try:
        rt.ledger.mark_verified(request_id, method, datetime.now(UTC))
    except InvalidTransition as exc:
        raise fail(say(exc)) from None
    _print_status(rt, [request_id])


@guardian_app.command("verify")
def guardian_verify(
    request_id: str,
    method: Annotated[str, typer.Option(help="how the guardianship was confirmed (e.g. "
                                        "household_registration, court_order)")],
    config: ConfigOption = None,
) -> None:
    """Record that the guardian a ticket named has been verified. A request waiting for it
    goes back to verified: the next `resume-requests` runs it, or `dsrflow run ID` now."""
    from datetime import UTC, datetime

    from dsrflow.ledger import GuardianMissing

    rt = open_runtime(config)
    try:
        rt.ledger.verify_guardian(request_id, method, datetime.now(UTC))
    except GuardianMissing as exc:
        raise fail(say(exc)) from None
    _print_status(rt, [request_id])


@app.command()
def refuse(
    request_id: str,
    reason: Annotated[str, typer.Option(help="recorded and reported; no personal data")],
    config: ConfigOption = None,
) -> None:
    """Refuse a request (identity not verified, manifestly unfounded, ...)."""
    from dsrflow.model import InvalidTransition, Status

    rt = open_runtime(config)
    try:
        rt.ledger.transition(request_id, Status.REFUSED, reason)
    except InvalidTransition as exc:
        raise fail(say(exc)) from None
    _print_status(rt, [request_id])


@app.command()
def extend(
    request_id: str,
    reason: Annotated[
        str,
        typer.Option(help="why more time is needed; shown to the subject and the regulator, "
                          "so no personal data"),
    ],
    until: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d"], metavar="YYYY-MM-DD",
                     help="new due date, in the regime's time zone (default: as far as the "
                          "regime allows)"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Extend an open request's deadline (GDPR and UK GDPR: up to two further months; CCPA:
    up to 45 more days; PIPL: never). Record it when the subject is told, within the first
    period: that moment is kept as the notice date."""
    from dsrflow.ledger import ExtensionRefused, UnknownRequest

    rt = open_runtime(config)
    try:
        due = rt.ledger.extend(request_id, reason, until.date() if until else None)
    except UnknownRequest:
        raise fail(f"no request {request_id}", 2) from None
    except ExtensionRefused as exc:
        raise fail(say(exc)) from None
    from dsrflow.deadlines import RULES

    record = rt.ledger.get(request_id)
    assert record.regime is not None and record.extension_notice_at is not None
    local = rt.deadlines.local_date(record.regime, due)
    notice = rt.deadlines.local_date(record.regime, record.extension_notice_at)
    console.print(
        f"request {request_id} extended: due end of {local} {RULES[record.regime].timezone} "
        f"({due:%Y-%m-%d %H:%M:%S} UTC); notice given {notice}",
        highlight=False,
    )
    _print_status(rt, [request_id])


@app.command()
def status(
    request_id: Annotated[str | None, typer.Argument()] = None, config: ConfigOption = None
) -> None:
    """Requests and their deadlines (one request with its steps, given an id)."""
    from dsrflow.ledger import UnknownRequest

    rt = open_runtime(config)
    if request_id:
        try:
            rt.ledger.get(request_id)
        except UnknownRequest:
            raise fail(f"no request {request_id}") from None
    ids = [request_id] if request_id else [r.id for r in rt.ledger.all()]
    _print_status(rt, ids)
    if request_id:
        import pandas as pd

        names = ["system", "action", "status", "found", "deleted", "anonymized", "retained",
                 "remaining", "error"]
        steps = pd.DataFrame([s.as_dict() for s in rt.ledger.steps([request_id])],
                             columns=names)
        console.print(frame_table(steps, {n: n for n in names}))


STATUS_COLUMNS = {
    "ticket": "ticket_id", "type": "type", "regime": "regime", "status": "status",
    "due": "due", "deadline": "deadline_state", "days used": "business_days_used",
    "left": "business_days_left", "reason": "reason",
}


def status_view(report: pd.DataFrame, deadlines: Deadlines) -> pd.DataFrame:
    """The report's rows as `status` shows them: the due date that binds now (extended, if
    the request was) as the day it is in the regime's time zone. The report keeps UTC
    moments, and the end of a CCPA day in Los Angeles is already the next day in UTC."""
    import pandas as pd

    due = report["extended_due_at"].fillna(report["due_at"])
    days = [_local_day(deadlines, regime, moment)
            for regime, moment in zip(report["regime"], due, strict=True)]
    return report.assign(due=pd.Series(days, index=report.index, dtype="object"))


def _local_day(deadlines: Deadlines, regime: Any, moment: Any) -> str | None:
    """`moment` (ISO text, UTC) as a day in `regime`'s time zone; None without one."""
    from dsrflow.model import Regime

    if _cell(moment) == "" or _cell(regime) == "":
        return None
    return deadlines.local_date(Regime(str(regime)),
                                datetime.fromisoformat(str(moment))).isoformat()


def _print_status(rt: Any, ids: list[str]) -> None:
    from dsrflow.report import requests_frame

    frame = requests_frame(rt.ledger, rt.deadlines, at_risk_days=rt.settings.at_risk_days)
    frame = frame[frame["request_id"].isin(ids)]
    if len(frame) > STATUS_ROWS:  # a backlog: the count per status, `dsrflow status` for rows
        counts = frame["status"].value_counts().sort_index()
        console.print(", ".join(f"{n} {status}" for status, n in counts.items()))
        return
    console.print(frame_table(status_view(frame, rt.deadlines), STATUS_COLUMNS))


STATUS_ROWS = 50  # a run's table beyond this many requests is a count per status


# What a table keeps when the terminal is too narrow for all its columns, first to last;
# the others follow in their own order.
FIRST_KEPT = ("ticket", "status", "deadline", "left", "due", "system", "deleted",
              "anonymized", "remaining")
WRAPPED = frozenset({"reason", "error", "note"})  # free text wraps; ids and dates never do
WRAPPED_WIDTH = 24


def frame_table(
    frame: pd.DataFrame, columns: dict[str, str], title: str | None = None, *,
    width: int | None = None, first_kept: Sequence[str] = FIRST_KEPT,
) -> Table:
    """A rich table of some of a frame's columns, headed as `columns` says: as many of
    them as fit `width` (default: the console's) with no value cut short, chosen in the
    order of `first_kept`, shown in their own order; a caption names the ones left out.
    A terminal narrower than the table (or none: a CI log) gets fewer whole columns,
    not every column truncated to a few letters."""
    width = width or console.width
    cells = {header: [_cell(v) for v in frame[name]] for header, name in columns.items()}
    ranked = [h for h in first_kept if h in cells] + [h for h in cells if h not in first_kept]
    kept: set[str] = set()
    used = 1  # the table's left border
    for header in ranked:
        natural = max([len(header), *map(len, cells[header])])
        need = (min(natural, WRAPPED_WIDTH) if header in WRAPPED else natural) + 3
        if used + need <= width or not kept:
            kept.add(header)
            used += need
    shown = [h for h in cells if h in kept]
    left_out = [h for h in cells if h not in kept]
    caption = (f"left out to fit {width} columns: {', '.join(left_out)}" if left_out
               else None)
    table = Table(*[Column(h, no_wrap=h not in WRAPPED, overflow="fold") for h in shown],
                  title=title, caption=caption)
    for row in zip(*[cells[h] for h in shown], strict=True):
        table.add_row(*row)
    return table


def _cell(value: Any) -> str:
    import pandas as pd  # loaded already: the value comes from a frame

    return "" if value is None or pd.isna(value) else str(value)


@app.command()
def report(
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv, html or md (default: csv; md with "
                                 "--request)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="file (csv: a directory)")] = None,
    statuses: Annotated[
        list[str] | None, typer.Option("--status", help="only requests in this status "
                                       "(repeat for several)")
    ] = None,
    regimes: Annotated[
        list[str] | None, typer.Option("--regime", help="only this regime (repeat)")
    ] = None,
    types: Annotated[
        list[str] | None, typer.Option("--type", help="only this request type (repeat)")
    ] = None,
    states: Annotated[
        list[str] | None, typer.Option("--state", help="only this deadline state (repeat)")
    ] = None,
    since: Annotated[
        str | None, typer.Option(metavar="YYYY-MM-DD", help="received on or after this day "
                                 "(UTC)")
    ] = None,
    until: Annotated[
        str | None, typer.Option(metavar="YYYY-MM-DD", help="received on or before this day "
                                 "(UTC)")
    ] = None,
    request: Annotated[
        str | None, typer.Option("--request", metavar="REQUEST_ID", help="one request's page "
                                 "instead: dates, systems, partners, deliverables")
    ] = None,
    html_rows: Annotated[
        int | None, typer.Option("--html-rows", min=0, help="most request rows in the HTML "
                                 "page (default 2000; report.csv has all)")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """The completion report: csv (report.csv, steps.csv, systems.csv, report.html), html
    or md, of the requests the filters let through (all by default); or, with --request,
    one request's page (html or md)."""
    from dsrflow.ledger import UnknownRequest
    from dsrflow.report import (
        HTML_MAX_ROWS,
        FilterError,
        filter_requests,
        make_filter,
        request_view,
        request_view_markdown,
        requests_frame,
        steps_frame,
        steps_of,
        to_html,
        to_markdown,
        write_reports,
    )

    if request is not None:
        if statuses or regimes or types or states or since or until:
            raise fail("--request shows one request; the filters do not apply to it", 2)
        if (fmt or "md") not in ("html", "md"):
            raise fail("--format must be html or md with --request", 2)
        rt = open_runtime(config)
        view = request_view if fmt == "html" else request_view_markdown
        try:
            text = view(rt.ledger, rt.deadlines, request, at_risk_days=rt.settings.at_risk_days)
        except UnknownRequest:
            raise fail(f"no request {request}") from None
    else:
        fmt = fmt or "csv"
        if fmt not in ("csv", "html", "md"):
            raise fail("--format must be csv, html or md", 2)
        try:
            chosen = make_filter(statuses=statuses or [], regimes=regimes or [],
                                 types=types or [], deadline_states=states or [],
                                 received_from=since, received_to=until)
        except FilterError as exc:
            raise fail(say(exc), 2) from None
        rows = HTML_MAX_ROWS if html_rows is None else html_rows
        rt = open_runtime(config)
        if fmt == "csv":
            paths = write_reports(out or Path("."), rt.ledger, rt.deadlines,
                                  at_risk_days=rt.settings.at_risk_days, filter=chosen,
                                  max_rows=rows)
            for p in paths.values():
                console.print(str(p))
            return
        requests = filter_requests(
            requests_frame(rt.ledger, rt.deadlines, at_risk_days=rt.settings.at_risk_days),
            chosen)
        if fmt == "html":
            text = to_html(requests, steps_of(steps_frame(rt.ledger), requests),
                           deadlines=rt.deadlines, filter=chosen, max_rows=rows)
        else:
            text = to_markdown(requests)
    if out:
        out.write_text(text)
    else:
        sys.stdout.write(text)


@app.command()
def demo(
    users: Annotated[int, typer.Option(min=10, help="random users besides the named ones")] = 200,
    out: Annotated[Path, typer.Option(help="where the demo world goes")] = Path("demo-out"),
) -> None:
    """Build the demo world, submit the sample tickets, run them, write the report."""
    from entrypoints.demo import run_demo

    code = run_demo(out, users, console)
    raise typer.Exit(code)


@datamap_app.command("check")
def datamap_check(file: Path) -> None:
    """Validate a data map; errors name the field's dotted path."""
    from dsrflow.datamap import DataMapError, load_datamap

    try:
        dm = load_datamap(file)
    except DataMapError as exc:
        raise fail(say(exc)) from None
    tables = sum(len(s.tables) for _, s in dm.sql_systems())
    console.print(f"{file}: ok ({len(dm.systems)} systems, {tables} tables, version {dm.version})")


@datamap_app.command("draft")
def datamap_draft(
    db: Annotated[str, typer.Option("--db", help="SQLAlchemy URL of the database")],
    out: Annotated[Path | None, typer.Option(help="write here instead of stdout")] = None,
    system: Annotated[str, typer.Option(help="the system's name in the map")] = "userdb",
) -> None:
    """Draft a data map from a live database, for a person to review."""
    from dsrflow.datamap_draft import draft, to_yaml

    result = draft(db, system)
    text = to_yaml(result)
    if out:
        out.write_text(text)
        err.print(f"wrote {out} ({len(result.warnings)} warnings)")
    else:
        sys.stdout.write(text)


@keys_app.command("new")
def keys_new(file: Path) -> None:
    """Write a new key file (mode 0600); point `key_file` in dsrflow.yaml at it."""
    from dsrflow.keyfile import write_key_file

    try:
        write_key_file(file)
    except FileExistsError:
        raise fail(f"{file} exists; refusing to overwrite keys") from None
    console.print(f"wrote {file}")


@keys_app.command("add-signing")
def keys_add_signing(file: Path) -> None:
    """Add a certificate signing key to a key file that has none (one written before
    certificates existed). A signing key already there is never replaced."""
    from dsrflow.errors import ConfigError
    from dsrflow.keyfile import add_signing_key
    from dsrflow.signing import key_id

    try:
        key = add_signing_key(file)
    except ConfigError as exc:
        raise fail(say(exc)) from None
    console.print(f"added a signing key to {file} (key id {key_id(key.public_key())})",
                  markup=False, highlight=False)


@keys_app.command("rotate-signing")
def keys_rotate_signing(file: Path) -> None:
    """Replace the certificate signing key of a key file. The old key's public half stays
    in the file (`retired_signing_keys`), so every certificate it signed still verifies and
    says it was signed by a retired key. Restart the workers and `dsrflow serve` so they
    sign with the new key, and give the new public key (`dsrflow keys public-key`) to
    whoever checks certificates."""
    from dsrflow.errors import ConfigError
    from dsrflow.keyfile import rotate_signing_key
    from dsrflow.signing import encode_public_key, key_id

    try:
        retired, key = rotate_signing_key(file)
    except ConfigError as exc:
        raise fail(say(exc)) from None
    public = key.public_key()
    for line in (f"retired signing key {retired.key_id} (kept in {file} to verify the "
                 "certificates it signed)",
                 f"new signing key {key_id(public)}",
                 f"new public key: {encode_public_key(public)}"):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@keys_app.command("rotate-encryption")
def keys_rotate_encryption(file: Path) -> None:
    """Refused: the token and encryption keys cannot be rotated in place (says why)."""
    from dsrflow.keyfile import NO_ROTATION

    raise fail(f"refused: {NO_ROTATION} ({file} is unchanged)", 2)


@keys_app.command("public-key")
def keys_public_key(config: ConfigOption = None) -> None:
    """Print the public half of the certificate signing key and its id, and the retired
    keys certificates are still checked against: give them to whoever checks
    certificates (`dsrflow certificate verify --public-key ...`)."""
    from dsrflow.settings import ConfigError
    from dsrflow.signing import encode_public_key

    settings = load_config(config)
    try:
        keys = settings.verification_keys()
    except ConfigError as exc:
        raise fail(f"config error: {say(exc)}", 2) from None
    current, retired = keys[0], keys[1:]
    console.print(f"public key: {encode_public_key(current.public_key)}", markup=False,
                  highlight=False)
    console.print(f"key id: {current.key_id}", markup=False, highlight=False)
    for key in retired:
        console.print(f"retired: {key.key_id} {encode_public_key(key.public_key)} "
                      f"({key.describe()})", markup=False, highlight=False, soft_wrap=True)


@certificate_app.command("verify")
def certificate_verify(
    file: Path,
    public_key: Annotated[
        list[str] | None,
        typer.Option("--public-key", help="a trusted Ed25519 public key (base64); repeat for "
                     "several; default: the configured signing key's public half and the "
                     "retired signing keys"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Check an erasure certificate's signature against a trusted key, and say which key
    signed it. Exit 0 if it holds, 1 if it does not (a key that is neither the current
    nor a retired signing key is not trusted) or the file holds anything the signature
    does not cover."""
    from dsrflow.certificates import CertificateInvalid, read_certificate, verify_certificate
    from dsrflow.crypto import KeyMaterialError
    from dsrflow.keyfile import VerificationKey
    from dsrflow.settings import ConfigError
    from dsrflow.signing import decode_public_key

    if public_key:
        try:
            keys = [VerificationKey(decode_public_key(k, "--public-key"), "")
                    for k in public_key]
        except KeyMaterialError as exc:
            raise fail(f"error: {say(exc)}", 2) from None
        known: dict[str, str] = {k.key_id: "a key given with --public-key" for k in keys}
    else:
        # The certificate's own embedded key is never trusted: a forger would embed theirs.
        settings = load_config(config)
        try:
            keys = settings.verification_keys()
        except ConfigError as exc:
            raise fail(f"config error: {say(exc)}; or pass --public-key", 2) from None
        known = {k.key_id: k.describe() for k in keys}
    try:
        verified = verify_certificate(read_certificate(file), [k.public_key for k in keys])
    except OSError as exc:
        raise fail(f"error: cannot read {file}: {exc.strerror}", 2) from None
    except CertificateInvalid as exc:
        raise fail(f"INVALID: {exc.reason}") from None
    console.print(
        f"valid: request {verified.request_id} (ticket {verified.ticket_id or '-'}), "
        f"{verified.outcome}, issued {verified.issued_at}, key {verified.key_id}",
        markup=False, highlight=False, soft_wrap=True,
    )
    console.print(f"signed by {known[verified.key_id]} ({verified.key_id})",
                  markup=False, highlight=False, soft_wrap=True)


@partner_app.command("confirm")
def partner_confirm(
    request_id: str,
    partner: str,
    by: Annotated[str, typer.Option(help="who confirmed it")],
    reference: Annotated[str, typer.Option(help="the partner's reference")],
    config: ConfigOption = None,
) -> None:
    """Record that a manual partner carried out a request."""
    from pipeline import partners

    rt = open_runtime(config)
    try:
        partners.confirm(rt, request_id, partner, by=by, reference=reference)
    except LookupError as exc:
        raise fail(say(exc)) from None
    _print_status(rt, [request_id])


@partner_app.command("retry")
def partner_retry(request_id: str, partner: str, config: ConfigOption = None) -> None:
    """Send a blocked partner request again (once its objection is dealt with): under the
    same id, at the request's next run (`dsrflow run REQUEST_ID`)."""
    from pipeline import partners

    rt = open_runtime(config)
    try:
        partners.retry(rt, request_id, partner)
    except LookupError as exc:
        raise fail(say(exc)) from None
    console.print(f"{partner} will be asked again at the next run of {request_id}",
                  markup=False, highlight=False)


@partner_app.command("check")
def partner_check(config: ConfigOption = None) -> None:
    """Ask OpenDSR partners about everything still waiting (callbacks can be lost)."""
    from pipeline import partners

    rt = open_runtime(config)
    happened = partners.check(rt)
    for request_id, what in happened.items():
        console.print(f"{request_id}: {what}")
    if not happened:
        console.print("nothing waiting on OpenDSR partners")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface for the callback endpoint")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="port for the callback endpoint")] = 8787,
    notification_block: Annotated[
        str | None,
        typer.Option(help="apply the automations, notifying through this block "
                          "('<block-type-slug>/<name>' or an id)"),
    ] = None,
    limit: Annotated[int | None, typer.Option(help="most flow runs at once")] = None,
    callbacks_only: Annotated[
        bool, typer.Option("--callbacks-only",
                           help="only the callback endpoint: workers on the `dsrflow` work "
                                "pool run the deployments (docker-compose.yaml)"),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Serve every deployment (intake, process-requests, check-partners, deadline-report,
    confirm-partner) and the OpenDSR callback endpoint, against the Prefect server at
    PREFECT_API_URL (`make ui` starts one). Intake is served only with a `queue:`."""
    from deployments.callbacks import create_app, run_callbacks, serving
    from deployments.serve import apply_automations, serve_all
    from dsrflow.settings import CONFIG_ENV

    rt = open_runtime(config)
    if callbacks_only:
        # Serving the deployments here too would take them from the workers' pool.
        console.print(f"OpenDSR callbacks on http://{host}:{port}/opendsr/callbacks/<partner>",
                      markup=False, highlight=False)
        run_callbacks(create_app(rt), host=host, port=port)
        return
    if notification_block:
        apply_automations(notification_block=notification_block)
    from tasks.limits import apply_limits

    for name, size in apply_limits(rt).items():  # in the UI before the first run needs one
        console.print(f"concurrency limit {name}: {size}")
    chosen = config or os.environ.get(CONFIG_ENV)
    config_file = Path(chosen).resolve() if chosen else None
    # Intake reads the ticket queue: with none configured it would fail every 5 minutes.
    without = frozenset() if rt.settings.queue is not None else frozenset({"intake"})
    if without:
        console.print("no `queue:` in the settings: the intake deployment is not served "
                      "(tickets come in with `dsrflow submit`)")
    with serving(create_app(rt), host=host, port=port) as url:
        console.print(f"OpenDSR callbacks on {url}/opendsr/callbacks/<partner>")
        serve_all(config=config_file, limit=limit, without=without)


@app.command("audit")
def audit(config: ConfigOption = None) -> None:
    """Check the audit trail's hash chain."""
    rt = open_runtime(config)
    broken = rt.ledger.verify_audit_chain()
    if broken is None:
        console.print("audit chain intact")
        return
    raise fail(f"audit chain broken at event {broken}")


@package_app.command("open")
def package_open(
    file: Path,
    key: Annotated[str, typer.Option(help="the package key the requester received")],
    out: Annotated[Path, typer.Option(help="where to extract it")] = Path("package"),
) -> None:
    """Decrypt an access package, check every file against its manifest, extract it."""
    import io
    import zipfile

    from dsrflow.packages import PackageError, check_package, unseal

    try:
        package = unseal(file.read_bytes(), key.encode())
        manifest = check_package(package)
    except (PackageError, zipfile.BadZipFile) as exc:
        raise fail(f"INVALID: {say(exc)}") from None
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        zf.extractall(out)  # names were checked against the manifest; zipfile sanitizes too
    console.print(f"{len(manifest['files'])} files, checksums ok: {out / 'index.html'}",
                  markup=False, highlight=False)


@package_app.command("handed-over")
def package_handed_over(
    request_id: str,
    channel: Annotated[str, typer.Option(help="how the key reached the requester, e.g. "
                                         "'SMS to the account phone'")],
    by: Annotated[str, typer.Option(help="who sent it")],
    config: ConfigOption = None,
) -> None:
    """Record that the key went out, and delete it from the outbox: dsrflow keeps no key."""
    from pipeline.deliverables import handed_over

    rt = open_runtime(config)
    try:
        handed_over(rt, request_id, channel=channel, by=by)
    except LookupError as exc:
        raise fail(say(exc)) from None
    console.print(f"recorded; the key of {request_id} is no longer kept anywhere by dsrflow",
                  markup=False, highlight=False)


@package_app.command("expire")
def package_expire(config: ConfigOption = None) -> None:
    """Past the link's lifetime: drop keys still in the outbox (recorded as never handed
    over) and delete local packages. For S3, also give the bucket a lifecycle rule."""
    from pipeline.deliverables import expire

    dropped, deleted = expire(open_runtime(config))
    console.print(f"{len(dropped)} unsent keys dropped from the outbox, "
                  f"{len(deleted)} expired local packages deleted")


if __name__ == "__main__":  # pragma: no cover
    app()
