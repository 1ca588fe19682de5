"""OpenDSR 2.0 partner connector: tells a processor (a partner the app shares data with)
to erase, or to report, what it holds of a subject, over the partner's HTTP API.

The full specification: `docs/opendsr-client.md`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from connectors.http import Backoff, Exhausted, send_with_retries
from connectors.partner import (
    FORMATS,
    HEX_LENGTH,
    LOOPBACK_HOSTS,
    UUID4_RE,
    Acknowledgement,
    Answer,
    Correction,
    HeaderSource,
    InvalidRequest,
    NoSupportedIdentity,
    PartnerConfigError,
    PartnerError,
    PartnerRejected,
    PartnerUnavailable,
    ProtocolError,
    UnsupportedRequest,
    Untrusted,
    accepted_identities,
    exponential_backoff,
    header_value,
    parse_rfc3339,
    rfc3339,
    scrub_message,
)
from dsrflow.datamap import PartnerSystem
from dsrflow.identities import Subject
from dsrflow.model import PartnerStatus

log = logging.getLogger(__name__)

API_VERSION = "2.0"
SIGNATURE_HEADER = "X-OpenDSR-Signature"
DOMAIN_HEADER = "X-OpenDSR-Processor-Domain"
_SIGNATURE_HEADERS = (SIGNATURE_HEADER, "X-OpenGDPR-Signature")
_DOMAIN_HEADERS = (DOMAIN_HEADER, "X-OpenGDPR-Processor-Domain")

REQUEST_TYPES = ("access", "portability", "erasure")
REGULATIONS = ("gdpr", "ccpa")
STATUSES = ("pending", "in_progress", "completed", "cancelled")
FINAL_STATUSES = frozenset({"completed", "cancelled"})

# Our request types and regimes -> what OpenDSR can carry (see docs/opendsr-client.md).
REQUEST_TYPE_MAP = {
    "access": "access",
    "portability": "portability",
    "erasure": "erasure",
    "account_cancellation": "erasure",
    "consent_withdrawal": "erasure",
}
REGULATION_MAP = {"gdpr": "gdpr", "ccpa": "ccpa", "pipl": "gdpr", "uk_gdpr": "gdpr"}


# -- errors ----------------------------------------------------------------------------------
# Every error the OpenDSR connector raises is a partner error (`connectors.partner`).
OpenDsrError = PartnerError


class SignatureError(Untrusted):
    """`X-OpenDSR-Signature` is missing, malformed, or does not verify."""


class DomainNotAllowed(Untrusted):
    """`X-OpenDSR-Processor-Domain` is missing or not on the allow-list."""


class CallbackMismatch(Untrusted):
    """A signed callback meant for another endpoint (its `status_callback_url`)."""


# -- messages --------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenDsrIdentity:
    identity_type: str
    identity_format: str
    identity_value: str = field(repr=False)  # personal data (hashed or not)

    def as_json(self) -> dict[str, str]:
        return {
            "identity_type": self.identity_type,
            "identity_format": self.identity_format,
            "identity_value": self.identity_value,
        }


@dataclass(frozen=True)
class OpenDsrRequest:
    """An OpenDSR 2.0 request, validated on construction. Its `repr` shows no identity."""

    regulation: str
    subject_request_id: str
    subject_request_type: str
    subject_identities: tuple[OpenDsrIdentity, ...] = field(repr=False)
    submitted_time: datetime
    status_callback_urls: tuple[str, ...] = ()
    api_version: str = API_VERSION

    def __post_init__(self) -> None:
        if self.regulation not in REGULATIONS:
            raise UnsupportedRequest(
                f"regulation {self.regulation!r}; OpenDSR knows {', '.join(REGULATIONS)}"
            )
        if not isinstance(self.subject_request_id, str) or not UUID4_RE.match(
            self.subject_request_id
        ):
            raise InvalidRequest("subject_request_id must be a lowercase UUIDv4")
        if self.subject_request_type not in REQUEST_TYPES:
            raise UnsupportedRequest(
                f"subject_request_type {self.subject_request_type!r}; "
                f"OpenDSR knows {', '.join(REQUEST_TYPES)}"
            )
        if not self.subject_identities:
            raise NoSupportedIdentity("an OpenDSR request needs at least one identity")
        for identity in self.subject_identities:
            if identity.identity_format not in FORMATS:
                raise InvalidRequest(f"unknown identity format {identity.identity_format!r}")
            length = HEX_LENGTH.get(identity.identity_format)
            if length is not None and not re.fullmatch(
                f"[0-9a-f]{{{length}}}", identity.identity_value
            ):
                raise InvalidRequest(
                    f"a {identity.identity_format} identity must be {length} lowercase hex "
                    "digits"
                )
            if not identity.identity_value:
                raise InvalidRequest("an identity value cannot be empty")
        if self.submitted_time.tzinfo is None:
            raise InvalidRequest("submitted_time must carry a time zone")
        for url in self.status_callback_urls:
            if urlsplit(url).scheme not in ("http", "https"):
                raise InvalidRequest("status_callback_urls must be http(s) URLs")

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "api_version": self.api_version,
            "regulation": self.regulation,
            "subject_identities": [i.as_json() for i in self.subject_identities],
            "subject_request_id": self.subject_request_id,
            "subject_request_type": self.subject_request_type,
            "submitted_time": rfc3339(self.submitted_time),
        }
        if self.status_callback_urls:
            body["status_callback_urls"] = list(self.status_callback_urls)
        return body

    def body(self) -> bytes:
        """The exact bytes POSTed: canonical, so a retry sends the same request."""
        return json.dumps(self.as_json(), sort_keys=True, separators=(",", ":")).encode()

    def secrets(self) -> list[str]:
        return [i.identity_value for i in self.subject_identities]


@dataclass(frozen=True)
class Receipt:
    """The partner's acknowledgement of a request (without `encoded_request`)."""

    subject_request_id: str
    regulation: str  # as sent (pipl goes out as gdpr)
    subject_request_type: str  # as sent
    controller_id: str | None
    received_time: datetime | None
    expected_completion_time: datetime | None
    processor_domain: str | None
    duplicate: bool = False  # the partner already had this id (answered 409)


@dataclass(frozen=True)
class Status:
    """A request's state at the partner, from a status response or a callback."""

    subject_request_id: str
    request_status: str  # pending | in_progress | completed | cancelled
    controller_id: str | None = None
    expected_completion_time: datetime | None = None
    api_version: str | None = None
    results_url: str | None = field(default=None, repr=False)  # may grant access to data
    results_count: int | None = None
    status_callback_url: str | None = None  # callbacks only

    @property
    def final(self) -> bool:
        return self.request_status in FINAL_STATUSES

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Status:
        srid = data.get("subject_request_id")
        if not isinstance(srid, str) or not UUID4_RE.match(srid):
            raise ProtocolError("subject_request_id is missing or not a lowercase UUIDv4")
        state = data.get("request_status")
        if state not in STATUSES:
            raise ProtocolError(f"request_status is not one of {', '.join(STATUSES)}")
        count = data.get("results_count")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool)):
            raise ProtocolError("results_count is not an integer")
        return cls(
            subject_request_id=srid,
            request_status=str(state),
            controller_id=_opt_str(data, "controller_id"),
            expected_completion_time=_opt_time(data, "expected_completion_time"),
            api_version=_opt_str(data, "api_version"),
            results_url=_opt_str(data, "results_url"),
            results_count=count,
            status_callback_url=_opt_str(data, "status_callback_url"),
        )


@dataclass(frozen=True)
class Discovery:
    api_version: str
    supported_identities: frozenset[tuple[str, str]]  # (identity_type, identity_format)
    supported_subject_request_types: frozenset[str]
    processor_certificate: str | None


# -- formats ---------------------------------------------------------------------------------
# -- signatures ------------------------------------------------------------------------------
def load_certificate(pem: bytes | str | x509.Certificate) -> x509.Certificate:
    """A PEM certificate whose key can verify OpenDSR signatures (RSA or EC)."""
    if isinstance(pem, x509.Certificate):
        cert = pem
    else:
        try:
            cert = x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)
        except ValueError as exc:
            raise PartnerConfigError(f"not a PEM certificate: {exc}") from None
    if not isinstance(cert.public_key(), rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise PartnerConfigError("the certificate's key is neither RSA nor EC")
    return cert


def verify_signature(
    body: bytes, signature: str | None, certificate: bytes | str | x509.Certificate
) -> None:
    """Raise `SignatureError` unless `signature` (the header's value) signs `body`."""
    cert = load_certificate(certificate)
    if not signature:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SignatureError(
            "the processor certificate is not valid now (valid "
            f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d})"
        )
    try:
        raw = base64.b64decode("".join(signature.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{SIGNATURE_HEADER} is not base64") from None
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(raw, body, padding.PKCS1v15(), hashes.SHA256())
            return
        if not isinstance(key, ec.EllipticCurvePublicKey):  # load_certificate checked
            raise SignatureError("the certificate's key is neither RSA nor EC")
        size = (key.curve.key_size + 7) // 8
        candidates = [raw]
        if len(raw) == 2 * size:  # raw r||s, as some implementations send it
            r, s = int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big")
            candidates.append(encode_dss_signature(r, s))
        for candidate in candidates:
            try:
                key.verify(candidate, body, ec.ECDSA(hashes.SHA256()))
                return
            except InvalidSignature:
                continue
    except InvalidSignature:
        pass
    raise SignatureError(f"{SIGNATURE_HEADER} does not verify against the pinned certificate")


def verify_callback(
    body: bytes,
    headers: HeaderSource,
    certificate_pem: bytes | str | x509.Certificate,
    allowed_domains: Iterable[str],
    *,
    callback_url: str | None = None,
) -> dict[str, Any]:
    """Authenticate a status callback and return its parsed body (without
    `encoded_request`). In this order: the processor domain header must be on the allow-list
    (exact, case-insensitive), then the signature must verify over the raw `body`, and only
    then is the body parsed and checked (`subject_request_id`, `request_status`, and the
    `status_callback_url` if `callback_url` is given). Raises `DomainNotAllowed`,
    `SignatureError`, `CallbackMismatch` (all `Untrusted`: answer 403) or `ProtocolError`
    (answer 400)."""
    check_domain(header_value(headers, _DOMAIN_HEADERS), allowed_domains)
    verify_signature(body, header_value(headers, _SIGNATURE_HEADERS), certificate_pem)
    data = _parse_object(body)
    status = Status.from_json(data)  # validates the fields the flow relies on
    if callback_url is not None and status.status_callback_url != callback_url:
        raise CallbackMismatch("the callback's status_callback_url is not this endpoint")
    return data


def check_domain(domain: str | None, allowed_domains: Iterable[str]) -> str:
    allowed = {_domain_key(d) for d in allowed_domains}
    if not domain:
        raise DomainNotAllowed(f"no {DOMAIN_HEADER} header")
    if _domain_key(domain) not in allowed:
        # The header's value is the caller's text: not repeated.
        raise DomainNotAllowed(f"the {DOMAIN_HEADER} header names a domain not on the allow-list")
    return domain.strip()


def _domain_key(domain: str) -> str:
    value = domain.strip()
    return value.lower() if value.isascii() else "\x00" + value  # never matches an ASCII one


def _parse_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("the body is not a JSON object")
    data.pop("encoded_request", None)  # never logged, stored or returned
    return data


# -- the client ------------------------------------------------------------------------------
class OpenDsrClient:
    """The HTTP side of OpenDSR: discovery, submit, status, cancel. Thread-safe."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        certificate_pem: bytes | str | x509.Certificate,
        allowed_domains: Iterable[str] | None = None,
        timeout: float = 10.0,
        retries: int = 4,
        backoff: Backoff | None = None,
        max_retry_after: float = 30.0,
        name: str = "opendsr",
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PartnerConfigError(f"{name}: endpoint must be an http(s) URL")
        if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
            raise PartnerConfigError(
                f"{name}: plain http is allowed on loopback only; identities travel in the body"
            )
        if retries < 0:
            raise ValueError("retries cannot be negative")
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.certificate = load_certificate(certificate_pem)
        self.allowed_domains = list(allowed_domains) if allowed_domains is not None else None
        self.retries = retries
        self.backoff = backoff if backoff is not None else exponential_backoff()
        self.max_retry_after = max_retry_after
        headers = {"Accept": "application/json", "User-Agent": "dsrflow-opendsr"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout), headers=headers, follow_redirects=False
        )

    # -- API --
    def discovery(self) -> Discovery:
        data, _ = self._call("GET", "/v1/discovery", operation="discovery")
        pairs = data.get("supported_identities")
        types = data.get("supported_subject_request_types")
        if not isinstance(pairs, list) or not isinstance(types, list):
            raise ProtocolError(f"{self.name}: discovery lacks supported identities or types")
        supported = frozenset(
            (str(p.get("identity_type")), str(p.get("identity_format", "raw")))
            for p in pairs
            if isinstance(p, dict)
        )
        return Discovery(
            api_version=str(data.get("api_version", "")),
            supported_identities=supported,
            supported_subject_request_types=frozenset(str(t) for t in types),
            processor_certificate=_opt_str(data, "processor_certificate"),
        )

    def submit(self, request: OpenDsrRequest) -> Receipt:
        srid = request.subject_request_id
        try:
            data, domain = self._call(
                "POST",
                "/v1/requests",
                body=request.body(),
                expect=(200, 201),
                operation=f"submit {srid}",
                secrets=request.secrets(),
            )
        except PartnerRejected as exc:
            if exc.status_code != 409:
                raise
            # The partner already has this id: it is the request we sent before.
            status = self.status(srid)
            log.info("%s: request %s already known to the partner", self.name, srid)
            return Receipt(
                subject_request_id=srid,
                regulation=request.regulation,
                subject_request_type=request.subject_request_type,
                controller_id=status.controller_id,
                received_time=None,
                expected_completion_time=status.expected_completion_time,
                processor_domain=None,
                duplicate=True,
            )
        if data.get("subject_request_id") != srid:
            raise ProtocolError(f"{self.name}: the receipt is for another subject_request_id")
        return Receipt(
            subject_request_id=srid,
            regulation=request.regulation,
            subject_request_type=request.subject_request_type,
            controller_id=_opt_str(data, "controller_id"),
            received_time=_opt_time(data, "received_time"),
            expected_completion_time=_opt_time(data, "expected_completion_time"),
            processor_domain=domain,
        )

    def status(self, subject_request_id: str) -> Status:
        _check_id(subject_request_id)
        data, _ = self._call(
            "GET",
            f"/v1/requests/{quote(subject_request_id)}",
            operation=f"status {subject_request_id}",
        )
        status = Status.from_json(data)
        if status.subject_request_id != subject_request_id:
            raise ProtocolError(f"{self.name}: the status is for another subject_request_id")
        return status

    def cancel(self, subject_request_id: str) -> dict[str, Any]:
        """Cancel a pending request; the partner's answer (controller_id, received_time)."""
        _check_id(subject_request_id)
        data, _ = self._call(
            "DELETE",
            f"/v1/requests/{quote(subject_request_id)}",
            expect=(200, 202),
            operation=f"cancel {subject_request_id}",
        )
        return data

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenDsrClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the HTTP exchange --
    def _call(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        body: bytes | None = None,
        expect: tuple[int, ...] = (200,),
        secrets: Sequence[str] = (),
    ) -> tuple[dict[str, Any], str | None]:
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            answer = send_with_retries(
                lambda: self._http.request(
                    method, self.base_url + path, content=body, headers=headers
                ),
                retries=self.retries, backoff=self.backoff,
                max_retry_after=self.max_retry_after, label=f"{self.name}: {operation}",
            )
        except Exhausted as exc:
            raise PartnerUnavailable(self.name, operation, exc.attempts, exc.reason) from None
        return self._accept(answer.response, operation, expect, secrets)

    def _accept(
        self,
        response: httpx.Response,
        operation: str,
        expect: tuple[int, ...],
        secrets: Sequence[str],
    ) -> tuple[dict[str, Any], str | None]:
        code = response.status_code
        if 400 <= code < 500:
            error_code, message = _error_object(response.content, secrets)
            raise PartnerRejected(self.name, operation, code, error_code, message)
        if code not in expect:
            raise ProtocolError(f"{self.name}: {operation}: unexpected HTTP {code}")
        domain = header_value(response.headers.multi_items(), _DOMAIN_HEADERS)
        if self.allowed_domains is not None:
            check_domain(domain, self.allowed_domains)
        verify_signature(
            response.content, header_value(response.headers.multi_items(), _SIGNATURE_HEADERS),
            self.certificate,
        )
        try:
            return _parse_object(response.content), domain
        except ProtocolError as exc:
            raise ProtocolError(f"{self.name}: {operation}: {exc}") from None


# -- the connector-shaped adapter ------------------------------------------------------------
class OpenDsrPartner:
    """One OpenDSR partner of the data map. The caller owns exactly-once: it records the
    `subject_request_id` in the ledger before `submit`, and reuses it on every retry.
    Thread-safe: it keeps no per-call state, and its client is thread-safe."""

    kind = "partner"
    protocol: ClassVar[str] = "opendsr"

    def __init__(
        self,
        name: str,
        system: PartnerSystem,
        client: OpenDsrClient | None = None,
        base_dir: Path | None = None,
        token: str | None = None,
    ) -> None:
        """`token`: the API token, when the caller resolved it (e.g. from a secrets store);
        else it is read from the variable `credentials_env` names."""
        if system.protocol != "opendsr":
            raise PartnerConfigError(f"{name}: protocol is {system.protocol}, not opendsr")
        self.name = name
        self.system = system
        self.allowed_domains = list(system.callback_domains)
        if client is None:
            self.certificate = load_certificate(_read_certificate(name, system, base_dir))
            assert system.endpoint is not None  # the data map requires it for opendsr
            client = OpenDsrClient(
                system.endpoint,
                token if token is not None else _token(name, system),
                certificate_pem=self.certificate,
                allowed_domains=self.allowed_domains,
                name=name,
            )
        else:
            self.certificate = client.certificate
        self.client = client

    def identities(self, subject: Subject) -> tuple[OpenDsrIdentity, ...]:
        """The subject's identities the partner accepts, in the formats it wants them."""
        return tuple(
            OpenDsrIdentity(identity_type=kind, identity_format=fmt, identity_value=value)
            for kind, fmt, value in accepted_identities(self.system, subject)
        )

    def request(
        self,
        subject: Subject,
        request_type: str,
        regulation: str,
        subject_request_id: str,
        callback_url: str | None,
        *,
        submitted_time: datetime | None = None,
    ) -> OpenDsrRequest:
        """The request `submit` sends (pure: no I/O)."""
        kind = REQUEST_TYPE_MAP.get(str(request_type))
        if kind is None:
            raise UnsupportedRequest(
                f"{self.name}: OpenDSR has no request for {request_type}; "
                f"it carries {', '.join(sorted(REQUEST_TYPE_MAP))}"
            )
        sent_regulation = REGULATION_MAP.get(str(regulation))
        if sent_regulation is None:
            raise UnsupportedRequest(f"{self.name}: no OpenDSR regulation for {regulation}")
        identities = self.identities(subject)
        if not identities:
            accepted = sorted({i.type.value for i in self.system.identities})
            held = sorted({i.type.value for i in subject.identities})
            raise NoSupportedIdentity(
                f"{self.name}: the partner accepts {', '.join(accepted)}; the subject has "
                f"{', '.join(held) or 'no identities'}"
            )
        return OpenDsrRequest(
            regulation=sent_regulation,
            subject_request_id=subject_request_id,
            subject_request_type=kind,
            subject_identities=identities,
            submitted_time=submitted_time or datetime.now(UTC),
            status_callback_urls=(callback_url,) if callback_url else (),
        )

    def submit(
        self,
        subject: Subject,
        request_type: str,
        regulation: str,
        subject_request_id: str,
        callback_url: str | None,
        *,
        submitted_time: datetime | None = None,
    ) -> Receipt:
        """Send the request. Pass the request's `received_at` as `submitted_time`, so a
        retry sends the same bytes (default: now)."""
        return self.client.submit(
            self.request(
                subject, request_type, regulation, subject_request_id, callback_url,
                submitted_time=submitted_time,
            )
        )

    def status(self, subject_request_id: str) -> Status:
        return self.client.status(subject_request_id)

    # -- the partner contract (connectors.partner.Partner) --
    polled: ClassVar[bool] = True
    calls_back: ClassVar[bool] = True

    @classmethod
    def from_map(cls, name: str, system: PartnerSystem, *, base_dir: Path | None = None,
                 secret: str | None = None) -> OpenDsrPartner:
        return cls(name, system, base_dir=base_dir, token=secret)

    def hand_over(
        self, subject: Subject, request_type: str, regime: str, subject_request_id: str,
        callback_url: str | None, *, submitted_time: datetime | None = None,
        corrections: Sequence[Correction] = (),
    ) -> Acknowledgement:
        if request_type not in REQUEST_TYPE_MAP:
            # OpenDSR has no rectification or restriction: a person asks the partner.
            return Acknowledgement(
                PartnerStatus.AWAITING_CONFIRMATION,
                note=f"OpenDSR cannot carry a {request_type}: ask {self.name}'s privacy "
                     "contact to carry it out, and confirm it",
            )
        receipt = self.submit(subject, request_type, regime, subject_request_id,
                              callback_url, submitted_time=submitted_time)
        return Acknowledgement(
            PartnerStatus.SUBMITTED, regulation=receipt.regulation,
            controller_id=receipt.controller_id,
            expected_completion_at=receipt.expected_completion_time,
        )

    def where(self, subject_request_id: str) -> Answer:
        return answer(self.status(subject_request_id))

    def cancel(self, subject_request_id: str) -> dict[str, Any]:
        return self.client.cancel(subject_request_id)

    def verify_callback(
        self, body: bytes, headers: HeaderSource, callback_url: str | None = None
    ) -> Status:
        """A callback from this partner, authenticated (see `verify_callback`)."""
        data = verify_callback(
            body, headers, self.certificate, self.allowed_domains, callback_url=callback_url
        )
        return Status.from_json(data)

    def check(self) -> list[str]:
        """Where the data map and the partner's discovery disagree (empty: they agree)."""
        found = self.client.discovery()
        problems = []
        for accepted in self.system.identities:
            pair = (accepted.as_type or accepted.type.value, accepted.format)
            if pair not in found.supported_identities:
                problems.append(f"the partner does not list identity {pair[0]}/{pair[1]}")
        if "erasure" not in found.supported_subject_request_types:
            problems.append("the partner does not accept erasure requests")
        return problems

    def close(self) -> None:
        self.client.close()


# -- helpers ---------------------------------------------------------------------------------
def answer(status: Status) -> Answer:
    """An OpenDSR status (polled or called back) as the partner contract's `Answer`."""
    return Answer(status.request_status, status.expected_completion_time,
                  status.results_url, status.results_count)


def _read_certificate(name: str, system: PartnerSystem, base_dir: Path | None) -> bytes:
    if not system.certificate:
        raise PartnerConfigError(
            f"{name}: an opendsr partner needs `certificate` (the processor's PEM) to verify "
            "its signatures"
        )
    path = Path(system.certificate)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PartnerConfigError(
            f"{name}: cannot read certificate {path}: {exc.strerror}"
        ) from None


def _token(name: str, system: PartnerSystem) -> str | None:
    if system.credentials_env is None:
        return None
    token = os.environ.get(system.credentials_env)
    if not token:
        raise PartnerConfigError(f"{name}: environment variable {system.credentials_env} is unset")
    return token


def _check_id(subject_request_id: str) -> None:
    if not UUID4_RE.match(subject_request_id):
        raise InvalidRequest("subject_request_id must be a lowercase UUIDv4")


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _opt_time(data: Mapping[str, Any], key: str) -> datetime | None:
    value = data.get(key)
    if value is None:
        return None
    try:
        return parse_rfc3339(str(value))
    except ValueError:
        raise ProtocolError(f"{key} is not an RFC 3339 date-time") from None


def _error_object(body: bytes, secrets: Sequence[str]) -> tuple[int | str | None, str | None]:
    """The `error` object's code and message, clipped and scrubbed of identities."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None, None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, None
    code = error.get("code")
    if not isinstance(code, int | str) or isinstance(code, bool):
        code = None
    elif isinstance(code, str):
        code = scrub_message(code, secrets, 40)
    message = error.get("message")
    if not isinstance(message, str):
        details = error.get("errors")
        first = details[0] if isinstance(details, list) and details else None
        message = first.get("message") if isinstance(first, dict) else None
    return code, scrub_message(message, secrets) if isinstance(message, str) else None
