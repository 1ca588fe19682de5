"""Wishe's object storage for the demo: the photos and videos users uploaded and the face
photos behind their face templates, at the keys the Wishe database lists.

- `wishe-uploads` (versioned): an object at every `uploads.s3_key`; every third upload
  was edited once, so it has a second version (erasure must remove both).
- `wishe-faces` (S3 Object Lock enabled): an object at every `face_templates.object_key`;
  one face of a random, non-demo user is under legal hold, so the store looks like a real
  one without making any demo subject's erasure come out as retained.

Object contents are deterministic small stand-ins (derived from the key), not images.

`DATAMAP_SYSTEM` is this system's entry in examples/wishe/datamap.yaml.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from botocore.exceptions import ClientError
from sqlalchemy import create_engine, select

from examples.wishe import schema
from examples.wishe.subjects import SUBJECTS

UPLOADS_BUCKET = "wishe-uploads"
FACES_BUCKET = "wishe-faces"

# Read from the Wishe data map, the one source of truth.
DATAMAP_SYSTEM: dict[str, Any] = yaml.safe_load(
    (Path(__file__).with_name("datamap.yaml")).read_text()
)["systems"]["media"]


def populate(client: Any, engine_url: str) -> dict[str, int]:
    """Create (or empty and refill) the Wishe buckets from the database at `engine_url`
    (built by `examples.wishe.generate.build_world`). Returns what was written."""
    engine = create_engine(engine_url)
    try:
        with engine.connect() as conn:
            upload_keys = sorted(conn.execute(select(schema.uploads.c.s3_key)).scalars())
            faces = sorted(
                (int(user_id), str(key))
                for user_id, key in conn.execute(
                    select(schema.face_templates.c.user_id, schema.face_templates.c.object_key)
                    .where(schema.face_templates.c.object_key.is_not(None))
                )
            )
    finally:
        engine.dispose()

    _fresh_bucket(client, UPLOADS_BUCKET, object_lock=False)
    client.put_bucket_versioning(
        Bucket=UPLOADS_BUCKET, VersioningConfiguration={"Status": "Enabled"}
    )
    versions = 0
    for index, key in enumerate(upload_keys):
        client.put_object(Bucket=UPLOADS_BUCKET, Key=key, Body=_content(key, 1))
        versions += 1
        if index % 3 == 0:
            client.put_object(Bucket=UPLOADS_BUCKET, Key=key, Body=_content(key, 2))
            versions += 1

    _fresh_bucket(client, FACES_BUCKET, object_lock=True)
    for _user_id, key in faces:
        client.put_object(Bucket=FACES_BUCKET, Key=key, Body=_content(key, 1))
    demo_ids = {s.user_id for s in SUBJECTS}
    held = next((key for user_id, key in faces if user_id not in demo_ids), None)
    if held is not None:
        client.put_object_legal_hold(
            Bucket=FACES_BUCKET, Key=held, LegalHold={"Status": "ON"}
        )
    return {
        "upload_objects": len(upload_keys),
        "upload_versions": versions,
        "face_objects": len(faces),
        "legal_holds": int(held is not None),
    }


def _content(key: str, version: int) -> bytes:
    seed = hashlib.sha256(f"{key}#{version}".encode()).digest()
    return seed * 8  # 256 bytes, different per key and version


def _fresh_bucket(client: Any, bucket: str, object_lock: bool) -> None:
    """Create the bucket, or empty it if it exists (lifting the demo's legal holds first):
    the demo world is rebuilt, never appended to."""
    args: dict[str, Any] = {"Bucket": bucket}
    region = client.meta.region_name
    if region and region != "us-east-1":
        args["CreateBucketConfiguration"] = {"LocationConstraint": region}
    if object_lock:
        args["ObjectLockEnabledForBucket"] = True
    try:
        client.create_bucket(**args)
        return
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in (
            "BucketAlreadyOwnedByYou", "BucketAlreadyExists"
        ):
            raise
    doomed: list[dict[str, str]] = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for version in page.get("Versions", []):
            ident = {"Key": version["Key"], "VersionId": version["VersionId"]}
            if object_lock:
                head = client.head_object(Bucket=bucket, **ident)
                if head.get("ObjectLockLegalHoldStatus") == "ON":
                    client.put_object_legal_hold(
                        Bucket=bucket, **ident, LegalHold={"Status": "OFF"}
                    )
            doomed.append(ident)
        doomed += [
            {"Key": m["Key"], "VersionId": m["VersionId"]} for m in page.get("DeleteMarkers", [])
        ]
    for start in range(0, len(doomed), 1000):
        client.delete_objects(
            Bucket=bucket, Delete={"Objects": doomed[start : start + 1000], "Quiet": True}
        )
