"""A reference OpenDSR 2.0 processor on loopback, for the demo and the tests.

    with ReferencePartner(faults=Faults(fail=2)) as partner:
        partner.url              # http://127.0.0.1:<port>
        partner.certificate_pem  # the self-signed certificate that signs everything it sends
        ...
        partner.complete(subject_request_id)   # -> signed callbacks to status_callback_urls

Endpoints: `GET /v1/discovery`, `POST /v1/requests`, `GET /v1/requests/{id}`,
`DELETE /v1/requests/{id}`, and `GET /v1/certificate.pem` (the discovery's
`processor_certificate`). It validates requests on its own terms, independently of dsrflow's
client (required fields, lowercase UUIDv4, known types and formats, hex digests of the right
length, RFC 3339 times, supported identity pairs), answers 400 with an OpenDSR `error`
object naming the field, never its value, and treats a repeated `subject_request_id` as the
same request (201 with the original receipt); the same id with a different request is a
422. Every response and callback carries `X-OpenDSR-Processor-Domain` and
`X-OpenDSR-Signature`.

It records what it saw, so tests can assert exactly-once: `posts[id]` counts POSTs per id
(retries included), `distinct_requests(id)` counts the different request bodies behind
them, `requests` holds one record per id, `received` every valid body, `callbacks` every
delivery attempt.

Faults (`Faults`, at construction or at run time with `partner.set_faults(...)`): the next
N API requests answer 5xx or hang beyond the client's timeout (before or after a POST is
recorded: after is the worst case, the request exists but the answer is lost), slow
replies, bad or missing response signatures, bad or missing callback signatures, callbacks
from another domain, lost callbacks, 4xx refusals (optionally echoing an identity, as a
careless processor might), and 409 to a repeated id (as some processors answer).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from examples.partner.certs import (
    KeyType,
    PrivateKey,
    TestCertificate,
    generate,
    generate_key,
    sign,
)
from examples.partner.loopback import Exchange, LoopbackServer

API_VERSION = "2.0"
DEFAULT_DOMAIN = "partner.dsrflow.test"
DEFAULT_IDENTITIES: tuple[tuple[str, str], ...] = (
    ("email", "raw"),
    ("email", "sha256"),
    ("controller_customer_id", "raw"),
    ("phone", "sha256"),
)
REQUEST_TYPES = ("access", "portability", "erasure")
_UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
_HEX = {"sha256": 64, "sha1": 40, "md5": 32}
_REQUEST_PATH = re.compile(r"^/v1/requests/([^/]+)$")

Signature = Literal["good", "bad", "missing"]


@dataclass
class Faults:
    """What goes wrong. Counters (`fail`, `hang`, `reject`) count down as they are used."""

    fail: int = 0  # the next N API requests answer `fail_status`
    fail_status: int = 500
    hang: int = 0  # the next N API requests hang `hang_seconds` (beyond the client timeout)
    hang_seconds: float = 1.0
    stage: Literal["before", "after"] = "after"  # fail/hang before or after a POST is kept
    delay: float = 0.0  # every API reply waits this long (slow, not failing)
    response_signature: Signature = "good"  # bad: signed by another key
    callback_signature: Signature = "good"
    callback_domain: str | None = None  # callbacks claim this processor domain
    lose_callbacks: bool = False  # state changes, but no callback is sent
    reject: int = 0  # the next N POSTs answer `reject_status` (an `error` object)
    reject_status: int = 400
    leak_identity_in_errors: bool = False  # the refusal's message echoes an identity
    conflict_on_repeat: bool = False  # a repeated id answers 409 instead of the receipt


@dataclass
class PartnerRequest:
    subject_request_id: str
    body: dict[str, Any]
    raw: bytes
    status: str
    received_time: datetime
    expected_completion_time: datetime
    callback_urls: list[str]
    history: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CallbackAttempt:
    url: str
    subject_request_id: str
    request_status: str
    status_code: int | None  # None: no answer (connection refused, timeout) or lost
    lost: bool = False


class ReferencePartner:
    def __init__(
        self,
        *,
        domain: str = DEFAULT_DOMAIN,
        key_type: KeyType = "rsa",
        certificate: TestCertificate | None = None,
        token: str | None = None,
        controller_id: str = "dsrflow-controller",
        supported_identities: Iterable[tuple[str, str]] = DEFAULT_IDENTITIES,
        supported_types: Iterable[str] = REQUEST_TYPES,
        complete_after: float | None = None,
        faults: Faults | None = None,
        callback_attempts: int = 3,
        callback_timeout: float = 2.0,
        port: int = 0,
    ) -> None:
        self.domain = domain
        self.token = token
        self.controller_id = controller_id
        self.supported_identities = frozenset(supported_identities)
        self.supported_types = tuple(supported_types)
        self.complete_after = complete_after
        self.callback_attempts = callback_attempts
        self.callback_timeout = callback_timeout
        if certificate is not None and certificate.domain != domain:
            raise ValueError("the certificate is for another domain")
        self._cert: TestCertificate = certificate or generate(domain, key_type)
        self._key_type: KeyType = "rsa" if isinstance(self._cert.key, rsa.RSAPrivateKey) else "ec"
        self._impostor: PrivateKey | None = None  # signs the "bad" signatures
        self._faults = faults or Faults()
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._timers: list[threading.Timer] = []
        self._senders: list[threading.Thread] = []
        self._server = LoopbackServer(self._route, port=port)
        self._url = ""
        self.requests: dict[str, PartnerRequest] = {}
        self.posts: Counter[str] = Counter()
        self.received: list[dict[str, Any]] = []
        self.callbacks: list[CallbackAttempt] = []
        self.errors: list[tuple[int, dict[str, Any]]] = []  # every error answered
        self._bodies: dict[str, set[bytes]] = {}
        # One client for every callback: a client per callback builds a TLS context each
        # time (~30 ms of CPU), which a partner answering thousands would not do.
        self._client: httpx.Client | None = None

    # -- lifecycle --
    def start(self) -> ReferencePartner:
        self._stopping.clear()
        self._client = httpx.Client()
        self._server.start()
        self._url = self._server.url
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()
        self._server.stop()
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> ReferencePartner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL (the data map's `endpoint`); stays known after `stop()`."""
        if not self._url:
            raise RuntimeError("the partner has not been started")
        return self._url

    @property
    def certificate_pem(self) -> bytes:
        return self._cert.certificate_pem

    @property
    def certificate_url(self) -> str:
        return f"{self.url}/v1/certificate.pem"

    # -- faults --
    @property
    def faults(self) -> Faults:
        with self._lock:
            return replace(self._faults)

    def set_faults(self, faults: Faults | None = None, **changes: Any) -> None:
        """Replace the faults, or change some of them: `set_faults(fail=2)`."""
        known = {f.name for f in fields(Faults)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        with self._lock:
            self._faults = replace(faults or self._faults, **changes)

    def _take(self, counter: str) -> bool:
        with self._lock:
            left = getattr(self._faults, counter)
            if left > 0:
                setattr(self._faults, counter, left - 1)
                return True
            return False

    # -- what the tests look at --
    def distinct_requests(self, subject_request_id: str) -> int:
        """How many different valid request bodies arrived with this id (1 when every retry
        resent the same request)."""
        with self._lock:
            return len(self._bodies.get(subject_request_id, ()))

    def status_of(self, subject_request_id: str) -> str:
        with self._lock:
            return self.requests[subject_request_id].status

    # -- state changes (each one sends callbacks) --
    def start_processing(self, subject_request_id: str, wait: bool = True) -> None:
        self._change(subject_request_id, "in_progress", wait)

    def complete(self, subject_request_id: str, wait: bool = True) -> None:
        """Mark the request completed and send its callbacks (waiting for them by
        default)."""
        self._change(subject_request_id, "completed", wait)

    def _change(self, subject_request_id: str, status: str, wait: bool) -> None:
        with self._lock:
            record = self.requests[subject_request_id]
            if record.status in ("completed", "cancelled") or record.status == status:
                return
            record.status = status
            record.history.append(status)
            snapshot = copy.deepcopy(record)
        sender = threading.Thread(target=self._notify, args=(snapshot,), daemon=True)
        sender.start()
        if wait:
            sender.join()

    def _auto_complete(self, subject_request_id: str) -> None:
        if not self._stopping.is_set():
            self.complete(subject_request_id, wait=False)

    # -- the HTTP side --
    def _route(self, ex: Exchange) -> None:
        if ex.method == "GET" and ex.path == "/v1/certificate.pem":
            ex.reply(200, self.certificate_pem, {"Content-Type": "application/x-pem-file"})
            return
        faults = self.faults
        if faults.delay:
            self._stopping.wait(faults.delay)
        if ex.path.startswith("/v1/requests") and not self._authorized(ex):
            self._error(ex, 401, "missing or wrong bearer token")
            return
        if ex.method == "POST" and ex.path == "/v1/requests":
            self._count_post(ex.body)
        if faults.stage == "before" and self._fault_before_or_after(ex):
            return
        status, payload = self._dispatch(ex)
        if faults.stage == "after" and self._fault_before_or_after(ex):
            return
        self._send(ex, status, payload)

    def _fault_before_or_after(self, ex: Exchange) -> bool:
        """Apply a 5xx or a hang if one is due; True if the exchange is over."""
        if self._take("fail"):
            self._error(ex, self.faults.fail_status, "injected failure")
            return True
        if self._take("hang"):
            self._stopping.wait(self.faults.hang_seconds)
            ex.reply(504, b"", {})  # the client has given up by now
            return True
        return False

    def _dispatch(self, ex: Exchange) -> tuple[int, dict[str, Any]]:
        if ex.method == "GET" and ex.path == "/v1/discovery":
            return 200, self._discovery()
        if ex.path == "/v1/requests":
            if ex.method == "POST":
                return self._create(ex.body)
            return _error_payload(405, "method not allowed")
        match = _REQUEST_PATH.match(ex.path)
        if match:
            srid = match.group(1)
            if ex.method == "GET":
                return self._status(srid)
            if ex.method == "DELETE":
                return self._cancel(srid)
            return _error_payload(405, "method not allowed")
        return _error_payload(404, "no such endpoint")

    def _send(self, ex: Exchange, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload, sort_keys=True).encode()
        if status >= 400:
            with self._lock:
                self.errors.append((status, payload))
        ex.reply(status, body, self._signed_headers(body, self.faults.response_signature))

    def _error(self, ex: Exchange, status: int, message: str) -> None:
        self._send(ex, *_error_payload(status, message))

    def _signed_headers(self, body: bytes, signature: Signature, domain: str | None = None
                        ) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "X-OpenDSR-Processor-Domain": domain or self.domain,
        }
        if signature == "good":
            headers["X-OpenDSR-Signature"] = self._cert.sign(body)
        elif signature == "bad":
            with self._lock:
                if self._impostor is None:
                    self._impostor = generate_key(self._key_type)
                impostor = self._impostor
            headers["X-OpenDSR-Signature"] = sign(impostor, body)
        return headers

    def _authorized(self, ex: Exchange) -> bool:
        return self.token is None or ex.header("Authorization") == f"Bearer {self.token}"

    # -- endpoints --
    def _discovery(self) -> dict[str, Any]:
        return {
            "api_version": API_VERSION,
            "supported_identities": [
                {"identity_type": t, "identity_format": f}
                for t, f in sorted(self.supported_identities)
            ],
            "supported_subject_request_types": list(self.supported_types),
            "processor_certificate": self.certificate_url,
        }

    def _count_post(self, raw: bytes) -> None:
        try:
            srid = json.loads(raw).get("subject_request_id")
        except (ValueError, AttributeError):
            return
        if isinstance(srid, str):
            with self._lock:
                self.posts[srid] += 1

    def _create(self, raw: bytes) -> tuple[int, dict[str, Any]]:
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            return _error_payload(400, "the body is not JSON")
        if not isinstance(body, dict):
            return _error_payload(400, "the body is not a JSON object")
        problems = self.validate(body)
        if problems:
            return _error_payload(400, problems[0][1], problems)
        srid = body["subject_request_id"]
        if self._take("reject"):
            faults = self.faults
            message = "request refused"
            if faults.leak_identity_in_errors:
                message += f" for {body['subject_identities'][0]['identity_value']}"
            return _error_payload(faults.reject_status, message)
        now = datetime.now(UTC).replace(microsecond=0)
        key = _request_key(body)
        with self._lock:
            self.received.append(body)
            self._bodies.setdefault(srid, set()).add(json.dumps(body, sort_keys=True).encode())
            existing = self.requests.get(srid)
            if existing is not None:
                if _request_key(existing.body) != key:
                    return _error_payload(
                        422, "subject_request_id already used for a different request"
                    )
                if self.faults.conflict_on_repeat:
                    return _error_payload(409, "subject_request_id already exists")
                return 201, self._receipt(existing)
            delay = timedelta(seconds=self.complete_after or 86400)
            record = PartnerRequest(
                subject_request_id=srid,
                body=body,
                raw=raw,
                status="pending",
                received_time=now,
                expected_completion_time=now + delay,
                callback_urls=list(body.get("status_callback_urls") or []),
                history=["pending"],
            )
            self.requests[srid] = record
            if self.complete_after is not None:
                timer = threading.Timer(self.complete_after, self._auto_complete, args=(srid,))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()
            return 201, self._receipt(record)

    def _receipt(self, record: PartnerRequest) -> dict[str, Any]:
        return {
            "controller_id": self.controller_id,
            "expected_completion_time": _time(record.expected_completion_time),
            "received_time": _time(record.received_time),
            "encoded_request": base64.b64encode(record.raw).decode(),
            "subject_request_id": record.subject_request_id,
            "api_version": API_VERSION,
        }

    def _status(self, srid: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            record = self.requests.get(srid)
            if record is None:
                return _error_payload(404, "no request with this subject_request_id")
            return 200, self._status_body(record)

    def _status_body(self, record: PartnerRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "controller_id": self.controller_id,
            "expected_completion_time": _time(record.expected_completion_time),
            "subject_request_id": record.subject_request_id,
            "request_status": record.status,
            "api_version": API_VERSION,
        }
        if record.status == "completed":
            body["results_count"] = 1
            if record.body.get("subject_request_type") in ("access", "portability"):
                body["results_url"] = f"{self.url}/v1/results/{record.subject_request_id}"
        return body

    def _cancel(self, srid: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            record = self.requests.get(srid)
            if record is None:
                return _error_payload(404, "no request with this subject_request_id")
            if record.status not in ("pending", "cancelled"):
                return _error_payload(
                    400, f"the request is {record.status}; only a pending request can be "
                    "cancelled"
                )
            changed = record.status != "cancelled"
            answer = {
                "controller_id": self.controller_id,
                "subject_request_id": srid,
                "received_time": _time(datetime.now(UTC)),
                "api_version": API_VERSION,
            }
        if changed:
            self._change(srid, "cancelled", wait=False)
        return 202, answer

    # -- validation, on the partner's own terms --
    def validate(self, body: dict[str, Any]) -> list[tuple[str, str]]:
        """(field, reason) for every problem; reasons never quote values."""
        problems: list[tuple[str, str]] = []

        def bad(name: str, reason: str) -> None:
            problems.append((name, f"{name}: {reason}"))

        if body.get("regulation") not in ("gdpr", "ccpa"):
            bad("regulation", "required; one of gdpr, ccpa")
        srid = body.get("subject_request_id")
        if not isinstance(srid, str) or not _UUID4.match(srid):
            bad("subject_request_id", "required; a lowercase UUIDv4")
        if body.get("subject_request_type") not in self.supported_types:
            bad("subject_request_type", f"required; one of {', '.join(self.supported_types)}")
        submitted = body.get("submitted_time")
        if not isinstance(submitted, str) or not _RFC3339.match(submitted):
            bad("submitted_time", "required; an RFC 3339 date-time")
        else:
            try:
                datetime.fromisoformat(submitted.upper().replace("Z", "+00:00"))
            except ValueError:
                bad("submitted_time", "not a valid date-time")
        identities = body.get("subject_identities")
        if not isinstance(identities, list) or not identities:
            bad("subject_identities", "required; a non-empty array")
        else:
            for n, item in enumerate(identities):
                where = f"subject_identities[{n}]"
                if not isinstance(item, dict):
                    bad(where, "not an object")
                    continue
                kind, fmt, value = (
                    item.get("identity_type"), item.get("identity_format"),
                    item.get("identity_value"),
                )
                if not isinstance(kind, str) or not kind:
                    bad(f"{where}.identity_type", "required")
                if fmt not in ("raw", "sha1", "md5", "sha256"):
                    bad(f"{where}.identity_format", "required; raw, sha1, md5 or sha256")
                if not isinstance(value, str) or not value:
                    bad(f"{where}.identity_value", "required; a non-empty string")
                elif fmt in _HEX and not re.fullmatch(f"[0-9a-f]{{{_HEX[fmt]}}}", value):
                    bad(f"{where}.identity_value", f"not a lowercase hex {fmt} digest")
                if (kind, fmt) not in self.supported_identities and isinstance(kind, str):
                    bad(f"{where}", "identity type and format not supported")
        version = body.get("api_version")
        if version is not None and not isinstance(version, str):
            bad("api_version", "a string")
        urls = body.get("status_callback_urls")
        if urls is not None and (
            not isinstance(urls, list)
            or not all(isinstance(u, str) and re.match(r"^https?://[^/\s]+", u) for u in urls)
        ):
            bad("status_callback_urls", "an array of http(s) URLs")
        extensions = body.get("extensions")
        if extensions is not None and not isinstance(extensions, dict):
            bad("extensions", "an object keyed by processor domain")
        return problems

    # -- callbacks --
    def _notify(self, record: PartnerRequest) -> None:
        faults = self.faults
        for url in record.callback_urls:
            payload = self._status_body(record)
            payload["status_callback_url"] = url
            body = json.dumps(payload, sort_keys=True).encode()
            if faults.lose_callbacks:
                self._record_callback(url, record, None, lost=True)
                continue
            headers = self._signed_headers(body, faults.callback_signature, faults.callback_domain)
            for attempt in range(max(1, self.callback_attempts)):
                if self._stopping.is_set():
                    return
                try:
                    assert self._client is not None, "the partner was never started"
                    response = self._client.post(url, content=body, headers=headers,
                                                 timeout=self.callback_timeout)
                    code: int | None = response.status_code
                except (httpx.HTTPError, RuntimeError):  # RuntimeError: stopped meanwhile
                    code = None
                self._record_callback(url, record, code)
                if code is not None and 200 <= code < 300:
                    break
                self._stopping.wait(0.05 * 2**attempt)

    def _record_callback(
        self, url: str, record: PartnerRequest, code: int | None, lost: bool = False
    ) -> None:
        with self._lock:
            self.callbacks.append(
                CallbackAttempt(url, record.subject_request_id, record.status, code, lost)
            )


def _error_payload(
    status: int, message: str, problems: list[tuple[str, str]] | None = None
) -> tuple[int, dict[str, Any]]:
    error: dict[str, Any] = {"code": status, "message": message}
    if problems:
        error["errors"] = [
            {"domain": "Validation", "reason": "InvalidField", "message": text}
            for _, text in problems
        ]
    return status, {"error": error}


def _request_key(body: dict[str, Any]) -> str:
    """What makes two requests with one id the same request."""
    return json.dumps(
        [body.get("regulation"), body.get("subject_request_type"),
         sorted(json.dumps(i, sort_keys=True) for i in body.get("subject_identities", []))],
        sort_keys=True,
    )


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
