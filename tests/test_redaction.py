"""Other people in free text: what an access package withholds from a log line, and what
it leaves."""

from __future__ import annotations

import phonenumbers
from hypothesis import given, settings
from hypothesis import strategies as st

from dsrflow.redaction import EMAIL_WITHHELD, PHONE_WITHHELD, mask_others

OWN = frozenset({"li.na@example.com", "+8613900139000"})


def test_the_subjects_own_identities_stay_in_any_spelling() -> None:
    line = "login Li.Na@Example.COM from 139 0013 9000, query from=li.na%40example.com"
    assert mask_others(line, OWN, "CN") == (line, 0)


def test_other_peoples_emails_and_phones_are_withheld() -> None:
    line = ("li.na@example.com invited zhang.wei@example.com, tel +86 138-0013-8000, "
            "to=wang.fang%40example.org")
    masked, count = mask_others(line, OWN, "CN")
    assert count == 3
    assert masked == (f"li.na@example.com invited {EMAIL_WITHHELD}, tel {PHONE_WITHHELD}, "
                      f"to={EMAIL_WITHHELD}")


def test_numbers_that_are_not_phone_numbers_stay() -> None:
    line = "GET /items?id=1234567890 200 5123 ms uid=42 ts=1732345678901 ip=10.0.0.1"
    assert mask_others(line, OWN, "CN") == (line, 0)


_local = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._", min_size=1, max_size=12)
_domain = st.sampled_from(["example.com", "mail.example.org", "qq.com"])
_filler = st.text(alphabet="abc XYZ:=,;()[]/", max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    # Not a tail of the subject's own address, which stays (and so would "contain" it).
    other=st.tuples(_local, _domain).map(lambda p: f"{p[0].strip('.') or 'x'}@{p[1]}")
    .filter(lambda email: not "li.na@example.com".endswith(email)),
    digits=st.integers(min_value=0, max_value=99_999_999),
    before=_filler, between=_filler, after=_filler,
)
def test_no_other_address_or_mobile_number_survives(
    other: str, digits: int, before: str, between: str, after: str
) -> None:
    """Whatever surrounds them, another person's email and a valid Chinese mobile number
    are gone afterwards, and the subject's own email is still there."""
    phone = f"138{digits:08d}"
    assert phonenumbers.is_valid_number(phonenumbers.parse(phone, "CN"))
    line = f"{before} li.na@example.com {between} {other} {phone} {after}"
    masked, count = mask_others(line, OWN, "CN")
    assert other not in masked and phone not in masked
    assert "li.na@example.com" in masked
    assert count >= 2
