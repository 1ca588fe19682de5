"""Legal holds (privacy policy 6.6.3, 6.5.2): one subject's data kept, for a reason the
policy names, while the rest of an erasure goes ahead.

A hold names a subject through a request (its keyed tokens: every account-grade identity
the request's ticket gave or its rows yielded, so any later request of the same subject
meets it), optionally the categories and systems it covers (none: all), the policy's
exemption, a citation, an end date and who approved it. What it covers is retained,
counted and reported with its code and end date; releasing it, or its end date passing,
re-queues the erasure it held back, in the systems it held only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum

from dsrflow.model import Regime

POLICY_HOLDS = "privacy policy 6.6.3"


class HoldReason(StrEnum):
    """The exemptions of the privacy policy, 6.6.3 (1)-(8)."""

    LEGAL_OBLIGATION = "legal_obligation"
    NATIONAL_SECURITY = "national_security"
    PUBLIC_SAFETY = "public_safety"
    CRIMINAL_INVESTIGATION = "criminal_investigation"
    ABUSE_OF_RIGHTS = "abuse_of_rights"
    PROTECTING_LIFE_OR_PROPERTY = "protecting_life_or_property"
    HARM_TO_OTHERS = "harm_to_others"
    TRADE_SECRETS = "trade_secrets"


# What a subject whose data is held is told they can do about it, where the regime requires
# it be said. CCPA asks for the basis of a denial, not for a way to appeal it.
APPEALS: dict[Regime, str] = {
    Regime.PIPL: "You may complain to the departments performing personal information "
    "protection duties, or bring a lawsuit before a people's court (PIPL art. 50, 65).",
    Regime.GDPR: "You may lodge a complaint with a supervisory authority and seek a judicial "
    "remedy (GDPR art. 12(4), 77, 79).",
    Regime.UK_GDPR: "You may complain to the Information Commissioner's Office and seek a "
    "judicial remedy (UK GDPR art. 12(4), 77, 79).",
}


@dataclass(frozen=True)
class LegalHold:
    id: str
    request_id: str  # the request that names the subject
    reason: HoldReason
    citation: str
    until: datetime  # the end of its last day (UTC)
    approved_by: str
    categories: frozenset[str] | None  # None: every category
    systems: frozenset[str] | None  # None: every system
    created_at: datetime
    released_at: datetime | None = None
    released_by: str | None = None
    release_reason: str | None = None

    def active(self, at: datetime) -> bool:
        return self.released_at is None and at <= self.until

    def covers_system(self, system: str) -> bool:
        return self.systems is None or system in self.systems

    @property
    def note(self) -> str:
        """The retain reason a held part carries (the code, the end date, the hold)."""
        return f"legal hold: {self.reason.value} until {self.until:%Y-%m-%d} (hold {self.id[:8]})"


@dataclass(frozen=True)
class Held:
    """What the holds on one request keep in one system: the categories (None: all of
    the system), and the holds that keep them."""

    categories: frozenset[str] | None
    holds: tuple[LegalHold, ...]

    @property
    def notes(self) -> list[str]:
        return sorted(h.note for h in self.holds)


def held_in(holds: Iterable[LegalHold], system: str, categories: frozenset[str]) -> Held | None:
    """What `holds` keep of a system whose data is of `categories`: None when they keep
    nothing there."""
    mine = tuple(h for h in holds if h.covers_system(system)
                 and (h.categories is None or h.categories & categories))
    if not mine:
        return None
    if any(h.categories is None for h in mine):
        return Held(None, mine)
    kept = frozenset().union(*(h.categories or frozenset() for h in mine)) & categories
    return Held(None if kept == categories else kept, mine)


def end_of_day(day: date) -> datetime:
    """The last moment of `day`, in UTC: a hold until 30 June holds all of 30 June."""
    from datetime import UTC, time

    return datetime.combine(day, time(23, 59, 59, 999999), tzinfo=UTC)
