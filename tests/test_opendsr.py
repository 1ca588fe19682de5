"""The OpenDSR client against the reference partner, over real HTTP on loopback: what goes
on the wire, exactly-once under injected faults, 4xx handling, signatures and callbacks,
and that identities stay out of receipts, errors and logs."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.opendsr import (
    CallbackMismatch,
    DomainNotAllowed,
    NoSupportedIdentity,
    OpenDsrClient,
    OpenDsrError,
    OpenDsrPartner,
    PartnerConfigError,
    PartnerRejected,
    PartnerUnavailable,
    ProtocolError,
    Receipt,
    SignatureError,
    UnsupportedRequest,
    Untrusted,
    verify_callback,
    verify_signature,
)
from connectors.partner import new_subject_request_id
from dsrflow.datamap import PartnerIdentity, PartnerSystem
from dsrflow.identities import Identity, IdentityType, Subject
from examples.partner import (
    DEFAULT_DOMAIN,
    CallbackSink,
    Faults,
    ReferencePartner,
    TestCertificate,
    generate,
)

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")

EMAIL_RAW = "  Alice.Liu@Example.COM "
EMAIL = "alice.liu@example.com"
PHONE_RAW = "138 0013 8000"
PHONE = "+8613800138000"
USER_ID = "u-4242"
RAW_VALUES = (EMAIL, PHONE, USER_ID, "Alice.Liu@Example.COM", "13800138000")
SUBMITTED = datetime(2026, 11, 20, 9, 30, 15, tzinfo=UTC)


@cache
def certificate(key_type: str = "rsa", domain: str = DEFAULT_DOMAIN) -> TestCertificate:
    return generate(domain, key_type)  # type: ignore[arg-type]


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
    return PartnerSystem(
        kind="partner",
        protocol="opendsr",
        categories=["behaviour"],
        endpoint=endpoint,
        identities=[PartnerIdentity(**i) for i in identities or ({"type": "email"},)],
        callback_domains=[DEFAULT_DOMAIN],
        **extra,
    )


def client_for(partner: ReferencePartner, **options: Any) -> OpenDsrClient:
    settings_: dict[str, Any] = {
        "certificate_pem": partner.certificate_pem,
        "allowed_domains": [DEFAULT_DOMAIN],
        "timeout": 2.0,  # generous: only the timeout tests make it short
        "retries": 4,
        "backoff": lambda attempt: 0.0,
    }
    settings_.update(options)
    return OpenDsrClient(partner.url, settings_.pop("token", None), **settings_)


def adapter(partner: ReferencePartner, *identities: dict[str, Any], **options: Any
            ) -> OpenDsrPartner:
    return OpenDsrPartner(
        "adnet", system(partner.url, *identities), client=client_for(partner, **options)
    )


@pytest.fixture
def partner() -> Iterator[ReferencePartner]:
    with ReferencePartner(certificate=certificate()) as p:
        yield p


@pytest.fixture
def sink() -> Iterator[CallbackSink]:
    with CallbackSink() as s:
        yield s


def assert_no_identity(text: str) -> None:
    for value in RAW_VALUES:
        assert value.lower() not in text.lower(), "an identity leaked"


# -- what goes on the wire -------------------------------------------------------------------
def test_a_request_carries_the_spec_fields_in_their_formats(partner, sink):
    dsr = adapter(
        partner,
        {"type": "email"},
        {"type": "phone", "format": "sha256"},
        {"type": "user_id", "as_type": "controller_customer_id"},
    )
    srid = new_subject_request_id()
    receipt = dsr.submit(subject(), "account_cancellation", "pipl", srid,
                         sink.callback_url(), submitted_time=SUBMITTED)

    [body] = partner.received
    assert body["regulation"] == "gdpr"  # pipl goes out with GDPR semantics
    assert UUID4.match(body["subject_request_id"]) and body["subject_request_id"] == srid
    assert body["subject_request_type"] == "erasure"
    assert RFC3339.match(body["submitted_time"])
    assert body["submitted_time"] == "2026-11-20T09:30:15Z"
    assert body["api_version"] == "2.0"
    assert body["status_callback_urls"] == [sink.callback_url()]
    assert "extensions" not in body
    assert sorted(body["subject_identities"], key=lambda i: i["identity_type"]) == [
        {"identity_type": "controller_customer_id", "identity_format": "raw",
         "identity_value": USER_ID},
        {"identity_type": "email", "identity_format": "raw", "identity_value": EMAIL},
        {"identity_type": "phone", "identity_format": "sha256",
         "identity_value": hashlib.sha256(PHONE.encode()).hexdigest()},
    ]
    assert receipt.subject_request_id == srid
    assert (receipt.regulation, receipt.subject_request_type) == ("gdpr", "erasure")
    assert receipt.controller_id == partner.controller_id
    assert receipt.processor_domain == DEFAULT_DOMAIN
    assert receipt.received_time is not None and receipt.expected_completion_time is not None


@pytest.mark.parametrize(
    ("request_type", "regime", "sent"),
    [
        ("access", "gdpr", ("access", "gdpr")),
        ("portability", "ccpa", ("portability", "ccpa")),
        ("erasure", "pipl", ("erasure", "gdpr")),
        ("erasure", "uk_gdpr", ("erasure", "gdpr")),
        ("consent_withdrawal", "ccpa", ("erasure", "ccpa")),
    ],
)
def test_request_types_and_regimes_map_to_opendsr(partner, request_type, regime, sent):
    dsr = adapter(partner)
    request = dsr.request(subject(), request_type, regime, new_subject_request_id(), None)
    assert (request.subject_request_type, request.regulation) == sent
    assert "status_callback_urls" not in request.as_json()


@pytest.mark.parametrize("request_type", ["rectification", "restriction"])
def test_types_opendsr_cannot_carry_are_refused(partner, request_type):
    with pytest.raises(UnsupportedRequest, match=request_type):
        adapter(partner).request(subject(), request_type, "gdpr", new_subject_request_id(), None)
    with pytest.raises(UnsupportedRequest, match="lgpd"):
        adapter(partner).request(subject(), "erasure", "lgpd", new_subject_request_id(), None)


@pytest.mark.parametrize("fmt", ["sha256", "sha1", "md5"])
def test_hashed_formats_send_the_digest_of_the_normalized_value_never_the_raw(partner, fmt):
    dsr = adapter(partner, {"type": "email", "format": fmt})
    srid = new_subject_request_id()
    request = dsr.request(subject(), "erasure", "gdpr", srid, None)
    digest = hashlib.new(fmt, EMAIL.encode()).hexdigest()
    assert [i.identity_value for i in request.subject_identities] == [digest]
    assert_no_identity(repr(request))
    if fmt == "sha256":  # the reference partner accepts email/sha256
        dsr.submit(subject(), "erasure", "gdpr", srid, None)
        raw = partner.requests[srid].raw
        assert digest.encode() in raw
        for value in RAW_VALUES:
            assert value.encode() not in raw


def test_identities_the_partner_does_not_take_are_left_out(partner):
    dsr = adapter(partner, {"type": "email"}, {"type": "device_id"})
    request = dsr.request(subject(), "erasure", "gdpr", new_subject_request_id(), None)
    assert [i.identity_type for i in request.subject_identities] == ["email"]

    only_devices = adapter(partner, {"type": "device_id"}, {"type": "third_party"})
    with pytest.raises(NoSupportedIdentity) as caught:
        only_devices.request(subject(), "erasure", "gdpr", new_subject_request_id(), None)
    assert "device_id" in str(caught.value) and "email" in str(caught.value)
    assert_no_identity(str(caught.value))


def test_request_validation_refuses_bad_ids_and_naive_times(partner):
    dsr = adapter(partner)
    for bad in (str(uuid.uuid4()).upper(), str(uuid.uuid1()), "not-a-uuid"):
        with pytest.raises(ValueError, match="UUIDv4"):
            dsr.request(subject(), "erasure", "gdpr", bad, None)
    with pytest.raises(ValueError, match="time zone"):
        dsr.request(subject(), "erasure", "gdpr", new_subject_request_id(), None,
                     submitted_time=datetime(2026, 1, 1))


# -- exactly once under faults ---------------------------------------------------------------
@pytest.mark.parametrize("stage", ["before", "after"])
def test_5xx_is_retried_and_the_partner_has_one_request(partner, stage):
    partner.set_faults(fail=3, stage=stage)
    srid = new_subject_request_id()
    receipt = adapter(partner).submit(subject(), "erasure", "gdpr", srid, None,
                                      submitted_time=SUBMITTED)
    assert receipt.subject_request_id == srid
    assert partner.posts[srid] == 4
    assert list(partner.requests) == [srid]
    assert partner.distinct_requests(srid) == 1


@pytest.mark.parametrize("stage", ["before", "after"])
def test_timeouts_are_retried_and_the_partner_has_one_request(partner, stage):
    partner.set_faults(hang=2, hang_seconds=1.5, stage=stage)
    srid = new_subject_request_id()
    adapter(partner, timeout=0.3, retries=5).submit(subject(), "erasure", "gdpr", srid, None,
                                                    submitted_time=SUBMITTED)
    assert partner.posts[srid] >= 3  # more if a loaded machine made another attempt slow
    assert list(partner.requests) == [srid]
    assert partner.distinct_requests(srid) == 1


def test_a_slow_reply_within_the_timeout_is_not_retried(partner):
    partner.set_faults(delay=0.1)
    srid = new_subject_request_id()
    adapter(partner, timeout=2.0).submit(subject(), "erasure", "gdpr", srid, None)
    assert partner.posts[srid] == 1


def test_retries_are_bounded_and_end_in_a_retryable_error(partner, caplog):
    partner.set_faults(fail=100)
    srid = new_subject_request_id()
    with caplog.at_level(logging.DEBUG), pytest.raises(PartnerUnavailable) as caught:
        adapter(partner, retries=2).submit(subject(), "erasure", "gdpr", srid, None)
    assert caught.value.retryable and caught.value.attempts == 3
    assert "HTTP 500" in str(caught.value)
    assert partner.posts[srid] == 3 and len(partner.requests) == 1
    assert_no_identity(str(caught.value))
    assert_no_identity(caplog.text)


def test_an_unreachable_partner_is_retryable(partner):
    dsr = adapter(partner, retries=1)
    partner.stop()
    with pytest.raises(PartnerUnavailable, match="connection failed"):
        dsr.submit(subject(), "erasure", "gdpr", new_subject_request_id(), None)


def test_backoff_grows_between_retries(partner):
    delays: list[int] = []
    partner.set_faults(fail=3)

    def backoff(attempt: int) -> float:
        delays.append(attempt)
        return 0.0

    adapter(partner, backoff=backoff).submit(
        subject(), "erasure", "gdpr", new_subject_request_id(), None
    )
    assert delays == [1, 2, 3]


def test_resubmitting_an_id_is_the_same_request(partner):
    """A Prefect retry or a re-run after a crash sends the stored id again."""
    dsr = adapter(partner)
    srid = new_subject_request_id()
    first = dsr.submit(subject(), "erasure", "gdpr", srid, None, submitted_time=SUBMITTED)
    again = dsr.submit(subject(), "erasure", "gdpr", srid, None, submitted_time=SUBMITTED)
    assert again.received_time == first.received_time
    assert partner.posts[srid] == 2 and len(partner.requests) == 1
    assert partner.distinct_requests(srid) == 1


def test_a_409_for_a_known_id_is_confirmed_by_status(partner):
    dsr = adapter(partner)
    srid = new_subject_request_id()
    dsr.submit(subject(), "erasure", "gdpr", srid, None)
    partner.set_faults(conflict_on_repeat=True)
    receipt = dsr.submit(subject(), "erasure", "gdpr", srid, None)
    assert receipt.duplicate and receipt.subject_request_id == srid
    assert len(partner.requests) == 1


def test_an_id_reused_for_another_request_is_refused(partner):
    dsr = adapter(partner)
    srid = new_subject_request_id()
    dsr.submit(subject(), "erasure", "gdpr", srid, None)
    with pytest.raises(PartnerRejected) as caught:
        dsr.submit(subject(), "access", "gdpr", srid, None)
    assert caught.value.status_code == 422


# -- 4xx -------------------------------------------------------------------------------------
def test_a_400_is_not_retried_and_carries_the_partners_error(partner, caplog):
    # The data map says the partner takes raw phones; the partner takes only sha256.
    dsr = adapter(partner, {"type": "phone"})
    srid = new_subject_request_id()
    with caplog.at_level(logging.DEBUG), pytest.raises(PartnerRejected) as caught:
        dsr.submit(subject(), "erasure", "gdpr", srid, None)
    error = caught.value
    assert not error.retryable
    assert (error.status_code, error.error_code) == (400, 400)
    assert error.error_message and "not supported" in error.error_message
    assert partner.posts[srid] == 1 and not partner.requests
    assert_no_identity(str(error))
    assert_no_identity(caplog.text)


def test_a_partner_echoing_an_identity_in_its_error_is_scrubbed(partner):
    partner.set_faults(reject=1, leak_identity_in_errors=True)
    with pytest.raises(PartnerRejected) as caught:
        adapter(partner).submit(subject(), "erasure", "gdpr", new_subject_request_id(), None)
    [(_, payload)] = partner.errors
    assert EMAIL in payload["error"]["message"]  # the partner did leak it
    assert_no_identity(str(caught.value))
    assert_no_identity(str(caught.value.error_message))
    assert "[identity]" in str(caught.value.error_message)
    assert "request refused" not in str(caught.value)


def test_a_wrong_token_is_a_401_and_the_right_one_works():
    with ReferencePartner(certificate=certificate(), token="s3cret") as partner:
        with pytest.raises(PartnerRejected) as caught:
            adapter(partner, token="Zq9-not-it").submit(
                subject(), "erasure", "gdpr", new_subject_request_id(), None
            )
        assert caught.value.status_code == 401
        assert "Zq9-not-it" not in str(caught.value)
        adapter(partner, token="s3cret").submit(
            subject(), "erasure", "gdpr", new_subject_request_id(), None
        )
        assert len(partner.requests) == 1


def test_status_cancel_and_unknown_ids(partner):
    dsr = adapter(partner)
    srid = new_subject_request_id()
    dsr.submit(subject(), "erasure", "gdpr", srid, None)
    status = dsr.status(srid)
    assert (status.request_status, status.final) == ("pending", False)
    answer = dsr.cancel(srid)
    assert answer["subject_request_id"] == srid and "encoded_request" not in answer
    assert dsr.status(srid).request_status == "cancelled"

    busy = new_subject_request_id()
    dsr.submit(subject(), "erasure", "gdpr", busy, None)
    partner.start_processing(busy)
    with pytest.raises(PartnerRejected) as refused:
        dsr.cancel(busy)
    assert "only a pending request" in str(refused.value.error_message)
    with pytest.raises(PartnerRejected) as caught:
        dsr.status(new_subject_request_id())
    assert caught.value.status_code == 404


# -- the partner's own validation ------------------------------------------------------------
def _valid_body() -> dict[str, Any]:
    return {
        "regulation": "gdpr",
        "subject_request_id": new_subject_request_id(),
        "subject_request_type": "erasure",
        "subject_identities": [
            {"identity_type": "email", "identity_format": "raw", "identity_value": EMAIL}
        ],
        "submitted_time": "2026-11-20T09:30:15Z",
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"subject_request_id": str(uuid.uuid4()).upper()}, "subject_request_id"),
        ({"subject_request_id": str(uuid.uuid1())}, "subject_request_id"),
        ({"subject_request_type": "rectification"}, "subject_request_type"),
        ({"regulation": "pipl"}, "regulation"),
        ({"submitted_time": "2026-11-20 09:30"}, "submitted_time"),
        ({"submitted_time": "2026-13-40T09:30:15Z"}, "submitted_time"),
        ({"subject_identities": []}, "subject_identities"),
        ({"subject_identities": [{"identity_type": "email", "identity_format": "sha256",
                                  "identity_value": EMAIL}]}, "subject_identities[0]"),
        ({"status_callback_urls": ["ftp://x"]}, "status_callback_urls"),
        ({"subject_request_id": None}, "subject_request_id"),
    ],
)
def test_the_partner_answers_malformed_requests_with_an_error_object(partner, change, field):
    body = {**_valid_body(), **change}
    response = httpx.post(f"{partner.url}/v1/requests", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 400 and error["message"].startswith(field)
    assert EMAIL not in response.text
    assert not partner.requests


# -- response signatures ---------------------------------------------------------------------
@pytest.mark.parametrize("signature", ["bad", "missing"])
def test_a_bad_or_missing_response_signature_is_rejected(partner, signature):
    dsr = adapter(partner)
    srid = new_subject_request_id()
    dsr.submit(subject(), "erasure", "gdpr", srid, None)
    partner.set_faults(response_signature=signature)
    with pytest.raises(SignatureError):
        dsr.submit(subject(), "erasure", "gdpr", new_subject_request_id(), None)
    with pytest.raises(SignatureError):
        dsr.status(srid)
    with pytest.raises(SignatureError):
        dsr.client.discovery()


def test_a_response_signed_by_another_certificate_is_rejected(partner):
    other = certificate("rsa", "other.dsrflow.test")
    dsr = adapter(partner, certificate_pem=other.certificate_pem)
    with pytest.raises(SignatureError):
        dsr.submit(subject(), "erasure", "gdpr", new_subject_request_id(), None)


def test_a_response_from_a_domain_not_on_the_list_is_rejected(partner):
    dsr = adapter(partner, allowed_domains=["someone.else.test"])
    with pytest.raises(DomainNotAllowed):
        dsr.submit(subject(), "erasure", "gdpr", new_subject_request_id(), None)
    with pytest.raises(DomainNotAllowed):
        dsr.client.discovery()


def test_an_ecdsa_partner_works_end_to_end(sink):
    with ReferencePartner(certificate=certificate("ec")) as partner:
        dsr = adapter(partner)
        srid = new_subject_request_id()
        dsr.submit(subject(), "erasure", "gdpr", srid, sink.callback_url())
        partner.complete(srid)
        [callback] = sink.wait(1)
        status = dsr.verify_callback(callback.body, callback.headers, sink.callback_url())
        assert status.request_status == "completed"


def test_raw_r_s_ecdsa_signatures_verify_too():
    cert = certificate("ec")
    body = b'{"request_status":"completed"}'
    r, s = decode_dss_signature(base64.b64decode(cert.sign(body)))
    raw = base64.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode()
    verify_signature(body, raw, cert.certificate_pem)
    with pytest.raises(SignatureError):
        verify_signature(body + b" ", raw, cert.certificate_pem)


def test_a_certificate_that_is_not_one_is_a_config_error(partner):
    with pytest.raises(PartnerConfigError):
        client_for(partner, certificate_pem=b"-----BEGIN CERTIFICATE-----\nxx\n")


# -- callbacks -------------------------------------------------------------------------------
def _callback(partner: ReferencePartner, sink: CallbackSink, **faults: Any):
    partner.set_faults(**faults)
    srid = new_subject_request_id()
    adapter(partner).submit(subject(), "erasure", "gdpr", srid, sink.callback_url())
    before = len(sink.received)
    partner.complete(srid)
    received = sink.wait(before + 1, timeout=0.5)  # complete() waited for delivery
    return srid, received[before] if len(received) > before else None


def test_a_good_callback_is_accepted(partner, sink):
    srid, callback = _callback(partner, sink)
    assert callback is not None
    data = verify_callback(callback.body, callback.headers, partner.certificate_pem,
                           [DEFAULT_DOMAIN.upper()], callback_url=sink.callback_url())
    assert data["subject_request_id"] == srid and data["request_status"] == "completed"
    assert data["status_callback_url"] == sink.callback_url()
    assert "encoded_request" not in data


@pytest.mark.parametrize(
    ("faults", "error"),
    [
        ({"callback_signature": "bad"}, SignatureError),
        ({"callback_signature": "missing"}, SignatureError),
        ({"callback_domain": "evil.example"}, DomainNotAllowed),
        ({"callback_domain": f"{DEFAULT_DOMAIN}.evil.example"}, DomainNotAllowed),
    ],
)
def test_untrusted_callbacks_are_rejected(partner, sink, faults, error):
    _, callback = _callback(partner, sink, **faults)
    assert callback is not None
    with pytest.raises(error):
        verify_callback(callback.body, callback.headers, partner.certificate_pem,
                        [DEFAULT_DOMAIN])


def test_a_callback_for_another_endpoint_is_rejected(partner, sink):
    _, callback = _callback(partner, sink)
    assert callback is not None
    with pytest.raises(CallbackMismatch):
        verify_callback(callback.body, callback.headers, partner.certificate_pem,
                        [DEFAULT_DOMAIN], callback_url="http://127.0.0.1:1/elsewhere")


def test_the_domain_is_checked_before_the_signature_and_the_signature_before_parsing():
    cert = certificate()
    garbage = b"\x00not json"
    good_sig = cert.sign(garbage)
    with pytest.raises(DomainNotAllowed):  # not SignatureError: the domain comes first
        verify_callback(garbage, {"X-OpenDSR-Processor-Domain": "evil.example",
                                  "X-OpenDSR-Signature": "!!"}, cert.certificate_pem,
                        [DEFAULT_DOMAIN])
    with pytest.raises(DomainNotAllowed):
        verify_callback(garbage, {"X-OpenDSR-Signature": good_sig}, cert.certificate_pem,
                        [DEFAULT_DOMAIN])
    with pytest.raises(SignatureError):  # not ProtocolError: the body is never parsed
        verify_callback(garbage, {"x-opendsr-processor-domain": DEFAULT_DOMAIN,
                                  "x-opendsr-signature": "AAAA"}, cert.certificate_pem,
                        [DEFAULT_DOMAIN])
    with pytest.raises(ProtocolError):  # signed garbage is still garbage
        verify_callback(garbage, {"X-OpenDSR-Processor-Domain": DEFAULT_DOMAIN,
                                  "X-OpenDSR-Signature": good_sig}, cert.certificate_pem,
                        [DEFAULT_DOMAIN])
    two = [("X-OpenDSR-Processor-Domain", DEFAULT_DOMAIN),
           ("X-OpenDSR-Processor-Domain", "evil.example")]
    with pytest.raises(Untrusted):
        verify_callback(garbage, two, cert.certificate_pem, [DEFAULT_DOMAIN])


def test_lost_callbacks_leave_polling(partner, sink):
    srid, callback = _callback(partner, sink, lose_callbacks=True)
    assert callback is None
    assert [c.lost for c in partner.callbacks] == [True]
    assert adapter(partner).status(srid).request_status == "completed"


def test_failed_callback_deliveries_are_retried(partner):
    with CallbackSink(status_code=503) as down:
        srid = new_subject_request_id()
        adapter(partner).submit(subject(), "erasure", "gdpr", srid, down.callback_url())
        partner.complete(srid)
    assert [c.status_code for c in partner.callbacks] == [503] * partner.callback_attempts


def test_auto_complete_sends_a_signed_callback(sink):
    with ReferencePartner(certificate=certificate(), complete_after=0.05) as partner:
        dsr = adapter(partner)
        srid = new_subject_request_id()
        dsr.submit(subject(), "access", "gdpr", srid, sink.callback_url())
        [callback] = sink.wait(1)
        status = dsr.verify_callback(callback.body, callback.headers, sink.callback_url())
        assert status.request_status == "completed" and status.results_url
        assert "results_url" not in repr(status)  # it may grant access to the results
        # The partner records the change before it calls back.
        assert partner.status_of(srid) == "completed"


# -- tampering -------------------------------------------------------------------------------
def _tamper(body: bytes, where: int, how: str, byte: int) -> bytes:
    i = where % (len(body) + 1)
    if how == "flip" and body:
        i %= len(body)
        return body[:i] + bytes([body[i] ^ (byte or 1)]) + body[i + 1:]
    if how == "insert":
        return body[:i] + bytes([byte]) + body[i:]
    if how == "delete" and body:
        i %= len(body)
        return body[:i] + body[i + 1:]
    return body + bytes([byte])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key_type=st.sampled_from(["rsa", "ec"]),
    body=st.binary(max_size=300),
    where=st.integers(min_value=0, max_value=10_000),
    how=st.sampled_from(["flip", "insert", "delete", "append"]),
    byte=st.integers(min_value=0, max_value=255),
)
def test_any_tampering_of_a_signed_body_is_rejected(key_type, body, where, how, byte):
    cert = certificate(key_type)
    signature = cert.sign(body)
    verify_signature(body, signature, cert.certificate_pem)
    tampered = _tamper(body, where, how, byte)
    if tampered != body:
        with pytest.raises(SignatureError):
            verify_signature(tampered, signature, cert.certificate_pem)


@settings(max_examples=60, deadline=None)
@given(key_type=st.sampled_from(["rsa", "ec"]), signature=st.binary(max_size=600),
       text=st.text(max_size=40))
def test_any_forged_signature_is_a_signature_error(key_type, signature, text):
    cert = certificate(key_type)
    for header in (base64.b64encode(signature).decode(), text):
        with pytest.raises(SignatureError):
            verify_signature(b'{"request_status":"completed"}', header, cert.certificate_pem)


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=5))
def test_a_tampered_callback_never_parses(extra):
    cert = certificate()
    payload = {"subject_request_id": new_subject_request_id(), "request_status": "pending",
               **extra}
    body = json.dumps(payload).encode()
    headers = {"X-OpenDSR-Processor-Domain": DEFAULT_DOMAIN,
               "X-OpenDSR-Signature": cert.sign(body)}
    tampered = json.dumps({**payload, "request_status": "completed"}).encode()
    with pytest.raises(SignatureError):
        verify_callback(tampered, headers, cert.certificate_pem, [DEFAULT_DOMAIN])


# -- encoded_request and identities stay out ------------------------------------------------
def test_encoded_request_is_never_returned(partner, sink):
    dsr = adapter(partner)
    srid = new_subject_request_id()
    receipt = dsr.submit(subject(), "erasure", "gdpr", srid, sink.callback_url())
    encoded = base64.b64encode(partner.requests[srid].raw).decode()
    assert "encoded_request" not in {f.name for f in dataclasses.fields(Receipt)}
    for shown in (repr(receipt), json.dumps(dataclasses.asdict(receipt), default=str),
                  repr(dsr.status(srid)), json.dumps(dsr.cancel(srid))):
        assert encoded not in shown and "encoded_request" not in shown
        assert_no_identity(shown)


def test_the_adapter_reads_certificate_and_token_from_the_data_map(tmp_path: Path, monkeypatch):
    with ReferencePartner(certificate=certificate(), token="t0ken") as partner:
        (tmp_path / "partner.pem").write_bytes(partner.certificate_pem)
        conf = system(partner.url, certificate="partner.pem", credentials_env="ADNET_TOKEN")
        with pytest.raises(PartnerConfigError, match="ADNET_TOKEN"):
            OpenDsrPartner("adnet", conf, base_dir=tmp_path)
        monkeypatch.setenv("ADNET_TOKEN", "t0ken")
        dsr = OpenDsrPartner("adnet", conf, base_dir=tmp_path)
        assert dsr.check() == []
        dsr.submit(subject(), "erasure", "gdpr", new_subject_request_id(), None)
        assert len(partner.requests) == 1
        with pytest.raises(PartnerConfigError, match="certificate"):
            OpenDsrPartner("adnet", system(partner.url), base_dir=tmp_path)


def test_plain_http_is_refused_off_loopback():
    with pytest.raises(PartnerConfigError, match="loopback"):
        OpenDsrClient("http://partner.example.com", certificate_pem=certificate().certificate_pem)


def test_every_error_is_an_opendsr_error_without_identities(partner):
    errors: list[OpenDsrError] = []
    for faults, identities in (({"fail": 99}, ({"type": "email"},)),
                               ({}, ({"type": "phone"},)),
                               ({"response_signature": "bad"}, ({"type": "email"},))):
        partner.set_faults(Faults(**faults))
        try:
            adapter(partner, *identities, retries=1).submit(
                subject(), "erasure", "gdpr", new_subject_request_id(), None
            )
        except OpenDsrError as exc:
            errors.append(exc)
    assert len(errors) == 3
    for error in errors:
        assert_no_identity(str(error))
        assert_no_identity(repr(error))
