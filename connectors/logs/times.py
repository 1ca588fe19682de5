"""Times in log lines, for retention sweeps: the first ISO 8601 or common-log-format
(`[04/Dec/2026:10:00:00 +0800]`) time of a text line, and a jsonl field's time (ISO 8601,
or epoch seconds / milliseconds). Every reading is in UTC, and conservative: what cannot
be read is None (the line is kept), a date alone is the last instant of its day, a leap
second the last instant of its minute."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as day_time
from decimal import Decimal, InvalidOperation


class Number(str):
    """A JSON number as written: an identity compares it as text, a time reads it exactly."""


_ISO = (
    rb"(?<![0-9])(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})[Tt ]"
    rb"(?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:[.,](?P<f>[0-9]+))?)?"
    # An offset right after the time, or after one space if it has four digits (`+0800`,
    # `-05:00`): `10:00:00 +12 retries` is not a zone.
    rb"(?:(?P<z>[Zz])|(?P<off>[+-][0-9]{2}(?::?[0-9]{2})?)|[ ](?P<off2>[+-][0-9]{2}:?[0-9]{2}))?"
    rb"(?![0-9])"
)
_CLF = (
    rb"\[(?P<cd>[0-9]{1,2})/(?P<cmo>[A-Za-z]{3})/(?P<cy>[0-9]{4}):(?P<ch>[0-9]{2}):"
    rb"(?P<cmi>[0-9]{2}):(?P<cs>[0-9]{2})(?:[ ](?P<coff>[+-][0-9]{4}))?\]"
)
_TEXT_TIME = re.compile(_ISO + rb"|" + _CLF)
_ISO_ONLY = re.compile(_ISO)
_MONTHS = {m: i for i, m in enumerate(
    (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
     b"dec"), start=1)}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS_FROM = Decimal(10) ** 11  # epoch seconds reach this in the year 5138; milliseconds in 1973
_TOO_LARGE = Decimal(10) ** 14  # microseconds and finer: not a format of the policy


def text_time(raw: bytes) -> datetime | None:
    """The first ISO 8601 or common-log-format time of a text line, in UTC."""
    for m in _TEXT_TIME.finditer(raw):
        when = _clf_time(m) if m.group("cy") is not None else _iso_time(m)
        if when is not None:
            return when
    return None


def _iso_time(m: re.Match[bytes]) -> datetime | None:
    fraction = (m.group("f") or b"")[:6].ljust(6, b"0")
    zone = m.group("off") or m.group("off2")
    tz = UTC if m.group("z") or zone is None else _offset(zone)
    if tz is None:
        return None
    return _make(int(m.group("y")), int(m.group("mo")), int(m.group("d")), int(m.group("h")),
                 int(m.group("mi")), int(m.group("s") or 0), int(fraction), tz)


def _clf_time(m: re.Match[bytes]) -> datetime | None:
    month = _MONTHS.get(m.group("cmo").lower())
    zone = m.group("coff")
    tz = UTC if zone is None else _offset(zone)
    if month is None or tz is None:
        return None
    return _make(int(m.group("cy")), month, int(m.group("cd")), int(m.group("ch")),
                 int(m.group("cmi")), int(m.group("cs")), 0, tz)


def _offset(text: bytes) -> timezone | None:
    digits = text[1:].replace(b":", b"")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    if hours > 23 or minutes > 59:
        return None
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if text[:1] == b"-" else delta)


def _make(year: int, month: int, day: int, hour: int, minute: int, second: int,
          micro: int, tz: timezone) -> datetime | None:
    try:
        # A leap second is the last instant of its minute.
        when = datetime(year, month, day, hour, minute, min(second, 59),
                        999999 if second == 60 else micro, tzinfo=tz)
        return when.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def value_time(value: str) -> datetime | None:
    """A jsonl time: epoch seconds or milliseconds (a JSON number), or an ISO 8601 string."""
    if isinstance(value, Number):
        try:
            number = Decimal(value)
        except InvalidOperation:
            return None
        if not number.is_finite() or number <= 0 or number >= _TOO_LARGE:
            return None  # 0 and below are placeholders far more often than 1970
        micros = int(number * (1000 if number >= _MS_FROM else 1_000_000))
        try:
            return EPOCH + timedelta(microseconds=micros)
        except OverflowError:
            return None
    text = value.strip()
    if not text or len(text) > 64:
        return None
    m = _ISO_ONLY.fullmatch(text.encode("ascii", "replace"))
    if m is not None:
        return _iso_time(m)
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        # Only the day is known: the line may be from its last instant.
        return datetime.combine(day, day_time.max, UTC)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    try:
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except OverflowError:
        return None


def utc(cutoff: datetime) -> datetime:
    return cutoff.replace(tzinfo=UTC) if cutoff.tzinfo is None else cutoff.astimezone(UTC)
