"""SIGKILL at each step boundary of a real `dsrflow run` (a subprocess with its own embedded
Prefect server), then the recovery a production install does on its own: the dead run's
leases expire, `resume-requests` takes the requests over, the partner's answer is checked.
Each ends with every request completed, the partner asked once per request, every step
done once more at most, and the ledger's and the certificates' counts equal to the rows
that left the database, the objects that left the bucket (S3 on moto) and the log lines
rewritten."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
import sqlalchemy as sa

from connectors.base import ConnectorConfigError
from dsrflow.ledger.schema import requests
from dsrflow.model import Status
from dsrflow.settings import load_settings
from examples.partner import ReferencePartner
from flows.resume import resume_requests
from pipeline import partners
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import cli_config, make_runtime, ticket

UIDS = [1, 2]
BUCKET = "crash-uploads"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
       "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def partner() -> Iterator[ReferencePartner]:
    with ReferencePartner() as running:
        yield running


def _objects(endpoint: str) -> int:
    s3 = boto3.client("s3", endpoint_url=endpoint, **_aws())
    return len(s3.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def _aws() -> dict[str, str]:
    return {"aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
            "region_name": AWS["AWS_DEFAULT_REGION"]}


def _setup(tmp_path: Path, partner: ReferencePartner, endpoint: str) -> tuple[Path, str]:
    s3 = boto3.client("s3", endpoint_url=endpoint, **_aws())
    if BUCKET in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        for obj in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    else:
        s3.create_bucket(Bucket=BUCKET)
    for uid in range(1, 6):  # two uploads each
        for n in range(2):
            s3.put_object(Bucket=BUCKET, Key=f"uploads/{uid}/{n}.jpg", Body=b"x")
    _, url = sqlworld.sqlite_world(tmp_path, 12, 5)
    sqlworld.unfollow_among(url, UIDS)
    (tmp_path / "partner.pem").write_bytes(partner.certificate_pem)
    doc = sqlworld.datamap_with_partner(url, partner.url, partner.domain,
                                        category="contact", email_format="sha256")
    doc["systems"]["media"] = {"kind": "objects", "endpoint_url": endpoint, "buckets": {
        BUCKET: {"category": "media", "action": "delete",
                 "ownership": [{"key_template": "uploads/{user_id}/"}]}}}
    doc["systems"]["applogs"] = {"kind": "logs", "sources": {"app": {
        "path": "logs/*.log", "format": "text", "identities": ["email"]}}}
    return cli_config(tmp_path, doc), url


def _write_logs(folder: Path, emails: list[str]) -> int:
    """Three days of access logs, each with the subjects' lines among others'; returns how
    many lines are the subjects'."""
    (folder / "logs").mkdir()
    mine = 0
    for day in (1, 2, 3):
        lines = []
        for n in range(40):
            who = emails[n % len(emails)] if n % 4 == 0 else f"user{n}@example.org"
            mine += who in emails
            lines.append(f"2026-11-0{day}T10:{n:02d}:00Z INFO login ok user={who} "
                         f"ip=10.0.{day}.{n} ua=\"Mozilla/5.0\"")
        (folder / "logs" / f"app-{day}.log").write_text("\n".join(lines) + "\n")
    return mine


def _lines_of(folder: Path, emails: list[str]) -> int:
    return sum(1 for path in (folder / "logs").glob("*.log")
               for line in path.read_text().splitlines() if any(e in line for e in emails))


@pytest.mark.parametrize(
    "point", ["after-gate", "before-commit", "after-commit", "after-objects", "mid-logs",
              "logs-reported", "after-post", "before-close"]
)
def test_sigkill_at_a_step_boundary_then_recovery_does_everything_once(
    point: str, tmp_path: Path, partner: ReferencePartner, prefect_server: list[Path],
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in AWS.items():
        monkeypatch.setenv(key, value)
    config, url = _setup(tmp_path, partner, s3_endpoint)
    rt = Runtime(load_settings(config))
    previous = set_runtime(rt)
    try:
        from dsrflow.intake import submit

        engine = sa.create_engine(url)
        with engine.connect() as conn:
            users = sqlworld.metadata.tables["users"]
            emails = dict(conn.execute(sa.select(users.c.id, users.c.email)
                                       .where(users.c.id.in_(UIDS))).tuples().all())
        engine.dispose()
        ids = [submit(rt.ledger, rt.datamap, ticket(
            f"K-{uid}", "erasure", [{"type": "email", "value": emails[uid]}])).request_id
            for uid in UIDS]
        before = sqlworld.total_rows(url)
        objects_before = _objects(s3_endpoint)
        lines = _write_logs(tmp_path, [emails[uid] for uid in UIDS])

        env = {k: v for k, v in os.environ.items()
               if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
        killed = subprocess.run([sys.executable, "-m", "tests.crashpoints", point, str(config)],
                                env=env, cwd=Path(__file__).resolve().parent.parent,
                                capture_output=True, text=True, timeout=600,
                                start_new_session=True)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert {rt.ledger.get(rid).status for rid in ids} == {Status.IN_PROGRESS}

        # Time passes: the dead run's leases run out (rewound here, not waited for).
        with rt.ledger.engine.begin() as conn:
            conn.execute(sa.update(requests).values(
                lease_expires_at=datetime.now(UTC) - timedelta(minutes=1)))
        resumed = resume_requests(grace_minutes=30)
        assert resumed["abandoned"] == len(ids)
        for rid in ids:  # the partner finishes; the scheduled check closes the requests
            [row] = [p for p in rt.ledger.partner_requests([rid]) if p.system == "adnet"]
            partner.complete(str(row.subject_request_id))
        partners.check(rt)

        steps = rt.ledger.steps(ids)
        for rid in ids:
            record = rt.ledger.get(rid)
            assert record.status is Status.COMPLETED, (point, record.reason)
            [row] = [p for p in rt.ledger.partner_requests([rid]) if p.system == "adnet"]
            srid = str(row.subject_request_id)
            assert partner.posts[srid] == 1 and partner.distinct_requests(srid) == 1, point
        assert all(s.attempts <= 2 for s in steps)
        for step in steps:
            if step.action == "certify":
                document = json.loads(Path(step.details["path"]).read_text())
                assert document["certificate"]["outcome"]["status"] == "complete"
        deleted, certified = sqlworld.deleted_as_recorded(steps)
        gone = before - sqlworld.total_rows(url)
        assert gone > 0 and deleted == gone and certified == gone, (point, gone, deleted)
        deleted, certified = sqlworld.deleted_as_recorded(steps, "media")
        gone = objects_before - _objects(s3_endpoint)
        assert gone == 2 * len(UIDS) and deleted == gone and certified == gone, (
            point, gone, deleted, certified)
        anonymized, certified = sqlworld.changed_as_recorded(steps, "applogs", "anonymized")
        assert _lines_of(tmp_path, list(emails.values())) == 0
        assert anonymized == certified == lines, (point, lines, anonymized, certified)
    finally:
        set_runtime(previous)
        rt.close()


def test_a_system_kept_in_the_ledgers_own_sqlite_file_is_refused(tmp_path: Path) -> None:
    """SQLite has one writer per file: an erasure there could not record what it is about
    to commit before committing, so a crash between would go uncounted. Refused, named."""
    _, url = sqlworld.sqlite_world(tmp_path, 3, 1)
    rt = make_runtime(tmp_path, sqlworld.datamap_doc(url), ledger_url=url)
    try:
        with pytest.raises(ConnectorConfigError, match=r"systems\.db\.url: the ledger's own"):
            rt.sql("db")
    finally:
        rt.close()
