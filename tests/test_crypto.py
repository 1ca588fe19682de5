"""Keys, tokens, encryption at rest, pseudonyms (dsrflow/crypto.py) and the erasure
transforms built on them (dsrflow/anonymize.py)."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import given, settings
from hypothesis import strategies as st

from dsrflow.anonymize import GENERALIZERS, is_erased, transform
from dsrflow.crypto import (
    KEY_BYTES,
    KeyMaterialError,
    Keyring,
    Pseudonymizer,
    decode_key,
    encode_key,
    is_pseudonym,
    keyed_digest,
    new_key,
)
from dsrflow.datamap import Column, Generalization

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


def keyring(token_key: bytes = KEY_A, encryption_key: bytes = KEY_B) -> Keyring:
    return Keyring(token_key=token_key, encryption_key=encryption_key)


# -- keys --------------------------------------------------------------------------------


def test_new_keys_are_random_and_round_trip_through_text() -> None:
    a, b = new_key(), new_key()
    assert len(a) == KEY_BYTES and a != b
    assert decode_key(encode_key(a), "DSRFLOW_TOKEN_KEY") == a
    assert decode_key("  " + encode_key(a) + "\n", "DSRFLOW_TOKEN_KEY") == a


@pytest.mark.parametrize("text", ["", "not base64!!", encode_key(b"short"), "é"])
def test_bad_key_text_names_the_setting_not_the_value(text: str) -> None:
    with pytest.raises(KeyMaterialError, match="DSRFLOW_TOKEN_KEY") as info:
        decode_key(text, "DSRFLOW_TOKEN_KEY")
    if text:
        assert text not in str(info.value)


# -- tokens ------------------------------------------------------------------------------


def test_tokens_are_keyed_and_stable() -> None:
    value = "+8613800138000"
    token = keyring().token("phone", value)
    assert token == keyring().token("phone", value)  # stable across instances
    assert token != keyring(token_key=KEY_B).token("phone", value)
    # Not a plain (dictionary-reversible) hash of the value.
    assert token != hashlib.sha256(value.encode()).hexdigest()
    assert token != hashlib.sha256(f"phone\x00{value}".encode()).hexdigest()
    assert value not in token and "13800138000" not in token


def test_tokens_separate_identity_types_and_values() -> None:
    ring = keyring()
    assert ring.token("email", "a@b.cn") != ring.token("user_id", "a@b.cn")
    assert ring.token("email", "a@b.cn") != ring.token("email", "a@b.cm")
    # The separator prevents kind/value boundary collisions.
    assert ring.token("ab", "c") != ring.token("a", "bc")


def test_keyed_digest_is_hmac_sha256() -> None:
    import hmac

    expected = hmac.new(KEY_A, b"x", hashlib.sha256).hexdigest()
    assert keyed_digest(KEY_A, "x") == expected
    assert keyed_digest(KEY_B, "x") != expected


# -- encryption --------------------------------------------------------------------------


def test_encrypt_decrypt_round_trip() -> None:
    ring = keyring()
    plaintext = "张伟 <zhang.wei@example.com> +8613800138000".encode()
    blob = ring.encrypt(plaintext, "request-1")
    assert plaintext not in blob
    assert b"zhang.wei" not in blob
    assert ring.decrypt(blob, "request-1") == plaintext
    # Fresh nonce each time: equal plaintexts do not give equal ciphertexts.
    assert ring.encrypt(plaintext, "request-1") != blob


def test_decrypt_in_another_context_fails() -> None:
    ring = keyring()
    blob = ring.encrypt(b"secret", "request-1")
    with pytest.raises(InvalidTag):
        ring.decrypt(blob, "request-2")


def test_decrypt_with_another_key_or_tampered_blob_fails() -> None:
    blob = keyring().encrypt(b"secret", "request-1")
    with pytest.raises(InvalidTag):
        keyring(encryption_key=KEY_A).decrypt(blob, "request-1")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(InvalidTag):
        keyring().decrypt(tampered, "request-1")


def test_repr_shows_no_key_material() -> None:
    ring = keyring()
    pseudonymize = Pseudonymizer(KEY_A)
    for obj in (ring, pseudonymize):
        text = repr(obj) + str(obj) + f"{obj}"
        assert "redacted" in text
        for key in (KEY_A, KEY_B):
            assert repr(key) not in text
            assert key.hex() not in text
            assert encode_key(key) not in text
            assert "\\x00\\x01" not in text


# -- pseudonyms --------------------------------------------------------------------------


def test_pseudonymizer_is_deterministic_per_key_and_differs_across_keys() -> None:
    a, b = Pseudonymizer(KEY_A), Pseudonymizer(KEY_B)
    assert a("zhang.wei@example.com") == Pseudonymizer(KEY_A)("zhang.wei@example.com")
    assert a("zhang.wei@example.com") != b("zhang.wei@example.com")
    assert a("zhang.wei@example.com") != a("li.na@example.com")
    assert a(None) is None
    # Non-strings go through their text form: a user id 42 and "42" join up.
    assert a(42) == a("42")


def test_pseudonym_is_not_a_plain_hash() -> None:
    value = "+8613800138000"
    pseudonym = Pseudonymizer(KEY_A)(value)
    assert pseudonym is not None
    assert hashlib.sha256(value.encode()).hexdigest()[:24] not in pseudonym


@settings(max_examples=200)
@given(st.one_of(st.text(max_size=50), st.integers(), st.emails()))
def test_pseudonymizer_idempotent_and_recognizable(value: Any) -> None:
    pseudonymize = Pseudonymizer(KEY_A)
    once = pseudonymize(value)
    assert is_pseudonym(once)
    assert pseudonymize(once) == once
    assert Pseudonymizer(KEY_B)(once) == once  # a pseudonym is left alone under any key
    assert not is_pseudonym(value) or once == value


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "pn_",
        "pn_123",
        "PN_0123456789abcdef01234567",
        "pn_0123456789ABCDEF01234567",
        "pn_0123456789abcdef012345678",
        "xpn_0123456789abcdef01234567",
        b"pn_0123456789abcdef01234567",
        "pn_0123456789abcdef01234567\n",
    ],
)
def test_is_pseudonym_rejects_lookalikes(value: Any) -> None:
    assert not is_pseudonym(value)


def test_is_pseudonym_accepts_the_exact_form() -> None:
    assert is_pseudonym("pn_0123456789abcdef01234567")


# -- anonymize: transforms and is_erased -------------------------------------------------


def column(action: str, **extra: Any) -> Column:
    category = "non_personal" if action == "keep" else "profile"
    if action == "retain":
        extra.setdefault("reason", "legal hold")
    return Column.model_validate({"category": category, "action": action, **extra})


def generalize(kind: Generalization) -> Column:
    return column("generalize", generalize=kind.value)


def test_null_and_redact() -> None:
    null = column("null")
    assert transform(null, None)("x") is None
    assert is_erased(null, None)
    assert not is_erased(null, "x")
    redact = column("redact", redact_with="***")
    assert transform(redact, None)("zhang") == "***"
    assert transform(redact, None)(None) is None
    assert is_erased(redact, "***") and is_erased(redact, None)
    assert not is_erased(redact, "zhang")
    assert not is_erased(redact, "[REDACTED]")  # the marker configured, not the default


def test_pseudonymize_transform_and_verification_without_key() -> None:
    col = column("pseudonymize")
    pseudonymize = Pseudonymizer(KEY_A)
    out = transform(col, pseudonymize)("zhang.wei@example.com")
    assert is_pseudonym(out)
    assert transform(col, pseudonymize)(out) == out
    # Verification holds no key: it only sees whether a value is already a pseudonym.
    assert is_erased(col, out)
    assert is_erased(col, None)
    assert not is_erased(col, "zhang.wei@example.com")


@pytest.mark.parametrize("action", ["delete", "retain", "keep"])
def test_non_transforming_actions_raise(action: str) -> None:
    with pytest.raises(ValueError, match="does not transform"):
        transform(column(action), None)


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        (Generalization.YEAR, date(1990, 7, 15), date(1990, 1, 1)),
        (
            Generalization.YEAR,
            datetime(1990, 7, 15, 8, 30, tzinfo=UTC),
            datetime(1990, 1, 1, tzinfo=UTC),
        ),
        (Generalization.YEAR, "1990-07-15", "1990-01-01"),
        (Generalization.MONTH, date(1990, 7, 15), date(1990, 7, 1)),
        (Generalization.MONTH, "1990-07-15", "1990-07-01"),
        (Generalization.GRID_1, 22.54321, 22.5),
        (Generalization.GRID_2, 114.05678, 114.06),
        (Generalization.GRID_2, Decimal("114.05678"), Decimal("114.06")),
        (Generalization.IPV4_24, "203.0.113.7", "203.0.113.0"),
        (Generalization.IPV4_24, "not an ip", "0.0.0.0"),
        (Generalization.YEAR, None, None),
        (Generalization.IPV4_24, None, None),
    ],
)
def test_generalizers(kind: Generalization, value: Any, expected: Any) -> None:
    assert GENERALIZERS[kind](value) == expected
    assert transform(generalize(kind), None)(value) == expected


_dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))
_datetimes = st.datetimes(
    min_value=datetime(1900, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([None, UTC]),
)
_coords = st.floats(min_value=-180, max_value=180, allow_nan=False)


@settings(max_examples=200)
@given(st.one_of(_dates, _datetimes, _dates.map(date.isoformat)))
def test_date_generalization_is_idempotent(value: Any) -> None:
    for kind in (Generalization.YEAR, Generalization.MONTH):
        col = generalize(kind)
        once = transform(col, None)(value)
        assert transform(col, None)(once) == once
        assert is_erased(col, once)
        assert is_erased(col, value) == (value == once)


@settings(max_examples=200)
@given(_dates)
def test_year_erased_exactly_on_first_of_january(day: date) -> None:
    assert is_erased(generalize(Generalization.YEAR), day) == (day.month == 1 and day.day == 1)
    assert is_erased(generalize(Generalization.MONTH), day) == (day.day == 1)


@settings(max_examples=300)
@given(
    st.one_of(
        _coords,
        st.floats(allow_nan=False, allow_infinity=False),
        st.decimals(min_value=-180, max_value=180, places=6),
    )
)
def test_grid_generalization_is_idempotent(value: Any) -> None:
    for kind, digits in ((Generalization.GRID_1, 1), (Generalization.GRID_2, 2)):
        col = generalize(kind)
        once = transform(col, None)(value)
        assert transform(col, None)(once) == once
        assert is_erased(col, once)
        assert is_erased(col, value) == (value == once)
        assert abs(Decimal(str(once)) - Decimal(str(value))) <= Decimal(5) / 10 ** (digits + 1)


@settings(max_examples=200)
@given(st.ip_addresses(v=4))
def test_ipv4_generalization_is_idempotent(address: Any) -> None:
    col = generalize(Generalization.IPV4_24)
    text = str(address)
    once = transform(col, None)(text)
    assert transform(col, None)(once) == once
    assert once.split(".")[:3] == text.split(".")[:3]
    assert once.endswith(".0")
    assert is_erased(col, once)
    assert is_erased(col, text) == text.endswith(".0")


@settings(max_examples=200)
@given(st.text(max_size=30))
def test_ipv4_generalization_is_idempotent_on_any_text(text: str) -> None:
    col = generalize(Generalization.IPV4_24)
    once = transform(col, None)(text)
    assert transform(col, None)(once) == once
