"""Where sealed access packages go, and how the subject gets them.

The package (already encrypted) is stored in S3 (any endpoint: AWS, MinIO, moto) or in a
local directory, and the subject gets an expiring link to it: a presigned GET for S3
(default 5 days; SigV4 allows at most 7), a `file://` URI for a directory (meant for
tests and on-premises shares; nothing enforces its expiry but `dsrflow package expire`).

The key goes another way. `handover` writes the link and the key into the support team's
outbox (one file per request, mode 0600): whoever answers the ticket sends the link by one
channel and the key by another, then deletes the file (`dsrflow package handed-over`);
`dsrflow package expire` deletes the files whose link has run out, unsent.
dsrflow records where the key went and its fingerprint, never the key itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dsrflow.files import write_private

MAX_PRESIGN_DAYS = 7  # SigV4 presigned URLs live at most 7 days


class PackageSettings(BaseModel):
    """`packages:` in dsrflow.yaml."""

    model_config = ConfigDict(extra="forbid")

    store: Literal["local", "s3"] = "local"
    local_dir: Path = Field(default=Path(".dsrflow/packages"), description="store: local")
    bucket: str | None = Field(default=None, description="store: s3")
    prefix: str = "access-packages/"
    endpoint_url: str | None = Field(default=None, description="S3 API endpoint (MinIO, ...)")
    endpoint_url_env: str | None = Field(default=None, description="or: a variable holding it")
    region: str | None = None
    link_days: float = Field(default=5, gt=0, le=MAX_PRESIGN_DAYS,
                             description="how long the delivery link works")
    inline_object_bytes: int = Field(
        default=10 * 1024 * 1024, ge=0,
        description="objects up to this size travel inside the package; larger ones as links",
    )
    inline_total_bytes: int = Field(
        default=200 * 1024 * 1024, ge=0,
        description="at most this much of objects inside one package (it is built in "
        "memory); the rest as links",
    )
    handover_dir: Path = Field(
        default=Path(".dsrflow/handover"),
        description="the support team's outbox: link and key per request, until sent",
    )

    @model_validator(mode="after")
    def _s3_needs_bucket(self) -> PackageSettings:
        if self.store == "s3" and not self.bucket:
            raise ValueError("store 's3' needs a bucket")
        return self

    def endpoint(self) -> str | None:
        if self.endpoint_url is not None:
            return self.endpoint_url
        return os.environ.get(self.endpoint_url_env) if self.endpoint_url_env else None


@dataclass(frozen=True)
class Delivered:
    location: str  # s3://bucket/key or the file's path
    link: str
    expires_at: datetime


class PackageStore:
    """Puts a sealed package where the subject can fetch it, and makes the link."""

    def __init__(self, settings: PackageSettings, base_dir: Path, client: Any | None = None):
        self.settings = settings
        self.base_dir = base_dir
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # here: every command reads the settings, few deliver a package

            self._client = boto3.client("s3", endpoint_url=self.settings.endpoint(),
                                        region_name=self.settings.region)
        return self._client

    def put(self, request_id: str, blob: bytes, now: datetime) -> Delivered:
        name = f"{request_id}.zip.fernet"
        expires = now + timedelta(days=self.settings.link_days)
        if self.settings.store == "s3":
            key = f"{self.settings.prefix}{name}"
            assert self.settings.bucket is not None
            self.client.put_object(Bucket=self.settings.bucket, Key=key, Body=blob,
                                   ContentType="application/octet-stream")
            link = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.settings.bucket, "Key": key},
                ExpiresIn=int(self.settings.link_days * 86400),
            )
            return Delivered(f"s3://{self.settings.bucket}/{key}", link, expires)
        path = write_private(self._path(self.settings.local_dir) / name, blob)  # 0600, atomic
        return Delivered(str(path), path.resolve().as_uri(), expires)

    def _path(self, value: Path) -> Path:
        return value if value.is_absolute() else self.base_dir / value

    def handover(
        self, request_id: str, ticket_id: str | None, delivered: Delivered, key: bytes,
        key_fingerprint: str,
    ) -> Path:
        """The link and the key, for the person who answers the ticket (0600 in a 0700
        folder, atomic)."""
        path = self._path(self.settings.handover_dir) / f"{request_id}.json"
        document = {
            "request_id": request_id,
            "ticket_id": ticket_id,
            "link": delivered.link,
            "link_expires_at": delivered.expires_at.astimezone(UTC)
            .isoformat(timespec="seconds"),
            "key": key.decode(),
            "key_id": key_fingerprint,
            "instructions": "Send the link and the key to the subject over two different "
            "channels (e.g. the link by email, the key by SMS), then run `dsrflow package "
            "handed-over REQUEST_ID --channel ...`, which deletes this file.",
        }
        write_private(path, json.dumps(document, indent=2).encode())
        return path

    def handover_path(self, request_id: str) -> Path:
        return self._path(self.settings.handover_dir) / f"{request_id}.json"

    def expired_handovers(self, now: datetime) -> list[str]:
        """Request ids whose outbox file outlived its link: the key opens nothing the
        subject can still download, and keeping it would only keep a key."""
        folder = self._path(self.settings.handover_dir)
        if not folder.exists():
            return []
        expired = []
        for path in sorted(folder.glob("*.json")):
            stamp = json.loads(path.read_text()).get("link_expires_at")
            if stamp is None or datetime.fromisoformat(stamp) <= now:
                expired.append(path.stem)
        return expired

    def expire_local(self, now: datetime) -> list[Path]:
        """Delete local packages older than the link lifetime (S3: use a lifecycle rule)."""
        folder = self._path(self.settings.local_dir)
        if self.settings.store != "local" or not folder.exists():
            return []
        limit = (now - timedelta(days=self.settings.link_days)).timestamp()
        gone = []
        for path in sorted(folder.glob("*.zip.fernet")):
            if path.stat().st_mtime < limit:
                path.unlink()
                gone.append(path)
        return gone
