"""Signed erasure certificates: what was done for one erasing request, from the ledger.

A certificate names every system and partner the request reached, what each erase did (a
SHA-256 of each statement, never its values), the counts, what a fresh look found
afterwards, what was kept and why, the partners' receipts and the Prefect runs. It holds no
personal value: only ids, counts, hashes, reasons from the data map and times.

It is signed with Ed25519 over canonical JSON, so anyone holding the installation's public
key can check it years later with `dsrflow certificate verify FILE`, without the ledger.
The public key inside a certificate is a convenience for humans; trust comes only from a
key the verifier already has, or anyone could re-sign a forgery with a key of their own.

A file holds the signed body and the signature, and nothing else: a key beside them, a
key the signature object does not define, a key twice in one object (JSON parsers keep
the last; a reader may see the first) or anything after the document would be read as
part of the certificate without being signed, so verification refuses them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dsrflow.files import private_dir
from dsrflow.model import (
    DELIVERABLE_KIND,
    IDENTITIES_KEY,
    RUN_KEY,
    SEARCHED_KEY,
    StepAction,
    StepStatus,
)
from dsrflow.signing import encode_public_key, key_id

if TYPE_CHECKING:  # the ledger pulls in SQLAlchemy and Alembic; `verify` needs neither
    from dsrflow.datamap import DataMap
    from dsrflow.holds import LegalHold
    from dsrflow.ledger import Ledger, PartnerRequest, RequestRecord, StepRecord

FORMAT = "dsrflow.erasure-certificate/1"
ALGORITHM = "Ed25519"
PARTNER_KIND = "partner"
PARTNER_DONE = frozenset({"completed", "confirmed"})
COUNTS = ("found", "deleted", "anonymized", "retained")
COMPLETE = "complete"
INCOMPLETE = "incomplete"
# What a certificate file may hold: anything more would be unsigned.
DOCUMENT_KEYS = frozenset({"certificate", "signature"})
SIGNATURE_KEYS = frozenset({"algorithm", "key_id", "public_key", "value"})
_JSON_WHITESPACE = " \t\n\r"
# Request ids are UUIDs; anything else must not become a path.
_SAFE_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]*")


class CertificateInvalid(ValueError):
    """A certificate that must not be relied on, and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VerifiedCertificate:
    body: dict[str, Any]
    request_id: str
    ticket_id: str | None
    outcome: str
    issued_at: str
    key_id: str


# -- building ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Facts:
    """What one request's certificate is built from, as the ledger recorded it."""

    record: RequestRecord
    steps: Sequence[StepRecord]
    partners: Sequence[PartnerRequest]
    held_parts: Sequence[Mapping[str, Any]]
    holds: Mapping[str, LegalHold]


def read_facts(
    ledger: Ledger, request_ids: Sequence[str], steps_read: Sequence[StepRecord] | None = None
) -> dict[str, Facts]:
    """The facts of a batch's certificates, read in one query per kind for the batch (a
    hold is read once, however many requests it kept data of; `steps_read`: the steps, if
    the caller has just read them). Unknown ids are left out."""
    ids = list(dict.fromkeys(request_ids))
    wanted = set(ids)
    steps: dict[str, list[StepRecord]] = defaultdict(list)
    for step in ledger.steps(ids) if steps_read is None else steps_read:
        if step.request_id in wanted:
            steps[step.request_id].append(step)
    partners: dict[str, list[PartnerRequest]] = defaultdict(list)
    for row in ledger.partner_requests(ids):
        partners[row.request_id].append(row)
    held: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for part in ledger.held_parts(ids):
        held[part["request_id"]].append(part)
    holds = {hold_id: ledger.hold(hold_id)
             for hold_id in sorted({h for parts in held.values() for p in parts
                                    for h in p["hold_ids"]})}
    return {
        record.id: Facts(record, steps[record.id], partners[record.id], held[record.id],
                         {h: holds[h] for p in held[record.id] for h in p["hold_ids"]})
        for record in ledger.get_many(ids)
    }


def build_certificate(
    ledger: Ledger, datamap: DataMap, request_id: str, issued_at: datetime,
    facts: Facts | None = None,
) -> dict[str, Any]:
    """The certificate's body for one erasing request, from what the ledger recorded
    (`facts`, when the caller read them for a batch; else read here)."""
    if issued_at.tzinfo is None:
        raise ValueError("issued_at must carry a time zone")
    if facts is None:
        ledger.get(request_id)  # an unknown request is named as such
        facts = read_facts(ledger, [request_id])[request_id]
    record = facts.record
    if record.type is None or not record.type.erases:
        kind = record.type.value if record.type else "untyped"
        raise ValueError(
            f"request {request_id} is {kind}: only erasure, consent_withdrawal and "
            "account_cancellation requests erase data and get an erasure certificate"
        )
    rows = [s for s in facts.steps if s.kind != DELIVERABLE_KIND]
    partner_rows = {p.system: p for p in facts.partners}
    partner_names = {s.system for s in rows if s.kind == PARTNER_KIND} | set(partner_rows)
    by_system: dict[str, dict[StepAction, StepRecord]] = defaultdict(dict)
    for step in rows:
        if step.system not in partner_names:
            by_system[step.system][step.action] = step

    systems = [
        _system(name, datamap, steps)
        for name, steps in sorted(by_system.items())
    ]
    partners = [
        _partner(
            name, datamap, partner_rows.get(name),
            next((s for s in rows if s.system == name), None),
        )
        for name in sorted(partner_names)
    ]
    holds = [
        {"system": s["system"], "part": p["part"], "retained": p["retained"],
         "reasons": p["retain_reasons"]}
        for s in systems if s["erase"] is not None
        for p in s["erase"]["parts"] if p["retained"]
    ]
    resolved = [steps[StepAction.RESOLVE] for _, steps in sorted(by_system.items())
                if StepAction.RESOLVE in steps]
    reasons = (_resolve_reasons(resolved) + _system_reasons(systems)
               + _partner_reasons(partners))
    return {
        "format": FORMAT,
        "issued_at": _time(issued_at),
        "request": {
            "id": record.id,
            "ticket_id": record.ticket_id,
            "type": record.type.value,
            "regime": record.regime.value if record.regime else None,
            "scope": sorted(record.scope) if record.scope is not None else None,
            "received_at": _time(record.received_at),
            "verified_at": _time(record.verified_at),
            "due_at": _time(record.due_at),
            "effective_due_at": _time(record.effective_due_at),
            "datamap_version": record.datamap_version,
            "policy_version": record.policy_version,
            # A follow-up finishes what a legal hold held back of this earlier request.
            "follows_request_id": record.follows_request_id,
        },
        "identities": _identities(resolved, systems),
        "systems": systems,
        "partners": partners,
        "holds": holds,
        "legal_holds": _legal_holds(facts),
        "outcome": {"status": INCOMPLETE if reasons else COMPLETE, "reasons": reasons},
    }


def _legal_holds(facts: Facts) -> list[dict[str, Any]]:
    """The legal holds that kept part of this request's data: the policy's exemption (its
    code), the end date, where, and what the subject may do about it where the regime
    says they must be told (the citation and the approver stay in the ledger)."""
    from dsrflow.holds import APPEALS, POLICY_HOLDS

    record = facts.record
    systems: dict[str, list[str]] = defaultdict(list)
    for part in facts.held_parts:
        for hold_id in part["hold_ids"]:
            systems[hold_id].append(part["system"])
    out = []
    for hold_id, where in sorted(systems.items()):
        hold = facts.holds[hold_id]
        out.append({
            "hold": hold.id,
            "exemption": hold.reason.value,
            "basis": POLICY_HOLDS,
            "until": hold.until.date().isoformat(),
            "systems": sorted(where),
            "categories": sorted(hold.categories) if hold.categories else None,
            "appeal": APPEALS.get(record.regime) if record.regime else None,
        })
    return out


def _system(
    name: str, datamap: DataMap, steps: Mapping[StepAction, StepRecord]
) -> dict[str, Any]:
    spec = datamap.systems.get(name)
    erase = steps.get(StepAction.ERASE)
    verify = steps.get(StepAction.VERIFY)
    kind = spec.kind if spec is not None else next(s.kind for s in steps.values())
    return {
        "system": name,
        "kind": kind,
        "erase": _erase(erase) if erase is not None else None,
        "verification": _verification(verify) if verify is not None else None,
    }


def _identities(
    resolved: Sequence[StepRecord], systems: list[dict[str, Any]]
) -> dict[str, Any]:
    """Which identity types the proof looked for (per type, how many: never a value), and
    what identity resolution learnt from the subject's own rows, withheld because they lead
    to someone else's, and could not read."""
    searched: set[str] = set()
    for entry in systems:
        for step in (entry["erase"], entry["verification"]):
            if step is not None:
                searched.update(step["searched"])
    learnt: dict[str, dict[str, int]] = {"learnt": {}, "withheld": {}, "unreadable": {}}
    for step in resolved:
        found = step.details.get(IDENTITIES_KEY)
        if not isinstance(found, dict):
            continue
        for what, counts in learnt.items():
            for kind, n in (found.get(what) or {}).items():
                counts[str(kind)] = counts.get(str(kind), 0) + int(n)
    return {"searched": sorted(searched),
            **{what: dict(sorted(counts.items())) for what, counts in learnt.items()}}


def _searched(step: StepRecord) -> dict[str, int]:
    found = step.details.get(SEARCHED_KEY)
    return {str(k): int(v) for k, v in sorted(found.items())} if isinstance(found, dict) else {}


def _erase(step: StepRecord) -> dict[str, Any]:
    parts = [
        {
            "part": part,
            **{c: _count(values.get(c)) for c in COUNTS},
            "retain_reasons": sorted({str(r) for r in values.get("retain_reasons") or []}),
            "statements": sorted({str(h) for h in values.get("statements") or []}),
        }
        for part, values in _parts(step)
    ]
    return {
        "status": step.status.value,
        **{c: _count(getattr(step, c)) for c in COUNTS},
        "parts": parts,
        "attempts": _count(step.attempts),
        "error": step.error,
        "started_at": _time(step.started_at),
        "finished_at": _time(step.finished_at),
        "searched": _searched(step),
        "run": _run(step),
    }


def _verification(step: StepRecord) -> dict[str, Any]:
    return {
        "status": step.status.value,
        "remaining": _count(step.remaining),
        "searched": _searched(step),
        "parts": [
            {"part": part, "remaining": _count(values.get("remaining"))}
            for part, values in _parts(step)
        ],
        "attempts": _count(step.attempts),
        "error": step.error,
        "finished_at": _time(step.finished_at),
        "run": _run(step),
    }


def _partner(
    name: str, datamap: DataMap, row: PartnerRequest | None, step: StepRecord | None
) -> dict[str, Any]:
    spec = datamap.systems.get(name)
    details = step.details if step is not None else {}
    return {
        "system": name,
        "protocol": getattr(spec, "protocol", None),
        "status": row.status.value if row else None,
        "step_status": step.status.value if step is not None else None,
        "subject_request_id": row.subject_request_id if row else None,
        "controller_id": row.controller_id if row else None,
        "regulation_sent": row.regulation_sent if row else None,
        "reference": (row.reference if row else None) or details.get("reference"),
        "confirmed_by": (row.confirmed_by if row else None) or details.get("confirmed_by"),
        "confirmed_at": _time(details.get("confirmed_at")),
        "results_count": details.get("results_count"),
        "expected_completion_at": _time(row.expected_completion_at if row else None),
        "error": (step.error if step is not None else None) or (row.error if row else None),
        "updated_at": _time(row.updated_at if row else None),
        "finished_at": _time(step.finished_at) if step is not None else None,
        "run": _run(step) if step is not None else None,
    }


def _system_reasons(systems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Why the erasure is not proven complete in each system, if it is not."""
    reasons: list[dict[str, Any]] = []
    for entry in systems:
        name, erase, verify = entry["system"], entry["erase"], entry["verification"]
        if erase is None:
            reasons.append(_reason(name, "erase", "missing", "no erase step was recorded"))
            erase_ok = False
        else:
            erase_ok = erase["status"] in (StepStatus.SUCCEEDED, StepStatus.NOT_APPLICABLE)
            if not erase_ok:
                reasons.append(_reason(name, "erase", erase["status"], erase["error"]))
        needs_proof = erase is not None and erase["status"] == StepStatus.SUCCEEDED
        if verify is None:
            if needs_proof:
                reasons.append(_reason(name, "verify", "missing", "the erasure was not verified"))
            continue
        if verify["status"] != StepStatus.SUCCEEDED or verify["remaining"] != 0:
            error = verify["error"]
            if error is None and verify["remaining"]:
                error = f"{verify['remaining']} rows remain"
            reasons.append(_reason(name, "verify", verify["status"], error))
    return reasons


def _resolve_reasons(resolved: Sequence[StepRecord]) -> list[dict[str, Any]]:
    """A look-up of the subject's identities that failed: what the other systems looked
    for may be short of what the account holds."""
    return [
        _reason(step.system, "resolve", step.status.value, step.error)
        for step in resolved if step.status != StepStatus.SUCCEEDED
    ]


def _partner_reasons(partners: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        _reason(
            p["system"], "partner", p["step_status"] or p["status"] or "missing",
            p["error"] or f"the partner's request is {p['status'] or 'not recorded'}",
        )
        for p in partners if p["status"] not in PARTNER_DONE
    ]


def _reason(system: str, step: str, status: str, error: str | None) -> dict[str, Any]:
    return {"system": system, "step": step, "status": status, "error": error}


def _parts(step: StepRecord) -> list[tuple[str, dict[str, Any]]]:
    """The connector's parts (tables, buckets, log sources); reserved keys start with `_`."""
    return sorted(
        (name, values) for name, values in step.details.items()
        if not name.startswith("_") and isinstance(values, dict)
    )


def _run(step: StepRecord) -> dict[str, str] | None:
    run = step.details.get(RUN_KEY)
    return {str(k): str(v) for k, v in sorted(run.items())} if isinstance(run, dict) else None


def _count(value: Any) -> int | None:
    return None if value is None else int(value)


def _time(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        # Details keep times as ISO text; one spelling for every time in the certificate.
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    assert isinstance(value, datetime)
    # SQLite hands back naive datetimes; every time in the ledger is UTC.
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- signing ----------------------------------------------------------------------------------
def canonical_bytes(body: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: one spelling for one content, whoever re-serializes it."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign_certificate(body: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    public = private_key.public_key()
    return {
        "certificate": dict(body),
        "signature": {
            "algorithm": ALGORITHM,
            "key_id": key_id(public),
            "public_key": encode_public_key(public),
            "value": base64.b64encode(private_key.sign(canonical_bytes(body))).decode("ascii"),
        },
    }


def verify_certificate(
    document: object, trusted_public_keys: Iterable[Ed25519PublicKey]
) -> VerifiedCertificate:
    """Check a certificate against keys the caller trusts; raises `CertificateInvalid`."""
    if not isinstance(document, dict):
        raise CertificateInvalid("malformed document: not a JSON object")
    body, signature = document.get("certificate"), document.get("signature")
    if not isinstance(body, dict) or not isinstance(signature, dict):
        raise CertificateInvalid("malformed document: needs 'certificate' and 'signature'")
    if extra := set(document) - DOCUMENT_KEYS:
        raise CertificateInvalid(
            f"unsigned data beside the certificate: {_keys(extra)}; a certificate file "
            "holds only 'certificate' and 'signature'"
        )
    if extra := set(signature) - SIGNATURE_KEYS:
        raise CertificateInvalid(
            f"unsigned data in the signature: {_keys(extra)}; a signature holds only "
            f"{', '.join(sorted(SIGNATURE_KEYS))}"
        )
    if body.get("format") != FORMAT:
        raise CertificateInvalid(f"unknown format {body.get('format')!r}; expected {FORMAT}")
    if signature.get("algorithm") != ALGORITHM:
        raise CertificateInvalid(
            f"algorithm {signature.get('algorithm')!r} is not {ALGORITHM}"
        )
    request, outcome = body.get("request"), body.get("outcome")
    if not (
        isinstance(request, dict) and isinstance(request.get("id"), str)
        and isinstance(outcome, dict) and isinstance(outcome.get("status"), str)
        and isinstance(body.get("issued_at"), str)
        and all(isinstance(signature.get(k), str) for k in ("key_id", "value"))
    ):
        raise CertificateInvalid("malformed document: a required field is missing")
    trusted = {key_id(k): k for k in trusted_public_keys}
    claimed = str(signature["key_id"])
    key = trusted.get(claimed)
    if key is None:
        known = ", ".join(sorted(trusted)) or "none"
        raise CertificateInvalid(f"key {claimed} is not trusted (trusted: {known})")
    embedded = signature.get("public_key")
    if embedded is not None and embedded != encode_public_key(key):
        raise CertificateInvalid(f"the embedded public key is not the trusted key {claimed}")
    try:
        value = base64.b64decode(str(signature["value"]).encode("ascii"), validate=True)
        key.verify(value, canonical_bytes(body))
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise CertificateInvalid("malformed document: the signature is not base64") from exc
    except InvalidSignature as exc:
        raise CertificateInvalid("signature does not match the certificate") from exc
    return VerifiedCertificate(
        body=body,
        request_id=request["id"],
        ticket_id=request.get("ticket_id"),
        outcome=outcome["status"],
        issued_at=body["issued_at"],
        key_id=claimed,
    )


def read_certificate(path: Path) -> object:
    """A certificate file's JSON; OSError for a file that cannot be read, and
    `CertificateInvalid` for one that is not exactly one JSON document, or says a key twice
    in one object."""
    return parse_certificate(path.read_bytes())


def parse_certificate(data: bytes) -> object:
    """One JSON document and nothing after it but whitespace; no key twice in an object,
    no NaN or Infinity (not JSON, and never signed here)."""
    decoder = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    try:
        # The encodings `json.loads` accepts (UTF-8, with or without a BOM; UTF-16/32).
        text = data.decode(json.detect_encoding(data), "surrogatepass")
        start = len(text) - len(text.lstrip(_JSON_WHITESPACE))
        document, end = decoder.raw_decode(text, start)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CertificateInvalid(f"malformed document: not JSON ({exc})") from exc
    if text[end:].strip(_JSON_WHITESPACE):
        raise CertificateInvalid(
            f"unsigned data after the JSON document (from character {end}); a certificate "
            "file holds one JSON document"
        )
    return document


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            # A parser keeps the last; a person (or another parser) may read the first.
            raise CertificateInvalid(
                f"malformed document: the {_keys([key])} appears twice in one object"
            )
        found[key] = value
    return found


def _no_constant(name: str) -> Any:
    raise CertificateInvalid(f"malformed document: {name} is not JSON")


def _keys(keys: Iterable[str]) -> str:
    """Keys from a file, quoted and cut short: they are shown to whoever verifies it."""
    names = sorted(keys)
    shown = ", ".join(repr(k if len(k) <= 40 else k[:40] + "…") for k in names[:5])
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"{'key' if len(names) == 1 else 'keys'} {shown}{more}"


# -- files ------------------------------------------------------------------------------------
def write_certificate(document: Mapping[str, Any], out_dir: Path) -> tuple[Path, str]:
    """`<out_dir>/<request id>.json`, replaced atomically (a reader never sees half a file).
    Returns the path and the SHA-256 of the bytes written, for the ledger."""
    request_id = document["certificate"]["request"]["id"]
    if not isinstance(request_id, str) or not _SAFE_NAME.fullmatch(request_id):
        raise ValueError(f"request id {request_id!r} cannot name a file")
    data = (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    private_dir(out_dir)  # 0700; mkstemp makes the file 0600
    target = out_dir / f"{request_id}.json"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{request_id}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target, hashlib.sha256(data).hexdigest()


def issue_certificate(
    ledger: Ledger,
    datamap: DataMap,
    request_id: str,
    private_key: Ed25519PrivateKey,
    out_dir: Path,
    issued_at: datetime,
) -> tuple[Path, str]:
    """Build, sign and write one request's certificate."""
    body = build_certificate(ledger, datamap, request_id, issued_at)
    return write_certificate(sign_certificate(body, private_key), out_dir)
