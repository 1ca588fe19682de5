"""The access package: everything dsrflow collected about one subject, as a zip a person
can open and a program can read, encrypted with a key of its own.

Inside the zip:

- `data/<system>/<part>.json` and `.csv`: per system and table (bucket, log source) the
  records collected, as JSON and as CSV;
- `objects/<system>/<bucket>/<n>-<name>`: the subject's stored objects (photos, videos);
  an object too large to carry is listed with an expiring link instead;
- `manifest.json`: categories, purposes, sources, retention periods, recipients (partners)
  and the SHA-256 of every other file, so the subject (or a regulator) can check that
  nothing was altered; each source and category says whether it is sensitive personal
  information (policy 2.1, as the data map marks it);
- `index.html`: the same, for a person, with the sensitive sources in a section of their
  own.

The zip is encrypted with Fernet (AES-128-CBC + HMAC-SHA256, a published format with
implementations in most languages) under a key made for this package alone; the key goes
to the subject by another channel than the link, and dsrflow does not keep it.

Plain Python: no Prefect, no S3. The caller hands over the collected records and a way to
fetch objects (see `tasks/deliverables.py`).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from dsrflow.datamap import DataMap, Disclosure, LogsSystem, ObjectsSystem, PartnerSystem
from dsrflow.ledger import RequestRecord
from dsrflow.redaction import mask_others
from dsrflow.templates import render

FORMAT = "dsrflow.access-package/1"
MANIFEST = "manifest.json"
# Zip entries get fixed times: the same records give the same bytes (and checksums).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class StoredObject:
    """An object as the objects connector collected it (its metadata), and where it is."""

    system: str
    bucket: str
    key: str
    size: int
    version_id: str | None
    record: dict[str, Any]


@dataclass(frozen=True)
class ObjectLink:
    url: str
    expires_at: datetime


# Fetches an object's bytes (None: too large to carry, link it instead) and makes links.
FetchObject = Callable[[StoredObject], bytes | None]
LinkObject = Callable[[StoredObject], ObjectLink]


@dataclass
class PackageContents:
    """What goes in: the request, the data map it ran under, and per system the records
    collected (`{part: [record, ...]}`, as `dsrflow.exports` keeps them)."""

    request: RequestRecord
    datamap: DataMap
    records: Mapping[str, Mapping[str, list[dict[str, Any]]]]
    generated_at: datetime
    fetch: FetchObject | None = None
    link: LinkObject | None = None
    # The subject's own identities, normalized: in free text (log lines) every other email
    # and phone number is withheld (see dsrflow.redaction).
    own_identities: frozenset[str] = frozenset()
    # Where phone numbers written without a country code are read (None: only +… ones).
    phone_region: str | None = None


@dataclass
class _Builder:
    zf: zipfile.ZipFile
    files: list[dict[str, Any]] = field(default_factory=list)

    def add(self, path: str, data: bytes, **about: Any) -> None:
        info = zipfile.ZipInfo(path, date_time=_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        self.zf.writestr(info, data)
        self.files.append(
            {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
             **about}
        )


def build_package(contents: PackageContents) -> bytes:
    """The zip, unencrypted (see `seal`)."""
    dm = contents.datamap
    buffer = io.BytesIO()
    sections: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    partner_results: list[dict[str, Any]] = []
    with zipfile.ZipFile(buffer, "w") as zf:
        out = _Builder(zf)
        for system in sorted(contents.records):
            spec = dm.systems.get(system)
            parts = contents.records[system]
            if isinstance(spec, PartnerSystem):
                for result in parts.get("results", []):
                    partner_results.append({"partner": system, **result})
                continue
            for part in sorted(parts):
                rows, withheld = parts[part], 0
                if isinstance(spec, LogsSystem):
                    # Numbers in a system's lines are written as that system writes them.
                    region = spec.phone_region or contents.phone_region
                    rows, withheld = _withhold_others(rows, contents.own_identities, region)
                categories = _categories(dm, system, part)
                about = {"system": system, "part": part, "categories": categories}
                base = f"data/{_safe(system)}/{_safe(part)}"
                out.add(f"{base}.json", _json(rows), **about, records=len(rows))
                out.add(f"{base}.csv", _csv(rows), **about, records=len(rows))
                sections.append({**about, "records": len(rows), "kind": _kind(spec),
                                 "files": [f"{base}.json", f"{base}.csv"],
                                 "others_withheld": withheld,
                                 "sensitive": sorted(dm.sensitive & set(categories))})
                if isinstance(spec, ObjectsSystem):
                    links += _objects(out, contents, system, part, rows, categories)
        manifest = _manifest(contents, out.files, sections, links, partner_results)
        out.add("index.html", _index(manifest).encode())
        # The manifest lists every file but itself; it is written last, with index.html in it.
        manifest["files"] = out.files
        info = zipfile.ZipInfo(MANIFEST, date_time=_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(info, json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False))
    return buffer.getvalue()


def _objects(
    out: _Builder, contents: PackageContents, system: str, bucket: str,
    rows: Sequence[dict[str, Any]], categories: list[str],
) -> list[dict[str, Any]]:
    """Carry each object in the zip, or link it when it is too large to carry."""
    links = []
    for n, row in enumerate(rows, start=1):
        obj = StoredObject(system, bucket, str(row["key"]), int(row.get("size") or 0),
                           row.get("version_id"), row)
        data = contents.fetch(obj) if contents.fetch is not None else None
        if data is not None:
            base = _safe(obj.key.rsplit("/", 1)[-1])
            name = f"objects/{_safe(system)}/{_safe(bucket)}/{n:05d}-{base}"
            out.add(name, data, system=system, part=bucket, categories=categories,
                    object_key=obj.key)
        elif contents.link is not None:
            link = contents.link(obj)
            links.append({"system": system, "bucket": bucket, "key": obj.key, "bytes": obj.size,
                          "url": link.url, "expires_at": _iso(link.expires_at)})
    return links


def _withhold_others(
    rows: Sequence[dict[str, Any]], own: frozenset[str], region: str | None
) -> tuple[list[dict[str, Any]], int]:
    """Log lines with other people's emails and phone numbers withheld, and how many."""
    masked, total = [], 0
    for row in rows:
        text, withheld = mask_others(str(row.get("text", "")), own, region)
        masked.append({**row, "text": text})
        total += withheld
    return masked, total


def _manifest(
    contents: PackageContents, files: list[dict[str, Any]], sections: list[dict[str, Any]],
    links: list[dict[str, Any]], partner_results: list[dict[str, Any]],
) -> dict[str, Any]:
    dm, request = contents.datamap, contents.request
    used = sorted({c for s in sections for c in s["categories"]})
    recipients = [
        {"name": name, "role": spec.role, "categories": sorted(spec.categories),
         "purpose": spec.purpose}
        for name, spec in sorted(dm.systems.items()) if isinstance(spec, PartnerSystem)
    ]
    return {
        "format": FORMAT,
        "generated_at": _iso(contents.generated_at),
        "request": {
            "id": request.id,
            "ticket_id": request.ticket_id,
            "type": request.type.value if request.type else None,
            "regime": request.regime.value if request.regime else None,
            "received_at": _iso(request.received_at),
            "datamap_version": request.datamap_version,
            "policy_version": request.policy_version,
        },
        "categories": [
            {"category": c, "sensitive": c in dm.sensitive, **_disclosure(dm.disclosures.get(c))}
            for c in used
        ],
        # Each source says which of its categories are sensitive personal information
        # (policy 2.1); index.html shows those sources in a section of their own.
        "sources": [
            {k: s[k] for k in ("system", "kind", "part", "categories", "records", "files",
                               "others_withheld", "sensitive")}
            for s in sections
        ],
        "recipients": recipients,
        "partner_results": partner_results,
        "object_links": links,
        "files": files,
    }


def _disclosure(found: Disclosure | None) -> dict[str, Any]:
    if found is None:
        return {"purposes": [], "retention": "not stated in the data map", "policy_section": None}
    return found.model_dump()


def _categories(dm: DataMap, system: str, part: str) -> list[str]:
    return sorted(dm.part_categories(system, part))


def _kind(spec: Any) -> str:
    return str(getattr(spec, "kind", "unknown"))


def _json(rows: Sequence[dict[str, Any]]) -> bytes:
    return json.dumps(list(rows), indent=2, sort_keys=True, ensure_ascii=False,
                      default=str).encode()


def _csv(rows: Sequence[dict[str, Any]]) -> bytes:
    import pandas as pd  # here: `dsrflow package open` needs no pandas to check a package

    frame = pd.json_normalize(list(rows)) if rows else pd.DataFrame()
    return frame.to_csv(index=False).encode()


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(name: str) -> str:
    """A file name that cannot leave its folder when the zip is extracted."""
    cleaned = _UNSAFE.sub("_", name).strip("._") or "unnamed"
    return cleaned[:120]


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else None


# -- encryption ---------------------------------------------------------------------------
def new_package_key() -> bytes:
    return Fernet.generate_key()


def key_id(key: bytes) -> str:
    """A short fingerprint of a package key: support can tell a subject whether the key in
    hand is the right one without dsrflow keeping the key."""
    return hashlib.sha256(key).hexdigest()[:16]


def seal(package: bytes, key: bytes) -> bytes:
    return Fernet(key).encrypt(package)


class PackageError(ValueError):
    """The package cannot be opened, or its contents do not match its manifest."""


def unseal(blob: bytes, key: bytes) -> bytes:
    try:
        return Fernet(key.strip()).decrypt(blob)
    except (InvalidToken, ValueError) as exc:
        raise PackageError("the key does not open this package (or the file is damaged)") from exc


def check_package(package: bytes) -> dict[str, Any]:
    """The manifest, after checking every file's checksum; raises PackageError naming the
    first file that is missing, extra or altered."""
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        try:
            manifest: dict[str, Any] = json.loads(zf.read(MANIFEST))
        except KeyError as exc:
            raise PackageError("no manifest.json in the package") from exc
        if manifest.get("format") != FORMAT:
            raise PackageError(f"unknown package format {manifest.get('format')!r}")
        listed = {f["path"]: f["sha256"] for f in manifest["files"]}
        present = set(zf.namelist()) - {MANIFEST}
        for path in sorted(present | set(listed)):
            if path not in listed:
                raise PackageError(f"{path} is in the package but not in the manifest")
            if path not in present:
                raise PackageError(f"{path} is in the manifest but not in the package")
            if hashlib.sha256(zf.read(path)).hexdigest() != listed[path]:
                raise PackageError(f"{path} does not match its checksum")
    return manifest


# -- index.html ---------------------------------------------------------------------------
def _index(manifest: dict[str, Any]) -> str:
    """The package's index.html: what the requester reads first."""
    return render(
        "package_index.html",
        request=manifest["request"], generated_at=manifest["generated_at"],
        categories=manifest["categories"], sources=manifest["sources"],
        withheld=sum(s["others_withheld"] for s in manifest["sources"]),
        files=manifest["files"], object_links=manifest["object_links"],
        has_files=any("object_key" in f for f in manifest["files"])
        or bool(manifest["object_links"]),
        recipients=manifest["recipients"], partner_results=manifest["partner_results"],
    )
