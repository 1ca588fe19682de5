"""What the object-store and logs connectors both do with S3: delete object versions in
batches, list one key's versions, and name an S3 error by its code only (S3's messages and
botocore's parameter errors can quote keys)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from botocore.exceptions import ClientError

DELETE_BATCH = 1000  # S3's limit of objects per DeleteObjects request
_CODE = re.compile(r"[A-Za-z0-9.]{1,64}")


def plain_code(code: Any) -> str:
    """An S3 error code as an error message may show it (`NoSuchBucket`, `AccessDenied`):
    anything else an endpoint answers is not repeated."""
    text = str(code)
    return text if _CODE.fullmatch(text) else "unrecognised"


def error_code(exc: ClientError) -> str:
    return plain_code(exc.response.get("Error", {}).get("Code", "unknown"))


def delete_versions(client: Any, bucket: str, objects: Sequence[dict[str, str]]) -> Counter[str]:
    """Delete these `{"Key", "VersionId"}` (or `{"Key"}`) in batches of 1,000; returns the
    per-object error codes S3 answered, counted. Client errors propagate."""
    errors: Counter[str] = Counter()
    for start in range(0, len(objects), DELETE_BATCH):
        chunk = list(objects[start : start + DELETE_BATCH])
        response = client.delete_objects(
            Bucket=bucket, Delete={"Objects": chunk, "Quiet": True}
        )
        for err in response.get("Errors", []):
            errors[plain_code(err.get("Code", "unknown"))] += 1
    return errors


def versioned(client: Any, bucket: str) -> bool:
    """Whether the bucket keeps versions (enabled, or suspended with some kept)."""
    status = client.get_bucket_versioning(Bucket=bucket).get("Status")
    return status in ("Enabled", "Suspended")


def key_versions(client: Any, bucket: str, key: str) -> list[str]:
    """The version ids of every version and delete marker of exactly this key."""
    found = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket,
                                                                       Prefix=key):
        for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
            if entry["Key"] == key:
                found.append(str(entry["VersionId"]))
    return found


def refused_deletions(
    client: Any, bucket: str, objects: Sequence[dict[str, str]]
) -> list[tuple[str, str | None, str]]:
    """Delete these as `delete_versions` does, and say which S3 refused: (key, version id
    if S3 names it, error code). A caller that counts what it deleted per key needs to
    know whose deletions failed, not only how many. Client errors propagate."""
    refused: list[tuple[str, str | None, str]] = []
    for start in range(0, len(objects), DELETE_BATCH):
        chunk = list(objects[start : start + DELETE_BATCH])
        response = client.delete_objects(
            Bucket=bucket, Delete={"Objects": chunk, "Quiet": True}
        )
        for err in response.get("Errors", []):
            version = err.get("VersionId")
            refused.append((str(err.get("Key", "")), str(version) if version else None,
                            plain_code(err.get("Code", "unknown"))))
    return refused
