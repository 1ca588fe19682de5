"""`dsrflow demo`: the Wishe world, its sample tickets, one flow run, the report.

Everything lives in one folder (default `demo-out/`): the app's SQLite database, the
ledger, the keys, Prefect's home, the exports and the report. `DIR/dsrflow.yaml` points
every other command at it (`dsrflow status --config demo-out/dsrflow.yaml`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from dsrflow.files import DIR_MODE, private_dir
from dsrflow.model import Regime
from dsrflow.settings import load_settings, write_key_file

MARKER = ".dsrflow-demo"
DEMO_PARTNER_TOKEN = "demo-adnet-token"  # the demo partner's, not a secret
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "demo",
    "AWS_SECRET_ACCESS_KEY": "demo",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_SESSION_TOKEN": "demo",
}
PACKAGE_BUCKET = "wishe-dsr-packages"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "wishe"


class DemoError(RuntimeError):
    pass


def run_demo(out: Path, users: int, console: Console) -> int:
    try:  # the demo world and its stand-ins are not in a production install
        import moto.server  # noqa: F401

        from examples.partner import ReferencePartner
    except ImportError:
        raise DemoError(
            "the demo runs from a checkout of the repository, with the demo extra: run "
            "`make demo` there (or `pip install -e '.[demo]'` and `python -m "
            "entrypoints.cli demo` from its root)"
        ) from None

    out = out.resolve()
    _fresh_folder(out)
    # The partner's API token comes from the environment, as in production.
    os.environ["WISHE_ADNET_TOKEN"] = DEMO_PARTNER_TOKEN
    with embedded_s3() as endpoint, ReferencePartner(token=DEMO_PARTNER_TOKEN) as partner:
        return _run(out, users, endpoint, partner, console)


@contextmanager
def embedded_s3() -> Iterator[str]:
    """moto's S3 on loopback for the length of the demo. Dummy credentials are set so
    boto3 can never pick up real ones and talk to AWS instead."""
    for key, value in DUMMY_AWS.items():
        os.environ[key] = value
    with moto_server() as endpoint:
        yield endpoint


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's AWS endpoints on a free loopback port: a real HTTP server, so presigned links
    work as they do against S3."""
    import logging

    from moto.server import ThreadedMotoServer

    # One line per S3 request otherwise, presigned links included.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def _run(out: Path, users: int, endpoint: str, partner: Any, console: Console) -> int:
    config = _write_world(out, users, endpoint, partner, console)

    settings = load_settings(config)
    from dsrflow.prefect_env import prepare

    prepare(settings.path(settings.prefect_home))
    # Prefect is imported only now, with its home set.
    from dsrflow.intake import submit
    from dsrflow.model import Status
    from dsrflow.report import write_reports
    from entrypoints.cli import run_batch
    from pipeline.runtime import Runtime, set_runtime

    runtime = Runtime(settings)
    set_runtime(runtime)
    submitted = Table("ticket", "type", "status", "note", title="Tickets received")
    now = datetime.now(UTC)
    for path in sorted((EXAMPLES / "tickets").glob("*.json")):
        result = submit(runtime.ledger, runtime.datamap,
                        _dated(json.loads(path.read_bytes()), runtime.deadlines, now),
                        phone_regions=runtime.settings.phone_regions)
        record = runtime.ledger.get(result.request_id)
        submitted.add_row(result.ticket_id or path.name,
                          record.type.value if record.type else "?",
                          result.status.value, result.reason or "")
    console.print(submitted)
    _hold(runtime, console, now)

    from deployments.callbacks import create_app, serving

    with serving(create_app(runtime)) as callbacks:
        runtime.settings.callback_base_url = callbacks
        ids = runtime.ledger.runnable()
        console.print(f"Running {len(ids)} verified requests as one Prefect flow run…")
        completed = run_batch(ids)
        _partners_answer(runtime, partner, console)
        _extend(runtime, console, now)
        unswept = _sweep(runtime, console)

    paths = write_reports(out, runtime.ledger, runtime.deadlines,
                          at_risk_days=settings.at_risk_days)
    problems = _check_deliverables(runtime, console) + unswept
    unfinished = [r.ticket_id for r in runtime.ledger.all()
                  if r.status in (Status.FAILED, Status.PARTIALLY_COMPLETED)]
    _print_report(out, console)
    leaks = _scan_prefect(settings.path(settings.prefect_home))
    runtime.close()

    if leaks:
        console.print(f"[red]Prefect's files hold subject identities: {leaks}[/red]")
        return 1
    console.print("Prefect's database and home hold no subject identity (scanned).")
    console.print("Reports: " + ", ".join(str(p) for p in paths.values()))
    console.print(f"Explore: dsrflow status --config {config}")
    if unfinished:
        console.print(f"[red]Not completed: {', '.join(str(t) for t in unfinished)}[/red]")
    for problem in problems:
        console.print(f"[red]{problem}[/red]")
    return 0 if completed and not unfinished and not problems else 1


def _sweep(runtime: Any, console: Console) -> list[str]:
    """The daily retention sweep, while the demo's S3 stand-in still runs: counted first,
    then applied. The cancelled account's erasure it files waits for the next run.
    Returns the rules that did not run."""
    from entrypoints.retention import sweep_table
    from pipeline import retention

    console.print(sweep_table(retention.dry_run(runtime), dry_run=True))
    swept = retention.run_sweep(runtime)
    console.print(sweep_table(swept, dry_run=False))
    return [f"retention rule {o.system} {o.rule} did not run: {o.skipped}"
            for o in swept if o.skipped]


# A month of requests as the demo shows it, dated back from the day it runs: each sample
# ticket's age in days, or what its deadline should be at the end ("overdue", "at_risk":
# the age that puts it there, on its regime's calendar). Those three and the extended one
# are left waiting for the partners; the others complete on time.
MONTH: dict[str, int | str] = {
    "WSH-2026-11-0001": "overdue", "WSH-2026-11-0002": 12, "WSH-2026-11-0003": 11,
    "WSH-2026-11-0004": 10, "WSH-2026-11-0005": 6, "WSH-2026-11-0006": 5,
    "WSH-2026-11-0007": "at_risk", "WSH-2026-11-0008": 8, "WSH-2026-11-0009": 1,
    "WSH-2026-11-0012": 3, "WSH-2026-11-0013": 2,
}
EXTENDED = "WSH-2026-11-0008"  # its partners are slow: extended, with a notice
# The police asked that one subject's location history be kept: her erasure leaves it.
HELD = "WSH-2026-11-0003"
LEFT_OPEN = frozenset({"WSH-2026-11-0001", "WSH-2026-11-0007", EXTENDED})


def _dated(ticket: dict[str, Any], deadlines: Any, now: datetime) -> bytes:
    """The ticket received `MONTH[ticket_id]` days before `now` (at its own local time of
    day), verified as long after receipt as in the sample."""
    received = datetime.fromisoformat(ticket["received_at"])
    age = MONTH.get(str(ticket.get("ticket_id")), 0)
    if isinstance(age, str):
        age = _age_for(age, Regime(ticket["regime"]), received, deadlines, now)
    local_today = now.astimezone(received.tzinfo).date()
    moved = datetime.combine(local_today - timedelta(days=age), received.timetz())
    shift = moved - received
    dated = {**ticket, "received_at": moved.isoformat()}
    dated["verification"] = _shifted(ticket.get("verification"), shift)
    if isinstance(ticket.get("guardian"), dict):
        guardian = ticket["guardian"]
        dated["guardian"] = {**guardian,
                             "verification": _shifted(guardian.get("verification"), shift)}
    return json.dumps(dated).encode()


def _shifted(verification: Any, shift: timedelta) -> Any:
    """A verification verified as long after the moved receipt as after the sample's."""
    if isinstance(verification, dict) and verification.get("verified_at"):
        verified = datetime.fromisoformat(verification["verified_at"]) + shift
        return {**verification, "verified_at": verified.isoformat()}
    return verification


def _age_for(state: str, regime: Regime, received: datetime, deadlines: Any,
             now: datetime) -> int:
    """The fewest days back that leave a request received then `overdue` (due a day ago
    or more) or `at_risk` (one or two working days left) at `now`."""
    calendar = deadlines.calendar(regime)
    for age in range(1, 120):
        at = datetime.combine(now.astimezone(received.tzinfo).date() - timedelta(days=age),
                              received.timetz())
        due = deadlines.due(regime, at)
        if state == "overdue" and due < now - timedelta(days=1):
            return age
        left = calendar.working_days_between(deadlines.local_date(regime, now),
                                             deadlines.local_date(regime, due))
        if state == "at_risk" and due > now and 1 <= left <= 2:
            return age
    raise DemoError(f"no age gives a {regime.value} request the state {state}")


def _hold(runtime: Any, console: Console, now: datetime) -> None:
    """A person places a legal hold, as `dsrflow hold add` does: one subject's location
    history is kept for an investigation while the rest of her erasure goes ahead."""
    from dsrflow.holds import HoldReason

    record = next(r for r in runtime.ledger.all() if r.ticket_id == HELD)
    hold = runtime.ledger.add_hold(
        record.id, HoldReason.CRIMINAL_INVESTIGATION, "demo: a police request to preserve "
        "records", (now + timedelta(days=180)).date(), "demo-dpo", categories=["location"])
    console.print(f"Legal hold {hold.id[:8]} on {HELD}'s subject: criminal_investigation, "
                  f"location data, until {hold.until:%Y-%m-%d}.")


def _extend(runtime: Any, console: Console, now: datetime) -> None:
    """A person extends the request whose partners are slow, and tells the subject."""
    record = next(r for r in runtime.ledger.all() if r.ticket_id == EXTENDED)
    due = runtime.ledger.extend(record.id, "the partners holding the restricted data have "
                                "not answered yet; the subject was told why", at=now)
    console.print(f"{EXTENDED} extended to {due.date().isoformat()}: the subject was told why.")


def _partners_answer(runtime: Any, partner: Any, console: Console) -> None:
    """The partners do their part: the reference OpenDSR partner finishes and calls back
    (real HTTP, signed), and a person confirms the manual partner, for every request but
    those `LEFT_OPEN`, which show what waiting looks like."""
    from dsrflow.model import PARTNER_WAITING, PartnerStatus
    from pipeline import partners

    left_open = {r.id for r in runtime.ledger.all() if r.ticket_id in LEFT_OPEN}
    waiting = [row for row in runtime.ledger.partner_requests(statuses=PARTNER_WAITING)
               if row.request_id not in left_open]
    sent = [row for row in waiting if row.system == "adnet"
            and row.status != PartnerStatus.AWAITING_CONFIRMATION]
    for row in sent:
        partner.complete(row.subject_request_id)  # its signed callback lands here
    # What OpenDSR cannot carry (a rectification, a restriction) a person asked adnet for.
    for row in waiting:
        if row.system == "adnet" and row not in sent:
            partners.confirm(runtime, row.request_id, "adnet", by="demo-operator",
                             reference=f"AD-{row.subject_request_id[:8]}")
    manual = [row for row in waiting if row.system == "courier"]
    for row in manual:
        # As a person would: `dsrflow partner confirm REQUEST_ID courier --by … --reference …`
        partners.confirm(runtime, row.request_id, "courier", by="demo-operator",
                         reference=f"CR-{row.subject_request_id[:8]}")
    console.print(
        f"Partners: adnet (OpenDSR) finished {len(sent)} requests and called back; "
        f"courier (manual) confirmed {len(manual)}. Still waiting for them: "
        f"{', '.join(sorted(LEFT_OPEN))}."
    )


def _fresh_folder(out: Path) -> None:
    """Start from nothing, but never wipe a folder the demo did not make."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise DemoError(f"{out} exists and was not made by `dsrflow demo`; choose --out")
        shutil.rmtree(out)
    # The app's database, its logs, the ledger, keys, Prefect's home, exports: the owner's
    # only, whatever the umask (0700; what is written inside keeps out of others' reach).
    private_dir(out)
    os.chmod(out, DIR_MODE)  # an empty folder given with --out: made private too
    (out / MARKER).write_text("made by dsrflow demo; deleted and rebuilt by the next one\n")


def _write_world(
    out: Path, users: int, endpoint: str, partner: Any, console: Console
) -> Path:
    import boto3

    from examples.wishe.generate import build_world
    from examples.wishe.logs import write_logs
    from examples.wishe.objects import populate

    db_url = f"sqlite:///{out / 'wishe.db'}"
    world = build_world(db_url, users=users)
    console.print(
        f"Built the Wishe world: {world.users} users, "
        f"{sum(world.counts.values())} rows in {len(world.counts)} tables ({out / 'wishe.db'})"
    )
    objects = populate(boto3.client("s3", endpoint_url=endpoint), db_url)
    console.print(f"Filled the embedded S3 at {endpoint}: {_counts(objects)}")
    logs = write_logs(out / "logs", db_url)
    console.print(f"Wrote app and access logs under {out / 'logs'}: {_counts(logs)}")

    # The demo's own copy of the map says where this world is, instead of reading it from
    # the environment as the example map does.
    datamap: dict[str, Any] = yaml.safe_load((EXAMPLES / "datamap.yaml").read_text())
    systems = datamap["systems"]
    systems["userdb"].pop("url_env", None)
    systems["userdb"]["url"] = db_url
    systems["media"].pop("endpoint_url_env", None)
    systems["media"]["endpoint_url"] = endpoint
    systems["adnet"]["endpoint"] = partner.url
    systems["adnet"]["callback_domains"] = [partner.domain]
    (out / "partners").mkdir()
    (out / "partners" / "adnet.pem").write_bytes(partner.certificate_pem)
    (out / "datamap.yaml").write_text(yaml.safe_dump(datamap, sort_keys=False,
                                                     allow_unicode=True))
    write_key_file(out / "keys.json")
    # Access packages go to their own bucket in the embedded S3, delivered by presigned link.
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=PACKAGE_BUCKET)
    config = out / "dsrflow.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ledger_url": "sqlite:///ledger.db",
                "datamap": "datamap.yaml",
                "key_file": "keys.json",
                "exports_dir": "exports",
                "certificates_dir": "certificates",
                "prefect_home": "prefect",
                "packages": {"store": "s3", "bucket": PACKAGE_BUCKET, "endpoint_url": endpoint,
                             "handover_dir": "handover"},
            },
            sort_keys=False,
        )
    )
    return config


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items())


def _print_report(out: Path, console: Console) -> None:
    import pandas as pd

    from dsrflow.deadlines import Deadlines
    from dsrflow.model import DELIVERABLE_KIND
    from entrypoints.cli import STATUS_COLUMNS, frame_table, status_view

    report = pd.read_csv(out / "report.csv", dtype=str)
    # Deadlines only to tell the day in each regime's time zone: no calendar is asked.
    console.print(frame_table(status_view(report, Deadlines()), STATUS_COLUMNS,
                              title="Requests"))
    steps = pd.read_csv(out / "steps.csv", dtype=str).merge(
        report[["request_id", "ticket_id"]], on="request_id"
    )
    steps = steps[steps["kind"] != DELIVERABLE_KIND]  # their own table follows
    columns = ["system", "found", "collected", "deleted", "anonymized", "retained",
               "remaining", "status"]
    console.print(
        frame_table(steps, {"ticket": "ticket_id", **{c: c for c in columns}}, "Per system")
    )


def _check_deliverables(runtime: Any, console: Console) -> list[str]:
    """Open what a requester would receive, as they would: each access package through its
    link with the key from the support outbox (checksums checked), each certificate
    against the installation's public key. Returns what is missing or does not check."""
    import httpx

    from dsrflow.certificates import CertificateInvalid, verify_certificate
    from dsrflow.errors import safe_error
    from dsrflow.model import DELIVERABLE_KIND, Status, StepStatus
    from dsrflow.packages import PackageError, check_package, unseal
    from pipeline.deliverables import CERTIFICATE, PACKAGE

    table = Table("ticket", "type", "delivered", "check", title="Access packages and certificates")
    problems = []
    public = runtime.settings.signing_key_pair().public_key()
    deliverables = {(s.request_id, s.system): s for s in runtime.ledger.steps()
                    if s.kind == DELIVERABLE_KIND}
    for record in runtime.ledger.all():
        if record.type is None or record.status is not Status.COMPLETED:
            continue
        system = (PACKAGE if record.type.collects else
                  CERTIFICATE if record.type.erases else None)
        if system is None:
            continue
        step = deliverables.get((record.id, system))
        if step is None or step.status is not StepStatus.SUCCEEDED:
            problems.append(f"{record.ticket_id}: no {system}")
            continue
        details = step.details
        try:
            if record.type.collects:
                outbox = json.loads(Path(details["key_handed_to"].removeprefix("outbox:"))
                                    .read_text())
                blob = httpx.get(outbox["link"], timeout=30).raise_for_status().content
                manifest = check_package(unseal(blob, outbox["key"].encode()))
                where, check = details["location"], f"{len(manifest['files'])} files, checksums ok"
            else:
                document = json.loads(Path(details["path"]).read_text())
                verify_certificate(document, [public])
                where, check = details["path"], f"signature ok, {details['outcome']}"
        except (PackageError, CertificateInvalid, httpx.HTTPError, OSError, KeyError) as exc:
            problems.append(f"{record.ticket_id}: {system} does not check: {safe_error(exc)}")
            continue
        table.add_row(record.ticket_id, record.type.value, where, check)
    console.print(table)
    return problems


def _scan_prefect(home: Path) -> dict[str, int]:
    """The demo's own privacy check: no demo subject's email or phone in Prefect's files.
    Reports how many identities each file holds, never which."""
    from dsrflow.leakscan import files_containing
    from examples.wishe.subjects import SUBJECTS

    needles = {v for s in SUBJECTS for v in (s.email, s.email_normalized, s.phone, s.phone_e164)}
    return {path: len(found) for path, found in files_containing([home], needles).items()}
