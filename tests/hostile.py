"""A seeded generator of hostile tickets, and the checks every intake path must pass on them.

Each ticket starts as a valid one (any type, regime and identity type, for the Wishe data
map) and most get one to three mutations: wrong types, huge integers, deep nesting, odd
dates, control characters and lone surrogates, unknown fields, traversal values, SQL
metacharacters, Unicode digits, look-alike emails, key-column corrections, oversized or
broken JSON. Some are sent again unchanged (a redelivery).

Every text value the sender chooses carries a unique marker (`Qz` and six letters), so a
check can tell whether a reason repeats any of the input: a reason may name a field, never
a value. (Field-like keys are named by design, `recieved_at: Extra inputs are not
permitted`, so they carry no marker; keys that are not field-like, an email as a key, do.)
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from dsrflow.tickets import WHOLE_TICKET_REASONS

MARKER = re.compile(r"Qz[a-z]{6}")
# A reason's parts: `field.path: what`, the path made of names, indices and `<key>`.
_FIELD_PART = re.compile(
    r"(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+|<key>)(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+|<key>))*: \S"
)
_MORE = re.compile(r" \(\+[0-9]+ more\)$")
FUZZ_ENV = "DSRFLOW_FUZZ_TICKETS"
HUGE = "<a number of more than 4,300 digits>"


@dataclass
class Case:
    """One generated input: what is sent, and whether it is a redelivery of an earlier
    valid-looking ticket."""

    body: bytes | str | dict[str, Any]
    kind: str
    redelivery: bool = False


def names_a_field(reason: str) -> bool:
    """Whether every part of a reason names what it is about: a field path, or the ticket
    as a whole (not JSON, too large, not an object)."""
    if reason.startswith(WHOLE_TICKET_REASONS):
        return True
    parts = _MORE.sub("", reason).split("; ")
    return all(_FIELD_PART.match(part) for part in parts)


def leaked(reason: str) -> list[str]:
    """The markers (input values) a reason repeats."""
    return MARKER.findall(reason)


def _marker(rng: random.Random) -> str:
    return "Qz" + "".join(rng.choice(string.ascii_lowercase) for _ in range(6))


# -- valid material -------------------------------------------------------------------------
TYPES = ["access", "portability", "erasure", "rectification", "consent_withdrawal",
         "account_cancellation", "restriction"]
REGIMES = ["pipl", "gdpr", "ccpa", "uk_gdpr"]
OFFSETS = [UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5)),
           timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=1))]


def _identity(rng: random.Random) -> dict[str, Any]:
    m = _marker(rng)
    kind = rng.choice(["email", "phone", "user_id", "device_id", "third_party", "ip"])
    value = {
        "email": f"{m}.{rng.randint(0, 999)}@example.com",
        "phone": f"+86 138 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
        "user_id": rng.choice([str(rng.randint(1, 10**6)), f"u-{m}"]),
        "device_id": f"{m}-{rng.getrandbits(64):016x}",
        "third_party": f"wechat:{m}{rng.getrandbits(32):x}",
        "ip": f"203.0.113.{rng.randint(1, 254)}",
    }[kind]
    return {"type": kind, "value": value}


def _moment(rng: random.Random, now: datetime) -> datetime:
    back = timedelta(days=rng.randint(2, 900), seconds=rng.randint(0, 86_399))
    return (now - back).astimezone(rng.choice(OFFSETS)).replace(microsecond=0)


def valid_ticket(rng: random.Random, now: datetime) -> dict[str, Any]:
    kind = rng.choice(TYPES)
    received = _moment(rng, now)
    doc: dict[str, Any] = {
        "ticket_id": f"FZ-{_marker(rng)}-{rng.getrandbits(40):x}",
        "type": kind,
        "regime": rng.choice(REGIMES),
        "identities": [_identity(rng) for _ in range(rng.randint(1, 3))],
        "channel": rng.choice(["app", "web", "email", f"kiosk-{_marker(rng)}"]),
        "received_at": received.isoformat(),
    }
    if rng.random() < 0.8:
        verified = received + timedelta(minutes=rng.randint(0, 600))
        doc["verification"] = {"method": rng.choice(["sms_otp", f"m-{_marker(rng)}"]),
                               "verified_at": verified.isoformat()}
    if kind == "consent_withdrawal":
        doc["scope"] = rng.sample(["location", "contacts", "biometric", "media"], 2)
    if kind == "rectification":
        doc["corrections"] = {"userdb.users.unit_name": f"公司 {_marker(rng)}"}
    if rng.random() < 0.3:
        doc["country"] = rng.choice(["CN", "GB", "US", "de"])
    return doc


# -- hostile material -----------------------------------------------------------------------
CONTROLS = ["\x00", "\x07", "\x1b[31m", "\t", "\n", "\r", "\x7f", "\x85", "\x9b", "\ud800",
            "\udfff", "\ud83d"]
TRAVERSAL = ["..", ".", "../../etc", "a/b", "a\\b", "/", "", " ", "..%2f", "x/../y"]
SQL_META = ["' OR '1'='1", "%", "_", ".*", "\\d+", "1; DROP TABLE users; --", "\"", "`", "*"]
UNICODE_DIGITS = ["²", "٣", "１２３", "߁", "৪", "𝟗", "Ⅻ", "--5", "+5", "-"]
LOOKALIKE_EMAILS = ["a@.com", "a@b..com", "a@-b.com", "a@b-.com", "a@@b.com", "a@b",
                    "a@localhost", '"a b"@b.com', "a@[203.0.113.7]", "ａ@example.com",
                    "a@exаmple.com", "a.@b.com", ".a@b.com", "a@b.c", "a@b.test"]
ODD_TIMES: list[Any] = [
    "0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-01:00",
    "9999-12-31T23:59:59Z", "0000-01-01T00:00:00Z", "1999-12-31T23:59:59Z",
    "1970-01-01T00:00:00Z", "2025-02-30T10:00:00Z", "2025-03-01T24:00:00Z",
    "2016-12-31T23:59:60Z", "2025-03-01T10:00:00+24:00", "2025-03-01T10:00:00",
    "2025-03-01 10:00:00+08:00", "2025-03-01T10:00:00+0800", "2025-W09-6T10:00:00Z",
    "20250301T100000Z", "２０２５-03-01T10:00:00Z", "2025-03-01T10:00:00.999999999999Z",
    "yesterday", "", 1741000000, 1741000000.5, "1741000000", -62135596800, 10**20, True,
    None, [], {}, "2999-01-01T00:00:00+00:00",
]
KEY_TARGETS = ["userdb.users.id", "userdb.users.email", "userdb.users.restricted_at",
               "userdb.third_party_logins.provider", "userdb.uploads.user_id",
               "userdb.follows.follower_id", "userdb.users.nope", "crm.users.x", "a.b",
               "userdb.users.unit_name.x"]


def json_junk(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value (wrong-typed wherever it lands)."""
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice([None, True, False, 0, -1, 2**63, 1.5, -0.0, 1e308, "",
                           _marker(rng), "x" * rng.randint(1, 300), rng.choice(CONTROLS)])
    if roll < 0.75:
        return [json_junk(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {_key(rng): json_junk(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def _key(rng: random.Random) -> str:
    """A key a sender might write: a field-like name (named in reasons, so no marker), or
    personal data as a key, which a reason must not repeat."""
    return rng.choice(["type", "value", "x", "note", "recieved_at", f"{_marker(rng)}@example.com",
                       f"+86 {_marker(rng)}", f"{_marker(rng)} {_marker(rng)}"])


def _nested(depth: int, leaf: Any) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def _hostile_value(rng: random.Random) -> str:
    m = _marker(rng)
    pick = rng.choice([TRAVERSAL, SQL_META, UNICODE_DIGITS, CONTROLS])
    bad = rng.choice(pick)
    return rng.choice([bad, m + bad, bad + m, m + bad + m])


def _mutate_identity(rng: random.Random, doc: dict[str, Any]) -> None:
    identities = doc.get("identities")
    if not isinstance(identities, list) or not identities:
        return
    i = rng.randrange(len(identities))
    if not isinstance(identities[i], dict):
        identities[i] = _identity(rng)
    identity = identities[i]
    roll = rng.random()
    if roll < 0.4:
        identity["value"] = _hostile_value(rng)
        identity["type"] = rng.choice(["user_id", "device_id", "third_party", "email", "phone",
                                       "ip"])
    elif roll < 0.6:
        identity["type"], identity["value"] = "email", rng.choice(LOOKALIKE_EMAILS)
    elif roll < 0.7:
        identity["value"] = json_junk(rng)
    elif roll < 0.8:
        identity[rng.choice(["region", "primary", _key(rng)])] = json_junk(rng)
    elif roll < 0.9:
        identity["type"] = rng.choice(["fax", "EMAIL", "", None, 3, ["email"]])
    else:
        identity["value"] = str(rng.randint(2**63, 2**70))  # past a 64-bit key
        identity["type"] = "user_id"


def _mutations() -> list[Callable[[random.Random, dict[str, Any]], None]]:
    def wrong_type(rng: random.Random, doc: dict[str, Any]) -> None:
        doc[rng.choice(list(doc) or ["ticket_id"])] = json_junk(rng)

    def missing(rng: random.Random, doc: dict[str, Any]) -> None:
        if doc:
            doc.pop(rng.choice(list(doc)))

    def odd_time(rng: random.Random, doc: dict[str, Any]) -> None:
        value = rng.choice(ODD_TIMES)
        if rng.random() < 0.5 or not isinstance(doc.get("verification"), dict):
            doc["received_at"] = value
        else:
            doc["verification"]["verified_at"] = value

    def control(rng: random.Random, doc: dict[str, Any]) -> None:
        c = rng.choice(CONTROLS)
        where = rng.choice(["channel", "ticket_id", "method", "correction", "identity", "key",
                            "country"])
        if where == "method" and isinstance(doc.get("verification"), dict):
            doc["verification"]["method"] = f"sms{c}{_marker(rng)}"
        elif where == "correction":
            doc["type"] = "rectification"
            doc["corrections"] = {"userdb.users.unit_name": f"{_marker(rng)}{c}"}
        elif where == "identity" and isinstance(doc.get("identities"), list) and doc["identities"]:
            doc["identities"][0] = {"type": "device_id", "value": f"{_marker(rng)}{c}"}
        elif where == "key":
            doc[f"note{c}"] = _marker(rng)
        else:
            doc[where if where != "method" and where != "identity" else "channel"] = (
                f"{c}{_marker(rng)}")

    def unknown_field(rng: random.Random, doc: dict[str, Any]) -> None:
        target = rng.choice(["top", "verification", "nested"])
        if target == "verification" and isinstance(doc.get("verification"), dict):
            doc["verification"][rng.choice(["by", "ip", "_phone_region"])] = _marker(rng)
        elif target == "nested":
            doc["extra"] = {"deep": [{"x": _marker(rng)}]}
        else:
            doc[rng.choice(["Type", "ticketId", "_phone_region", "priority"])] = _marker(rng)

    def huge_number(rng: random.Random, doc: dict[str, Any]) -> None:
        # Written into the JSON text by `_serialize`: json.dumps cannot write such a number.
        doc[rng.choice(["ticket_id", "received_at", "channel", "n"])] = HUGE

    def deep(rng: random.Random, doc: dict[str, Any]) -> None:
        # (json.dumps stops near 1,000 levels; deeper documents are written as text below.)
        doc[rng.choice(["identities", "scope", "corrections", "x"])] = _nested(
            rng.randint(100, 900), _marker(rng))

    def corrections(rng: random.Random, doc: dict[str, Any]) -> None:
        doc["type"] = "rectification"
        doc["corrections"] = {rng.choice(KEY_TARGETS): _marker(rng)}

    def scope(rng: random.Random, doc: dict[str, Any]) -> None:
        doc["type"] = "consent_withdrawal"
        doc["scope"] = rng.choice([[], ["locaton"], ["Location"], ["a" * 65], [_marker(rng)],
                                   ["location"] * 51, "location"])

    def identities(rng: random.Random, doc: dict[str, Any]) -> None:
        doc["identities"] = rng.choice([[], [_identity(rng) for _ in range(21)], {}, "x"])

    def identity(rng: random.Random, doc: dict[str, Any]) -> None:
        _mutate_identity(rng, doc)

    return [wrong_type, missing, odd_time, control, unknown_field, huge_number, deep,
            corrections, scope, identities, identity, identity, identity]


MUTATIONS = _mutations()


def _serialize(rng: random.Random, doc: Any) -> str:
    """JSON text, escaped or not (a lone surrogate can only travel escaped), with HUGE
    written as an integer of 4,301 to 6,000 digits."""
    text = json.dumps(doc)
    if rng.random() < 0.5:
        try:
            unescaped = json.dumps(doc, ensure_ascii=False)
            unescaped.encode("utf-8")
            text = unescaped
        except UnicodeEncodeError:
            pass
    return text.replace(json.dumps(HUGE), "9" * rng.randint(4301, 6000))


def _broken_text(rng: random.Random, doc: dict[str, Any], sqs_safe: bool) -> bytes | str:
    text = json.dumps(doc)
    roll = rng.randrange(10)
    if roll == 0:
        return text[: rng.randrange(1, len(text))]  # truncated
    if roll == 1:
        return text + " trailing"
    if roll == 2:
        return text.replace('"', "'")
    if roll == 3:
        return "[" * 30_000 + "]" * 30_000  # within the size limit, past the parser's depth
    if roll == 4:
        return json.dumps({**doc, "pad": "x" * rng.randint(65_536, 200_000)})  # too large
    if roll == 5:
        return rng.choice(["null", "[]", "42", '"a string"', "NaN", "{}", "true", " "])
    if roll == 6:
        return text.replace("}", ', "n": NaN}', 1) if rng.random() < 0.5 else \
            text.replace("}", ', "n": -Infinity}', 1)
    if roll == 7:
        return '{"ticket_id": "FZ-1", "n": ' + "9" * rng.randint(4301, 10_000) + "}"
    if roll == 8 and not sqs_safe:
        return b"\xff\xfe" + text.encode("utf-16-le")[: rng.randint(0, 50)]
    if roll == 9 and not sqs_safe:
        return text.encode() + b"\x00\xc3\x28"  # a NUL and invalid UTF-8
    return "{" + text  # unbalanced


def cases(seed: int, count: int, *, sqs_safe: bool = False,
          allow_dicts: bool = False) -> Iterator[Case]:
    """`count` inputs, the same for the same seed. `sqs_safe`: only bodies an SQS message
    can carry (UTF-8 text without NUL or lone surrogates, not empty); `allow_dicts`: some
    are handed over as parsed dicts, as an in-process caller may."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    sent: list[bytes | str] = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.05 and sent:
            yield Case(rng.choice(sent), "redelivery", redelivery=True)
            continue
        doc = valid_ticket(rng, now)
        if roll < 0.15:
            kind = "valid"
        elif roll < 0.25:
            yield Case(_broken_text(rng, doc, sqs_safe), "broken JSON")
            continue
        else:
            kind = "mutated"
            for _ in range(rng.randint(1, 3)):
                rng.choice(MUTATIONS)(rng, doc)
        if allow_dicts and rng.random() < 0.2 and HUGE not in json.dumps(doc):
            yield Case(doc, kind)
            continue
        body = _serialize(rng, doc)
        if kind == "valid":
            sent.append(body)
        yield Case(body, kind)


@dataclass
class Tally:
    """What one path made of the inputs."""

    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    crashes: list[str] = field(default_factory=list)  # exception types, or "internal error"
    unnamed: list[str] = field(default_factory=list)  # reasons that name no field
    leaks: list[str] = field(default_factory=list)  # reasons that repeat an input value

    def reason(self, reason: str | None) -> None:
        """Check one rejection's reason."""
        self.rejected += 1
        if not reason:
            self.unnamed.append("(none)")
            return
        if reason.startswith("internal error"):
            self.crashes.append(reason)
        elif not names_a_field(reason):
            self.unnamed.append(reason)
        self.leaks.extend(leaked(reason))

    def summary(self) -> str:
        return (f"{self.sent} sent: {self.accepted} accepted, {self.duplicates} already on "
                f"record, {self.rejected} rejected; {len(self.crashes)} crashes, "
                f"{len(self.unnamed)} reasons without a field, {len(self.leaks)} values in "
                "reasons")
