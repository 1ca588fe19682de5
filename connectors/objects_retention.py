"""Retention sweeps of an object bucket (privacy policy 6.3.1(3): data is deleted when its
retention period ends; uploads of deleted accounts): the keys under a rule's bucket and
prefix whose period ran out, counted (a dry run) or deleted with every version and delete
marker, in bounded batches.

One listing pass, page by page (keyset markers, so deletions behind the marker cannot
shift what the next page returns); the keys come out complete and in key order and are
judged and swept `batch` at a time, so memory and the cost per key do not grow with the
bucket. A key's period counts from its newest entry's LastModified (`last_modified`), or
from a tag of its newest version holding an ISO 8601 date (`tag:<name>`; a time without a
zone is UTC). A key without a readable date is kept and counted `undated`.

Whose a key is: its account id read from the bucket's key template (`{user_id}`), else the
bucket's owner tag on every version. Legal holds are honoured by account: once per batch
the holds callback is asked about the owners of the batch's expired keys, and a held key,
or one whose owner cannot be read, is kept and counted `held` (a sweep never guesses whom
a hold protects). With no hold over the rule no owner is looked up, and no tag read for
it. An `orphans_of` rule only takes keys whose account is gone (asked once per batch);
a key without a readable owner is nobody's orphan.

Deletion names every listed version and delete marker by VersionId, so a version written
after the listing survives. A version S3 keeps (Object Lock, AccessDenied) is counted
`locked` and its key is not counted as deleted; its delete markers are kept, and if a
locked version of the listing is left on top one is put over it, so retained data stays
stored but is no longer served (as the connector does for erasure). An object without
versions (an unversioned bucket, a suspended bucket's `null` version) is re-read first and
left if it was rewritten since the listing. A second sweep finds nothing more to delete.

Errors name the rule, the bucket, the operation and S3's error code: never a key, a tag
value or an account id (keys name people).
"""

from __future__ import annotations

import re
import string
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from connectors.objects import ObjectsError
from connectors.s3 import error_code, refused_deletions, versioned
from dsrflow.datamap import ObjectRetentionRule, ObjectsSystem
from dsrflow.identities import IdentityError, IdentityType, normalize, unsafe_reason

# Account ids -> those of them whose data a legal hold keeps (in this rule's scope).
HeldAccounts = Callable[[Iterable[str]], set[str]]
# Account ids -> those of them that still exist (the caller reads `orphans_of`).
ExistingAccounts = Callable[[Iterable[str]], set[str]]

BATCH = 1000  # keys a dry run judges at a time
LIST_PAGE = 1000  # entries per listing request (S3's maximum)
WORKERS = 8  # concurrent per-object reads (boto3 clients are thread-safe)
_GONE = frozenset({"404", "NoSuchKey", "NoSuchVersion"})
_NULL = "null"  # the version id of an object written while versioning was off

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ObjectsExpired:
    """What a rule would delete at a cutoff: counts and the oldest date, never a key."""

    objects: int  # keys that would be deleted (every version)
    versions: int  # their versions and delete markers
    held: int  # expired keys a hold keeps (or whose owner cannot be read while one covers)
    undated: int  # keys whose date is missing or unreadable: kept
    oldest: datetime | None  # of the expired keys, held ones included


@dataclass(frozen=True)
class ObjectsSwept:
    objects: int  # keys whose every listed version and delete marker was deleted
    versions: int  # versions and delete markers deleted
    held: int
    undated: int
    locked: int  # versions and markers S3 refused to delete: kept
    batches: int
    longest_batch_s: float  # judging and deleting one batch (listing pages not included)


def expired(client: Any, system: ObjectsSystem, rule: ObjectRetentionRule, cutoff: datetime,
            held: HeldAccounts | None, existing: ExistingAccounts | None) -> ObjectsExpired:
    """Count what `rule` would delete at `cutoff`; changes nothing."""
    sweeper = _Sweeper(client, system, rule, cutoff, held, existing)
    objects = versions = held_keys = undated = 0
    oldest: datetime | None = None
    for keys in sweeper.batches(BATCH):
        judged = sweeper.judge(keys)
        objects += len(judged.doomed)
        versions += sum(k.size() for k in judged.doomed)
        held_keys += judged.held
        undated += judged.undated
        oldest = _earlier(oldest, judged.oldest)
    return ObjectsExpired(objects, versions, held_keys, undated, oldest)


def sweep(client: Any, system: ObjectsSystem, rule: ObjectRetentionRule, cutoff: datetime,
          held: HeldAccounts | None, existing: ExistingAccounts | None,
          batch: int = 1000) -> ObjectsSwept:
    """Delete the keys of `rule` past `cutoff`, `batch` keys at a time, leaving those a
    legal hold keeps (`held` None: no hold covers this rule)."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    sweeper = _Sweeper(client, system, rule, cutoff, held, existing)
    tally = Counter[str]()
    longest = 0.0
    for keys in sweeper.batches(batch):
        started = time.perf_counter()
        judged = sweeper.judge(keys)
        deleted = sweeper.delete(judged.doomed)
        longest = max(longest, time.perf_counter() - started)
        tally.update(objects=deleted.objects, versions=deleted.versions, locked=deleted.locked,
                     held=judged.held, undated=judged.undated, batches=1)
    return ObjectsSwept(objects=tally["objects"], versions=tally["versions"],
                        held=tally["held"], undated=tally["undated"], locked=tally["locked"],
                        batches=tally["batches"], longest_batch_s=longest)


# -- what the listing says ----------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    """One version or delete marker (version_id None: an unversioned bucket's object)."""

    version_id: str | None
    last_modified: datetime
    etag: str = ""
    latest: bool = False


@dataclass
class _Key:
    name: str
    versions: list[_Entry] = field(default_factory=list)  # as listed: newest first
    markers: list[_Entry] = field(default_factory=list)

    def newest(self) -> _Entry | None:
        """The newest version that holds data (a delete marker may be above it)."""
        return next((v for v in self.versions if v.latest),
                    self.versions[0] if self.versions else None)

    def touched(self) -> datetime:
        return max(e.last_modified for e in [*self.versions, *self.markers])

    def size(self) -> int:
        return len(self.versions) + len(self.markers)


@dataclass
class _Judged:
    doomed: list[_Key]
    held: int
    undated: int
    oldest: datetime | None


@dataclass
class _Deleted:
    objects: int
    versions: int
    locked: int


TagSet = list[dict[str, str]] | None  # None: the version is gone since the listing


class _Sweeper:
    def __init__(self, client: Any, system: ObjectsSystem, rule: ObjectRetentionRule,
                 cutoff: datetime, held: HeldAccounts | None,
                 existing: ExistingAccounts | None) -> None:
        if cutoff.tzinfo is None or cutoff.utcoffset() is None:
            raise ValueError("cutoff must be timezone-aware")
        if (existing is None) != (rule.orphans_of is None):
            raise ValueError("an orphans_of rule needs `existing`, and only such a rule")
        self.client = client
        self.rule = rule
        self.bucket = rule.bucket
        self.cutoff = cutoff
        self.held = held
        self.existing = existing
        self.date_tag = (rule.counts_from.removeprefix("tag:")
                         if rule.counts_from.startswith("tag:") else None)
        template = system.owner_template(rule.bucket)
        self.owner_key = _owner_pattern(template) if template is not None else None
        self.owner_tag = system.owner_tag(rule.bucket)
        self.versioned = bool(self._call("get_bucket_versioning", versioned, client,
                                         rule.bucket))

    # -- listing ------------------------------------------------------------------------
    def batches(self, size: int) -> Iterator[list[_Key]]:
        """The keys that may have run out, `size` at a time, as the listing goes."""
        batch: list[_Key] = []
        for key in self._listed():
            # Without a tag to read, the listing alone says a key is not past the cutoff.
            if self.date_tag is None and not key.touched() < self.cutoff:
                continue
            batch.append(key)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _listed(self) -> Iterator[_Key]:
        if self.versioned:
            yield from self._listed_versions()
            return
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.rule.prefix,
                                "MaxKeys": LIST_PAGE}
        while True:
            page = self._call("list_objects_v2", self.client.list_objects_v2, **args)
            contents = page.get("Contents", [])
            for o in contents:
                yield _Key(str(o["Key"]), versions=[_Entry(
                    None, _aware(o["LastModified"]), _etag(o), latest=True)])
            if not page.get("IsTruncated"):
                return
            if not contents:
                raise ObjectsError(self._where("list_objects_v2 truncated an empty page"))
            # StartAfter, not a continuation token: keyed on the last key seen, whatever
            # was deleted before it meanwhile.
            args["StartAfter"] = contents[-1]["Key"]

    def _listed_versions(self) -> Iterator[_Key]:
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.rule.prefix,
                                "MaxKeys": LIST_PAGE}
        pending: dict[str, _Key] = {}
        while True:
            page = self._call("list_object_versions", self.client.list_object_versions,
                              **args)
            for v in page.get("Versions", []):
                name = str(v["Key"])
                pending.setdefault(name, _Key(name)).versions.append(_Entry(
                    str(v["VersionId"]), _aware(v["LastModified"]), _etag(v),
                    latest=bool(v.get("IsLatest"))))
            for m in page.get("DeleteMarkers", []):
                name = str(m["Key"])
                pending.setdefault(name, _Key(name)).markers.append(_Entry(
                    str(m["VersionId"]), _aware(m["LastModified"])))
            if not page.get("IsTruncated"):
                for name in sorted(pending):
                    yield pending[name]
                return
            next_key, next_version = page.get("NextKeyMarker"), page.get("NextVersionIdMarker")
            if not next_key or (next_key, next_version) == (args.get("KeyMarker"),
                                                            args.get("VersionIdMarker")):
                raise ObjectsError(self._where("list_object_versions did not advance"))
            # The last key of a page may go on in the next one: every other key is whole.
            unfinished = pending.pop(next_key, None) if next_version else None
            for name in sorted(pending):
                yield pending[name]
            pending = {next_key: unfinished} if unfinished is not None else {}
            args["KeyMarker"] = next_key
            if next_version:
                args["VersionIdMarker"] = next_version
            else:
                args.pop("VersionIdMarker", None)

    # -- judging ------------------------------------------------------------------------
    def judge(self, keys: Sequence[_Key]) -> _Judged:
        """Which of a batch's keys go: past the cutoff, an orphan if the rule wants one,
        and free of holds."""
        tags: dict[tuple[str, str | None], TagSet] = {}
        undated = 0
        dated: list[tuple[_Key, datetime]] = []
        if self.date_tag is None:
            dated = [(k, k.touched()) for k in keys]
        else:
            newest = [(k, v) for k in keys if (v := k.newest()) is not None]
            tags.update(self._tags(newest))
            for key in keys:
                version = key.newest()
                if version is None:
                    undated += 1  # delete markers only: no version to carry a date
                    continue
                tag_set = tags[(key.name, version.version_id)]
                if tag_set is None:
                    continue  # gone since the listing: the next sweep sees what is left
                when = _date(_tag(tag_set, self.date_tag))
                if when is None:
                    undated += 1
                elif when < self.cutoff:
                    dated.append((key, when))
        if self.held is None and self.existing is None:
            return _Judged([k for k, _ in dated], 0, undated, _oldest(dated))

        owners = self._owners([k for k, _ in dated], tags)
        if self.existing is not None:
            alive = _ask(self.existing, {o for k, _ in dated for o in owners[k.name]})
            # No readable owner: nobody's orphan.
            dated = [(k, when) for k, when in dated
                     if owners[k.name] and not owners[k.name] & alive]
        doomed = [k for k, _ in dated]
        if self.held is not None:
            kept = _ask(self.held, {o for k in doomed for o in owners[k.name]})
            doomed = [k for k in doomed if owners[k.name] and not owners[k.name] & kept]
        return _Judged(doomed, len(dated) - len(doomed), undated, _oldest(dated))

    def _owners(self, keys: Sequence[_Key], tags: dict[tuple[str, str | None], TagSet]
                ) -> dict[str, frozenset[str]]:
        """Key -> the accounts it belongs to; empty if that cannot be read. By tag, every
        version's owner counts (an older version may be someone else's), and a version
        without one leaves the key's owners unknown."""
        out: dict[str, frozenset[str]] = {}
        by_tag: list[_Key] = []
        for key in keys:
            match = self.owner_key.fullmatch(key.name) if self.owner_key else None
            if match is not None:
                out[key.name] = _accounts([match.group("user_id")])
            elif self.owner_tag is not None and key.versions:
                by_tag.append(key)
            else:
                out[key.name] = frozenset()
        tags.update(self._tags([(k, v) for k in by_tag for v in k.versions
                                if (k.name, v.version_id) not in tags]))
        for key in by_tag:
            assert self.owner_tag is not None
            values = [tags[(key.name, v.version_id)] for v in key.versions]
            out[key.name] = _accounts([_tag(t, self.owner_tag) if t is not None else None
                                       for t in values])
        return out

    def _tags(self, targets: Sequence[tuple[_Key, _Entry]]
              ) -> dict[tuple[str, str | None], TagSet]:
        def read(target: tuple[_Key, _Entry]) -> TagSet:
            key, entry = target
            args: dict[str, Any] = {"Bucket": self.bucket, "Key": key.name}
            if entry.version_id is not None:
                args["VersionId"] = entry.version_id
            try:
                tag_set: list[dict[str, str]] = self.client.get_object_tagging(
                    **args).get("TagSet", [])
            except ClientError as exc:
                if error_code(exc) in _GONE:
                    return None
                raise self._error("get_object_tagging", exc) from None
            except BotoCoreError as exc:
                raise self._error("get_object_tagging", exc) from None
            return tag_set

        found = _map(read, targets)
        return {(k.name, e.version_id): t for (k, e), t in zip(targets, found, strict=True)}

    # -- deleting -----------------------------------------------------------------------
    def delete(self, doomed: Sequence[_Key]) -> _Deleted:
        """Every listed version, then the delete markers of the keys whose versions all
        went: a marker over a version S3 keeps stays where it is."""
        if not doomed:
            return _Deleted(0, 0, 0)
        # A version without an id of its own can be replaced under the same name: re-read.
        unsure = [(k, v) for k in doomed for v in k.versions
                  if v.version_id is None or v.version_id == _NULL]
        changed = {k.name for (k, v), same in zip(unsure, _map(self._unchanged, unsure),
                                                    strict=True) if not same}
        first = [_identifier(k.name, v) for k in doomed if k.name not in changed
                 for v in k.versions]
        refused, locked = self._remove(first, {k.name for k in doomed})
        whole = [k for k in doomed if k.name not in changed and k.name not in refused]
        second = [_identifier(k.name, m) for k in whole for m in k.markers]
        refused_markers, locked_markers = self._remove(second, {k.name for k in whole})
        if self.versioned:
            self._hide([k for k in doomed if k.name in refused])
        return _Deleted(
            objects=sum(1 for k in whole if k.name not in refused_markers),
            versions=len(first) + len(second) - locked - locked_markers,
            locked=locked + locked_markers,
        )

    def _remove(self, objects: list[dict[str, str]], keys: set[str]) -> tuple[set[str], int]:
        """Delete; (the keys S3 refused some of, how many it refused)."""
        if not objects:
            return set(), 0
        refusals = self._call("delete_objects", refused_deletions, self.client, self.bucket,
                              objects)
        refused = {key for key, _version, _code in refusals}
        if refused - keys:
            refused = set(keys)  # a refusal naming no key of ours: none of them is sure
        return refused, len(refusals)

    def _unchanged(self, target: tuple[_Key, _Entry]) -> bool:
        """Whether an object is still the one listed (not rewritten, not gone)."""
        key, entry = target
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key.name}
        if entry.version_id is not None:
            args["VersionId"] = entry.version_id
        try:
            head = self.client.head_object(**args)
        except ClientError as exc:
            if error_code(exc) in _GONE:
                return False
            raise self._error("head_object", exc) from None
        except BotoCoreError as exc:
            raise self._error("head_object", exc) from None
        return (_second(_aware(head["LastModified"])) == _second(entry.last_modified)
                and _etag(head) == entry.etag)

    def _hide(self, keys: Sequence[_Key]) -> None:
        """Put a delete marker over a key whose current version is one S3 kept of the
        listing (a version written since is someone's new upload: left alone)."""
        def shown(key: _Key) -> bool:
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=key.name)
            except ClientError as exc:
                if error_code(exc) in _GONE:
                    return False  # a delete marker is on top
                raise self._error("head_object", exc) from None
            except BotoCoreError as exc:
                raise self._error("head_object", exc) from None
            listed = {(v.version_id, v.etag) for v in key.versions}
            return (str(head.get("VersionId")), _etag(head)) in listed

        visible = [k for k, shows in zip(keys, _map(shown, keys), strict=True) if shows]
        if visible:
            # Refusals are not counted again: the key's kept versions already were.
            self._call("delete_objects", refused_deletions, self.client, self.bucket,
                       [{"Key": k.name} for k in visible])

    # -- plumbing -----------------------------------------------------------------------
    def _call(self, operation: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(operation, exc) from None

    def _error(self, operation: str, exc: Exception) -> ObjectsError:
        # Only the error code: S3's messages and botocore's parameter errors can quote keys.
        what = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
        return ObjectsError(self._where(f"{operation} failed: {what}"))

    def _where(self, message: str) -> str:
        return f"retention {self.rule.name}: buckets.{self.bucket}: {message}"


# -- module helpers ---------------------------------------------------------------------
def _owner_pattern(template: str) -> re.Pattern[str]:
    """A key template as a pattern: `{user_id}` captured, every placeholder one path
    segment; a template ending in '/' is a prefix."""
    parts: list[str] = []
    named = False
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is None:
            continue
        if name == "user_id":
            parts.append("(?P=user_id)" if named else "(?P<user_id>[^/]+)")
            named = True
        else:
            parts.append("[^/]+")
    if template.endswith("/"):
        parts.append(".*")
    return re.compile("".join(parts), re.DOTALL)


def _accounts(raw: Sequence[str | None]) -> frozenset[str]:
    """The account ids named, as requests name them; empty if any cannot be one."""
    out: set[str] = set()
    for value in raw:
        try:
            account = normalize(IdentityType.USER_ID, value) if value is not None else None
        except IdentityError:
            account = None
        if account is None or unsafe_reason(account):
            return frozenset()
        out.add(account)
    return frozenset(out)


def _ask(callback: Callable[[Iterable[str]], set[str]], accounts: set[str]) -> set[str]:
    if not accounts:
        return set()
    return set(callback(sorted(accounts))) & accounts


def _tag(tag_set: list[dict[str, str]], name: str) -> str | None:
    return next((str(t.get("Value", "")) for t in tag_set if t.get("Key") == name), None)


def _date(value: str | None) -> datetime | None:
    """An ISO 8601 date or date and time; without a zone, UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _aware(value: Any) -> datetime:
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(str(value))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _second(value: datetime) -> datetime:
    # Listings and HEAD answers do not carry LastModified to the same precision.
    return value.astimezone(UTC).replace(microsecond=0)


def _etag(response: dict[str, Any]) -> str:
    return str(response.get("ETag", "")).strip('"')


def _identifier(key: str, entry: _Entry) -> dict[str, str]:
    if entry.version_id is None:
        return {"Key": key}
    return {"Key": key, "VersionId": entry.version_id}


def _oldest(dated: Sequence[tuple[_Key, datetime]]) -> datetime | None:
    return min((when for _, when in dated), default=None)


def _earlier(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a if b is None else b
    return min(a, b)


def _map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(WORKERS, len(items))) as pool:
        return list(pool.map(fn, items))
