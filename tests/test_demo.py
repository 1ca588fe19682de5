"""`dsrflow demo` from the command line, as a newcomer runs it: it builds the world, runs
the sample tickets through a real (embedded) Prefect, and writes the report."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dsrflow.leakscan import files_containing
from examples.wishe.subjects import SUBJECTS

pytestmark = pytest.mark.slow  # the whole demo: half a minute

TICKETS = Path(__file__).resolve().parent.parent / "examples" / "wishe" / "tickets"


def test_demo_answers_every_ticket_and_leaves_prefect_clean(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "demo", "--users", "40", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    report = pd.read_csv(out / "report.csv")
    steps = pd.read_csv(out / "steps.csv")
    assert (out / "report.html").read_text().count("<tr>") > len(report)

    # Every sample ticket is listed, and the erasure the retention sweep filed for the
    # account cancelled six weeks ago; every valid one has a due date.
    ticket_ids = {f.stem for f in TICKETS.glob("*.json")}
    assert len(report) == len(ticket_ids) + 1
    [filed] = report[report["channel"] == "retention"].to_dict("records")
    assert str(filed["ticket_id"]).startswith("retention.cancelled-30d.")
    assert (filed["type"], filed["status"]) == ("erasure", "verified")
    valid = report[report["status"] != "rejected"]
    assert valid["due_at"].notna().all()
    assert (report["status"] == "rejected").sum() == 1
    assert (report["status"] == "awaiting_verification").sum() == 1
    # A month as a new user should first see it, whatever the day the demo runs: most
    # requests completed on time, one at risk, one overdue, one extended.
    assert report["deadline_state"].value_counts().to_dict() == {
        "completed_on_time": 7, "at_risk": 1, "overdue": 1, "extended": 1,
        "awaiting_verification": 1, "not_applicable": 1, "on_time": 1}

    # The policy's gates, each outcome with its reason: a repeat flagged (by another
    # identity of the same subject, in the same batch), a child's erasure by her verified
    # parent, and an erasure that met a legal hold on its subject's location history.
    by_ticket = report.set_index("ticket_id")
    assert by_ticket.loc["WSH-2026-11-0013", "repeat"] == "flag"
    assert by_ticket.loc["WSH-2026-11-0013", "repeat_of"] == "WSH-2026-11-0002"
    assert by_ticket["repeat"].notna().sum() == 1
    assert bool(by_ticket.loc["WSH-2026-11-0012", "minor"])
    assert by_ticket.loc["WSH-2026-11-0012", "guardian"] == "parent (verified)"
    assert by_ticket.loc["WSH-2026-11-0012", "status"] == "completed"
    held = by_ticket.loc["WSH-2026-11-0003"]
    assert str(held["legal_holds"]).startswith("criminal_investigation until ")
    certificate = json.loads((out / "certificates" / f"{held['request_id']}.json").read_text())
    [hold] = certificate["certificate"]["legal_holds"]
    assert (hold["exemption"], hold["categories"], hold["systems"]) == (
        "criminal_investigation", ["location"], ["userdb"])
    assert "supervisory authority" in hold["appeal"]  # a GDPR request: how to complain
    location = [h for h in certificate["certificate"]["holds"]
                if h["part"] == "location_history"]
    assert location and location[0]["retained"] > 0
    assert "Legal hold" in " ".join(result.stdout.split())

    # Every erasure-type request was proven: nothing remains in any system.
    erasing = valid[valid["type"].isin(["erasure", "consent_withdrawal",
                                        "account_cancellation"])]
    done = erasing[erasing["status"] == "completed"]
    mine = steps[steps["request_id"].isin(erasing["request_id"])]
    proven = mine[~mine["kind"].isin(["partner", "deliverable"])]
    assert len(done) >= 3
    assert len(proven) >= len(done)
    assert (proven["remaining"] == 0).all()
    # ...in the database, in object storage (all versions) and in the logs.
    assert {"sql", "objects", "logs"} <= set(proven["kind"])
    assert proven[proven["kind"] == "objects"]["deleted"].sum() > 0
    assert proven[proven["kind"] == "logs"]["anonymized"].sum() > 0

    # ...and reached the partners: the OpenDSR one finished and called back; the manual
    # one was confirmed by a person. The three requests left open still wait for them.
    partners = steps[steps["kind"] == "partner"]
    assert set(partners["system"]) == {"adnet", "courier"}
    waiting = set(report[report["status"] == "in_progress"]["request_id"])
    assert len(waiting) == 3
    assert (partners[~partners["request_id"].isin(waiting)]["status"] == "succeeded").all()
    assert (partners[partners["request_id"].isin(waiting)]["status"]
            == "pending_external").all()
    said = " ".join(result.stdout.split())  # rich wraps lines at the terminal's width
    assert "Still waiting for them" in said

    # Each completed erasure has its signed certificate, each access or portability request
    # its package; the demo opened every one of them (signature, checksums) before ending.
    made = steps[steps["kind"] == "deliverable"]
    certified = set(made[made["system"] == "erasure-certificate"]["request_id"])
    assert certified == set(done["request_id"])
    for request_id in certified:
        certificate = json.loads((out / "certificates" / f"{request_id}.json").read_text())
        # Every identity of the account was looked for: the phone too, whatever the ticket
        # gave (the account's own rows hold one for every demo subject).
        assert "phone" in certificate["certificate"]["identities"]["searched"]
    collecting = valid[valid["type"].isin(["access", "portability"])
                       & (valid["status"] == "completed")]
    packaged = set(made[made["system"] == "access-package"]["request_id"])
    assert packaged == set(collecting["request_id"]) and len(packaged) == 2
    assert len(list((out / "handover").glob("*.json"))) == 2
    assert (made["status"] == "succeeded").all()
    assert "checksums ok" in said and "signature ok" in said

    # Looked at from outside: the erased subject's email is gone from every log file, in
    # any case; the subject who only asked for access is still there.
    logs = b"".join(
        gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        for p in (out / "logs").rglob("*") if p.is_file()
    ).lower()
    erased = next(s for s in SUBJECTS if s.email_normalized == "li.na@example.com")
    kept = next(s for s in SUBJECTS if s.email_normalized == "zhang.wei@example.com")
    for spelling in (erased.email_normalized, erased.email_normalized.replace("@", "%40")):
        assert spelling.encode() not in logs
    assert kept.email_normalized.encode() in logs
    # Her ticket gave an email and a device id, never her phone: the account's number was
    # learnt from the user database and is gone from the logs too, in every spelling. So is
    # that of the account cancelled by user id and phone.
    cancelled = next(s for s in SUBJECTS if s.email_normalized == "zhao.min@example.org")
    for subject in (erased, cancelled):
        national = subject.phone_e164[3:]
        for spelling in (national, f"{national[:3]} {national[3:7]} {national[7:]}",
                         f"{national[:3]}-{national[3:7]}-{national[7:]}"):
            assert spelling.encode() not in logs, (subject.email_normalized, spelling)
    assert kept.phone_e164[3:].encode() in logs

    # The demo ends with the daily retention sweep, counted then applied: every location
    # row past 90 days but the held subject's goes, old orders are anonymized, the access
    # log's spring rotation is deleted, and the cancelled account's erasure is filed.
    printed = " ".join(result.stdout.split())
    assert "Retention sweep (dry run)" in printed and "Retention sweep " in printed
    assert not (out / "logs" / "nginx" / "access.log.1").exists()
    assert (out / "logs" / "nginx" / "access.log").exists()
    sweeps = {r["rule"]: r for r in pd.read_csv(out / "sweeps.csv").to_dict("records")}
    assert sorted(sweeps) == sorted(["location-90d", "orders-3y", "cancelled-30d",
                                     "orphan-uploads-30d", "app-180d", "access-180d"])
    access, accounts = sweeps["access-180d"], sweeps["cancelled-30d"]
    assert (access["unit"], access["changed"], access["files"]) == ("lines", 40, 1)
    assert (accounts["unit"], accounts["changed"]) == ("accounts", 1)
    assert sweeps["location-90d"]["held"] > 0
    assert all(pd.isna(r["skipped"]) for r in sweeps.values())
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{out / 'wishe.db'}")
    with engine.connect() as conn:
        cutoff = conn.execute(sa.text(
            "SELECT DISTINCT user_id FROM location_history WHERE recorded_at < :c"),
            {"c": (pd.Timestamp.now("UTC") - pd.Timedelta(days=90)).strftime(
                "%Y-%m-%d %H:%M:%S")}).scalars().all()
        old_orders = conn.execute(sa.text(
            "SELECT buyer_phone FROM orders WHERE created_at < :c"),
            {"c": (pd.Timestamp.now("UTC") - pd.Timedelta(days=1095)).strftime(
                "%Y-%m-%d %H:%M:%S")}).scalars().all()
    engine.dispose()
    li_na = next(s for s in SUBJECTS if s.email_normalized == "li.na@example.com")
    assert cutoff == [li_na.user_id]  # held: criminal investigation, location data
    assert old_orders and all(p is None or p.startswith("pn_") for p in old_orders)

    # Prefect's database (and everything else under its home) holds no identity.
    needles = {v for s in SUBJECTS for v in (s.email, s.email_normalized, s.phone,
                                              s.phone_e164)}
    assert (out / "prefect").is_dir()
    assert files_containing([out / "prefect"], needles) == {}
    # ...and the scan is meaningful: the user database does hold them.
    assert files_containing([out], needles)
