"""Other people in a subject's free text: a log line that records the subject inviting a
friend holds the friend's email too. An access package gives the subject their own data,
not someone else's (GDPR art. 15(4), privacy policy 6.6.3 "harm to others"), so free text
going into one has every email address and phone number that is not the subject's own
withheld. Structured records are left alone: a column says whose value it is.

Emails are found by a deliberately wide pattern (withholding one too many is the safe
mistake); phone numbers by `phonenumbers`' matcher, which knows national formats.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import phonenumbers

from dsrflow.identities import IdentityError, normalize_email

EMAIL_WITHHELD = "[email of another person withheld]"
PHONE_WITHHELD = "[phone number of another person withheld]"

# `%40`: the URL-encoded spelling access logs hold in query strings.
_EMAIL = re.compile(r"[\w.+-]+(?:@|%40)[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)


def mask_others(text: str, own: Iterable[str], region: str | None) -> tuple[str, int]:
    """`text` with the emails and phone numbers that are not among `own` (normalized:
    emails casefolded, phones E.164) withheld, and how many were."""
    mine = frozenset(own)
    withheld = 0

    def email(match: re.Match[str]) -> str:
        nonlocal withheld
        try:
            if normalize_email(re.sub("%40", "@", match.group(0), flags=re.I)) in mine:
                return match.group(0)
        except IdentityError:
            pass
        withheld += 1
        return EMAIL_WITHHELD

    text = _EMAIL.sub(email, text)
    pieces, last = [], 0
    for found in phonenumbers.PhoneNumberMatcher(text, region):
        number = phonenumbers.format_number(found.number, phonenumbers.PhoneNumberFormat.E164)
        if number in mine:
            continue
        pieces += [text[last:found.start], PHONE_WITHHELD]
        last = found.end
        withheld += 1
    return "".join(pieces) + text[last:], withheld
