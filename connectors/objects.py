"""Object-storage connector: buckets behind any S3 API (AWS, MinIO, moto) through boto3.

How it finds a subject's objects, bucket by bucket, by the bucket's ownership rules:

- `key_template` (`uploads/{user_id}/`, `faces/{user_id}.bin`): the template filled with the
  subject's normalized identities. A template ending in '/' is a prefix, anything else an
  exact key. A value that could leave its place in the key (`/`, `..`, a backslash, a
  control character, empty) is refused with `UnsafeKey` before any request is made.
- `tag`: the objects under `tag_prefix` whose tag `tag` holds one of the subject's
  identities of type `tag_identity` (in a versioned bucket, the tags of every version).
- `keys_from`: exact keys the runtime reads from a SQL column of the subject's rows.

Listing is batch first: one listing per distinct prefix or exact key for the whole batch
(a prefix inside another one is served by the outer listing), one listing of each
`tag_prefix`, and in versioned buckets the listing includes every version and delete
marker. Object keys are assigned to owners by exact prefix, so `uploads/1/` never reaches
into `uploads/12/`.

How it erases: in versioned buckets every version and every delete marker of the subject's
keys, in unversioned ones the keys, with `delete_objects` (at most 1,000 per call). In a
bucket with S3 Object Lock, each version's lock is read (`head_object` returns legal hold
and retention in one request): a version under legal hold or unexpired retention stays and
its key is reported as retained, with the reason; the key's unlocked versions are deleted,
its delete markers kept, and a delete marker is put on top if the key is still visible, so
retained data stays stored but is no longer served. A bucket whose data map action is
`retain` deletes nothing and reports what it holds as retained. Errors name the system,
the bucket, the operation and S3's error code: never a key, which may embed an identity.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import string
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from connectors.base import ConnectorConfigError, Outcome, Records, Scope, resolve_endpoint
from connectors.s3 import delete_versions, error_code
from dsrflow.crypto import Pseudonymizer
from dsrflow.datamap import Action, Bucket, ColumnRef, ObjectOwnership, ObjectsSystem
from dsrflow.identities import IdentityError, IdentityType, Subject, normalize, unsafe_reason

WORKERS = 8  # concurrent listings and per-object reads (boto3 clients are thread-safe)

_NO_LOCK_CONFIGURATION = ("ObjectLockConfigurationNotFoundError", "NoSuchObjectLockConfiguration")

KeysFrom = Callable[[Sequence[Subject], ColumnRef], dict[str, list[str]]]
T = TypeVar("T")
R = TypeVar("R")


class ObjectsError(RuntimeError):
    """An object store refused or failed an operation. The message names the system, the
    bucket, the operation and S3's error code, never an object key."""


class ObjectsConfigError(ConnectorConfigError):
    """The data map's objects system cannot be used as configured."""


class UnsafeKey(ValueError):
    """An identity value would escape its place in a key template (`../`, `a/b`, ...)."""


@dataclass
class _Entry:
    """One version or delete marker of a key (version_id None: an unversioned bucket)."""

    version_id: str | None
    is_latest: bool
    marker: bool = False
    size: int = 0
    last_modified: datetime | None = None
    etag: str = ""


@dataclass
class _Object:
    key: str
    entries: list[_Entry]
    owners: set[str] = field(default_factory=set)

    def versions(self) -> list[_Entry]:
        return [e for e in self.entries if not e.marker]

    def current(self) -> _Entry | None:
        """The version a plain GET returns, or None if the key is deleted."""
        latest = next((e for e in self.entries if e.is_latest), None)
        return None if latest is None or latest.marker else latest


@dataclass
class _BucketState:
    versioned: bool
    locking: bool


class ObjectsConnector:
    kind = "objects"

    def __init__(
        self,
        name: str,
        system: ObjectsSystem,
        client: Any | None = None,
        keys_from: KeysFrom | None = None,
        *,
        workers: int = WORKERS,
    ) -> None:
        self.name = name
        self.system = system
        self.keys_from = keys_from
        self.workers = max(1, workers)
        for bucket_name, bucket in system.buckets.items():
            for rule in bucket.ownership:
                if rule.keys_from is not None and keys_from is None:
                    raise ObjectsConfigError(
                        f"systems.{name}.buckets.{bucket_name}.ownership: keys_from needs a "
                        "reader of SQL columns (the runtime passes `keys_from=`)"
                    )
                if rule.key_template is not None:
                    _check_template(name, bucket_name, rule.key_template)
        self._owns_client = client is None
        self.client = client if client is not None else boto3.client(
            "s3",
            endpoint_url=resolve_endpoint(name, system, ObjectsConfigError),
            region_name=system.region,
        )

    # -- contract -----------------------------------------------------------------------
    def collect(self, subjects: Sequence[Subject], scope: Scope) -> dict[str, Records]:
        records: dict[str, Records] = {s.request_id: {} for s in subjects}
        for bucket_name, bucket in self._in_scope(scope, subjects):
            state = self._state(bucket_name)
            found = self._find(bucket_name, bucket, subjects, state)
            current = [(obj, cur) for obj in found.values() if (cur := obj.current())]
            extra = self._extras(bucket_name, bucket, state, current)
            for obj, cur in sorted(current, key=lambda pair: pair[0].key):
                record = {
                    "key": obj.key,
                    "size": cur.size,
                    "last_modified": _iso(cur.last_modified),
                    "etag": cur.etag,
                    "version_id": cur.version_id,
                    **extra.get(obj.key, {}),
                }
                for rid in sorted(obj.owners):
                    records[rid].setdefault(bucket_name, []).append(dict(record))
        return records

    def erase(
        self,
        subjects: Sequence[Subject],
        scope: Scope,
        pseudonymizers: Mapping[str, Pseudonymizer],
        prepared: Callable[[Mapping[str, Outcome]], None] | None = None,
    ) -> dict[str, Outcome]:
        """Delete what the batch owns in every bucket in scope (a retained object keeps its
        held versions). Every bucket is planned first; `prepared`, if given, is told the
        outcomes before the first deletion (to record them where a crash part-way cannot
        lose them); if it raises, nothing is deleted."""
        del pseudonymizers  # objects are deleted or retained whole, never pseudonymized
        outcomes = {s.request_id: Outcome() for s in subjects}
        plans: list[tuple[str, list[dict[str, str]], list[dict[str, str]]]] = []
        for bucket_name, bucket in self._in_scope(scope, subjects):
            state = self._state(bucket_name)
            found = self._find(bucket_name, bucket, subjects, state)
            if bucket.action is Action.RETAIN:
                _retain_all(bucket_name, bucket, found, outcomes)
                continue
            locks = self._locks(bucket_name, state, found.values())
            removals: list[dict[str, str]] = []
            markers: list[dict[str, str]] = []
            retained: dict[str, list[str]] = {}
            for obj in found.values():
                reasons = sorted({r for e in obj.versions() for r in locks.get(_vid(obj, e), [])})
                if not reasons:
                    removals += [_identifier(obj.key, e) for e in obj.entries]
                    continue
                retained[obj.key] = reasons
                removals += [
                    _identifier(obj.key, e) for e in obj.versions() if not locks.get(_vid(obj, e))
                ]
                if obj.current() is not None or not any(e.is_latest for e in obj.entries):
                    markers.append({"Key": obj.key})  # keep the retained version out of sight
            statements = []
            if removals:
                statements.append(_op_hash("delete_objects", bucket_name))
            if markers:
                statements.append(_op_hash("delete_objects(delete marker)", bucket_name))
            keys_of = _by_owner(found)
            for rid, outcome in outcomes.items():
                part = outcome.part(bucket_name)
                mine = keys_of.get(rid, [])
                part.found = len(mine)
                part.retained = sum(1 for key in mine if key in retained)
                part.deleted = part.found - part.retained
                part.retain_reasons = sorted({r for key in mine for r in retained.get(key, [])})
                if mine:
                    part.statements = list(statements)
            plans.append((bucket_name, removals, markers))
        if prepared is not None:
            prepared(outcomes)
        failures: list[str] = []
        for bucket_name, removals, markers in plans:
            errors: Counter[str] = Counter()
            if removals:
                errors += self._delete(bucket_name, removals)
            if markers:
                errors += self._delete(bucket_name, markers)
            if errors:
                total = sum(errors.values())
                codes = ", ".join(f"{code} x{n}" for code, n in sorted(errors.items()))
                failures.append(
                    f"systems.{self.name}.buckets.{bucket_name}: delete_objects refused "
                    f"{total} of {len(removals) + len(markers)} object versions ({codes})"
                )
        if failures:
            # Raised after every bucket was attempted: a retry only redoes what failed.
            raise ObjectsError("; ".join(failures))
        return outcomes

    def verify(self, subjects: Sequence[Subject], scope: Scope) -> dict[str, Outcome]:
        outcomes = {s.request_id: Outcome() for s in subjects}
        for bucket_name, bucket in self._in_scope(scope, subjects):
            state = self._state(bucket_name)
            found = self._find(bucket_name, bucket, subjects, state)
            if bucket.action is Action.RETAIN:
                _retain_all(bucket_name, bucket, found, outcomes)
                continue
            locks = self._locks(bucket_name, state, found.values())
            retained: dict[str, list[str]] = {}
            for obj in found.values():
                held = [locks.get(_vid(obj, e), []) for e in obj.versions()]
                # Retained means: every version left is locked (delete markers may stay).
                if held and all(held):
                    retained[obj.key] = sorted({r for reasons in held for r in reasons})
            keys_of = _by_owner(found)
            for rid, outcome in outcomes.items():
                part = outcome.part(bucket_name)
                mine = keys_of.get(rid, [])
                part.found = len(mine)
                part.retained = sum(1 for key in mine if key in retained)
                part.remaining = part.found - part.retained
                part.retain_reasons = sorted({r for key in mine for r in retained.get(key, [])})
        return outcomes

    # -- delivery (access packages) -------------------------------------------------------
    def fetch(self, bucket: str, key: str, version_id: str | None = None) -> bytes:
        """One collected object's bytes: the version collect saw, when the bucket has them."""
        extra = {"VersionId": version_id} if version_id else {}
        body = self._call(bucket, "get_object", Bucket=bucket, Key=key, **extra)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def presign(
        self, bucket: str, key: str, version_id: str | None, expires_in: int
    ) -> str:
        """An expiring GET link to one object, for objects too large to carry in a package."""
        params = {"Bucket": bucket, "Key": key, **({"VersionId": version_id} if version_id else {})}
        return str(self._call(bucket, "generate_presigned_url", ClientMethod="get_object",
                              Params=params, ExpiresIn=expires_in))

    def dispose(self) -> None:
        """Close the client this connector built (a client passed in stays its owner's)."""
        if self._owns_client:
            self.client.close()

    # -- finding ------------------------------------------------------------------------
    def _in_scope(
        self, scope: Scope, subjects: Sequence[Subject]
    ) -> list[tuple[str, Bucket]]:
        """The buckets in scope, once every key template has been filled for every subject:
        an unsafe identity stops the whole call before any request is made."""
        buckets = [
            (name, bucket) for name, bucket in self.system.buckets.items()
            if scope is None or bucket.category in scope
        ]
        for _name, bucket in buckets:
            for rule in bucket.ownership:
                if rule.key_template is not None:
                    for subject in subjects:
                        fill_template(rule.key_template, subject)
        return buckets

    def _state(self, bucket: str) -> _BucketState:
        status = self._call(bucket, "get_bucket_versioning", Bucket=bucket).get("Status")
        versioned = status in ("Enabled", "Suspended")
        locking = False
        if versioned:
            try:
                config = self.client.get_object_lock_configuration(Bucket=bucket)
            except ClientError as exc:
                if error_code(exc) not in _NO_LOCK_CONFIGURATION:
                    raise self._error(bucket, "get_object_lock_configuration", exc) from None
            except BotoCoreError as exc:
                raise self._error(bucket, "get_object_lock_configuration", exc) from None
            else:
                enabled = config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
                locking = enabled == "Enabled"
        return _BucketState(versioned=versioned, locking=locking)

    def _find(
        self, bucket_name: str, bucket: Bucket, subjects: Sequence[Subject], state: _BucketState
    ) -> dict[str, _Object]:
        """The subjects' objects in one bucket: key -> entries and owning request ids."""
        prefixes: dict[str, set[str]] = defaultdict(set)
        exact: dict[str, set[str]] = defaultdict(set)
        tag_rules: list[ObjectOwnership] = []
        for rule in bucket.ownership:
            if rule.key_template is not None:
                for subject in subjects:
                    for key in fill_template(rule.key_template, subject):
                        target = prefixes if rule.key_template.endswith("/") else exact
                        target[key].add(subject.request_id)
            elif rule.keys_from is not None:
                assert self.keys_from is not None  # checked at construction
                for rid, keys in self.keys_from(subjects, rule.keys_from).items():
                    for listed_key in keys:
                        if isinstance(listed_key, str) and listed_key:
                            exact[listed_key].add(rid)
            else:
                tag_rules.append(rule)

        roots = _fold(set(prefixes) | set(exact))
        listings = dict(zip(
            roots, self._map(lambda p: self._list(bucket_name, p, state), roots), strict=True
        ))
        found: dict[str, _Object] = {}
        for listing in listings.values():
            for key, entries in listing.items():
                owners = set(exact.get(key, ()))
                for boundary in _slash_prefixes(key):
                    owners |= prefixes.get(boundary, set())
                if owners:
                    found.setdefault(key, _Object(key, entries)).owners |= owners

        for rule in tag_rules:
            for key, owners in self._tagged(bucket_name, rule, subjects, state, listings).items():
                obj = found.get(key)
                if obj is None:
                    obj = found[key] = _Object(key, listings[rule.tag_prefix][key])
                obj.owners |= owners
        return found

    def _tagged(
        self,
        bucket_name: str,
        rule: ObjectOwnership,
        subjects: Sequence[Subject],
        state: _BucketState,
        listings: dict[str, dict[str, list[_Entry]]],
    ) -> dict[str, set[str]]:
        """Keys under the rule's tag_prefix whose tag names a subject: key -> request ids."""
        wanted: dict[str, set[str]] = defaultdict(set)
        for subject in subjects:
            for value in subject.values(rule.tag_identity):
                wanted[value].add(subject.request_id)
        if not wanted:
            return {}
        if rule.tag_prefix not in listings:
            listings[rule.tag_prefix] = self._list(bucket_name, rule.tag_prefix, state)
        listed = listings[rule.tag_prefix]
        targets = [(key, e) for key, entries in listed.items() for e in entries if not e.marker]

        def read(target: tuple[str, _Entry]) -> list[dict[str, str]]:
            key, entry = target
            args: dict[str, Any] = {"Bucket": bucket_name, "Key": key}
            if entry.version_id is not None:
                args["VersionId"] = entry.version_id
            tag_set: list[dict[str, str]] = self._call(
                bucket_name, "get_object_tagging", **args
            ).get("TagSet", [])
            return tag_set

        out: dict[str, set[str]] = defaultdict(set)
        for (tagged_key, _entry), tags in zip(targets, self._map(read, targets), strict=True):
            for tag in tags:
                if tag.get("Key") != rule.tag:
                    continue
                owner_value = _normalized(rule.tag_identity, tag.get("Value", ""))
                if owner_value is not None and owner_value in wanted:
                    out[tagged_key] |= wanted[owner_value]
        return out

    def _list(self, bucket: str, prefix: str, state: _BucketState) -> dict[str, list[_Entry]]:
        out: dict[str, list[_Entry]] = defaultdict(list)
        if state.versioned:
            for page in self._pages(bucket, "list_object_versions", Bucket=bucket, Prefix=prefix):
                for v in page.get("Versions", []):
                    out[v["Key"]].append(_Entry(
                        version_id=v.get("VersionId"), is_latest=bool(v.get("IsLatest")),
                        size=int(v.get("Size", 0)), last_modified=v.get("LastModified"),
                        etag=str(v.get("ETag", "")).strip('"'),
                    ))
                for m in page.get("DeleteMarkers", []):
                    out[m["Key"]].append(_Entry(
                        version_id=m.get("VersionId"), is_latest=bool(m.get("IsLatest")),
                        marker=True, last_modified=m.get("LastModified"),
                    ))
        else:
            for page in self._pages(bucket, "list_objects_v2", Bucket=bucket, Prefix=prefix):
                for o in page.get("Contents", []):
                    out[o["Key"]].append(_Entry(
                        version_id=None, is_latest=True, size=int(o.get("Size", 0)),
                        last_modified=o.get("LastModified"),
                        etag=str(o.get("ETag", "")).strip('"'),
                    ))
        return dict(out)

    def _locks(
        self, bucket: str, state: _BucketState, objects: Iterable[_Object]
    ) -> dict[tuple[str, str | None], list[str]]:
        """(key, version id) -> why S3 Object Lock keeps that version (empty: it does not)."""
        if not state.locking:
            return {}
        targets = [(obj.key, e.version_id) for obj in objects for e in obj.versions()]
        now = datetime.now(UTC)

        def read(target: tuple[str, str | None]) -> list[str]:
            key, version_id = target
            args: dict[str, Any] = {"Bucket": bucket, "Key": key}
            if version_id is not None:
                args["VersionId"] = version_id
            try:
                head = self.client.head_object(**args)
            except ClientError as exc:
                if error_code(exc) in ("404", "NoSuchKey", "NoSuchVersion"):
                    return []  # gone since the listing: nothing left to keep
                raise self._error(bucket, "head_object", exc) from None
            except BotoCoreError as exc:
                raise self._error(bucket, "head_object", exc) from None
            reasons = []
            if head.get("ObjectLockLegalHoldStatus") == "ON":
                reasons.append("legal hold")
            until = head.get("ObjectLockRetainUntilDate")
            if head.get("ObjectLockMode") and isinstance(until, datetime) and until > now:
                reasons.append(
                    f"retention ({head['ObjectLockMode']}) until "
                    f"{until.astimezone(UTC).date().isoformat()}"
                )
            return reasons

        return dict(zip(targets, self._map(read, targets), strict=True))

    def _extras(
        self,
        bucket_name: str,
        bucket: Bucket,
        state: _BucketState,
        current: list[tuple[_Object, _Entry]],
    ) -> dict[str, dict[str, Any]]:
        """What an access request gets of each object beyond its metadata."""
        if bucket.collect == "metadata":
            return {}

        def params(obj: _Object, entry: _Entry) -> dict[str, Any]:
            args: dict[str, Any] = {"Bucket": bucket_name, "Key": obj.key}
            if state.versioned and entry.version_id is not None:
                args["VersionId"] = entry.version_id
            return args

        if bucket.collect == "presigned":
            out: dict[str, dict[str, Any]] = {}
            for obj, entry in current:
                try:
                    url = self.client.generate_presigned_url(
                        "get_object", Params=params(obj, entry), ExpiresIn=bucket.presign_seconds
                    )
                except (ClientError, BotoCoreError) as exc:
                    raise self._error(bucket_name, "generate_presigned_url", exc) from None
                out[obj.key] = {"url": url, "url_expires_in": bucket.presign_seconds}
            return out

        def fetch(pair: tuple[_Object, _Entry]) -> bytes:
            body = self._call(bucket_name, "get_object", **params(*pair))["Body"]
            try:
                data: bytes = body.read()
            finally:
                body.close()
            return data

        contents = self._map(fetch, current)
        return {
            obj.key: {"content_base64": base64.b64encode(data).decode("ascii")}
            for (obj, _entry), data in zip(current, contents, strict=True)
        }

    # -- erasing ------------------------------------------------------------------------
    def _delete(self, bucket: str, objects: list[dict[str, str]]) -> Counter[str]:
        """Delete in batches of 1,000; returns S3's per-object error codes and counts."""
        try:
            return delete_versions(self.client, bucket, objects)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(bucket, "delete_objects", exc) from None

    # -- plumbing -----------------------------------------------------------------------
    def _call(self, bucket: str, operation: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, operation)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(bucket, operation, exc) from None

    def _pages(self, bucket: str, operation: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        try:
            yield from self.client.get_paginator(operation).paginate(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(bucket, operation, exc) from None

    def _error(self, bucket: str, operation: str, exc: Exception) -> ObjectsError:
        # Only the error code: S3's messages and botocore's parameter errors can quote keys.
        what = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
        return ObjectsError(f"systems.{self.name}.buckets.{bucket}: {operation} failed: {what}")

    def _map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if len(items) <= 1 or self.workers == 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(items))) as pool:
            return list(pool.map(fn, items))


# -- module helpers ---------------------------------------------------------------------


def fill_template(template: str, subject: Subject) -> list[str]:
    """Every key (or prefix) the template names for the subject: one per combination of
    the subject's identities of the placeholders' types; none if the subject has no identity
    of a placeholder's type. Raises `UnsafeKey` for a value that could escape its place."""
    choices: list[list[str]] = []
    for literal, field_name, _spec, _conversion in string.Formatter().parse(template):
        choices.append([literal])
        if field_name is None:
            continue
        kind = IdentityType(field_name)
        values = subject.values(kind)
        for value in values:
            problem = unsafe_reason(value)
            if problem:
                raise UnsafeKey(
                    f"key_template {template!r}: a {kind.value} identity {problem}; "
                    "refused so that no key outside its prefix can be touched"
                )
        choices.append(values)
    return ["".join(parts) for parts in itertools.product(*choices)]


def _check_template(system: str, bucket: str, template: str) -> None:
    for _literal, field_name, spec, conversion in string.Formatter().parse(template):
        if field_name is not None and (spec or conversion):
            raise ObjectsConfigError(
                f"systems.{system}.buckets.{bucket}.ownership: key_template {template!r}: "
                "placeholders take no format spec or conversion"
            )


def _fold(keys: set[str]) -> list[str]:
    """The listings that cover every prefix and exact key: one that starts with another is
    served by the other's listing (`uploads/1/a/` by `uploads/1/`)."""
    roots: list[str] = []
    for key in sorted(keys):
        if roots and key.startswith(roots[-1]):
            continue
        roots.append(key)
    return roots


def _slash_prefixes(key: str) -> Iterator[str]:
    """`a/b/c` -> `a/`, `a/b/`: the only prefixes a template ending in '/' can produce."""
    start = 0
    while (i := key.find("/", start)) != -1:
        yield key[: i + 1]
        start = i + 1


def _normalized(kind: IdentityType, raw: str) -> str | None:
    try:
        return normalize(kind, raw)
    except IdentityError:
        return None


def _retain_all(
    bucket_name: str, bucket: Bucket, found: Mapping[str, _Object], outcomes: dict[str, Outcome]
) -> None:
    """A bucket the data map retains: everything found is reported as kept, with why."""
    keys_of = _by_owner(found)
    for rid, outcome in outcomes.items():
        part = outcome.part(bucket_name)
        part.found = part.retained = len(keys_of.get(rid, []))
        if part.retained:
            part.retain_reasons = [bucket.reason or "retained"]


def _by_owner(found: Mapping[str, _Object]) -> dict[str, list[str]]:
    """Each request's keys, in the order found: one pass over what the batch found, not a
    pass per request."""
    out: dict[str, list[str]] = defaultdict(list)
    for obj in found.values():
        for rid in obj.owners:
            out[rid].append(obj.key)
    return out


def _vid(obj: _Object, entry: _Entry) -> tuple[str, str | None]:
    return (obj.key, entry.version_id)


def _identifier(key: str, entry: _Entry) -> dict[str, str]:
    if entry.version_id is None:
        return {"Key": key}
    return {"Key": key, "VersionId": entry.version_id}


def _op_hash(operation: str, bucket: str) -> str:
    """Proof of what ran, without the keys: the operation and the bucket."""
    return hashlib.sha256(f"{operation} bucket={bucket}".encode()).hexdigest()


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None
