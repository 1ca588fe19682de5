"""What the requester receives once every system has answered: an access package for access
and portability requests, a signed erasure certificate for erasures, cancellations and
consent withdrawals. Each is a step of kind `deliverable` in the ledger (system
`access-package` / `erasure-certificate`), so a failure keeps the request open as partial,
shows in the report, and a rerun tries again.

A package is made once: its key has been handed over, so a rerun never replaces it. A
certificate is issued again whenever the request's steps change (a rerun after a failure),
and the last one issued is the one the ledger points to.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from connectors.objects import ObjectsConnector
from dsrflow.certificates import (
    Facts,
    build_certificate,
    read_facts,
    sign_certificate,
    write_certificate,
)
from dsrflow.datamap import PartnerSystem
from dsrflow.delivery import PackageStore
from dsrflow.errors import NotOnRecord, safe_error
from dsrflow.exports import discard_exports, exported_systems, read_export
from dsrflow.ledger import RequestRecord, StepRecord, StepWrite
from dsrflow.model import DELIVERABLE_KIND, RUN_KEY, StepAction, StepStatus
from dsrflow.packages import (
    ObjectLink,
    PackageContents,
    StoredObject,
    build_package,
    key_id,
    new_package_key,
    seal,
)
from pipeline.runs import current_run
from pipeline.runtime import Runtime

KIND = DELIVERABLE_KIND
PACKAGE = "access-package"
CERTIFICATE = "erasure-certificate"
NOT_DONE = (StepStatus.PENDING_EXTERNAL, StepStatus.RUNNING)
# Certificates made at once: each is written durably (fsync), and the disk takes several
# syncs together in about the time of one (measured: 1.9 ms a file one by one, 0.24 ms
# eight at a time).
CERTIFICATE_WRITERS = 8
FAILED = (StepStatus.FAILED, StepStatus.BLOCKED)


def now() -> datetime:
    """The deliverables' clock (tests replace it)."""
    return datetime.now(UTC)


def produce(
    rt: Runtime, request_ids: Sequence[str], steps: Sequence[StepRecord] | None = None,
    records: Sequence[RequestRecord] | None = None,
) -> dict[str, str]:
    """Make the package or certificate of each request whose systems have all answered.
    Returns request id -> what was made (requests still waiting are left out).

    Certificates are recorded batch by batch: `running` for all before the first is
    issued, the outcomes together after the last (a crash between leaves them running,
    and the rerun issues them anew from the ledger: the same certificate). A package is
    recorded as soon as it is handed over: its key went to the subject, and a rerun must
    not send another. `steps`, `records`: the requests' steps (others' may be among them)
    and records, if the caller has just read them."""
    if steps is None:
        steps = rt.ledger.steps(list(request_ids))
    by_request: dict[str, list[StepRecord]] = defaultdict(list)
    for step in steps:
        by_request[step.request_id].append(step)
    todo: dict[str, list[RequestRecord]] = {PACKAGE: [], CERTIFICATE: []}
    wanted = set(request_ids)
    for record in (rt.ledger.get_many(list(request_ids)) if records is None
                   else [r for r in records if r.id in wanted]):
        mine = by_request[record.id]
        work = [s for s in mine if s.kind != KIND]
        if record.type is None or any(s.status in NOT_DONE for s in work):
            continue
        if record.type.collects:
            done = any(s.system == PACKAGE and s.status == StepStatus.SUCCEEDED
                       for s in mine)
            if not done and not any(s.status in FAILED for s in work):
                # (Made already: its key is out. Incomplete data: no package of half.)
                todo[PACKAGE].append(record)
        elif record.type.erases:
            todo[CERTIFICATE].append(record)
    made: dict[str, str] = {}
    for record in todo[PACKAGE]:
        made.update(_make(rt, PACKAGE, StepAction.DELIVER, [record],
                          lambda r: deliver_package(rt, r)))
    for rid, what in made.items():
        if what == PACKAGE:
            # The package is the copy now; the collected records need not wait longer.
            discard_exports(rt.settings.exports_path, rid)
    # The certificates' facts read for the batch at once (the systems' steps read above are
    # still what they were: only deliverables moved since); the signing key read once (not
    # cached when it cannot be read: then each certificate fails, named, as alone).
    certify = [r.id for r in todo[CERTIFICATE]]
    facts = read_facts(rt.ledger, certify, [s for s in steps if s.kind != KIND]) \
        if certify else {}
    signing_key = cache(rt.settings.signing_key_pair)
    made.update(_make(rt, CERTIFICATE, StepAction.CERTIFY, todo[CERTIFICATE],
                      lambda r: issue_certificate(rt, r, facts.get(r.id), signing_key()),
                      workers=CERTIFICATE_WRITERS))
    return made


def _make(rt: Runtime, system: str, action: StepAction, records: Sequence[RequestRecord],
          make: Callable[[RequestRecord], dict[str, Any]], workers: int = 1) -> dict[str, str]:
    """Make each record's deliverable, `workers` at once, and record the outcomes."""
    if not records:
        return {}
    rt.ledger.record_steps(system, KIND, action,
                           [StepWrite(r.id, StepStatus.RUNNING) for r in records])
    run = current_run()

    def attempt(record: RequestRecord) -> StepWrite:
        try:
            details = make(record)
        except Exception as exc:  # recorded against the request; the request closes partial
            return StepWrite(record.id, StepStatus.FAILED, error=safe_error(exc))
        if run:
            details[RUN_KEY] = run
        return StepWrite(record.id, StepStatus.SUCCEEDED, details=details)

    if workers > 1 and len(records) > 1:
        with ThreadPoolExecutor(min(workers, len(records))) as pool:
            writes = list(pool.map(attempt, records))
    else:
        writes = [attempt(record) for record in records]
    rt.ledger.record_steps(system, KIND, action, writes)
    return {w.request_id: system if w.status is StepStatus.SUCCEEDED
            else f"{system} failed: {w.error}" for w in writes}


def deliver_package(rt: Runtime, record: RequestRecord) -> dict[str, Any]:
    """Build, seal, store and hand over the package. Returns what the ledger keeps of it:
    where it is, its checksum, the key's fingerprint and where the key went."""
    settings = rt.settings.packages
    at = now()
    expires_in = int(settings.link_days * 86400)
    records: dict[str, dict[str, list[dict[str, Any]]]] = {
        system: read_export(rt.settings.exports_path, rt.ledger.keyring, record.id, system)
        for system in exported_systems(rt.settings.exports_path, record.id)
    }
    for row in rt.ledger.partner_requests([record.id]):
        # Partners without a results link still belong in the package: what they said.
        records.setdefault(row.system, {"results": [
            {"status": row.status.value, "reference": row.reference, "results_url": None}
        ]})

    carried = 0

    def fetch(obj: StoredObject) -> bytes | None:
        nonlocal carried
        # Too large, or the package would grow past what it may hold in memory: a link.
        if (obj.size > settings.inline_object_bytes
                or carried + obj.size > settings.inline_total_bytes):
            return None
        carried += obj.size
        return _objects(rt, obj.system).fetch(obj.bucket, obj.key, obj.version_id)

    def link(obj: StoredObject) -> ObjectLink:
        url = _objects(rt, obj.system).presign(obj.bucket, obj.key, obj.version_id, expires_in)
        return ObjectLink(url, at + timedelta(seconds=expires_in))

    subjects = rt.ledger.subjects([record.id])
    own = frozenset(i.value for s in subjects for i in s.identities)
    region = subjects[0].phone_region if subjects else None
    package = build_package(PackageContents(record, rt.datamap, records, at, fetch, link,
                                            own, region))
    key = new_package_key()
    blob = seal(package, key)
    store = PackageStore(settings, rt.settings.base_dir)
    delivered = store.put(record.id, blob, at)
    fingerprint = key_id(key)
    outbox = store.handover(record.id, record.ticket_id, delivered, key, fingerprint)
    del key  # from here on only the outbox file has it, until the support team sends it
    return {
        "location": delivered.location,
        "expires_at": delivered.expires_at.isoformat(timespec="seconds"),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
        "systems": sorted(s for s in records if not isinstance(rt.datamap.systems.get(s),
                                                               PartnerSystem)),
        "key_id": fingerprint,
        "key_handed_to": f"outbox:{outbox}",
    }


def handed_over(rt: Runtime, request_id: str, channel: str, by: str,
                at: datetime | None = None) -> None:
    """The support team sent the key: record how and by whom, and delete the outbox file,
    the last copy dsrflow had."""
    step = next((s for s in rt.ledger.steps([request_id])
                 if s.system == PACKAGE and s.status == StepStatus.SUCCEEDED), None)
    if step is None:
        raise NotOnRecord(f"request {request_id} has no delivered access package")
    when = (at or now()).isoformat(timespec="seconds")
    details = {**step.details, "key_handed_to": channel, "key_handed_over_by": by,
               "key_handed_over_at": when}
    rt.ledger.record_step(request_id, PACKAGE, KIND, StepAction.DELIVER,
                          StepStatus.SUCCEEDED, details=details)
    store = PackageStore(rt.settings.packages, rt.settings.base_dir)
    store.handover_path(request_id).unlink(missing_ok=True)


def expire(rt: Runtime, at: datetime | None = None) -> tuple[list[str], list[Path]]:
    """Past their links' lifetime: outbox files still holding a key (recorded against the
    request as never handed over, then deleted) and local packages. Returns the request
    ids whose key was dropped and the packages deleted."""
    at = at or now()
    store = PackageStore(rt.settings.packages, rt.settings.base_dir)
    dropped = []
    for request_id in store.expired_handovers(at):
        step = next((s for s in rt.ledger.steps([request_id])
                     if s.system == PACKAGE and s.status == StepStatus.SUCCEEDED),
                    None)
        if step is not None:
            details = {**step.details, "key_handed_to": "nobody: the link expired first",
                       "key_dropped_at": at.isoformat(timespec="seconds")}
            rt.ledger.record_step(request_id, PACKAGE, KIND, StepAction.DELIVER,
                                  StepStatus.SUCCEEDED, details=details)
        store.handover_path(request_id).unlink(missing_ok=True)
        dropped.append(request_id)
    return dropped, store.expire_local(at)


def _objects(rt: Runtime, system: str) -> ObjectsConnector:
    connector = rt.connector(system)
    if not isinstance(connector, ObjectsConnector):
        raise TypeError(f"{system} is not an objects system")
    return connector


def issue_certificate(
    rt: Runtime, record: RequestRecord, facts: Facts | None = None,
    key: Ed25519PrivateKey | None = None,
) -> dict[str, Any]:
    """Build, sign and write the request's certificate (from `facts` and with `key` when
    the caller read them for a batch)."""
    at = now()
    body = build_certificate(rt.ledger, rt.datamap, record.id, at, facts)
    document = sign_certificate(body, key or rt.settings.signing_key_pair())
    path, digest = write_certificate(document, rt.settings.certificates_path)
    return {
        "path": str(path),
        "sha256": digest,
        "outcome": body["outcome"]["status"],
        "key_id": document["signature"]["key_id"],
        "issued_at": at.isoformat(timespec="seconds"),
    }
