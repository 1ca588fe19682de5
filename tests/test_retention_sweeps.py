"""Retention sweeps of log sources and buckets through the pipeline (`dsrflow sweep`'s
code): the legal holds in the ledger reach the connectors as keyed-token checks — a held
subject's lines and objects stay, whoever wrote their identities how — and each rule's
outcome, in its own unit, is in the audit trail and the report's sweep section."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dsrflow.holds import HoldReason
from dsrflow.intake import submit
from dsrflow.report import sweeps_frame
from pipeline import retention
from pipeline.runtime import Runtime
from tests.helpers import make_runtime, ticket

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
OLD = AT - timedelta(days=200)
NEW = AT - timedelta(days=20)
NEXT_YEAR = (datetime.now(UTC) + timedelta(days=365)).date()


def logs_doc(db_url: str) -> dict[str, Any]:
    return {"version": "t1", "policy_version": "p1", "systems": {
        "db": {"kind": "sql", "url": db_url, "tables": {"accounts": {
            "primary_key": ["id"], "identities": [{"type": "user_id", "column": "id"}],
            "columns": {"id": {"category": "account", "action": "retain", "reason": "x"}}}}},
        "applogs": {"kind": "logs", "phone_region": "CN", "sources": {
            "app": {"path": "logs/app/*.jsonl", "format": "jsonl",
                    "fields": {"uid": "user_id", "email": "email", "phone": "phone"}},
            "access": {"path": "logs/access.log", "format": "text",
                       "identities": ["email"]}},
            "retention": [
                {"name": "app-180d", "source": "app", "after_days": 180,
                 "counts_from": "line_timestamp", "timestamp_field": "ts"},
                {"name": "access-180d", "source": "access", "after_days": 180,
                 "counts_from": "line_timestamp"}]},
    }}


def _line(when: datetime, **fields: str) -> str:
    return json.dumps({"ts": when.isoformat(), **fields}) + "\n"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Runtime, Path]]:
    (tmp_path / "logs" / "app").mkdir(parents=True)
    app = tmp_path / "logs" / "app" / "app.jsonl"
    app.write_text(
        # The held subject, by three identities written three ways.
        _line(OLD, uid="7", event="login")
        + _line(OLD, email="Zhang.Wei@Example.COM", event="reset")
        + _line(OLD, phone="138 0013 8000", event="sms")
        # Somebody else, and a look-alike of the held phone.
        + _line(OLD, uid="8", event="login")
        + _line(OLD, phone="138 0013 8001", event="sms")
        # Young lines of both stay.
        + _line(NEW, uid="7", event="login") + _line(NEW, uid="8", event="login"))
    (tmp_path / "logs" / "access.log").write_text(
        f'1.2.3.4 - - [{OLD:%d/%b/%Y:%H:%M:%S +0000}] "GET / HTTP/1.1" 200 5\n')
    rt = make_runtime(tmp_path, logs_doc(f"sqlite:///{tmp_path / 'app.db'}"))
    yield rt, app
    rt.close()


def _hold(rt: Runtime, **scope: Any) -> str:
    rid = submit(rt.ledger, rt.datamap, ticket("T-1", "access", [
        {"type": "user_id", "value": "7"}, {"type": "email", "value": "zhang.wei@example.com"},
        {"type": "phone", "value": "+8613800138000"}])).request_id
    return rt.ledger.add_hold(rid, HoldReason.CRIMINAL_INVESTIGATION, "case 9", NEXT_YEAR,
                              "dpo", **scope).id


def test_a_held_subjects_log_lines_stay_by_every_identity_however_written(
    world: tuple[Runtime, Path],
) -> None:
    rt, app = world
    hold = _hold(rt, categories=["logs"], systems=["applogs"])
    outcomes = {o.rule: o for o in retention.run_sweep(rt, AT)}
    app_rule = outcomes["app-180d"]
    assert (app_rule.unit, app_rule.changed, app_rule.held, app_rule.skipped) == (
        "lines", 2, 3, None)
    left = [json.loads(line) for line in app.read_text().splitlines()]
    assert [(e.get("uid"), e.get("email"), e.get("phone")) for e in left if e["ts"] < (
        AT - timedelta(days=180)).isoformat()] == [
        ("7", None, None), (None, "Zhang.Wei@Example.COM", None), (None, None, "138 0013 8000")]
    assert sum(1 for e in left if e["ts"] == NEW.isoformat()) == 2
    # A text log's lines cannot be told apart by subject: under the hold, untouched.
    access = outcomes["access-180d"]
    assert access.changed is None and access.skipped is not None
    assert "cannot be told apart by subject" in access.skipped
    assert (app.parent.parent / "access.log").read_text().count("\n") == 1
    # The sweep section of the report: one row per rule, in its unit, the skip explained.
    sweeps = sweeps_frame(rt.ledger).set_index("rule")
    assert sweeps.loc["app-180d", "unit"] == "lines"
    assert (sweeps.loc["app-180d", "changed"], sweeps.loc["app-180d", "held"]) == (2, 3)
    assert "cannot be told apart" in str(sweeps.loc["access-180d", "skipped"])

    rt.ledger.release_hold(hold, "dpo", "case closed")
    again = {o.rule: o for o in retention.run_sweep(rt, AT)}
    assert (again["app-180d"].changed, again["app-180d"].held) == (3, 0)
    assert (again["access-180d"].changed, again["access-180d"].files) == (1, 1)
    assert not (app.parent.parent / "access.log").exists()


def test_a_hold_on_another_category_or_system_does_not_keep_log_lines(
    world: tuple[Runtime, Path],
) -> None:
    rt, app = world
    _hold(rt, categories=["location"])
    _hold(rt, systems=["db"])
    [counted, _] = retention.dry_run(rt, AT)
    assert (counted.expired, counted.held) == (5, 0)
    outcomes = {o.rule: o for o in retention.run_sweep(rt, AT)}
    assert (outcomes["app-180d"].changed, outcomes["app-180d"].held) == (5, 0)
    assert outcomes["access-180d"].skipped is None
    assert len(app.read_text().splitlines()) == 2


# -- buckets ----------------------------------------------------------------------------------
def test_uploads_of_deleted_accounts_go_unless_a_hold_keeps_them(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`orphans_of` reads the accounts that still exist from the SQL system (ids as the
    keys spell them, "007" too); a hold on a deleted account's subject keeps its uploads."""
    import uuid

    import boto3
    import sqlalchemy as sa

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # the connector's usual chain
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = f"sweep-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for owner in ("1", "2", "007", "4", "5"):
        for version in (b"v1", b"v2"):
            s3.put_object(Bucket=bucket, Key=f"uploads/{owner}/a.jpg", Body=version)
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE accounts (id INTEGER PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO accounts (id) VALUES (1), (2), (7)"))
    engine.dispose()
    doc = logs_doc(url)
    del doc["systems"]["applogs"]
    doc["systems"]["media"] = {
        "kind": "objects", "endpoint_url": s3_endpoint,
        "buckets": {bucket: {"category": "media",
                             "ownership": [{"key_template": "uploads/{user_id}/"}]}},
        "retention": [{"name": "orphans-1d", "bucket": bucket, "after_days": 1,
                       "orphans_of": {"system": "db", "table": "accounts",
                                      "column": "id"}}]}
    rt = make_runtime(tmp_path, doc)
    try:
        rid = submit(rt.ledger, rt.datamap, ticket(
            "T-5", "access", [{"type": "user_id", "value": "5"}])).request_id
        rt.ledger.add_hold(rid, HoldReason.LEGAL_OBLIGATION, "case 5", NEXT_YEAR, "dpo",
                           categories=["media"])
        later = datetime.now(UTC) + timedelta(days=2)  # every upload is past one day then
        [counted] = retention.dry_run(rt, later)
        [swept] = retention.run_sweep(rt, later)
        [again] = retention.run_sweep(rt, later)
    finally:
        rt.close()
    assert (counted.unit, counted.expired, counted.held) == ("objects", 1, 1)
    assert (swept.changed, swept.held, swept.locked, swept.skipped) == (1, 1, 0, None)
    assert (again.changed, again.held) == (0, 1)
    left = {v["Key"] for v in s3.list_object_versions(Bucket=bucket).get("Versions", [])}
    assert left == {f"uploads/{o}/a.jpg" for o in ("1", "2", "007", "5")}
    assert not s3.list_object_versions(Bucket=bucket).get("DeleteMarkers")
