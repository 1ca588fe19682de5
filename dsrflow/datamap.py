"""The data map: every system that holds personal data, every field's category, and what
erasure does to it. Validated in full at load; an error names the file and the dotted path
of the field (`systems.userdb.tables.orders.columns.email.category: unknown category ...`).
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from dsrflow.identities import IdentityType
from dsrflow.model import POLICY_CATEGORIES, Regime
from dsrflow.secret_blocks import BlockName

NON_PERSONAL = "non_personal"
REDACTION_MARKER = "[REDACTED]"
_IDENTIFIER_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"
Identifier = Annotated[str, Field(pattern=_IDENTIFIER_RE, max_length=63)]


class Action(StrEnum):
    DELETE = "delete"  # delete the whole row
    NULL = "null"
    PSEUDONYMIZE = "pseudonymize"  # keyed HMAC under the request's key
    REDACT = "redact"  # replace with a fixed marker
    GENERALIZE = "generalize"  # coarsen: birthday -> year, coordinates -> grid, IP -> /24
    RETAIN = "retain"  # kept on purpose, with a reason (a legal obligation, ...)
    KEEP = "keep"  # not personal data; only for category `non_personal`


class Generalization(StrEnum):
    YEAR = "year"  # a date becomes 1 January of its year
    MONTH = "month"  # a date becomes the 1st of its month
    GRID_1 = "grid_1"  # a coordinate rounded to 0.1 degree (~11 km)
    GRID_2 = "grid_2"  # a coordinate rounded to 0.01 degree (~1 km)
    IPV4_24 = "ipv4_24"  # 203.0.113.7 -> 203.0.113.0


ERASING_ACTIONS = frozenset(
    {Action.NULL, Action.PSEUDONYMIZE, Action.REDACT, Action.GENERALIZE}
)


BIRTH_DATE_CATEGORIES = frozenset({"profile", "minors"})


class DataMapError(ValueError):
    def __init__(self, source: str, path: str, message: str) -> None:
        super().__init__(f"{source}: {path}: {message}" if path else f"{source}: {message}")
        self.source = source
        self.path = path
        self.message = message


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_category(value: str, info: ValidationInfo) -> str:
    known = (info.context or {}).get("categories", POLICY_CATEGORIES | {NON_PERSONAL})
    if value not in known:
        raise ValueError(f"unknown category {value!r}; known: {', '.join(sorted(known))}")
    return value


Category = Annotated[str, AfterValidator(_check_category)]


class Column(_Strict):
    category: Category
    action: Action
    reason: str | None = Field(default=None, description="why a retained column is kept")
    generalize: Generalization | None = None
    redact_with: str = REDACTION_MARKER

    @field_validator("action", mode="before")
    @classmethod
    def _yaml_null(cls, value: object) -> object:
        # `action: null` unquoted is YAML's null; the author meant the action.
        return "null" if value is None else value

    @model_validator(mode="after")
    def _consistent(self) -> Column:
        if self.action is Action.RETAIN and not self.reason:
            raise ValueError("action 'retain' needs a reason")
        if self.action is Action.GENERALIZE and self.generalize is None:
            raise ValueError(
                "action 'generalize' needs `generalize:` one of "
                + ", ".join(g.value for g in Generalization)
            )
        if (self.action is Action.KEEP) != (self.category == NON_PERSONAL):
            raise ValueError(
                "action 'keep' is only for category 'non_personal', and such a column "
                "can only be kept"
                if self.action is Action.KEEP
                else "a 'non_personal' column can only be kept (action: keep)"
            )
        return self


class IdentityColumn(_Strict):
    type: IdentityType
    column: Identifier
    provider_column: Identifier | None = Field(
        default=None, description="for third_party: the column naming the provider"
    )

    @model_validator(mode="after")
    def _provider(self) -> IdentityColumn:
        if (self.type is IdentityType.THIRD_PARTY) != (self.provider_column is not None):
            raise ValueError("provider_column is required for third_party identities only")
        return self


class Reference(_Strict):
    """`columns` of this table point at `to_columns` (default: primary key) of `table`.
    Rows of this table belong to whoever owns the row they point at.

    `shared` says what a reference means when the two ends belong to different people.
    `keep` (the default): a row that points at someone outside the request is theirs
    too, and so is the row it points at — both are kept. `erase`: the data owner decides
    that this link does not make rows shared (a follow edge goes with either end)."""

    columns: list[Identifier] = Field(min_length=1)
    table: Identifier
    to_columns: list[Identifier] | None = None
    shared: Literal["keep", "erase"] = "keep"


class Table(_Strict):
    primary_key: list[Identifier] = Field(min_length=1)
    identities: list[IdentityColumn] = []
    references: list[Reference] = []
    columns: dict[Identifier, Column] = Field(min_length=1)
    restriction_column: Identifier | None = Field(
        default=None, description="a timestamp column set when processing is restricted"
    )
    birth_date_column: Identifier | None = Field(
        default=None, description="the subject's date of birth (a date column of category "
        "profile or minors): a subject under `guardian_age` waits for a guardian (policy 7.x)"
    )

    @model_validator(mode="after")
    def _columns_exist(self) -> Table:
        named = list(self.primary_key)
        named += [i.column for i in self.identities]
        named += [i.provider_column for i in self.identities if i.provider_column]
        named += [c for r in self.references for c in r.columns]
        if self.restriction_column:
            named.append(self.restriction_column)
        if self.birth_date_column:
            named.append(self.birth_date_column)
        missing = sorted({c for c in named if c not in self.columns})
        if missing:
            raise ValueError(f"columns used but not mapped: {', '.join(missing)}")
        if self.birth_date_column and (
            self.columns[self.birth_date_column].category not in BIRTH_DATE_CATEGORIES
        ):
            raise ValueError(f"birth_date_column {self.birth_date_column} must be of category "
                             f"{' or '.join(sorted(BIRTH_DATE_CATEGORIES))}")
        actions = {c.action for c in self.columns.values()}
        if Action.DELETE in actions and Action.RETAIN in actions:
            retained = [n for n, c in self.columns.items() if c.action is Action.RETAIN]
            raise ValueError(
                f"rows are deleted but {', '.join(retained)} is retained: a row cannot be both; "
                "retain the row's other columns or pseudonymize instead of deleting"
            )
        return self

    def deletes_rows(self, categories: frozenset[str] | None) -> bool:
        """Whether erasure in scope `categories` (None: all) deletes this table's rows."""
        return any(
            c.action is Action.DELETE and (categories is None or c.category in categories)
            for c in self.columns.values()
        )

    def erasable_columns(self, categories: frozenset[str] | None) -> dict[str, Column]:
        return {
            name: col
            for name, col in self.columns.items()
            if col.action in ERASING_ACTIONS and (categories is None or col.category in categories)
        }

    def retained_columns(self, categories: frozenset[str] | None) -> dict[str, Column]:
        return {
            name: col
            for name, col in self.columns.items()
            if col.action is Action.RETAIN and (categories is None or col.category in categories)
        }

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(c.category for c in self.columns.values()) - {NON_PERSONAL}


def _phone_region(value: str | None) -> str | None:
    import phonenumbers

    if value is None:
        return None
    if value.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown country {value!r} (ISO 3166 alpha-2 with a numbering plan)")
    return value.upper()


PhoneRegion = Annotated[
    str | None,
    AfterValidator(_phone_region),
    Field(description="the country whose national format this system writes phone numbers "
          "in (a Chinese app's database: CN); unset: each subject's own region"),
]


class ColumnRef(_Strict):
    """A column of a SQL system: one listing object keys (userdb.uploads.s3_key), or the
    accounts that exist (userdb.users.id)."""

    system: Identifier
    table: Identifier
    column: Identifier


RuleName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
Days = Annotated[int, Field(ge=1, le=36500)]


class RetentionRule(_Strict):
    """`systems.<sql>.retention[]`: the rows of one table whose retention period has run
    out (privacy policy 6.3.1(3)), counted from a timestamp column, and what happens
    to them then: `delete` the rows, or `anonymize` them (the table's erasing actions, with
    pseudonyms under a key made for the sweep and then dropped)."""

    name: RuleName
    table: Identifier
    category: Category
    counts_from: Identifier = Field(description="the timestamp column the period counts from")
    after_days: Days
    action: Literal["delete", "anonymize"]


class AccountRetentionRule(_Strict):
    """`systems.<sql>.account_retention[]`: whole accounts whose period ran out — a
    cancelled account `after_days` after its `cancelled_at` (policy 6.5), a child's account
    when its period ends (7.4). Each such account gets an erasure request of its own, run
    like any other (every system, partners, verification, a certificate); the request's
    ticket id is derived from a keyed token of the account id, so a sweep never files the
    same account twice."""

    name: RuleName
    table: Identifier = Field(description="the table whose rows are the accounts")
    counts_from: Identifier = Field(description="the timestamp column the period counts from "
                                    "(a row where it is empty has not started its period)")
    after_days: Days
    regime: Regime = Field(default=Regime.PIPL,
                           description="the regime the erasure is recorded under (deadlines)")
    reason: str = Field(min_length=1, description="why it runs out, as the policy says")
    minors_only: bool = Field(
        default=False, description="only accounts of subjects under `guardian_age` by the "
        "table's birth_date_column (policy 7.4: children's data is kept no longer than "
        "needed, so their period can be shorter)")


class ObjectRetentionRule(_Strict):
    """`systems.<objects>.retention[]`: the objects of one bucket whose period ran out,
    counted from `last_modified` or from a tag holding an ISO 8601 date (`tag:expires_from`),
    deleted with every version and delete marker. `orphans_of` narrows it to objects whose
    account (the `{user_id}` of the bucket's key template) no longer has a row in that SQL
    column: uploads of deleted accounts."""

    name: RuleName
    bucket: str
    prefix: str = ""
    after_days: Days
    counts_from: str = Field(default="last_modified",
                             pattern=r"^(last_modified|tag:[A-Za-z0-9 _.:/=+@-]{1,128})$")
    orphans_of: ColumnRef | None = None


class LogRetentionRule(_Strict):
    """`systems.<logs>.retention[]`: the lines of one log source whose period ran out
    (policy 3.1: security logs 180 days), deleted. `file_modified`: a whole file whose last
    write is older than the period is deleted (every line in it is older still).
    `line_timestamp`: each line's own time (jsonl: `timestamp_field`; text: the first
    ISO 8601 or common-log-format `[04/Dec/2026:10:00:00 +0800]` timestamp in the line);
    expired lines are cut out, a file left empty is deleted, and a line whose time cannot
    be read is kept and counted. A time without a zone is read as UTC."""

    name: RuleName
    source: Identifier
    after_days: Days
    counts_from: Literal["file_modified", "line_timestamp"]
    timestamp_field: str | None = Field(default=None,
                                        description="jsonl: the (dotted) field of the time")


class SqlSystem(_Strict):
    kind: Literal["sql"]
    phone_region: PhoneRegion = None
    url: str | None = Field(default=None, description="a URL without a password")
    url_env: str | None = Field(default=None, description="environment variable holding the URL")
    url_block: BlockName | None = Field(
        default=None, description="or: the Prefect Secret block holding the URL"
    )
    tables: dict[Identifier, Table] = Field(min_length=1)
    retention: list[RetentionRule] = Field(
        default=[], description="retention rules: what sweeps delete or anonymize, and when"
    )
    account_retention: list[AccountRetentionRule] = Field(
        default=[], description="whole accounts whose period ran out: each gets an erasure"
    )

    def account_column(self, table: str) -> str | None:
        """The column of a table that names the account its rows belong to: its own
        `user_id` identity column, or a reference to one. A sweep checks it against the
        legal holds."""
        mapped = self.tables[table]
        for identity in mapped.identities:
            if identity.type is IdentityType.USER_ID:
                return identity.column
        for ref in mapped.references:
            parent = self.tables[ref.table]
            target = ref.to_columns or parent.primary_key
            if len(target) == 1 and any(i.type is IdentityType.USER_ID and i.column == target[0]
                                        for i in parent.identities):
                return ref.columns[0]
        return None

    @field_validator("url")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            parsed = make_url(value)
        except ArgumentError:
            # SQLAlchemy's message quotes the URL, and with it any password: not repeated.
            raise ValueError("not a database URL (expected e.g. postgresql://user@host/db)") \
                from None
        secret_keys = [k for k in parsed.query if "password" in k.lower() or "secret" in k.lower()]
        if parsed.password or secret_keys:
            raise ValueError("the URL holds a password: use url_env or url_block instead")
        return value

    @model_validator(mode="after")
    def _graph(self) -> SqlSystem:
        if sum(v is not None for v in (self.url, self.url_env, self.url_block)) != 1:
            raise ValueError("give exactly one of url, url_env or url_block")
        for name, table in self.tables.items():
            for ref in table.references:
                parent = self.tables.get(ref.table)
                if parent is None:
                    raise ValueError(f"tables.{name}.references: unknown table {ref.table!r}")
                target = ref.to_columns or parent.primary_key
                if len(target) != len(ref.columns):
                    raise ValueError(
                        f"tables.{name}.references: {len(ref.columns)} columns point at "
                        f"{len(target)} columns of {ref.table}"
                    )
                missing = [c for c in target if c not in parent.columns]
                if missing:
                    raise ValueError(
                        f"tables.{name}.references: {ref.table} has no column {missing[0]!r}"
                    )
                kept = [c for c in ref.columns
                        if table.columns[c].action in (Action.RETAIN, Action.KEEP)]
                if parent.deletes_rows(None) and not table.deletes_rows(None) and kept:
                    # The row stays and keeps pointing at a row erasure deletes.
                    raise ValueError(
                        f"tables.{name}.references: {name}.{kept[0]} outlives erasure but "
                        f"{ref.table} deletes its rows: the reference would point at nothing; "
                        f"null or pseudonymize {kept[0]}, or keep {ref.table}'s rows"
                    )
        self._check_retention()
        unreachable = sorted(set(self.tables) - self.reachable_tables())
        if unreachable:
            raise ValueError(
                f"tables {', '.join(unreachable)} cannot be reached from any identity column: "
                "declare identities or references so erasure can find their rows"
            )
        return self

    def _rule_table(self, where: str, name: str, counts_from: str) -> Table:
        """The table a retention rule names, which must map its `counts_from` column."""
        table = self.tables.get(name)
        if table is None:
            raise ValueError(f"{where}.table: no table {name!r} in this system")
        if counts_from not in table.columns:
            raise ValueError(f"{where}.counts_from: {name} has no mapped column "
                             f"{counts_from!r}")
        return table

    def _check_retention(self) -> None:
        _unique_names([r.name for r in self.retention] + [r.name for r in self.account_retention])
        for i, account_rule in enumerate(self.account_retention):
            where = f"account_retention.{i}"
            accounts = self._rule_table(where, account_rule.table, account_rule.counts_from)
            if not any(i.type is IdentityType.USER_ID for i in accounts.identities):
                raise ValueError(f"{where}.table: {account_rule.table} has no user_id identity "
                                 "column: its rows do not name accounts")
            if account_rule.minors_only and accounts.birth_date_column is None:
                raise ValueError(f"{where}.minors_only: {account_rule.table} has no "
                                 "birth_date_column to tell a child's account")
        for i, rule in enumerate(self.retention):
            where = f"retention.{i}"
            table = self._rule_table(where, rule.table, rule.counts_from)
            if rule.category not in table.categories:
                raise ValueError(f"{where}.category: {rule.table} holds no {rule.category!r} "
                                 f"data")
            if self.account_column(rule.table) is None:
                raise ValueError(f"{where}.table: no column of {rule.table} names the account "
                                 "its rows belong to (a user_id identity, or a reference to "
                                 "one): legal holds could not be honoured")
            children = sorted(n for n, t in self.tables.items()
                              if any(r.table == rule.table for r in t.references))
            if rule.action == "delete" and children:
                raise ValueError(f"{where}.action: {', '.join(children)} point at "
                                 f"{rule.table}'s rows; anonymize them instead")

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(c for t in self.tables.values() for c in t.categories)

    def reachable_tables(self) -> set[str]:
        seen = {name for name, t in self.tables.items() if t.identities}
        changed = True
        while changed:
            changed = False
            for name, table in self.tables.items():
                if name not in seen and any(r.table in seen for r in table.references):
                    seen.add(name)
                    changed = True
        return seen


class S3Endpoint(_Strict):
    """Where an S3-compatible API is: AWS by default, or any endpoint (MinIO, moto, ...).
    Credentials come from boto3's usual chain (environment, profile, instance role)."""

    endpoint_url: str | None = None
    endpoint_url_env: str | None = Field(default=None, description="variable holding the URL")
    region: str = "us-east-1"

    @model_validator(mode="after")
    def _one_endpoint(self) -> S3Endpoint:
        if self.endpoint_url is not None and self.endpoint_url_env is not None:
            raise ValueError("give at most one of endpoint_url or endpoint_url_env")
        return self


class ObjectOwnership(_Strict):
    """How an object belongs to a subject: exactly one of
    - `key_template`: a key or, ending in '/', a prefix, with identity placeholders
      (`uploads/{user_id}/`, `faces/{user_id}.bin`);
    - `tag`: an object tag whose value is the subject's `tag_identity`, among the objects
      under `tag_prefix`;
    - `keys_from`: keys listed in a column of a SQL system, in the subject's rows."""

    key_template: str | None = None
    tag: str | None = None
    tag_identity: IdentityType = IdentityType.USER_ID
    tag_prefix: str = ""
    keys_from: ColumnRef | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ObjectOwnership:
        given = [x for x in (self.key_template, self.tag, self.keys_from) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of key_template, tag or keys_from")
        if self.key_template is not None:
            placeholders = template_placeholders(self.key_template)
            unknown = sorted(placeholders - {t.value for t in IdentityType})
            if not placeholders:
                raise ValueError("key_template needs an identity placeholder, e.g. {user_id}")
            if unknown:
                raise ValueError(f"key_template: unknown placeholder {{{unknown[0]}}}")
        return self


class Bucket(_Strict):
    category: Category
    action: Literal[Action.DELETE, Action.RETAIN] = Action.DELETE
    reason: str | None = None
    ownership: list[ObjectOwnership] = Field(min_length=1)
    collect: Literal["metadata", "presigned", "bytes"] = Field(
        default="presigned", description="what an access request gets of each object"
    )
    presign_seconds: int = Field(default=3600, gt=0, le=7 * 24 * 3600)

    @model_validator(mode="after")
    def _reason(self) -> Bucket:
        if self.action is Action.RETAIN and not self.reason:
            raise ValueError("action 'retain' needs a reason")
        return self


class ObjectsSystem(S3Endpoint):
    kind: Literal["objects"]
    buckets: dict[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")],
                  Bucket] = Field(min_length=1)
    retention: list[ObjectRetentionRule] = Field(
        default=[], description="retention rules: which objects sweeps delete, and when"
    )

    def owner_template(self, bucket: str) -> str | None:
        """The key template of `bucket` that names the account ({user_id}) its objects
        belong to, if one does."""
        for rule in self.buckets[bucket].ownership:
            if rule.key_template and "user_id" in template_placeholders(rule.key_template):
                return rule.key_template
        return None

    def owner_tag(self, bucket: str) -> str | None:
        """The object tag of `bucket` whose value is the owning account id, if one is."""
        for rule in self.buckets[bucket].ownership:
            if rule.tag and rule.tag_identity is IdentityType.USER_ID:
                return rule.tag
        return None

    @model_validator(mode="after")
    def _check_retention(self) -> ObjectsSystem:
        _unique_names([r.name for r in self.retention])
        for i, rule in enumerate(self.retention):
            where = f"retention.{i}"
            if rule.bucket not in self.buckets:
                raise ValueError(f"{where}.bucket: no bucket {rule.bucket!r} in this system")
            template = self.owner_template(rule.bucket)
            if template is None and self.owner_tag(rule.bucket) is None:
                raise ValueError(f"{where}.bucket: nothing tells whose {rule.bucket}'s objects "
                                 "are (a key_template with {user_id}, or a user_id tag): "
                                 "legal holds could not be honoured")
            if rule.orphans_of is not None and template is None:
                raise ValueError(f"{where}.orphans_of: {rule.bucket} has no key_template with "
                                 "{user_id}, so an object's account cannot be looked up")
        return self

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(b.category for b in self.buckets.values())


class S3Location(_Strict):
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str = ""


class LogSource(_Strict):
    """One set of log files: a local glob (relative to dsrflow.yaml) or an S3 prefix."""

    path: str | None = None
    s3: S3Location | None = None
    format: Literal["jsonl", "text"]
    fields: dict[str, IdentityType] = Field(
        default={}, description="jsonl: field (dotted for nesting) -> identity type"
    )
    identities: list[IdentityType] = Field(
        default=[], description="text: the identity types to look for in each line"
    )
    @model_validator(mode="after")
    def _consistent(self) -> LogSource:
        if (self.path is None) == (self.s3 is None):
            raise ValueError("give exactly one of path or s3")
        if self.format == "jsonl" and not self.fields:
            raise ValueError("a jsonl source needs `fields`: which fields hold identities")
        if self.format == "text" and not self.identities:
            raise ValueError("a text source needs `identities`: which types to look for")
        return self


class LogsSystem(S3Endpoint):
    kind: Literal["logs"]
    phone_region: PhoneRegion = None
    category: Category = "logs"
    action: Literal[Action.PSEUDONYMIZE, Action.REDACT] = Action.PSEUDONYMIZE
    redact_with: str = REDACTION_MARKER
    sources: dict[Identifier, LogSource] = Field(min_length=1)
    retention: list[LogRetentionRule] = Field(
        default=[], description="retention rules: which lines or files sweeps delete, and when"
    )

    @property
    def categories(self) -> frozenset[str]:
        return frozenset({self.category})

    @model_validator(mode="after")
    def _check_retention(self) -> LogsSystem:
        _unique_names([r.name for r in self.retention])
        for i, rule in enumerate(self.retention):
            where = f"retention.{i}"
            source = self.sources.get(rule.source)
            if source is None:
                raise ValueError(f"{where}.source: no source {rule.source!r} in this system")
            if rule.timestamp_field is not None and (
                    source.format != "jsonl" or rule.counts_from != "line_timestamp"):
                raise ValueError(f"{where}.timestamp_field: only for line_timestamp rules of "
                                 "jsonl sources")
            if (rule.counts_from == "line_timestamp" and source.format == "jsonl"
                    and rule.timestamp_field is None):
                raise ValueError(f"{where}.timestamp_field: a jsonl source's line_timestamp "
                                 "rule names the field of each line's time")
        return self


class PartnerIdentity(_Strict):
    """An identity type the partner accepts, and in which format it wants it."""

    type: IdentityType
    format: Literal["raw", "sha256", "sha1", "md5"] = "raw"
    as_type: str | None = Field(
        default=None, description="the partner's name for it (OpenDSR: controller_customer_id)"
    )


class PartnerSystem(_Strict):
    """A third party the app shares data with (privacy policy 4.1/4.2): every erasure and
    cancellation is propagated to it, or the reason it is not is recorded."""

    kind: Literal["partner"]
    protocol: Literal["opendsr", "webhook", "manual"]
    categories: list[Category] = Field(min_length=1, description="what is shared with it")
    role: Literal["processor", "third_party"] = "third_party"
    endpoint: str | None = Field(default=None, description="base URL (opendsr, webhook)")
    identities: list[PartnerIdentity] = Field(min_length=1)
    credentials_env: str | None = Field(
        default=None,
        description="environment variable holding the API token (opendsr) or the signing "
        "secret (webhook)",
    )
    credentials_block: BlockName | None = Field(
        default=None, description="or: the name of a Prefect Secret block holding it"
    )
    callback_domains: list[str] = Field(
        default=[], description="OpenDSR: processor domains whose callbacks are trusted"
    )
    certificate: str | None = Field(
        default=None,
        description="OpenDSR: PEM file of the processor's certificate (relative to dsrflow.yaml)",
    )
    contact: str | None = Field(default=None, description="manual: who is asked, and how")
    purpose: str | None = Field(
        default=None, description="why data is shared with it (told to the subject in the "
        "access package)"
    )
    max_concurrency: int | None = Field(
        default=None, ge=1, le=20,
        description="requests handed to it at once (default: the `partner_concurrency` "
        "setting); 1 for a partner that takes one at a time",
    )

    @model_validator(mode="after")
    def _protocol_needs(self) -> PartnerSystem:
        if self.protocol in ("opendsr", "webhook") and not self.endpoint:
            raise ValueError(f"a {self.protocol} partner needs an endpoint")
        if self.protocol == "opendsr" and not self.callback_domains:
            raise ValueError("an opendsr partner needs callback_domains (the allow-list)")
        if self.protocol == "manual" and not self.contact:
            raise ValueError("a manual partner needs a contact (who confirms, and how)")
        if self.credentials_env and self.credentials_block:
            raise ValueError("give at most one of credentials_env or credentials_block")
        if self.protocol == "webhook" and not (self.credentials_env or self.credentials_block):
            raise ValueError(
                "a webhook partner needs its signing secret: credentials_env or "
                "credentials_block"
            )
        return self


System = Annotated[
    SqlSystem | ObjectsSystem | LogsSystem | PartnerSystem, Field(discriminator="kind")
]


def _unique_names(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"retention rule {name!r}: two rules of this system have that name")
        seen.add(name)


def template_placeholders(template: str) -> set[str]:
    import string

    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


class Disclosure(_Strict):
    """What the privacy policy tells a subject about one category of their data: why it is
    processed and how long it is kept. The access package repeats it next to the data."""

    purposes: list[str] = Field(min_length=1)
    retention: str = Field(min_length=1, description="how long it is kept, as the policy says")
    policy_section: str | None = Field(default=None, description="e.g. 2.3.1.1")


class DataMap(_Strict):
    version: str = Field(min_length=1, description="recorded with every request it governs")
    policy_version: str = Field(min_length=1, description="the privacy policy version")
    categories: list[Identifier] = Field(default=[], description="categories beyond the policy's")
    disclosures: dict[Category, Disclosure] = Field(
        default={}, description="per category: purposes and retention, for access packages"
    )
    sensitive_categories: list[Category] = Field(
        default=[], description="sensitive personal information (privacy policy 2.1: "
        "biometric, financial accounts, trajectory, minors' data, ...): shown apart in "
        "access packages, counted apart in the report"
    )
    systems: dict[Identifier, System] = Field(min_length=1)

    @property
    def sensitive(self) -> frozenset[str]:
        return frozenset(self.sensitive_categories)

    def part_categories(self, system: str, part: str) -> frozenset[str]:
        """The categories of one part of a system (a table, a bucket), else of the
        system."""
        spec = self.systems.get(system)
        if isinstance(spec, SqlSystem) and part in spec.tables:
            return spec.tables[part].categories
        if isinstance(spec, ObjectsSystem) and part in spec.buckets:
            return frozenset({spec.buckets[part].category})
        return frozenset(spec.categories) if spec is not None else frozenset()

    def sql(self, name: str) -> SqlSystem:
        system = self.systems[name]
        if not isinstance(system, SqlSystem):
            raise TypeError(f"system {name} is {system.kind}, not sql")
        return system

    def sql_systems(self) -> Iterator[tuple[str, SqlSystem]]:
        for name, system in self.systems.items():
            if isinstance(system, SqlSystem):
                yield name, system

    def all_categories(self) -> frozenset[str]:
        return POLICY_CATEGORIES | set(self.categories) | {NON_PERSONAL}

    @model_validator(mode="after")
    def _sql_columns_exist(self) -> DataMap:
        for name, system in self.systems.items():
            if not isinstance(system, ObjectsSystem):
                continue
            for i, object_rule in enumerate(system.retention):
                ref = object_rule.orphans_of
                if ref is not None and not self._is_sql_column(ref):
                    raise ValueError(
                        f"systems.{name}.retention.{i}.orphans_of: {ref.system}.{ref.table}."
                        f"{ref.column} is not a mapped SQL column")
            for bucket_name, bucket in system.buckets.items():
                for rule in bucket.ownership:
                    ref = rule.keys_from
                    if ref is None:
                        continue
                    if not self._is_sql_column(ref):
                        raise ValueError(
                            f"systems.{name}.buckets.{bucket_name}.ownership: keys_from "
                            f"{ref.system}.{ref.table}.{ref.column} is not a mapped SQL column"
                        )
        return self

    def _is_sql_column(self, ref: ColumnRef) -> bool:
        source = self.systems.get(ref.system)
        table = source.tables.get(ref.table) if isinstance(source, SqlSystem) else None
        return table is not None and ref.column in table.columns


def parse_datamap(data: Any, source: str = "<data map>") -> DataMap:
    if not isinstance(data, dict):
        raise DataMapError(source, "", "expected a mapping at the top level")
    extra = data.get("categories") or []
    categories = POLICY_CATEGORIES | {NON_PERSONAL}
    if isinstance(extra, list):
        categories |= {str(c) for c in extra}
    try:
        return DataMap.model_validate(data, context={"categories": categories})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise DataMapError(source, _dotted(err["loc"], data), _message(err)) from None


def load_datamap(path: Path) -> DataMap:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataMapError(str(path), "", "file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DataMapError(str(path), "", f"not valid YAML: {exc}") from None
    return parse_datamap(data, str(path))


def _dotted(loc: tuple[int | str, ...], data: Any) -> str:
    """The dotted path as the user wrote it: pydantic puts the union tag (`sql`) into the
    location of a discriminated union's errors; drop it."""
    parts: list[str] = []
    node = data
    for item in loc:
        if item == "[key]":
            continue  # pydantic's marker for "the key itself": the key is already named
        if isinstance(node, dict) and item not in node and node.get("kind") == item:
            continue  # a union tag, not a key of the document
        parts.append(str(item))
        node = node.get(item) if isinstance(node, dict) else (
            node[item] if isinstance(node, list) and isinstance(item, int) else None
        )
    return ".".join(parts)


def _message(err: Any) -> str:
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")
