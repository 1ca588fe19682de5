"""Draft a data map from a live database: `dsrflow datamap draft`.

The draft is a starting point for a person, not a verdict. It reflects the schema (tables,
primary keys, foreign keys, unique constraints, types and nullability) and guesses, from
names and types alone, each column's category and what erasure should do to it. It always
validates against `dsrflow.datamap`, so the reviewer edits a working map rather than
fixing a broken one; what it could not decide is listed as warnings at the top.

The guesses:

- One *subject table* (named like `users`, `accounts`, `customers`, `members`, else the
  table most foreign keys point at) is anonymized on erasure: its primary key becomes the
  `user_id` identity and its personal columns are nulled, redacted, pseudonymized or
  generalized, in whichever way the column's type and constraints allow.
- Every other table's rows are deleted, and its category is guessed from its name.
- Foreign keys become references (child -> parent), except those that do not mean
  ownership: `ON DELETE SET NULL` (the child outlives its parent) and the subject table's
  own (its rows belong to their identity, not to whatever they point at). A table no
  reference reaches gets one declared from a `user_id`-like column even where the database
  has no foreign key; failing that, its email and phone columns become identities; failing
  that, it is left out with a warning, as is every table without a primary key.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy import types as sqltypes
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from dsrflow.crypto import PSEUDONYM_HEX, PSEUDONYM_PREFIX
from dsrflow.datamap import NON_PERSONAL, REDACTION_MARKER, Action, Generalization
from dsrflow.identities import IdentityType

__all__ = ["Draft", "DraftError", "draft", "draft_datamap", "to_yaml"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_PSEUDONYM_LENGTH = len(PSEUDONYM_PREFIX) + PSEUDONYM_HEX
_REDACTION_LENGTH = len(REDACTION_MARKER)
_SECRET_QUERY_KEYS = re.compile(r"pass|pwd|secret|token|key", re.IGNORECASE)
_DEFAULT_CATEGORY = "account"  # a table tied to the account that no rule recognises


class DraftError(ValueError):
    """The database cannot be drafted from (bad URL, unreachable, nothing mappable)."""


@dataclass(frozen=True)
class Draft:
    datamap: dict[str, Any]
    warnings: list[str]
    source: str  # the database URL, without any password
    drafted_on: date


# -- reflection -------------------------------------------------------------------------


class Kind(Enum):
    TEXT = "text"
    DATE = "date"  # dates and timestamps
    NUMBER = "number"
    BOOLEAN = "boolean"
    BINARY = "binary"
    OTHER = "other"


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    kind: Kind
    nullable: bool
    unique: bool  # part of any unique constraint or index: a repeated marker would collide
    length: int | None


@dataclass(frozen=True)
class ForeignKeyInfo:
    columns: tuple[str, ...]
    table: str
    to_columns: tuple[str, ...]
    schema: str | None
    ondelete: str | None


@dataclass(frozen=True)
class TableInfo:
    name: str
    columns: dict[str, ColumnInfo]
    primary_key: tuple[str, ...]
    foreign_keys: tuple[ForeignKeyInfo, ...]

    @property
    def fk_columns(self) -> set[str]:
        return {c for fk in self.foreign_keys for c in fk.columns}


def reflect(engine: Engine) -> dict[str, TableInfo]:
    """The default schema's tables, one catalogue query per kind of fact, not per table."""
    insp = inspect(engine)
    sqlite = engine.dialect.name == "sqlite"
    columns = insp.get_multi_columns()
    pks = insp.get_multi_pk_constraint()
    fks = insp.get_multi_foreign_keys()
    uniques = insp.get_multi_unique_constraints()
    # SQLite reports inline UNIQUE only as automatic indexes.
    indexes = (
        insp.get_multi_indexes(include_auto_indexes=True) if sqlite else insp.get_multi_indexes()
    )
    sqlite_ondelete = _sqlite_ondelete(engine, [k[1] for k in columns]) if sqlite else {}
    tables: dict[str, TableInfo] = {}
    for key in sorted(columns, key=lambda k: k[1]):
        name = key[1]
        unique_cols = {c for u in uniques.get(key, []) for c in u["column_names"]}
        unique_cols |= {
            c for ix in indexes.get(key, []) if ix.get("unique") for c in ix["column_names"] if c
        }
        pk_constraint = pks.get(key)
        pk = tuple(pk_constraint["constrained_columns"] or ()) if pk_constraint else ()
        if len(pk) == 1:
            unique_cols |= set(pk)
        ondelete = sqlite_ondelete.get(name, {})
        tables[name] = TableInfo(
            name=name,
            columns={
                c["name"]: ColumnInfo(
                    name=c["name"],
                    kind=_kind(c["type"]),
                    nullable=bool(c.get("nullable", True)) and c["name"] not in pk,
                    unique=c["name"] in unique_cols,
                    length=getattr(c["type"], "length", None),
                )
                for c in columns[key]
            },
            primary_key=pk,
            foreign_keys=tuple(
                ForeignKeyInfo(
                    columns=tuple(fk["constrained_columns"]),
                    table=fk["referred_table"],
                    to_columns=tuple(fk["referred_columns"]),
                    schema=fk.get("referred_schema"),
                    ondelete=ondelete.get((tuple(fk["constrained_columns"]), fk["referred_table"]))
                    or (fk.get("options") or {}).get("ondelete"),
                )
                for fk in fks.get(key, [])
                if fk.get("constrained_columns")
            ),
        )
    return tables


_OnDelete = dict[tuple[tuple[str, ...], str], str]  # (columns, parent table) -> rule


def _sqlite_ondelete(engine: Engine, tables: Sequence[str]) -> dict[str, _OnDelete]:
    """SQLAlchemy reads ON DELETE from SQLite's DDL only for table-level FOREIGN KEY
    clauses; the pragma knows it for inline REFERENCES too."""
    found: dict[str, _OnDelete] = {}
    with engine.connect() as conn:
        for table in tables:
            quoted = table.replace('"', '""')
            rows = conn.execute(text(f'PRAGMA foreign_key_list("{quoted}")')).mappings().all()
            grouped: dict[int, list[Any]] = {}
            for row in rows:
                grouped.setdefault(int(row["id"]), []).append(row)
            found[table] = {
                (tuple(r["from"] for r in sorted(g, key=lambda r: r["seq"])), g[0]["table"]):
                    str(g[0]["on_delete"])
                for g in grouped.values()
            }
    return found


def _kind(type_: Any) -> Kind:
    # Enum subclasses String, but a redaction marker is not one of its values.
    if isinstance(type_, sqltypes.Enum):
        return Kind.OTHER
    for types, kind in _KINDS:
        if isinstance(type_, types):
            return kind
    return Kind.OTHER


_KINDS: tuple[tuple[type | tuple[type, ...], Kind], ...] = (
    (sqltypes.Boolean, Kind.BOOLEAN),
    ((sqltypes.DateTime, sqltypes.Date), Kind.DATE),
    ((sqltypes.Integer, sqltypes.Numeric), Kind.NUMBER),
    (sqltypes.String, Kind.TEXT),
    ((sqltypes.LargeBinary, sqltypes.BINARY, sqltypes.VARBINARY), Kind.BINARY),
)


# -- heuristics -------------------------------------------------------------------------

ANY_KIND = frozenset(Kind)


@dataclass(frozen=True)
class Rule:
    """A column whose lower-cased name fully matches `pattern` (and whose type is one of
    `kinds`) is `category`, and erasure on an anonymized table does `action` to it."""

    pattern: str
    category: str
    action: Action
    generalize: Generalization | None = None
    identity: IdentityType | None = None
    # email and phone columns outside the subject table are often someone else's (a
    # recipient, an invitee): they identify rows only where nothing else does.
    identity_anywhere: bool = False
    kinds: frozenset[Kind] = ANY_KIND


_TEXT = frozenset({Kind.TEXT})

COLUMN_RULES: tuple[Rule, ...] = (
    Rule(r"e?mail|e?mail_address|.+_e?mail", "contact", Action.PSEUDONYMIZE,
         identity=IdentityType.EMAIL, kinds=_TEXT),
    Rule(r"phone|mobile|tel|telephone|cellphone|(phone|mobile)_(number|no)|.+_(phone|mobile|tel)",
         "contact", Action.PSEUDONYMIZE, identity=IdentityType.PHONE,
         kinds=frozenset({Kind.TEXT, Kind.NUMBER})),
    Rule(r"(.+_)?device_(id|uuid)", "device", Action.PSEUDONYMIZE,
         identity=IdentityType.DEVICE_ID, identity_anywhere=True, kinds=_TEXT),
    Rule(r"open_?id|union_?id|provider_user_id|provider_uid", "third_party_login",
         Action.PSEUDONYMIZE, identity=IdentityType.THIRD_PARTY, identity_anywhere=True,
         kinds=_TEXT),
    Rule(r"password.*|passwd|pwd|.+_hash|(.+_)?token|(.+_)?secret|salt|(t?otp|mfa)_.+",
         "security", Action.NULL),
    Rule(r"birth.*|.+_birth|dob|date_of_birth", "profile", Action.GENERALIZE,
         Generalization.YEAR, kinds=frozenset({Kind.DATE, Kind.TEXT})),
    Rule(r"age", "profile", Action.NULL),
    Rule(r"(.+_)?(lat|lng|lon|latitude|longitude)", "location", Action.GENERALIZE,
         Generalization.GRID_1, kinds=frozenset({Kind.NUMBER})),
    Rule(r"(.+_)?ip(_addr|_address)?|remote_addr", "device", Action.GENERALIZE,
         Generalization.IPV4_24, kinds=frozenset({Kind.TEXT, Kind.OTHER})),
    Rule(r"(.+_)?mac(_address)?|user_agent|imei|idfa|android_id", "device", Action.NULL),
    Rule(r"gender|sex", "profile", Action.NULL),
    Rule(r"user_?name|login|handle|screen_name", "account", Action.PSEUDONYMIZE),
    Rule(r"name|surname|nick_?name|(first|last|full|real|given|family|middle|display|legal)_?name",
         "profile", Action.REDACT),
    Rule(r"id_card.*|id_(number|no)|national_id|passport.*|ssn|tax_id", "identifier",
         Action.REDACT),
    Rule(r"(face|finger(print)?|voice|iris|biometric)(_.+)?", "biometric", Action.NULL),
    Rule(r"(avatar|photo|picture|image)(_.+)?|.+_(photo|avatar|image|picture)(_url)?", "media",
         Action.NULL),
    Rule(r"(.+_)?address(_line)?(_?\d)?|street.*|post_?code|postal_code|zip(_?code)?", "contact",
         Action.REDACT),
    Rule(r"city|province|region|district|country", "profile", Action.NULL),
    Rule(r"unit_name|company(_name)?|employer|organi[sz]ation|job_title|occupation|school",
         "profile", Action.REDACT),
    Rule(r"bio|about(_me)?|signature|intro(duction)?|description|notes?|remarks?|comment|body"
         r"|content|message", "content", Action.REDACT),
    Rule(r"(card|iban|bank|account)_?(number|no)|iban|bank_account", "transaction",
         Action.REDACT),
    Rule(r"last_.+_(at|on|time)|last_(seen|active|login|used)", "behaviour", Action.NULL),
    # Bookkeeping: nothing about the person once the row is anonymized, and needed to run
    # the app (and, for restricted_at, to honour a restriction).
    Rule(r"(created|updated|modified|deleted|cancell?ed|restricted|inserted)_(at|on|time|date)"
         r"|created|updated|version|status|state|role|type|kind|(is|has)_.+|locale|language"
         r"|lang|timezone|tz|currency|(.+_)?provider", NON_PERSONAL, Action.KEEP),
)

_PROVIDER_COLUMN = re.compile(r"(.+_)?provider(_name)?|platform|idp")
_RESTRICTION_COLUMN = re.compile(r"(processing_)?restrict(ed|ion)_(at|since|on)")
_SUBJECT_TABLE = re.compile(r"(?:(.+)_)?(users?|accounts?|customers?|members?)")
_SUBJECT_PRIORITY = ("user", "account", "customer", "member")


@dataclass(frozen=True)
class TableRule:
    """A table whose name has a word (between underscores, optionally plural) matching
    `words` holds `category`; `note` is worth a warning when its rows are deleted."""

    words: str
    category: str
    note: str | None = None

    def matches(self, table: str) -> bool:
        return re.search(rf"(?:^|_)(?:{self.words})(?:s|es)?(?:$|_)", table.lower()) is not None


TABLE_RULES: tuple[TableRule, ...] = (
    TableRule(r"face|biometric|fingerprint|voiceprint", "biometric"),
    TableRule(r"location|geo\w*|gps|checkin|check_in|trajector(y|ie)|track|position", "location"),
    TableRule(r"contacts|address_?book|phone_?book|friend", "contacts"),
    TableRule(r"third_party\w*|oauth\w*|social_login|sns|identit(y|ie)", "third_party_login"),
    TableRule(r"device|session|push_token", "device"),
    TableRule(r"upload|photo|video|image|media|attachment|avatar|file", "media"),
    TableRule(r"comment|post|review|message|chat|repl(y|ie)|feedback", "content"),
    TableRule(r"order|payment|invoice|transaction|refund|purchase|billing", "transaction",
              "transaction records are often under a legal retention duty (tax, accounting): "
              "consider retaining or pseudonymizing them instead of deleting rows"),
    TableRule(r"cart|basket|wishlist|subscription|wallet", "transaction"),
    TableRule(r"histor(y|ie)|log|view|visit|click|event|activit(y|ie)|search|follow|like"
              r"|favou?rite", "behaviour"),
    TableRule(r"address", "contact"),
    TableRule(r"profile|preference|setting", "profile"),
    TableRule(r"password|credential|token|mfa|otp", "security"),
)


def match_column(col: ColumnInfo) -> Rule | None:
    name = col.name.lower()
    for rule in COLUMN_RULES:
        if col.kind in rule.kinds and re.fullmatch(rule.pattern, name):
            return rule
    return None


def table_category(table: TableInfo) -> str:
    """From the table's name; else the commonest category among its columns."""
    for rule in TABLE_RULES:
        if rule.matches(table.name):
            return rule.category
    keys = set(table.primary_key) | table.fk_columns
    guessed = Counter(
        r.category
        for c in table.columns.values()
        if c.name not in keys and (r := match_column(c)) and r.category != NON_PERSONAL
    )
    return guessed.most_common(1)[0][0] if guessed else _DEFAULT_CATEGORY


def _table_note(name: str) -> str | None:
    return next((r.note for r in TABLE_RULES if r.matches(name)), None)


# Whether an erasing action can be written into a column without breaking its type or
# constraints; the first that fits, in the order of `_FALLBACKS`, is drafted.
_Choice = tuple[Action, Generalization | None]

_FALLBACKS: dict[Action, tuple[Action, ...]] = {
    Action.NULL: (Action.NULL, Action.REDACT, Action.PSEUDONYMIZE),
    Action.REDACT: (Action.REDACT, Action.PSEUDONYMIZE, Action.NULL),
    Action.PSEUDONYMIZE: (Action.PSEUDONYMIZE, Action.REDACT, Action.NULL),
    Action.GENERALIZE: (Action.GENERALIZE, Action.NULL, Action.REDACT, Action.PSEUDONYMIZE),
}

_GENERALIZABLE: dict[Generalization, tuple[frozenset[Kind], int]] = {
    Generalization.YEAR: (frozenset({Kind.DATE, Kind.TEXT}), 10),
    Generalization.MONTH: (frozenset({Kind.DATE, Kind.TEXT}), 10),
    Generalization.GRID_1: (frozenset({Kind.NUMBER}), 0),
    Generalization.GRID_2: (frozenset({Kind.NUMBER}), 0),
    Generalization.IPV4_24: (frozenset({Kind.TEXT, Kind.OTHER}), 15),
}


def _fits(col: ColumnInfo, action: Action, generalize: Generalization | None) -> bool:
    def wide(n: int) -> bool:
        return col.length is None or col.length >= n

    match action:
        case Action.NULL:
            return col.nullable
        case Action.REDACT:
            return col.kind is Kind.TEXT and not col.unique and wide(_REDACTION_LENGTH)
        case Action.PSEUDONYMIZE:
            return col.kind is Kind.TEXT and wide(_PSEUDONYM_LENGTH)
        case Action.GENERALIZE:
            assert generalize is not None
            kinds, width = _GENERALIZABLE[generalize]
            fits_width = col.kind is not Kind.TEXT or wide(width)
            return col.kind in kinds and not col.unique and fits_width
    return False


def _choose(col: ColumnInfo, chain: Iterable[_Choice]) -> _Choice | None:
    return next(((a, g) for a, g in chain if _fits(col, a, g)), None)


# -- drafting ---------------------------------------------------------------------------


@dataclass
class _Ref:
    columns: list[str]
    table: str
    to_columns: list[str] | None = None


@dataclass
class _Plan:
    info: TableInfo
    anonymize: bool = False
    identities: list[dict[str, str]] = field(default_factory=list)
    references: list[_Ref] = field(default_factory=list)

    def add_identity(self, kind: IdentityType, column: str, provider: str | None = None) -> None:
        entry = {"type": kind.value, "column": column}
        if provider is not None:
            entry["provider_column"] = provider
        if entry not in self.identities:
            self.identities.append(entry)


def draft(
    url: str, system: str = "userdb", url_env: str | None = None, *, today: date | None = None
) -> Draft:
    """Reflect the database at `url` and draft a data map for it as system `system`."""
    if not _IDENTIFIER.fullmatch(system):
        raise DraftError(f"system name {system!r} is not an identifier")
    if url_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", url_env):
        raise DraftError(f"url_env {url_env!r} is not an environment variable name")
    parsed = _parse_url(url)
    source = _without_secrets(parsed)
    _refuse_missing_sqlite_file(parsed, source)
    try:
        engine = create_engine(parsed)
    except (ArgumentError, ImportError) as exc:
        raise DraftError(f"cannot open {source}: {exc}") from None
    try:
        tables = reflect(engine)
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        raise DraftError(f"cannot read the schema of {source}: {reason}") from None
    finally:
        engine.dispose()

    warnings: list[str] = []
    mapped = draft_tables(tables, warnings)
    if not mapped:
        detail = "".join(f"\n  - {w}" for w in warnings)
        raise DraftError(f"nothing in {source} could be mapped{detail}")
    if url_env is None and source != _without_secrets(parsed, strip=False):
        url_env = f"{system.upper()}_URL"
    location = {"url_env": url_env} if url_env is not None else {"url": url}
    drafted_on = today or datetime.now(UTC).date()
    datamap: dict[str, Any] = {
        "version": f"draft-{drafted_on.isoformat()}",
        "policy_version": "unknown",
        "systems": {system: {"kind": "sql", **location, "tables": mapped}},
    }
    return Draft(datamap=datamap, warnings=warnings, source=source, drafted_on=drafted_on)


def draft_datamap(url: str, system: str = "userdb", url_env: str | None = None) -> dict[str, Any]:
    return draft(url, system, url_env).datamap


def draft_tables(tables: Mapping[str, TableInfo], warnings: list[str]) -> dict[str, Any]:
    """The `tables:` section of a SQL system, from reflected tables. Pure: no database."""
    usable = _usable(tables, warnings)
    subject = pick_subject(usable, warnings)
    plans = {name: _Plan(info) for name, info in usable.items()}
    for plan in plans.values():
        _plan_references(plan, usable, subject, warnings)
        _plan_identities(plan, strong_only=plan.info.name != subject)
    if subject is not None:
        _plan_subject(plans[subject], warnings)
    _reach_every_table(plans, subject, warnings)

    for plan in plans.values():
        _warn_shared_rows(plan, warnings)
        note = None if plan.anonymize else _table_note(plan.info.name)
        if note:
            warnings.append(f"tables.{plan.info.name}: {note}")
    order = _by_depth(plans, subject)
    return {name: _render_table(plans[name], warnings) for name in order}


def _usable(tables: Mapping[str, TableInfo], warnings: list[str]) -> dict[str, TableInfo]:
    """Tables the data map can describe: identifier names and a primary key. Columns with
    names the data map cannot hold are dropped, unless a key needs them."""
    usable: dict[str, TableInfo] = {}
    for name, info in tables.items():
        if not _IDENTIFIER.fullmatch(name):
            warnings.append(f"table {name!r}: its name is not an identifier the data map "
                            "accepts; left out, map it by hand if it holds personal data")
            continue
        if not info.primary_key:
            warnings.append(f"tables.{name}: no primary key, left out: erasure addresses rows "
                            "by primary key; add one, or map the table by hand")
            continue
        bad = [c for c in info.columns if not _IDENTIFIER.fullmatch(c)]
        needed = [c for c in bad if c in info.primary_key or c in info.fk_columns]
        if needed:
            warnings.append(f"tables.{name}: key column {needed[0]!r} is not an identifier the "
                            "data map accepts; left out")
            continue
        for c in bad:
            warnings.append(f"tables.{name}: column {c!r} is not an identifier the data map "
                            "accepts; left out of the map, so erasure will not touch it")
        usable[name] = TableInfo(
            name=name,
            columns={c: col for c, col in info.columns.items() if c not in bad},
            primary_key=info.primary_key,
            foreign_keys=info.foreign_keys,
        )
    return usable


def pick_subject(tables: Mapping[str, TableInfo], warnings: list[str]) -> str | None:
    """The table whose rows are people: by name, else the one most foreign keys point at."""
    referenced = Counter(
        fk.table for t in tables.values() for fk in t.foreign_keys
        if fk.table != t.name and fk.schema is None
    )

    def score(name: str) -> tuple[int, int, int]:
        m = _SUBJECT_TABLE.fullmatch(name.lower())
        assert m is not None
        stem = m.group(2).rstrip("s")
        return referenced[name], m.group(1) is None, -_SUBJECT_PRIORITY.index(stem)

    named = [n for n in tables if _SUBJECT_TABLE.fullmatch(n.lower())]
    if named:
        return max(named, key=score)
    if referenced:
        name, count = max(
            ((n, c) for n, c in referenced.items() if n in tables), key=lambda x: x[1],
            default=(None, 0),
        )
        if name is not None:
            warnings.append(f"tables.{name}: taken as the table of data subjects because "
                            f"{count} foreign key(s) point at it; check that its rows are people")
            return name
    warnings.append("no table looks like the table of data subjects (users, accounts, "
                    "customers, members): identities come from email and phone columns only")
    return None


def _plan_references(
    plan: _Plan, tables: Mapping[str, TableInfo], subject: str | None, warnings: list[str]
) -> None:
    info = plan.info
    position = {c: i for i, c in enumerate(info.columns)}
    for fk in sorted(info.foreign_keys, key=lambda fk: position.get(fk.columns[0], 0)):
        target = tables.get(fk.table)
        arrow = f"{', '.join(fk.columns)} -> {fk.table}"
        if fk.schema is not None or target is None:
            continue  # another schema, or a table left out: reported on its own
        if not set(fk.to_columns) <= set(target.columns):
            continue
        if info.name == subject:
            warnings.append(f"tables.{info.name}: foreign key {arrow} is not a reference: rows "
                            "of data subjects belong to their own identity")
            continue
        ondelete = (fk.ondelete or "").upper()
        if ondelete in ("SET NULL", "SET DEFAULT"):
            warnings.append(f"tables.{info.name}: foreign key {arrow} is ON DELETE {ondelete}, "
                            "so its rows outlive that parent and do not belong to its owner: "
                            "not declared as a reference")
            continue
        to_columns = list(fk.to_columns)
        plan.references.append(_Ref(
            columns=list(fk.columns),
            table=fk.table,
            to_columns=None if to_columns == list(target.primary_key) else to_columns,
        ))


def _plan_identities(plan: _Plan, *, strong_only: bool) -> None:
    """Identity columns by name; `strong_only` keeps those that name the subject wherever
    they appear (device ids, third-party logins)."""
    info = plan.info
    provider = next((c for c in info.columns if _PROVIDER_COLUMN.fullmatch(c.lower())), None)
    for col in info.columns.values():
        rule = match_column(col)
        if rule is None or rule.identity is None or col.name in info.fk_columns:
            continue
        if strong_only and not rule.identity_anywhere:
            continue
        if rule.identity is IdentityType.THIRD_PARTY:
            if provider is not None:
                plan.add_identity(rule.identity, col.name, provider)
        else:
            plan.add_identity(rule.identity, col.name)


def _plan_subject(plan: _Plan, warnings: list[str]) -> None:
    info = plan.info
    plan.anonymize = True
    pk = info.primary_key
    personal_key = [c for c in pk if (r := match_column(info.columns[c])) and r.identity]
    if personal_key:
        # An anonymized row would keep its key, and the key is the person.
        plan.anonymize = False
        warnings.append(f"tables.{info.name}: its primary key {', '.join(pk)} is personal "
                        "data, so its rows are deleted rather than anonymized")
    elif len(pk) == 1:
        plan.identities.insert(0, {"type": IdentityType.USER_ID.value, "column": pk[0]})
    else:
        warnings.append(f"tables.{info.name}: composite primary key, so no user_id identity; "
                        "subjects are found by its other identity columns only")


def _reach_every_table(plans: dict[str, _Plan], subject: str | None, warnings: list[str]) -> None:
    """Erasure finds rows only through identities and references: give every table a way
    in, or leave it out."""
    subject_pk = plans[subject].info.primary_key if subject is not None else ()
    reached = _reachable(plans)
    if subject in reached and len(subject_pk) == 1:
        assert subject is not None
        owner_columns = {"user_id", f"{_singular(subject)}_id", f"{subject}_id"}
        for name in sorted(set(plans) - reached):
            plan = plans[name]
            column = next((c for c in plan.info.columns if c.lower() in owner_columns
                           and c not in plan.info.fk_columns), None)
            if column is not None:
                plan.references.append(_Ref(columns=[column], table=subject))
                warnings.append(f"tables.{name}: declared a reference {column} -> {subject} "
                                "that the database has no foreign key for; check it")
        reached = _reachable(plans)
    for name in sorted(set(plans) - reached):
        plan = plans[name]
        _plan_identities(plan, strong_only=False)
        for ident in plan.identities:
            warnings.append(f"tables.{name}: nothing references it, so {ident['column']} is "
                            f"declared an identity ({ident['type']}); check that it is the "
                            "subject's and not someone else's")
    reached = _reachable(plans)
    for name in sorted(set(plans) - reached):
        warnings.append(f"tables.{name}: no identity column or reference leads to it, left "
                        "out: if it holds personal data, declare how its rows are found")
        del plans[name]
    for plan in plans.values():
        plan.references = [r for r in plan.references if r.table in plans]


def _reachable(plans: Mapping[str, _Plan]) -> set[str]:
    seen = {name for name, p in plans.items() if p.identities}
    changed = True
    while changed:
        changed = False
        for name, plan in plans.items():
            if name not in seen and any(r.table in seen for r in plan.references):
                seen.add(name)
                changed = True
    return seen


def _warn_shared_rows(plan: _Plan, warnings: list[str]) -> None:
    if len(plan.references) < 2:
        return
    refs = " and ".join(f"{r.table} ({', '.join(r.columns)})" for r in plan.references)
    warnings.append(f"tables.{plan.info.name}: rows point at {refs}; a row is erased with the "
                    "owner of any of them: drop the references that do not mean ownership")


def _by_depth(plans: Mapping[str, _Plan], subject: str | None) -> list[str]:
    """Subject table first, then each table after the tables it points at: the map reads
    from the person outwards."""
    depth = {name: 0 for name, p in plans.items() if p.identities}
    changed = True
    while changed:
        changed = False
        for name, plan in plans.items():
            parents = [depth[r.table] for r in plan.references if r.table in depth]
            if name not in depth and parents:
                depth[name] = min(parents) + 1
                changed = True
    return sorted(plans, key=lambda n: (n != subject, depth.get(n, 0), n))


def _render_table(plan: _Plan, warnings: list[str]) -> dict[str, Any]:
    info = plan.info
    category = table_category(info)
    keys = set(info.primary_key) | info.fk_columns | {c for r in plan.references for c in r.columns}
    columns = {
        name: _column(col, plan.anonymize, category, name in keys, f"tables.{info.name}", warnings)
        for name, col in info.columns.items()
    }
    out: dict[str, Any] = {"primary_key": list(info.primary_key)}
    if plan.identities:
        out["identities"] = plan.identities
    if plan.references:
        out["references"] = [
            {"columns": r.columns, "table": r.table}
            | ({"to_columns": r.to_columns} if r.to_columns else {})
            for r in plan.references
        ]
    if plan.anonymize:
        restriction = next(
            (c for c, col in info.columns.items()
             if _RESTRICTION_COLUMN.fullmatch(c.lower()) and col.nullable), None,
        )
        if restriction is not None:
            out["restriction_column"] = restriction
            columns[restriction] = {"category": NON_PERSONAL, "action": Action.KEEP.value}
    out["columns"] = columns
    return out


def _column(
    col: ColumnInfo, anonymize: bool, category: str, is_key: bool, where: str,
    warnings: list[str],
) -> dict[str, str]:
    if not anonymize:
        return {"category": category, "action": Action.DELETE.value}
    rule = match_column(col)
    if is_key or (rule is not None and rule.action is Action.KEEP):
        return {"category": NON_PERSONAL, "action": Action.KEEP.value}
    if rule is None:
        fallback: list[_Choice] = [(a, None) for a in _FALLBACKS[Action.NULL]]
        choice = _choose(col, [*fallback, (Action.GENERALIZE, Generalization.YEAR)])
        if choice is None:
            # NOT NULL flags, counters and amounts: nothing to null, and nothing about the
            # person once the rest of the row is anonymized.
            return {"category": NON_PERSONAL, "action": Action.KEEP.value}
        return _entry(category, *choice)
    chain: list[_Choice] = [
        (a, rule.generalize if a is Action.GENERALIZE else None) for a in _FALLBACKS[rule.action]
    ]
    choice = _choose(col, chain)
    if choice is None:
        warnings.append(f"{where}.columns.{col.name}: looks like {rule.category} data but no "
                        f"erasing action fits its type and constraints; drafted as "
                        f"{rule.action.value}, which may fail: review")
        choice = (rule.action, rule.generalize)
    return _entry(rule.category, *choice)


def _entry(category: str, action: Action, generalize: Generalization | None) -> dict[str, str]:
    out = {"category": category, "action": action.value}
    if generalize is not None and action is Action.GENERALIZE:
        out["generalize"] = generalize.value
    return out


def _singular(name: str) -> str:
    lower = name.lower()
    if lower.endswith("ies"):
        return lower[:-3] + "y"
    return lower[:-1] if lower.endswith("s") else lower


# -- URLs and YAML ----------------------------------------------------------------------


def _parse_url(url: str) -> URL:
    try:
        return make_url(url)
    except ArgumentError:
        # The message would quote the URL, password and all.
        raise DraftError("not a database URL (expected e.g. postgresql://user@host/db)") from None


def _without_secrets(url: URL, *, strip: bool = True) -> str:
    """The URL as it may be shown: no password, in the authority or in the query."""
    if strip:
        # `URL.set(password=None)` means "leave the password as it is".
        url = url._replace(password=None).set(
            query={k: v for k, v in url.query.items() if not _SECRET_QUERY_KEYS.search(k)}
        )
    return url.render_as_string(hide_password=False)


def _refuse_missing_sqlite_file(url: URL, source: str) -> None:
    """SQLite would silently create an empty file for a mistyped path."""
    database = url.database or ""
    if url.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not (
        database.startswith("file:") or Path(database).exists()
    ):
        raise DraftError(f"no SQLite database at {database} (from {source})")


class _Dumper(yaml.SafeDumper):
    """Flow style for small leaves (`email: {category: contact, action: pseudonymize}`):
    one line per column keeps a big map reviewable."""


def _represent_dict(dumper: yaml.SafeDumper, data: dict[Any, Any]) -> yaml.Node:
    flow = bool(data) and all(_is_leaf(v) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(v, str | int | float | bool) or v is None for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _is_leaf(value: Any) -> bool:
    if isinstance(value, list):
        return all(not isinstance(v, dict | list) for v in value)
    return not isinstance(value, dict)


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(list, _represent_list)


def to_yaml(result: Draft) -> str:
    header = [
        f"Drafted by dsrflow datamap draft from {result.source} on "
        f"{result.drafted_on.isoformat()}. Review every category and action before use.",
    ]
    if result.warnings:
        header += ["", "Warnings:"] + [f"- {w}" for w in result.warnings]
    comment = "".join(f"# {line}".rstrip() + "\n" for line in _comment_lines(header))
    body = yaml.dump(result.datamap, Dumper=_Dumper, sort_keys=False, width=10_000,
                     allow_unicode=True)
    return comment + "\n" + body


def _comment_lines(lines: Sequence[str]) -> list[str]:
    # A name from the database could hold a line break; inside a comment it would end the
    # comment and inject YAML.
    return [part for line in lines for part in line.splitlines() or [""]]
