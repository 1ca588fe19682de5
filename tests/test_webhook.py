"""The generic webhook partner against the reference receiver, over real HTTP on loopback:
what goes on the wire (and that a receiver can verify it), identity formats, exactly-once
under injected faults, 4xx handling, `verify_webhook`'s refusals, and configuration
errors. Identities stay out of receipts, errors and logs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from standardwebhooks import Webhook

from connectors.opendsr import (
    NoSupportedIdentity,
    PartnerConfigError,
    PartnerRejected,
    PartnerUnavailable,
    ProtocolError,
    UnsupportedRequest,
    Untrusted,
)
from connectors.partner import new_subject_request_id
from connectors.webhook import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    InvalidRequest,
    WebhookPartner,
    WebhookSignatureError,
    sign,
    signed_headers,
    verify_webhook,
)
from dsrflow.datamap import PartnerIdentity, PartnerSystem
from dsrflow.identities import Identity, IdentityType, Subject
from examples.partner.webhook import WebhookFaults, WebhookReceiver

SECRET = "whsec-test-0f9e8d7c6b5a"
ENV = "DSRFLOW_TEST_WEBHOOK_SECRET"
EMAIL_RAW = "  Alice.Liu@Example.COM "
EMAIL = "alice.liu@example.com"
PHONE_RAW = "138 0013 8000"
PHONE = "+8613800138000"
USER_ID = "u-4242"
RAW_VALUES = (EMAIL, PHONE, USER_ID, "Alice.Liu@Example.COM", "13800138000")
SUBMITTED = datetime(2026, 11, 20, 9, 30, 15, tzinfo=UTC)
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def subject() -> Subject:
    return Subject(
        request_id=str(uuid.uuid4()),
        identities=(
            Identity(type="email", value=EMAIL_RAW),  # type: ignore[arg-type]
            Identity.read(IdentityType.PHONE, PHONE_RAW, "CN"),
            Identity(type="user_id", value=USER_ID),  # type: ignore[arg-type]
        ),
    )


def system(endpoint: str, *identities: dict[str, Any], **extra: Any) -> PartnerSystem:
    extra.setdefault("credentials_env", ENV)
    return PartnerSystem(
        kind="partner",
        protocol="webhook",
        categories=["behaviour"],
        endpoint=endpoint,
        identities=[PartnerIdentity(**i) for i in identities or ({"type": "email"},)],
        **extra,
    )


def partner_for(receiver: WebhookReceiver, *identities: dict[str, Any], **options: Any
                ) -> WebhookPartner:
    settings: dict[str, Any] = {"secret": SECRET, "timeout": 2.0, "backoff": lambda n: 0.0}
    settings.update(options)
    return WebhookPartner("crm", system(receiver.url, *identities), **settings)


def submit(partner: WebhookPartner, srid: str | None = None, request_type: str = "erasure",
           regulation: str = "pipl") -> Any:
    return partner.submit(
        subject(), request_type, regulation, srid or new_subject_request_id(), None,
        submitted_time=SUBMITTED,
    )


def assert_no_identity(text: str) -> None:
    lowered = text.casefold()
    for value in RAW_VALUES:
        assert value.casefold() not in lowered


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as r:
        yield r


# -- what goes on the wire --------------------------------------------------------------------
def test_body_and_headers_conform_and_the_receiver_verifies_them(
    receiver: WebhookReceiver,
) -> None:
    partner = partner_for(
        receiver, {"type": "email"}, {"type": "user_id", "as_type": "customer_id"}
    )
    srid = new_subject_request_id()
    before = int(time.time())
    receipt = submit(partner, srid, "consent_withdrawal", "pipl")
    after = int(time.time())

    assert receipt.subject_request_id == srid
    assert receipt.reference == "WH-000001"
    assert receipt.status == "received" and receipt.completed is True
    assert receipt.status_code == 201 and receipt.attempts == 1
    assert (receipt.request_type, receipt.regulation) == ("consent_withdrawal", "pipl")

    record = receiver.requests[srid]
    headers = {k.lower(): v for k, v in record.headers}
    assert json.loads(record.raw) == {
        "request_id": srid,
        "type": "consent_withdrawal",
        "regulation": "pipl",
        "identities": [
            {"type": "email", "format": "raw", "value": EMAIL},
            {"type": "customer_id", "format": "raw", "value": USER_ID},
        ],
        "submitted_time": "2026-11-20T09:30:15Z",
    }
    assert RFC3339.match(record.body["submitted_time"])
    # Canonical bytes: sorted keys, no spaces, so a retry sends the same request.
    assert record.raw == json.dumps(
        json.loads(record.raw), sort_keys=True, separators=(",", ":")
    ).encode()
    assert headers["content-type"] == "application/json"
    assert headers[ID_HEADER] == srid
    stamp = headers[TIMESTAMP_HEADER]
    assert stamp.isdigit() and before <= int(stamp) <= after
    # The documented scheme (Standard Webhooks), recomputed independently of the module...
    mac = hmac.new(SECRET.encode(), f"{srid}.{stamp}.".encode() + record.raw, hashlib.sha256)
    assert headers[SIGNATURE_HEADER] == "v1," + base64.b64encode(mac.digest()).decode()
    # ... and verified by the reference library a partner would use.
    assert Webhook(SECRET.encode()).verify(record.raw, headers)["request_id"] == srid
    assert_no_identity(repr(receipt))
    assert "value" not in repr(partner.request(subject(), "erasure", "gdpr", srid))


def test_all_our_request_types_and_regimes_go_out_as_they_are(
    receiver: WebhookReceiver,
) -> None:
    partner = partner_for(receiver)
    for kind in ("erasure", "access", "portability", "account_cancellation"):
        for regime in ("pipl", "gdpr", "ccpa"):
            srid = new_subject_request_id()
            submit(partner, srid, kind, regime)
            assert (receiver.requests[srid].body["type"],
                    receiver.requests[srid].body["regulation"]) == (kind, regime)
    # A restriction goes as it is; a rectification only with what it corrects.
    srid = new_subject_request_id()
    submit(partner, srid, "restriction")
    assert receiver.requests[srid].body["type"] == "restriction"
    with pytest.raises(InvalidRequest, match="corrections"):
        submit(partner, request_type="rectification")
    with pytest.raises(UnsupportedRequest):
        submit(partner, regulation="lgpd")
    assert sum(receiver.posts.values()) == 13


def test_hashed_formats_send_the_digest_of_the_normalized_value_never_the_raw_one(
    receiver: WebhookReceiver,
) -> None:
    partner = partner_for(
        receiver, {"type": "email", "format": "sha256"}, {"type": "phone", "format": "sha1"},
        {"type": "user_id", "format": "md5", "as_type": "customer_id"},
    )
    srid = new_subject_request_id()
    submit(partner, srid)
    raw = receiver.requests[srid].raw
    assert receiver.requests[srid].body["identities"] == [
        {"type": "email", "format": "sha256",
         "value": hashlib.sha256(EMAIL.encode()).hexdigest()},
        {"type": "phone", "format": "sha1", "value": hashlib.sha1(PHONE.encode()).hexdigest()},
        {"type": "customer_id", "format": "md5",
         "value": hashlib.md5(USER_ID.encode()).hexdigest()},
    ]
    assert_no_identity(raw.decode())


def test_a_subject_without_an_accepted_identity_is_not_sent(receiver: WebhookReceiver) -> None:
    partner = partner_for(receiver, {"type": "device_id"})
    with pytest.raises(NoSupportedIdentity) as caught:
        submit(partner)
    assert_no_identity(str(caught.value))
    assert not receiver.posts


# -- exactly once -----------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["after", "before"])
def test_repeated_500s_leave_one_request_and_the_client_succeeds(stage: Any) -> None:
    srid = new_subject_request_id()
    with WebhookReceiver(SECRET, faults=WebhookFaults(fail=3, stage=stage)) as receiver:
        receipt = submit(partner_for(receiver), srid)
    assert receipt.attempts == 4 and receipt.reference == "WH-000001"
    assert receiver.posts[srid] == 4
    assert receiver.distinct(srid) == 1
    assert list(receiver.requests) == [srid]


def test_a_hang_beyond_the_timeout_is_retried_under_the_same_id(
    receiver: WebhookReceiver,
) -> None:
    receiver.set_faults(hang=1, hang_seconds=1.5, stage="after")  # recorded, answer lost
    srid = new_subject_request_id()
    receipt = submit(partner_for(receiver, timeout=0.3), srid)
    assert receipt.attempts == 2
    assert receipt.status_code == 200  # the repeat got the original answer
    assert receipt.reference == receiver.requests[srid].reference
    assert receiver.posts[srid] == 2 and receiver.distinct(srid) == 1
    assert len(receiver.requests) == 1


def test_a_rerun_after_a_crash_is_the_same_request(receiver: WebhookReceiver) -> None:
    srid = new_subject_request_id()
    first = submit(partner_for(receiver), srid)
    second = submit(partner_for(receiver), srid)  # a new process, the ledger's id
    assert first.reference == second.reference
    assert (first.status_code, second.status_code) == (201, 200)
    assert receiver.distinct(srid) == 1 and len(receiver.requests) == 1


def test_409_in_progress_is_retried(receiver: WebhookReceiver) -> None:
    receiver.set_faults(fail=1, fail_status=409, stage="before")
    srid = new_subject_request_id()
    assert submit(partner_for(receiver), srid).attempts == 2
    assert receiver.distinct(srid) == 1


def test_when_retries_run_out_the_partner_is_unavailable(
    receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.set_faults(fail=10, fail_status=503)
    srid = new_subject_request_id()
    with caplog.at_level(logging.DEBUG), pytest.raises(PartnerUnavailable) as caught:
        submit(partner_for(receiver, retries=2), srid)
    assert caught.value.retryable and caught.value.attempts == 3
    assert "HTTP 503" in str(caught.value)
    assert receiver.posts[srid] == 3
    assert_no_identity(str(caught.value))
    assert_no_identity(caplog.text)
    assert SECRET not in caplog.text


def test_an_unreachable_endpoint_is_unavailable_not_rejected() -> None:
    with WebhookReceiver(SECRET) as gone:
        url = gone.url
    partner = WebhookPartner("crm", system(url), secret=SECRET, retries=1,
                             backoff=lambda n: 0.0, timeout=1.0)
    with pytest.raises(PartnerUnavailable, match="connection failed"):
        submit(partner)


def test_retry_after_is_honoured_within_its_cap() -> None:
    answers = iter([httpx.Response(429, headers={"Retry-After": "1"}),
                    httpx.Response(200, json={"status": "completed"})])
    client = httpx.Client(transport=httpx.MockTransport(lambda request: next(answers)))
    partner = WebhookPartner("crm", system("https://hooks.crm.example/dsr"), client=client,
                             secret=SECRET, backoff=lambda n: 0.0, max_retry_after=0.2)
    started = time.monotonic()
    receipt = submit(partner)
    assert 0.2 <= time.monotonic() - started < 1.0
    assert receipt.completed and receipt.attempts == 2


# -- refusals ---------------------------------------------------------------------------------
def test_a_4xx_is_not_retried_and_its_error_carries_no_identity(
    receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.set_faults(reject=1, reject_status=422, leak_identity_in_errors=True)
    partner = partner_for(receiver, {"type": "email"}, {"type": "phone"})
    srid = new_subject_request_id()
    with caplog.at_level(logging.DEBUG), pytest.raises(PartnerRejected) as caught:
        submit(partner, srid)
    error = caught.value
    assert error.status_code == 422 and error.error_code == "refused"
    assert receiver.posts[srid] == 1
    # The partner's text stays out of the message (scrubbed, it is kept on the side).
    assert "(HTTP 422, error refused)" in str(error)
    assert "request refused" in str(error.error_message)
    assert "request refused" not in str(error)
    for text in (str(error), repr(error), str(error.error_message), caplog.text):
        assert_no_identity(text)


def test_the_same_id_for_another_request_is_refused(receiver: WebhookReceiver) -> None:
    partner = partner_for(receiver)
    srid = new_subject_request_id()
    submit(partner, srid, "erasure")
    with pytest.raises(PartnerRejected) as caught:
        submit(partner, srid, "access")
    assert caught.value.status_code == 422
    assert caught.value.error_code == "idempotency_key_reused"
    assert receiver.distinct(srid) == 2 and len(receiver.requests) == 1


def test_a_wrong_secret_is_refused_with_401_and_not_retried(receiver: WebhookReceiver) -> None:
    srid = new_subject_request_id()
    with pytest.raises(PartnerRejected) as caught:
        submit(partner_for(receiver, secret="not-the-secret"), srid)
    assert caught.value.status_code == 401
    assert receiver.posts[srid] == 1 and not receiver.requests


def test_a_sender_clock_far_off_is_refused(receiver: WebhookReceiver) -> None:
    with pytest.raises(PartnerRejected) as caught:
        submit(partner_for(receiver, clock=lambda: time.time() - 3600))
    assert caught.value.status_code == 401
    assert "from now" in str(caught.value.error_message)


@pytest.mark.parametrize(
    ("status", "completed"),
    [("completed", True), ("received", True), ("pending", False)],
)
def test_what_the_acknowledgement_says(status: Any, completed: bool) -> None:
    with WebhookReceiver(SECRET, reply_status=status) as receiver:
        receipt = submit(partner_for(receiver))
    assert (receipt.status, receipt.completed) == (status, completed)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (httpx.Response(204), (None, None, True)),
        (httpx.Response(200, json={}), (None, None, True)),
        (httpx.Response(202, json={"reference": 7731, "status": "accepted"}),
         ("7731", "accepted", True)),
        (httpx.Response(200, json={"reference": f"ref-{EMAIL}", "status": "in_progress"}),
         (None, "in_progress", False)),
    ],
)
def test_acknowledgement_bodies(reply: httpx.Response, expected: tuple[Any, ...]) -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda request: reply))
    partner = WebhookPartner("crm", system("https://hooks.crm.example/dsr"), client=client,
                             secret=SECRET)
    receipt = submit(partner)
    assert (receipt.reference, receipt.status, receipt.completed) == expected


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(200, text="<html>OK</html>"),
        httpx.Response(200, json=["ok"]),
        httpx.Response(200, json={"status": f"failed for {EMAIL}"}),
        httpx.Response(302, headers={"Location": "https://elsewhere.example/"}),
    ],
)
def test_acknowledgements_that_mean_nothing_are_protocol_errors(reply: httpx.Response) -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda request: reply))
    partner = WebhookPartner("crm", system("https://hooks.crm.example/dsr"), client=client,
                             secret=SECRET)
    with pytest.raises(ProtocolError) as caught:
        submit(partner)
    assert_no_identity(str(caught.value))


# -- verify_webhook ---------------------------------------------------------------------------
def signed(srid: str | None = None, secret: str = SECRET, at: int | None = None
           ) -> tuple[bytes, dict[str, str]]:
    srid = srid or new_subject_request_id()
    body = json.dumps({
        "identities": [{"format": "sha256", "type": "email",
                        "value": hashlib.sha256(EMAIL.encode()).hexdigest()}],
        "regulation": "gdpr", "request_id": srid, "submitted_time": "2026-11-20T09:30:15Z",
        "type": "erasure",
    }, sort_keys=True, separators=(",", ":")).encode()
    return body, signed_headers(body, secret, srid, at if at is not None else int(time.time()))


def test_verify_webhook_accepts_an_authentic_request() -> None:
    body, headers = signed()
    assert verify_webhook(body, headers, SECRET)["type"] == "erasure"
    assert verify_webhook(body, list(headers.items()), [b"old-secret", SECRET.encode()])
    stale = "v1," + base64.b64encode(bytes(32)).decode()
    rotated = dict(headers, **{SIGNATURE_HEADER: f"{stale} {headers[SIGNATURE_HEADER]}"})
    assert verify_webhook(body, rotated, SECRET)


def test_verify_webhook_refuses_a_tampered_body() -> None:
    body, headers = signed()
    tampered = body.replace(b'"erasure"', b'"access"')
    with pytest.raises(WebhookSignatureError, match="does not verify"):
        verify_webhook(tampered, headers, SECRET)


def test_verify_webhook_refuses_the_wrong_secret() -> None:
    body, headers = signed(secret="someone-else")
    with pytest.raises(WebhookSignatureError, match="does not verify"):
        verify_webhook(body, headers, SECRET)


def test_verify_webhook_refuses_a_stale_or_future_timestamp() -> None:
    at = 1_800_000_000
    body, headers = signed(at=at)
    assert verify_webhook(body, headers, SECRET, now=at + 300)
    for now in (at + 301, at - 301):
        with pytest.raises(WebhookSignatureError, match="from now"):
            verify_webhook(body, headers, SECRET, now=now)
    with pytest.raises(WebhookSignatureError):
        verify_webhook(body, headers, SECRET, max_age_seconds=60,
                       now=datetime.fromtimestamp(at + 61, UTC))
    # Moving the timestamp forward breaks the signature.
    moved = dict(headers, **{TIMESTAMP_HEADER: str(at + 10_000)})
    with pytest.raises(WebhookSignatureError, match="does not verify"):
        verify_webhook(body, moved, SECRET, now=at + 10_000)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({ID_HEADER: None}, "no webhook-id"),
        ({TIMESTAMP_HEADER: None}, "no webhook-timestamp"),
        ({TIMESTAMP_HEADER: "1.8e9"}, "not Unix seconds"),
        ({SIGNATURE_HEADER: None}, "no webhook-signature"),
        ({SIGNATURE_HEADER: "sha256=" + "a" * 64}, "not v1,"),
        ({SIGNATURE_HEADER: "v1,abc"}, "not v1,"),
    ],
)
def test_verify_webhook_refuses_missing_or_malformed_headers(
    change: dict[str, str | None], message: str
) -> None:
    body, headers = signed()
    for key, value in change.items():
        headers.pop(key)
        if value is not None:
            headers[key] = value
    with pytest.raises(WebhookSignatureError, match=message):
        verify_webhook(body, headers, SECRET)


def test_verify_webhook_refuses_a_webhook_id_other_than_the_bodys_request_id() -> None:
    body, headers = signed()
    # The id is signed: changing it breaks the signature...
    with pytest.raises(WebhookSignatureError, match="does not verify"):
        verify_webhook(body, dict(headers, **{ID_HEADER: new_subject_request_id()}), SECRET)
    # ... and one signed under another id is a request for something else.
    other = signed_headers(body, SECRET, new_subject_request_id(), int(time.time()))
    with pytest.raises(ProtocolError, match="webhook-id"):
        verify_webhook(body, other, SECRET)


def test_a_standard_webhooks_secret_is_read_as_the_libraries_read_it() -> None:
    secret = "whsec_" + base64.b64encode(b"a key of thirty-two bytes, exact").decode()
    body, headers = signed(secret=secret)
    assert verify_webhook(body, headers, secret)["type"] == "erasure"
    assert Webhook(secret).verify(body, headers)["type"] == "erasure"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"type":"erasure"}', "missing field"),
    ],
)
def test_verify_webhook_refuses_malformed_bodies_after_the_signature(
    body: bytes, message: str
) -> None:
    headers = signed_headers(body, SECRET, new_subject_request_id(), int(time.time()))
    with pytest.raises(ProtocolError, match=message):
        verify_webhook(body, headers, SECRET)


def test_verify_webhook_names_fields_never_values() -> None:
    srid = new_subject_request_id()
    body = json.dumps({
        "identities": [{"format": "sha256", "type": "email", "value": EMAIL}],
        "regulation": "gdpr", "request_id": srid, "submitted_time": "2026-11-20T09:30:15Z",
        "type": "erasure",
    }).encode()
    headers = signed_headers(body, SECRET, srid, int(time.time()))
    with pytest.raises(ProtocolError, match=r"identities\[0\]") as caught:
        verify_webhook(body, headers, SECRET)
    assert_no_identity(str(caught.value))


def test_the_receiver_answers_401_to_bad_signatures_and_400_to_bad_bodies(
    receiver: WebhookReceiver,
) -> None:
    body, headers = signed()
    with httpx.Client() as http:
        forged = http.post(receiver.url, content=body,
                           headers=dict(headers, **{
                               SIGNATURE_HEADER: sign(body, "x", headers[ID_HEADER], 1)}))
        assert forged.status_code == 401
        assert forged.json()["error"]["code"] == "unauthenticated"
        junk = b'{"request_id": 1}'
        malformed = http.post(receiver.url, content=junk,
                              headers=signed_headers(junk, SECRET, "x", int(time.time())))
        assert malformed.status_code == 400
        assert http.post(receiver.url, content=body, headers=headers).status_code == 201
    assert [code for code, _ in receiver.refusals] == [401, 400]
    assert len(receiver.requests) == 1


# -- configuration ----------------------------------------------------------------------------
def test_the_secret_comes_from_the_environment(
    receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, SECRET)
    partner = WebhookPartner("crm", system(receiver.url), backoff=lambda n: 0.0)
    assert submit(partner).completed
    assert SECRET not in repr(partner)


def test_a_missing_secret_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(PartnerConfigError, match=f"crm: environment variable {ENV}"):
        WebhookPartner("crm", system("https://hooks.crm.example/dsr"))
    monkeypatch.setenv(ENV, "")
    with pytest.raises(PartnerConfigError, match=ENV):
        WebhookPartner("crm", system("https://hooks.crm.example/dsr"))
    # A map without any secret for a webhook partner does not even load.
    with pytest.raises(ValidationError, match="needs its signing secret"):
        system("https://hooks.crm.example/dsr", credentials_env=None)


def test_the_config_error_names_the_variable_never_a_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTHER_SECRET", SECRET)
    with pytest.raises(PartnerConfigError) as caught:
        WebhookPartner("crm", system("https://hooks.crm.example/dsr",
                                     credentials_env="MISSING_WEBHOOK_SECRET"))
    assert "MISSING_WEBHOOK_SECRET" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_plain_http_only_on_loopback() -> None:
    with pytest.raises(PartnerConfigError, match="loopback only"):
        WebhookPartner("crm", system("http://hooks.crm.example/dsr"), secret=SECRET)
    with pytest.raises(PartnerConfigError, match="http"):
        WebhookPartner("crm", system("ftp://hooks.crm.example/dsr"), secret=SECRET)
    WebhookPartner("crm", system("http://127.0.0.1:9/dsr"), secret=SECRET).close()
    WebhookPartner("crm", system("https://hooks.crm.example/dsr"), secret=SECRET).close()


def test_another_protocol_is_refused() -> None:
    other = PartnerSystem(kind="partner", protocol="manual", categories=["contact"],
                          identities=[PartnerIdentity(type="phone")],  # type: ignore[arg-type]
                          contact="privacy@courier.example")
    with pytest.raises(PartnerConfigError, match="not webhook"):
        WebhookPartner("courier", other, secret=SECRET)


def test_errors_are_untrusted_for_receivers() -> None:
    assert issubclass(WebhookSignatureError, Untrusted)
