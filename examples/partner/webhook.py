"""A reference receiver for dsrflow's generic webhook protocol, on loopback (real HTTP), for
the demo and the tests.

    with WebhookReceiver("s3cret", faults=WebhookFaults(fail=2)) as receiver:
        receiver.url              # http://127.0.0.1:<port>/dsr: the data map's `endpoint`
        ...
        receiver.distinct(request_id)   # 1 when every retry resent the same request

It does what `connectors.webhook`'s docstring asks of a partner: `verify_webhook` checks
the timestamp and HMAC signature (401 on failure) and the body (400 on a malformed one,
naming the field, never its value); a repeated `request_id` (= `webhook-id`) is the
same request and gets the same answer; the same id with a different request is a 422. A
new request answers 201 and a repeat 200, both `{"status": <reply_status>, "reference":
"WH-..."}` (`reply_status` is `received` unless told `completed` or `pending`). Errors are
`{"error": {"code": ..., "message": ...}}`.

What it records, so tests can assert exactly-once: `posts[key]` counts POSTs per
`webhook-id` (retries and refused ones included), `distinct(key)` the different
authentic bodies sent under it, `requests` one record per id, `refusals` every error it
answered (status, code).

Faults (`WebhookFaults`, at construction or with `set_faults(...)`): the next N authentic
requests answer `fail_status` (500) or hang `hang_seconds` (beyond the client's timeout),
before or after the request is recorded (after: the request exists but the answer is
lost); the next N new requests are refused with `reject_status` (optionally echoing an
identity in the message, as a careless partner might).
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Literal

from connectors.opendsr import ProtocolError, Untrusted
from connectors.webhook import DEFAULT_MAX_AGE, ID_HEADER, verify_webhook
from examples.partner.loopback import Exchange, LoopbackServer

DEFAULT_PATH = "/dsr"
ReplyStatus = Literal["received", "completed", "pending"]


@dataclass
class WebhookFaults:
    """What goes wrong. Counters (`fail`, `hang`, `reject`) count down as they are used."""

    fail: int = 0  # the next N authentic requests answer `fail_status`
    fail_status: int = 500
    hang: int = 0  # the next N authentic requests hang `hang_seconds`
    hang_seconds: float = 1.0
    stage: Literal["before", "after"] = "after"  # fail/hang before or after recording
    reject: int = 0  # the next N new requests answer `reject_status`
    reject_status: int = 422
    leak_identity_in_errors: bool = False  # the refusal's message echoes an identity


@dataclass
class ReceivedRequest:
    request_id: str
    body: dict[str, Any]
    raw: bytes
    reference: str
    received_time: datetime
    headers: list[tuple[str, str]] = field(default_factory=list)


class WebhookReceiver:
    def __init__(
        self,
        secret: str | bytes | Sequence[str | bytes],
        *,
        faults: WebhookFaults | None = None,
        reply_status: ReplyStatus = "received",
        max_age_seconds: float = DEFAULT_MAX_AGE,
        path: str = DEFAULT_PATH,
        port: int = 0,
    ) -> None:
        self.secret = secret
        self.reply_status = reply_status
        self.max_age_seconds = max_age_seconds
        self.path = path
        self._faults = faults or WebhookFaults()
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._numbers = itertools.count(1)
        self._server = LoopbackServer(self._route, port=port)
        self._url = ""
        self.requests: dict[str, ReceivedRequest] = {}
        self.posts: Counter[str] = Counter()
        self.refusals: list[tuple[int, str]] = []
        self._bodies: dict[str, set[bytes]] = {}

    # -- lifecycle --
    def start(self) -> WebhookReceiver:
        self._stopping.clear()
        self._server.start()
        self._url = self._server.url + self.path
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.stop()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The URL to POST to (the data map's `endpoint`); stays known after `stop()`."""
        if not self._url:
            raise RuntimeError("the receiver has not been started")
        return self._url

    # -- faults --
    @property
    def faults(self) -> WebhookFaults:
        with self._lock:
            return replace(self._faults)

    def set_faults(self, faults: WebhookFaults | None = None, **changes: Any) -> None:
        """Replace the faults, or change some of them: `set_faults(fail=2)`."""
        unknown = set(changes) - {f.name for f in fields(WebhookFaults)}
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
    def distinct(self, key: str) -> int:
        """How many different authentic bodies arrived under this webhook-id (1 when
        every retry resent the same request)."""
        with self._lock:
            return len(self._bodies.get(key, ()))

    # -- the HTTP side --
    def _route(self, ex: Exchange) -> None:
        if ex.path != self.path:
            self._error(ex, 404, "not_found", "no such endpoint")
            return
        if ex.method != "POST":
            self._error(ex, 405, "method_not_allowed", "POST only")
            return
        key = ex.header(ID_HEADER)
        if key:
            with self._lock:
                self.posts[key] += 1
        try:
            body = verify_webhook(ex.body, ex.headers, self.secret, self.max_age_seconds)
        except Untrusted as exc:
            self._error(ex, 401, "unauthenticated", str(exc))
            return
        except ProtocolError as exc:
            self._error(ex, 400, "invalid_request", str(exc))
            return
        srid = str(body["request_id"])
        with self._lock:
            self._bodies.setdefault(srid, set()).add(ex.body)
        if self.faults.stage == "before" and self._fault(ex):
            return
        status, payload = self._record(ex, body)
        if self.faults.stage == "after" and self._fault(ex):
            return
        self._send(ex, status, payload)

    def _record(self, ex: Exchange, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        srid = str(body["request_id"])
        with self._lock:
            existing = self.requests.get(srid)
            if existing is not None:
                if _request_key(existing.body) != _request_key(body):
                    return _error_payload(
                        422, "idempotency_key_reused",
                        "request_id already used for a different request",
                    )
                return 200, self._reply(existing)
            if self._take("reject"):
                faults = self.faults
                message = "request refused"
                if faults.leak_identity_in_errors:
                    message += f" for {body['identities'][0]['value']}"
                return _error_payload(faults.reject_status, "refused", message)
            record = ReceivedRequest(
                request_id=srid,
                body=body,
                raw=ex.body,
                reference=f"WH-{next(self._numbers):06d}",
                received_time=datetime.now(UTC),
                headers=list(ex.headers),
            )
            self.requests[srid] = record
            return 201, self._reply(record)

    def _reply(self, record: ReceivedRequest) -> dict[str, Any]:
        return {"status": self.reply_status, "reference": record.reference}

    def _fault(self, ex: Exchange) -> bool:
        """Apply a 5xx or a hang if one is due; True if the exchange is over."""
        if self._take("fail"):
            faults = self.faults
            self._error(ex, faults.fail_status, "unavailable", "injected failure")
            return True
        if self._take("hang"):
            self._stopping.wait(self.faults.hang_seconds)
            ex.reply(504, b"", {})  # the client has given up by now
            return True
        return False

    def _send(self, ex: Exchange, status: int, payload: dict[str, Any]) -> None:
        if status >= 400:
            with self._lock:
                self.refusals.append((status, str(payload["error"]["code"])))
        body = json.dumps(payload, sort_keys=True).encode()
        ex.reply(status, body, {"Content-Type": "application/json"})

    def _error(self, ex: Exchange, status: int, code: str, message: str) -> None:
        self._send(ex, *_error_payload(status, code, message))


def _error_payload(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"code": code, "message": message}}


def _request_key(body: dict[str, Any]) -> str:
    """What makes two requests with one id the same request."""
    return json.dumps(
        [body.get("type"), body.get("regulation"),
         sorted(json.dumps(i, sort_keys=True) for i in body.get("identities", []))],
        sort_keys=True,
    )
