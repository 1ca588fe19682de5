"""Objects found through a SQL column (`keys_from`): the bucket erases in an earlier wave
than the database that lists its keys, and when it fails, the database keeps that
request's rows, so a rerun can still find the objects. Otherwise the keys would be gone
and the objects orphaned with nobody able to say whose they are."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import boto3
import pytest
import sqlalchemy as sa

from dsrflow.errors import StepFailed
from dsrflow.intake import submit
from dsrflow.model import Status
from pipeline import closing, steps
from pipeline.runtime import Runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def runtime(tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
            ) -> tuple[Runtime, sqlworld.World, str]:
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    world, url = sqlworld.sqlite_world(tmp_path, 3, 10)
    bucket = f"posts-{random.Random().getrandbits(40):x}"
    doc: dict[str, Any] = {**sqlworld.DATAMAP_DOC}
    doc["systems"] = {
        "db": {**doc["systems"]["db"], "url": url},
        # Each post's attachment is stored under the post's body (the column lists the keys).
        "attachments": {"kind": "objects", "endpoint_url": s3_endpoint, "buckets": {bucket: {
            "category": "content", "action": "delete",
            "ownership": [{"keys_from": {"system": "db", "table": "posts",
                                         "column": "body"}}]}}},
    }
    return make_runtime(tmp_path, doc), world, bucket


def _posts(rt: Runtime, uid: int) -> int:
    engine = sa.create_engine(rt.datamap.sql("db").url or "")
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(sqlworld.posts)
                             .where(sqlworld.posts.c.user_id == uid)).scalar_one()
    engine.dispose()
    return int(count)


def _run(rt: Runtime, rid: str) -> None:
    steps.open_requests(rt, [rid], owner="test-run")
    steps.resolve_identities(rt, [rid])
    for wave in steps.plan_systems(rt, [rid]).waves:
        for system, ids in wave.items():
            with contextlib.suppress(StepFailed):  # recorded in the ledger before raising
                steps.apply_to_system(rt, system, ids)


def test_a_failed_bucket_holds_back_the_rows_that_list_its_keys(
    runtime: tuple[Runtime, sqlworld.World, str], s3_endpoint: str,
) -> None:
    rt, world, bucket = runtime
    uid = next(p["user_id"] for p in world.rows["posts"])
    mine = [p for p in world.rows["posts"] if p["user_id"] == uid]
    others = [p for p in world.rows["posts"] if p["user_id"] != uid]
    rid = submit(rt.ledger, rt.datamap, ticket("H-1", "erasure",
                                               [{"type": "user_id", "value": str(uid)}])
                 ).request_id
    # The bucket erases first: the database lists its keys.
    waves = steps.plan_systems(rt, [rid]).waves
    assert [sorted(w) for w in waves] == [["attachments"], ["db"]]

    # The bucket does not exist yet: the objects step fails, and the database keeps the
    # subject's rows rather than erase the only record of which objects are theirs.
    _run(rt, rid)
    by_system = {s.system: s for s in rt.ledger.steps([rid]) if s.action == "erase"}
    assert by_system["attachments"].status == "failed"
    assert by_system["db"].status == "failed"
    assert "held back" in (by_system["db"].error or "")
    assert _posts(rt, uid) == len(mine)
    assert closing.close_requests(rt, [rid]).statuses == {rid: Status.FAILED}

    # Once the bucket answers, a rerun erases the objects by the keys the rows still hold,
    # then the rows; nobody else's objects are touched.
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=bucket)
    for post in mine + others:
        s3.put_object(Bucket=bucket, Key=str(post["body"]), Body=b"attachment")
    _run(rt, rid)
    by_system = {s.system: s for s in rt.ledger.steps([rid]) if s.action == "erase"}
    assert by_system["attachments"].status == "succeeded"
    assert by_system["attachments"].deleted == len(mine)
    assert by_system["db"].status == "succeeded"
    assert _posts(rt, uid) == 0
    left = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert left == {str(p["body"]) for p in others}
    rt.close()
