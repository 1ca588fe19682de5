"""Generic webhook partner connector: tells a partner that has no OpenDSR API to erase, or to
report, what it holds of a subject, with one signed HTTP POST to a URL it gives us.

The full specification: `docs/webhook-protocol.md`.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from connectors.http import Backoff, Exhausted, send_with_retries
from connectors.partner import (
    FORMATS,
    LOOPBACK_HOSTS,
    UUID4_RE,
    Acknowledgement,
    Answer,
    Correction,
    HeaderSource,
    InvalidRequest,
    NoSupportedIdentity,
    PartnerConfigError,
    PartnerRejected,
    PartnerUnavailable,
    ProtocolError,
    UnsupportedRequest,
    Untrusted,
    accepted_identities,
    clip_message,
    exponential_backoff,
    header_value,
    parse_rfc3339,
    rfc3339,
    scrub_message,
)
from dsrflow.datamap import PartnerSystem
from dsrflow.identities import Subject
from dsrflow.model import PartnerStatus, Regime

log = logging.getLogger(__name__)

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
DEFAULT_MAX_AGE = 300

REQUEST_TYPES = (
    "erasure", "access", "portability", "account_cancellation", "consent_withdrawal",
    "rectification", "restriction",
)
REGULATIONS = tuple(r.value for r in Regime)
DONE_STATUSES = frozenset({"completed", "received", "accepted"})
WAITING_STATUSES = frozenset({"pending", "in_progress"})
REPLY_STATUSES = DONE_STATUSES | WAITING_STATUSES
MAX_REFERENCE = 128  # the ledger's partner_requests.reference

_HEX_LENGTH = {"sha256": 64, "sha1": 40, "md5": 32}
_RETRY_CODES = frozenset({409, 429})
_REGULATION_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_SIGNATURE_RE = re.compile(r"^v1,[A-Za-z0-9+/]{43}=$")  # base64 of 32 bytes

Secret = str | bytes


class WebhookSignatureError(Untrusted):
    """A webhook request whose timestamp or signature is missing, malformed, stale or wrong.
    Receivers answer 401."""


# -- messages --------------------------------------------------------------------------------
@dataclass(frozen=True)
class WebhookIdentity:
    type: str
    format: str
    value: str = field(repr=False)  # personal data (hashed or not)

    def as_json(self) -> dict[str, str]:
        return {"type": self.type, "format": self.format, "value": self.value}


@dataclass(frozen=True)
class WebhookRequest:
    """What `WebhookPartner.submit` sends, validated on construction. Its `repr` shows no
    identity."""

    request_id: str
    type: str
    regulation: str
    identities: tuple[WebhookIdentity, ...] = field(repr=False)
    submitted_time: datetime
    # A rectification's corrected values, each with the category and field it belongs to.
    corrections: tuple[Correction, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.request_id, str) or not UUID4_RE.match(self.request_id):
            raise InvalidRequest("request_id must be a lowercase UUIDv4")
        if self.type not in REQUEST_TYPES:
            raise UnsupportedRequest(
                f"request type {self.type!r}; a webhook carries {', '.join(REQUEST_TYPES)}"
            )
        if self.regulation not in REGULATIONS:
            raise UnsupportedRequest(
                f"regulation {self.regulation!r}; known: {', '.join(REGULATIONS)}"
            )
        if not self.identities:
            raise NoSupportedIdentity("a webhook request needs at least one identity")
        for identity in self.identities:
            _check_identity(identity.type, identity.format, identity.value, InvalidRequest)
        if self.submitted_time.tzinfo is None:
            raise InvalidRequest("submitted_time must carry a time zone")
        if (self.type == "rectification") != bool(self.corrections):
            raise InvalidRequest("corrections go with a rectification, and only with one")

    def as_json(self) -> dict[str, Any]:
        return {
            **({"corrections": [c.as_json() for c in self.corrections]}
               if self.corrections else {}),
            "identities": [i.as_json() for i in self.identities],
            "regulation": self.regulation,
            "request_id": self.request_id,
            "submitted_time": rfc3339(self.submitted_time),
            "type": self.type,
        }

    def body(self) -> bytes:
        """The exact bytes POSTed: canonical, so a retry sends the same request."""
        return canonical(self.as_json())

    def secrets(self) -> list[str]:
        return [i.value for i in self.identities] + [c.value for c in self.corrections]


@dataclass(frozen=True)
class WebhookReceipt:
    """The partner's acknowledgement. `completed` says whether the flow may count the
    partner's part as done: True unless the partner said `pending`/`in_progress`."""

    subject_request_id: str
    request_type: str  # as sent
    regulation: str  # as sent (our regime)
    reference: str | None  # the partner's id for the request, if it gave one
    completed: bool
    status: str | None  # the partner's `status`, as it said it (None: it said none)
    status_code: int
    attempts: int


# -- signing and verifying -------------------------------------------------------------------
def canonical(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def sign(body: bytes, secret: Secret, request_id: str, timestamp: int | str) -> str:
    """The `webhook-signature` value for `body` sent as `request_id` at `timestamp`."""
    moment = datetime.fromtimestamp(int(timestamp), UTC)
    return Webhook(_key(secret)).sign(request_id, moment, body)


def signed_headers(body: bytes, secret: Secret, request_id: str, timestamp: int) -> dict[str, str]:
    """Every header of one attempt (a receiver's tests can build requests with it too)."""
    return {
        "Content-Type": "application/json",
        ID_HEADER: request_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(body, secret, request_id, timestamp),
    }


def verify_webhook(
    body: bytes,
    headers: HeaderSource,
    secret: Secret | Sequence[Secret],
    max_age_seconds: float = DEFAULT_MAX_AGE,
    now: float | datetime | None = None,
) -> dict[str, Any]:
    """For a receiver: authenticate a webhook request and return its parsed, checked body.

    In this order: the timestamp header must be Unix seconds; the signature must verify over
    the id, the timestamp and the raw `body` (Standard Webhooks; constant-time compare;
    `secret` may be a list, while rotating); the timestamp must be within `max_age_seconds`
    of `now` (default: the clock), either way; only then is the body parsed and checked
    (fields, UUIDv4 id, known type and format, hex digests of the right length, RFC 3339
    time) and `webhook-id` must equal its `request_id`. Raises `WebhookSignatureError` (an
    `Untrusted`: answer 401) or `ProtocolError` (answer 400). Messages name fields, never
    values."""
    msg_id = header_value(headers, (ID_HEADER,))
    if not msg_id:
        raise WebhookSignatureError(f"no {ID_HEADER} header")
    stamp = header_value(headers, (TIMESTAMP_HEADER,))
    if stamp is None:
        raise WebhookSignatureError(f"no {TIMESTAMP_HEADER} header")
    stamp = stamp.strip()
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise WebhookSignatureError(f"{TIMESTAMP_HEADER} is not Unix seconds")
    given = header_value(headers, (SIGNATURE_HEADER,))
    if not given:
        raise WebhookSignatureError(f"no {SIGNATURE_HEADER} header")
    candidates = given.split()
    if not candidates or not all(_SIGNATURE_RE.match(c) for c in candidates):
        raise WebhookSignatureError(f"{SIGNATURE_HEADER} is not v1,<base64 HMAC-SHA256>")
    secrets = [secret] if isinstance(secret, str | bytes) else list(secret)
    if not secrets or not all(secrets):
        raise ValueError("verify_webhook needs a non-empty secret")
    valid = False
    for key in secrets:
        expected = sign(body, key, msg_id, stamp).encode()
        for candidate in candidates:
            valid |= hmac.compare_digest(expected, candidate.encode())
    if not valid:
        raise WebhookSignatureError(f"{SIGNATURE_HEADER} does not verify")
    if now is None:
        current = time.time()
    elif isinstance(now, datetime):
        current = now.timestamp()
    else:
        current = float(now)
    if abs(current - int(stamp)) > max_age_seconds:
        raise WebhookSignatureError(
            f"{TIMESTAMP_HEADER} is more than {max_age_seconds:g} s from now (a replay, or a "
            "clock is wrong)"
        )
    data = _parse_request(body)
    if msg_id.strip() != data["request_id"]:
        raise ProtocolError(f"{ID_HEADER} does not match the body's request_id")
    return data


def _parse_request(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("the body is not a JSON object")
    missing = [
        k for k in ("request_id", "type", "regulation", "identities", "submitted_time")
        if k not in data
    ]
    if missing:
        raise ProtocolError(f"missing field(s): {', '.join(missing)}")
    srid = data["request_id"]
    if not isinstance(srid, str) or not UUID4_RE.match(srid):
        raise ProtocolError("request_id is not a lowercase UUIDv4")
    if data["type"] not in REQUEST_TYPES:
        raise ProtocolError(f"type is not one of {', '.join(REQUEST_TYPES)}")
    regulation = data["regulation"]
    if not isinstance(regulation, str) or not _REGULATION_RE.match(regulation):
        raise ProtocolError("regulation is not a lowercase regime name")
    identities = data["identities"]
    if not isinstance(identities, list) or not identities:
        raise ProtocolError("identities is not a non-empty list")
    for n, item in enumerate(identities):
        if not isinstance(item, dict) or set(item) != {"type", "format", "value"}:
            raise ProtocolError(f"identities[{n}] is not an object of type, format, value")
        _check_identity(item["type"], item["format"], item["value"], ProtocolError, n)
    when = data["submitted_time"]
    try:
        parse_rfc3339(when if isinstance(when, str) else "")
    except ValueError:
        raise ProtocolError("submitted_time is not an RFC 3339 date-time") from None
    corrections = data.get("corrections")
    if (data["type"] == "rectification") != (corrections is not None):
        raise ProtocolError("corrections go with a rectification, and only with one")
    for n, item in enumerate(corrections or ()):
        if (not isinstance(item, dict) or set(item) != {"category", "field", "value"}
                or not all(isinstance(v, str) and v for v in item.values())):
            raise ProtocolError(f"corrections[{n}] is not an object of category, field, value")
    if corrections is not None and not corrections:
        raise ProtocolError("corrections is empty")
    return data


def _check_identity(
    kind: Any, fmt: Any, value: Any, error: type[Exception], index: int | None = None
) -> None:
    where = "identity" if index is None else f"identities[{index}]"
    if not isinstance(kind, str) or not kind:
        raise error(f"{where}: type must be a non-empty string")
    if fmt not in FORMATS:
        raise error(f"{where}: format is not one of {', '.join(FORMATS)}")
    if not isinstance(value, str) or not value:
        raise error(f"{where}: value must be a non-empty string")
    length = _HEX_LENGTH.get(fmt)
    if length is not None and not re.fullmatch(f"[0-9a-f]{{{length}}}", value):
        raise error(f"{where}: a {fmt} value must be {length} lowercase hex digits")


def _key(secret: Secret) -> str | bytes:
    """A `whsec_<base64>` secret as Standard Webhooks reads it; any other, its bytes."""
    if isinstance(secret, str) and secret.startswith("whsec_"):
        return secret
    key = secret.encode() if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


# -- the connector ---------------------------------------------------------------------------
class WebhookPartner:
    """One webhook partner of the data map. The caller owns exactly-once: it records the
    `subject_request_id` in the ledger before `submit`, and reuses it on every retry.
    Thread-safe (httpx's client is)."""

    kind = "partner"
    protocol: ClassVar[str] = "webhook"

    def __init__(
        self,
        name: str,
        system: PartnerSystem,
        client: httpx.Client | None = None,
        secret: str | None = None,
        retries: int = 4,
        backoff: Backoff | None = None,
        timeout: float = 10.0,
        *,
        max_retry_after: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if system.protocol != "webhook":
            raise PartnerConfigError(f"{name}: protocol is {system.protocol}, not webhook")
        if not system.endpoint:
            raise PartnerConfigError(f"{name}: a webhook partner needs an endpoint")
        parts = urlsplit(system.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PartnerConfigError(f"{name}: endpoint must be an http(s) URL")
        if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
            raise PartnerConfigError(
                f"{name}: plain http is allowed on loopback only; identities travel in the body"
            )
        if retries < 0:
            raise ValueError("retries cannot be negative")
        self.name = name
        self.system = system
        self.endpoint = system.endpoint
        self._secret = _key(secret) if secret else _secret_from_env(name, system)
        self.retries = retries
        self.backoff = backoff if backoff is not None else exponential_backoff()
        self.timeout = timeout
        self.max_retry_after = max_retry_after
        self.clock = clock
        self._owns_client = client is None
        self._http = client if client is not None else httpx.Client(
            timeout=httpx.Timeout(timeout), follow_redirects=False
        )

    def __repr__(self) -> str:
        return f"WebhookPartner({self.name!r}, endpoint={self.endpoint!r})"

    def identities(self, subject: Subject) -> tuple[WebhookIdentity, ...]:
        """The subject's identities the partner accepts, in the formats it wants them."""
        return tuple(
            WebhookIdentity(type=kind, format=fmt, value=value)
            for kind, fmt, value in accepted_identities(self.system, subject)
        )

    def request(
        self,
        subject: Subject,
        request_type: str,
        regulation: str,
        subject_request_id: str,
        *,
        submitted_time: datetime | None = None,
        corrections: Sequence[Correction] = (),
    ) -> WebhookRequest:
        """The request `submit` sends (pure: no I/O)."""
        kind = str(request_type)
        if kind not in REQUEST_TYPES:
            raise UnsupportedRequest(
                f"{self.name}: a webhook has no request for {kind}; it carries "
                f"{', '.join(REQUEST_TYPES)}"
            )
        identities = self.identities(subject)
        if not identities:
            accepted = sorted({i.type.value for i in self.system.identities})
            held = sorted({i.type.value for i in subject.identities})
            raise NoSupportedIdentity(
                f"{self.name}: the partner accepts {', '.join(accepted)}; the subject has "
                f"{', '.join(held) or 'no identities'}"
            )
        return WebhookRequest(
            request_id=subject_request_id,
            type=kind,
            regulation=str(regulation),
            identities=identities,
            submitted_time=submitted_time or datetime.now(UTC),
            corrections=tuple(corrections),
        )

    def submit(
        self,
        subject: Subject,
        request_type: str,
        regulation: str,
        subject_request_id: str,
        callback_url: str | None = None,
        *,
        submitted_time: datetime | None = None,
    ) -> WebhookReceipt:
        """Send the request (the same signature as `OpenDsrPartner.submit`). Pass the
        request's `received_at` as `submitted_time`, so a retry sends the same bytes (default:
        now). `callback_url` is ignored: webhook partners do not call back."""
        request = self.request(
            subject, request_type, regulation, subject_request_id,
            submitted_time=submitted_time,
        )
        return self.send(request)

    # -- the partner contract (connectors.partner.Partner) --
    polled: ClassVar[bool] = False  # no status API
    calls_back: ClassVar[bool] = False

    @classmethod
    def from_map(cls, name: str, system: PartnerSystem, *, base_dir: Path | None = None,
                 secret: str | None = None) -> WebhookPartner:
        del base_dir  # nothing read from files
        return cls(name, system, secret=secret)

    def hand_over(
        self, subject: Subject, request_type: str, regime: str, subject_request_id: str,
        callback_url: str | None, *, submitted_time: datetime | None = None,
        corrections: Sequence[Correction] = (),
    ) -> Acknowledgement:
        """The acknowledgement is the answer: done, or taken on for a person to confirm."""
        receipt = self.send(self.request(
            subject, request_type, regime, subject_request_id,
            submitted_time=submitted_time, corrections=corrections,
        ))
        if receipt.completed:
            return Acknowledgement(PartnerStatus.COMPLETED, regulation=receipt.regulation,
                                   reference=receipt.reference)
        return Acknowledgement(
            PartnerStatus.AWAITING_CONFIRMATION, regulation=receipt.regulation,
            reference=receipt.reference,
            note=f"{self.name} acknowledged (reference {receipt.reference or '-'}) and will "
                 "report back: confirm when it does",
        )

    def where(self, subject_request_id: str) -> Answer:
        raise NotImplementedError("a webhook partner has no status API")

    def send(self, request: WebhookRequest) -> WebhookReceipt:
        srid = request.request_id
        operation = f"submit {srid}"
        body = request.body()
        secrets = request.secrets()

        def post() -> httpx.Response:
            # Signed afresh on every attempt: the timestamp is part of the signature.
            headers = {
                "Accept": "application/json",
                "User-Agent": "dsrflow-webhook",
                **signed_headers(body, self._secret, srid, int(self.clock())),
            }
            return self._http.post(
                self.endpoint, content=body, headers=headers, timeout=self.timeout,
                follow_redirects=False,
            )

        try:
            answer = send_with_retries(
                post, retries=self.retries, backoff=self.backoff,
                max_retry_after=self.max_retry_after, retry_codes=_RETRY_CODES,
                label=f"{self.name}: {operation}",
            )
        except Exhausted as exc:
            raise PartnerUnavailable(self.name, operation, exc.attempts, exc.reason) from None
        return self._accept(request, answer.response, operation, secrets, answer.attempts)

    def _accept(
        self,
        request: WebhookRequest,
        response: httpx.Response,
        operation: str,
        secrets: Sequence[str],
        attempts: int,
    ) -> WebhookReceipt:
        code = response.status_code
        if 400 <= code < 500:
            error_code, message = _error_reply(response.content, secrets)
            raise PartnerRejected(self.name, operation, code, error_code, message)
        if not 200 <= code < 300:
            raise ProtocolError(
                f"{self.name}: {operation}: unexpected HTTP {code} (redirects are not followed)"
            )
        data = _parse_reply(response.content, self.name, operation)
        status = data.get("status")
        if status is not None and status not in REPLY_STATUSES:
            # The partner's text is not repeated: it may echo what it was sent.
            raise ProtocolError(
                f"{self.name}: {operation}: unknown status in the acknowledgement; "
                f"expected one of {', '.join(sorted(REPLY_STATUSES))}"
            )
        receipt = WebhookReceipt(
            subject_request_id=request.request_id,
            request_type=request.type,
            regulation=request.regulation,
            reference=_reference(data.get("reference"), secrets),
            completed=status not in WAITING_STATUSES,
            status=status,
            status_code=code,
            attempts=attempts,
        )
        log.info(
            "%s: request %s acknowledged (HTTP %d, status %s, reference %s)",
            self.name, request.request_id, code, status or "-", receipt.reference or "-",
        )
        return receipt

    def close(self) -> None:
        if self._owns_client:
            self._http.close()

    def __enter__(self) -> WebhookPartner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- helpers ---------------------------------------------------------------------------------
def _secret_from_env(name: str, system: PartnerSystem) -> str | bytes:
    if system.credentials_env is None:
        raise PartnerConfigError(
            f"{name}: a webhook partner needs credentials_env (the variable holding the "
            "shared signing secret)"
        )
    value = os.environ.get(system.credentials_env)
    if not value:
        raise PartnerConfigError(
            f"{name}: environment variable {system.credentials_env} (the webhook's shared "
            "secret) is unset or empty"
        )
    return _key(value)


def _parse_reply(body: bytes, name: str, operation: str) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, dict):
        raise ProtocolError(
            f"{name}: {operation}: the acknowledgement is neither empty nor a JSON object"
        )
    return data


def _reference(value: Any, secrets: Sequence[str]) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    text = str(value).strip()
    lowered = text.casefold()
    if any(s and s.casefold() in lowered for s in secrets):
        log.warning("a partner's reference contained an identity we sent; it was dropped")
        return None
    return clip_message(text, MAX_REFERENCE) or None


def _error_reply(body: bytes, secrets: Sequence[str]) -> tuple[int | str | None, str | None]:
    """The error's code and message, clipped and scrubbed of identities."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    error = data.get("error")
    code: Any
    message: Any
    if isinstance(error, str):
        code, message = data.get("code"), error
    elif isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
    else:
        code, message = data.get("code"), data.get("message")
    if isinstance(code, bool) or not isinstance(code, int | str):
        code = None
    elif isinstance(code, str):
        code = scrub_message(code, secrets, 40)
    return code, scrub_message(message, secrets) if isinstance(message, str) else None

