"""Identity normalization: look-ups match however a value was typed, garbage is refused."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from dsrflow.identities import (
    MAX_IDENTITY_LENGTH,
    Identity,
    IdentityError,
    IdentityType,
    Subject,
    ip_variants,
    normalize,
    normalize_email,
    normalize_ip,
    normalize_phone,
    normalize_third_party,
    phone_variants,
    reads_nationally,
    unsafe_reason,
    user_id_problem,
)

# -- email -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice@example.com", "alice@example.com"),
        ("  Alice@Example.COM \n", "alice@example.com"),
        ("\tBOB.Smith+dsr@Mail.Example.ORG", "bob.smith+dsr@mail.example.org"),
        ("Straße@Example.de", "strasse@example.de"),  # full case folding, not lower()
    ],
)
def test_email_is_trimmed_and_case_folded(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected
    assert Identity(type=IdentityType.EMAIL, value=raw).value == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "alice",
        "alice@",
        "@example.com",
        "alice@localhost",  # no dot in the domain
        "alice@@example.com",
        "alice@ex@ample.com",
        "ali ce@example.com",
        "alice@exa\tmple.com",
        "alice@example.com\nbob@example.com",
        "138 0013 8000",
    ],
)
def test_email_garbage_is_rejected(raw: str) -> None:
    with pytest.raises(IdentityError):
        normalize_email(raw)
    with pytest.raises(ValidationError):
        Identity(type=IdentityType.EMAIL, value=raw)


@pytest.mark.parametrize("raw", ["ali\x00ce@example.com", "alice@exam\x07ple.com", "\x1b[31m@x.cn"])
def test_email_with_control_characters_is_rejected(raw: str) -> None:
    # Opaque ids reject control characters; an email must not let them through either
    # (a NUL cannot even be stored in a PostgreSQL text column).
    with pytest.raises(IdentityError):
        normalize(IdentityType.EMAIL, raw)


def test_identity_longer_than_limit_is_rejected() -> None:
    raw = "a" * (MAX_IDENTITY_LENGTH - len("@example.com") + 1) + "@example.com"
    assert len(raw) == MAX_IDENTITY_LENGTH + 1
    with pytest.raises(IdentityError):
        normalize(IdentityType.EMAIL, raw)
    with pytest.raises(ValidationError):
        Identity(type=IdentityType.EMAIL, value=raw)
    # (An email address is at most 254 characters, RFC 5321 with erratum 1690: the value
    # at the limit is a device id.)
    at_limit = raw[1:]
    assert normalize(IdentityType.DEVICE_ID, at_limit) == at_limit


def test_an_email_address_longer_than_rfc_5321_allows_is_rejected() -> None:
    raw = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 60 + ".com"  # 257
    with pytest.raises(IdentityError):
        normalize(IdentityType.EMAIL, raw)
    assert normalize(IdentityType.EMAIL, raw[3:]) == raw[3:]


def test_email_normalization_is_idempotent_at_the_length_limit() -> None:
    # 'ΐ' case-folds to three code points (2 bytes of UTF-8 become 6): a value within the
    # limits comes out longer than an address may be, and normalizing it again would fail.
    raw = "\u0390" * 100 + "@example.com"  # 212 bytes in, 612 out
    # Refused up front, rather than accepted once and refused when normalized again.
    with pytest.raises(IdentityError, match="case-folded"):
        normalize(IdentityType.EMAIL, raw)


@pytest.mark.parametrize(
    "raw",
    [
        "a@.com",  # a period right after the @
        "a@b..com",  # two periods in a row
        "a@-b.com",  # a label starting with a hyphen
        "a@b-.com",
        "a.@example.com",  # a local part ending in a period
        "a..b@example.com",
        '"a b"@example.com',  # quoted local parts: legal in RFC 5322, refused by mail apps
        "a@[203.0.113.7]",  # a domain literal
        "a@example.test",  # special-use names (RFC 6761) can receive no one's mail
        "a@example.invalid",
        "a@localhost.localdomain.local",
    ],
)
def test_emails_are_checked_by_a_real_validator(raw: str) -> None:
    with pytest.raises(IdentityError) as caught:
        normalize_email(raw)
    # email-validator's messages can quote a part of the address: not repeated.
    assert str(caught.value) == "not an email address"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("用户@例子.广告", "用户@例子.广告"),  # internationalized, as RFC 6531 allows
        ("Straße@BÜCHER.de", "strasse@bücher.de"),  # the domain lower-cased, IDNA-style
        ("li.na@xn--bcher-kva.example", "li.na@bücher.example"),  # punycode read as Unicode
        ("o'brien+dsr@example.co.uk", "o'brien+dsr@example.co.uk"),
    ],
)
def test_internationalized_addresses_are_accepted_as_the_validator_reads_them(
    raw: str, expected: str
) -> None:
    assert normalize_email(raw) == expected
    assert normalize_email(expected) == expected


def test_an_identity_with_an_unknown_key_is_refused() -> None:
    # A sender who wrote {"type", "value", "region"} meant a constraint: it is refused, not
    # silently dropped.
    with pytest.raises(ValidationError) as caught:
        Identity.model_validate({"type": "email", "value": "a@example.com", "region": "GB"})
    assert caught.value.errors()[0]["loc"] == ("region",)


# -- what a value may be used for -----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["7", "-5", "0", "007", "9223372036854775807", "-9223372036854775808", "u-17",
     "A1b2.C3_d4:e5@f6", "537C8622-12C9-498B-B0C9-1139D5721579", "x" * 128],
)
def test_user_ids_that_can_be_keys_are_accepted(value: str) -> None:
    assert user_id_problem(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "²",  # a digit to str.isdigit(), and int() fails on it
        "٣",  # ARABIC-INDIC THREE: int() reads it as 3, no database does
        "１２",  # full-width digits
        "\\d+", ".*", "%", "a b", "a/b", "a\\b", "../../etc", "..", ".x", "-", "--5", "-a",
        "+5", "a'b", "a;b", "1 OR 1=1",
        "9223372036854775808",  # one past a signed 64-bit key
        "-9223372036854775809",
        "9" * 40,
        "x" * 129,
    ],
)
def test_user_ids_that_no_key_column_holds_are_refused(value: str) -> None:
    problem = user_id_problem(value)
    assert problem is not None
    assert len(value) < 3 or value not in problem  # (a lone '-' is in any sentence)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"), ("  ", "empty"), ("a/b", "separator"), ("a\\b", "separator"),
        ("..", "dot"), (".", "dot"), ("a..b", "dot"), ("a\x00b", "control"),
        ("a\x85b", "control"), ("a\ud800", "surrogate"),
    ],
)
def test_values_that_would_leave_their_place_in_a_key_are_named(value: str, why: str) -> None:
    problem = unsafe_reason(value)
    assert problem is not None and why in problem


@pytest.mark.parametrize("value", ["7", "u-17", "a.b", "li.na@example.com", "+8613800138000"])
def test_values_that_stay_in_their_place_are_safe(value: str) -> None:
    assert unsafe_reason(value) is None


# -- phone -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "138 0013 8000",
        "13800138000",
        "+86 138-0013-8000",
        "+8613800138000",
        "008613800138000",
        "(+86) 138 0013 8000",
        "１３８００１３８０００",  # full-width digits, as typed on a Chinese keyboard
    ],
)
def test_cn_phone_to_e164(raw: str) -> None:
    assert normalize_phone(raw, "CN") == "+8613800138000"
    assert Identity.read(IdentityType.PHONE, raw, "CN").value == "+8613800138000"


def test_foreign_phone_keeps_its_country_code() -> None:
    assert normalize_phone("+44 20 7946 0958") == "+442079460958"
    assert normalize_phone("+1 650-253-0000", "CN") == "+16502530000"
    # A national number is read in the given region.
    assert normalize_phone("020 7946 0958", "GB") == "+442079460958"


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        # The same national digits are different people in different countries.
        ("(415) 555-2671", "US", "+14155552671"),
        ("020 7946 0018", "GB", "+442079460018"),
        ("020 7946 0018", "CN", "+862079460018"),
        ("030 901820", "DE", "+4930901820"),
    ],
)
def test_a_national_number_is_read_in_the_subjects_region(
    raw: str, region: str, expected: str
) -> None:
    assert normalize_phone(raw, region) == expected
    assert Identity.read(IdentityType.PHONE, raw, region).value == expected


@pytest.mark.parametrize("raw", ["(415) 555-2671", "020 7946 0018", "138 0013 8000",
                                 "0086 138 0013 8000"])
def test_a_national_number_without_a_region_is_refused_not_guessed(raw: str) -> None:
    # Today's bug: every national number was read as Chinese, whatever the regime.
    with pytest.raises(IdentityError, match=r"with \+ and the country code"):
        normalize_phone(raw)
    with pytest.raises(ValidationError, match=r"with \+ and the country code"):
        Identity(type=IdentityType.PHONE, value=raw)


@pytest.mark.parametrize("raw", ["12345", "1380013800", "+86 138 0013 800", "138001380001"])
def test_invalid_phone_numbers_are_rejected(raw: str) -> None:
    with pytest.raises(IdentityError):
        normalize_phone(raw, "CN")
    with pytest.raises(ValidationError):
        Identity.read(IdentityType.PHONE, raw, "CN")


@pytest.mark.parametrize("raw", [
    "13800138000%", "1380013800O", "138-0013-TEXT", "+86 138 0013 8000 ext. 12",
    "tel:+8613800138000", "++8613800138000", "13800138000\u00b2",
    "".join(chr(0x0660 + int(d)) for d in "13800138000"),  # Arabic-Indic digits
])
def test_text_that_phonenumbers_would_bend_into_a_number_is_refused(raw: str) -> None:
    # phonenumbers reads letters as keypad digits and skips trailing text: each of these
    # would become somebody's real number (+8613800138000 or a neighbour of it).
    with pytest.raises(IdentityError, match="only digits"):
        normalize_phone(raw, "CN")


@pytest.mark.parametrize("raw", [
    "(+86) 138 0013 8000", "+86.138.0013.8000", " 138 0013 8000 ",
    "".join(chr(0xFF10 + int(d)) for d in "13800138000"),  # full-width, as IMEs type them
])
def test_the_usual_ways_of_writing_a_number_are_read(raw: str) -> None:
    assert normalize_phone(raw, "CN") == "+8613800138000"


@pytest.mark.parametrize("raw", ["call me", "", "+", "+86", "+999 1234 5678", "tel:"])
def test_unparseable_phone_numbers_raise_identity_error(raw: str) -> None:
    # Text that phonenumbers cannot parse at all must be an IdentityError like any other
    # bad phone number (and a ValidationError through the model), not a crash.
    with pytest.raises(IdentityError):
        normalize_phone(raw, "CN")
    with pytest.raises(ValidationError):
        Identity.read(IdentityType.PHONE, raw, "CN")


def test_phone_variants_cn_mobile() -> None:
    assert phone_variants("+8613800138000", "CN") == [
        "+8613800138000",
        "13800138000",
        "8613800138000",
        "008613800138000",
    ]
    identity = Identity.read(IdentityType.PHONE, "138 0013 8000", "CN")
    assert identity.variants("CN") == phone_variants("+8613800138000", "CN")


@pytest.mark.parametrize(
    ("e164", "expected"),
    [
        # Worked out by hand: E.164, national significant number, the national dialling
        # form with its trunk prefix (if the country has one), with country code, with 00.
        ("+8613800138000", ["+8613800138000", "13800138000", "8613800138000",
                            "008613800138000"]),
        ("+16502530000", ["+16502530000", "6502530000", "16502530000", "0016502530000"]),
        ("+442079460958", ["+442079460958", "2079460958", "02079460958", "442079460958",
                           "00442079460958"]),
        ("+861012345678", ["+861012345678", "1012345678", "01012345678", "861012345678",
                           "00861012345678"]),
    ],
)
def test_phone_variants_are_the_spellings_of_the_same_number(
    e164: str, expected: list[str]
) -> None:
    region = phonenumbers.region_code_for_number(phonenumbers.parse(e164))
    variants = phone_variants(e164, region)
    assert variants[0] == e164
    assert sorted(variants) == sorted(expected)


@pytest.mark.parametrize(
    ("e164", "region"),
    [
        ("+442079460018", "CN"),  # London: in China, 020 7946 0018 is Guangzhou
        ("+442079460018", None),
        ("+14155552671", "CN"),
        ("+8613800138000", "US"),
    ],
)
def test_national_spellings_are_searched_only_in_the_numbers_own_country(
    e164: str, region: str | None
) -> None:
    parsed = phonenumbers.parse(e164)
    national = phonenumbers.national_significant_number(parsed)
    cc = str(parsed.country_code)
    assert phone_variants(e164, region) == [e164, cc + national, "00" + cc + national]


def test_north_american_numbers_read_nationally_across_the_plan() -> None:
    # Canada and the US share +1 and write numbers the same way.
    assert reads_nationally("+16135550123", "US")
    assert "6135550123" in phone_variants("+16135550123", "US")
    assert not reads_nationally("+16135550123", "GB")


def test_phone_variants_keep_the_italian_leading_zero() -> None:
    # Italian numbers keep their leading 0 after the country code: +39 02 3661 8300 is
    # written 0039 02 3661 8300. Dropping the zero spells a different number.
    e164 = normalize_phone("+39 02 3661 8300")
    assert e164 == "+390236618300"
    variants = phone_variants(e164, "IT")
    assert "390236618300" in variants
    assert "00390236618300" in variants
    assert "0236618300" in variants
    assert "39236618300" not in variants  # +39 236 618300 is someone else's number


# -- IP addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 198.51.100.23 ", "198.51.100.23"),
        ("2001:DB8::0:1", "2001:db8::1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # an IPv4 address carried in IPv6
        ("8.8.8.8", "8.8.8.8"),
    ],
)
def test_ip_addresses_are_normalized_with_ipaddress(raw: str, expected: str) -> None:
    assert normalize_ip(raw) == expected
    assert Identity(type=IdentityType.IP, value=raw).value == expected


@pytest.mark.parametrize(
    "raw",
    ["10.1.2.3", "192.168.0.10", "172.16.5.4", "127.0.0.1", "100.64.0.1", "169.254.1.1",
     "0.0.0.0", "::1", "::", "fe80::1", "fd00::1", "224.0.0.1"],
)
def test_addresses_many_people_share_are_refused(raw: str) -> None:
    # Behind NAT or on loopback, one address is everybody's: as an identity it would
    # match every other user's log lines.
    with pytest.raises(IdentityError, match="many people"):
        normalize_ip(raw)


@pytest.mark.parametrize("raw", ["1.2.3", "1.2.3.4.5", "01.2.3.4", "256.1.1.1", "fe80::1%eth0",
                                 "example.com", "1.2.3.4/24", ""])
def test_what_is_not_one_address_is_refused(raw: str) -> None:
    with pytest.raises(IdentityError):
        normalize_ip(raw)


def test_ip_variants_are_the_spellings_a_column_may_hold() -> None:
    assert ip_variants("203.0.113.7") == ["203.0.113.7", "::ffff:203.0.113.7"]
    assert ip_variants("2001:db8::1") == [
        "2001:db8::1", "2001:0db8:0000:0000:0000:0000:0000:0001",
        "2001:DB8::1", "2001:0DB8:0000:0000:0000:0000:0000:0001",
    ]


def test_non_phone_identity_variants_are_the_value() -> None:
    assert Identity(type=IdentityType.EMAIL, value="A@B.CN").variants() == ["a@b.cn"]


# -- third party, opaque ids -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("wechat:oAbC123", "wechat:oAbC123"),
        ("  WeChat : oAbC123 ", "wechat:oAbC123"),  # provider folded, id case kept
        ("QQ:ABCDEF0123", "qq:ABCDEF0123"),
        ("apple:001234.abcd:ef", "apple:001234.abcd:ef"),  # only the first colon splits
    ],
)
def test_third_party_form(raw: str, expected: str) -> None:
    assert normalize_third_party(raw) == expected
    assert Identity(type=IdentityType.THIRD_PARTY, value=raw).value == expected


@pytest.mark.parametrize("raw", ["oAbC123", "wechat:", ":oAbC123", " : ", "wechat:a\x01b"])
def test_third_party_garbage_is_rejected(raw: str) -> None:
    with pytest.raises(IdentityError):
        normalize_third_party(raw)
    with pytest.raises(ValidationError):
        Identity(type=IdentityType.THIRD_PARTY, value=raw)


def test_opaque_ids_are_trimmed_but_case_sensitive() -> None:
    assert Identity(type=IdentityType.USER_ID, value=" U-42 ").value == "U-42"
    assert Identity(type=IdentityType.DEVICE_ID, value="AbC").value == "AbC"
    for bad in ["", "   ", "a\x00b"]:
        with pytest.raises(ValidationError):
            Identity(type=IdentityType.USER_ID, value=bad)


def test_unknown_identity_type_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="type"):
        Identity.model_validate({"type": "fax", "value": "12345"})


def test_identity_is_frozen_and_subject_filters_by_type() -> None:
    email = Identity(type=IdentityType.EMAIL, value="A@B.CN")
    with pytest.raises(ValidationError):
        email.value = "other@b.cn"  # type: ignore[misc]
    subject = Subject(
        request_id="r1",
        identities=(email, Identity.read(IdentityType.PHONE, "13800138000", "CN")),
    )
    assert subject.values(IdentityType.PHONE) == ["+8613800138000"]
    assert subject.values(IdentityType.EMAIL) == ["a@b.cn"]
    assert subject.values(IdentityType.USER_ID) == []


# -- properties --------------------------------------------------------------------------

_local = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="@"),
    min_size=1,
    max_size=30,
)
_domain = st.from_regex(r"\A[A-Za-z0-9-]{1,15}(\.[A-Za-z0-9-]{1,10}){1,3}\Z")
_padding = st.sampled_from(["", " ", "\t", "\n ", "  "])


@settings(max_examples=300)
@given(
    st.one_of(st.emails(), st.builds(lambda a, b: f"{a}@{b}", _local, _domain)),
    _padding,
    _padding,
    st.booleans(),
)
def test_email_normalization_is_idempotent(
    address: str, before: str, after: str, upper: bool
) -> None:
    raw = before + (address.upper() if upper else address) + after
    try:
        once = normalize(IdentityType.EMAIL, raw)
    except IdentityError:
        assume(False)
        return
    assert normalize(IdentityType.EMAIL, once) == once
    assert Identity(type=IdentityType.EMAIL, value=once).value == once
    assert once == once.strip() and once == once.casefold()


_cn_mobile = st.builds(
    lambda prefix, rest: prefix + rest,
    st.sampled_from(["130", "131", "135", "138", "139", "150", "158", "186", "188", "199"]),
    st.text(alphabet="0123456789", min_size=8, max_size=8),
)


def _spell(digits: str, country: str, style: int) -> str:
    if style == 0:
        return digits
    if style == 1:
        return f"{digits[:3]} {digits[3:7]} {digits[7:]}"
    if style == 2:
        return f"+{country} {digits[:3]}-{digits[3:7]}-{digits[7:]}"
    if style == 3:
        return f"00{country}{digits}"
    return f"(+{country}) {digits}"


@settings(max_examples=300)
@given(_cn_mobile, st.integers(min_value=0, max_value=4))
def test_phone_normalization_is_idempotent(digits: str, style: int) -> None:
    raw = _spell(digits, "86", style)
    try:
        once = normalize(IdentityType.PHONE, raw, "CN")
    except IdentityError:
        assume(False)
        return
    assert once == "+86" + digits
    assert normalize(IdentityType.PHONE, once) == once
    assert once in phone_variants(once, "CN")
    assert digits in phone_variants(once, "CN")
    assert digits not in phone_variants(once, "GB")


@settings(max_examples=200)
@given(st.text(alphabet="0123456789 -()", min_size=7, max_size=20))
def test_phone_normalization_is_idempotent_on_digit_soup(raw: str) -> None:
    digits = "".join(c for c in raw if c.isdigit())
    # Parseable national spellings only (unparseable text is covered below).
    assume(7 <= len(digits) <= 15 and not digits.startswith("00"))
    try:
        once = normalize(IdentityType.PHONE, raw, "CN")
    except IdentityError:
        return
    assert once.startswith("+") and once[1:].isdigit()
    assert normalize(IdentityType.PHONE, once) == once


@settings(max_examples=200)
@given(st.text(max_size=40), st.text(max_size=40))
def test_third_party_normalization_is_idempotent(provider: str, openid: str) -> None:
    try:
        once = normalize(IdentityType.THIRD_PARTY, f"{provider}:{openid}")
    except IdentityError:
        return
    assert normalize(IdentityType.THIRD_PARTY, once) == once


@pytest.mark.parametrize("kind", list(IdentityType))
@settings(max_examples=200)
@given(value=st.text(max_size=400))
def test_arbitrary_text_fails_only_with_validation_error(kind: IdentityType, value: str) -> None:
    try:
        identity = Identity(type=kind, value=value)
    except ValidationError:
        with pytest.raises(IdentityError):
            normalize(kind, value)
        return
    # Whatever was accepted is already normal.
    assert normalize(kind, identity.value) == identity.value
    assert 1 <= len(identity.value) <= MAX_IDENTITY_LENGTH
