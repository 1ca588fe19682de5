"""Retention sweeps (privacy policy 3.1, 6.3.1(3), 6.5, 7.4): the data map's retention
rules, applied system by system. Plain Python: the CLI (`dsrflow sweep`) and the
scheduled flow (`flows/retention.py`) call these.

Four kinds of rule, one outcome shape:
- SQL rows of a table (`retention`): deleted or anonymized in bounded batches;
- whole accounts (`account_retention`): each gets an erasure request of its own, run like
  any other (`pipeline/retention_accounts.py`);
- objects of a bucket: deleted with every version;
- lines of a log source: cut out, or whole files deleted.

A dry run counts, per rule, what is past the cutoff, what legal holds keep and the oldest
timestamp (no value). A sweep applies the rest and records each rule in the audit trail
(`retention.swept`). A rule whose holds cannot be honoured item by item (a held subject
with no identity on record to recognise, a hold over text logs) is skipped with the
reason: a sweep never guesses whom a hold protects.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from connectors import objects_retention, sql_accounts, sql_retention
from connectors.logs import LogsConnector
from connectors.logs import retention as logs_retention
from connectors.objects import ObjectsConnector
from dsrflow.datamap import (
    AccountRetentionRule,
    LogRetentionRule,
    LogsSystem,
    ObjectRetentionRule,
    ObjectsSystem,
    RetentionRule,
    SqlSystem,
)
from dsrflow.errors import safe_error
from dsrflow.identities import IdentityType, normalize
from pipeline import retention_accounts
from pipeline.runtime import Runtime

AnyRule = RetentionRule | AccountRetentionRule | ObjectRetentionRule | LogRetentionRule


@dataclass(frozen=True)
class RuleOutcome:
    system: str
    rule: str
    target: str  # the table, bucket or log source
    category: str
    action: str  # delete, anonymize, erase (accounts)
    unit: str  # what the counts count: rows, accounts, objects, lines
    cutoff: datetime
    expired: int | None = None  # past the cutoff (a dry run's count; accounts: also a sweep's)
    held: int = 0  # of them, kept by legal holds
    oldest: datetime | None = None  # dry run
    changed: int | None = None  # sweep: deleted, anonymized, or erasure requests filed
    files: int = 0  # logs: files deleted whole
    undated: int = 0  # no readable time (a tag, a log line): kept
    locked: int = 0  # objects: versions the store refused to delete (Object Lock)
    batches: int = 0
    longest_batch_s: float = 0.0
    seconds: float = 0.0
    skipped: str | None = None  # why the rule did not run


def rules(rt: Runtime) -> list[tuple[str, AnyRule]]:
    """(system, rule) of every retention rule of the data map, in its order."""
    found: list[tuple[str, AnyRule]] = []
    for name, system in rt.datamap.systems.items():
        if isinstance(system, SqlSystem):
            found += [(name, r) for r in system.retention]
            found += [(name, r) for r in system.account_retention]
        elif isinstance(system, ObjectsSystem | LogsSystem):
            found += [(name, r) for r in system.retention]
    return found


def find_rule(rt: Runtime, system: str, name: str) -> AnyRule:
    """A rule by its system and name (what a flow's task is given)."""
    return next(r for s, r in rules(rt) if s == system and r.name == name)


def dry_run(rt: Runtime, at: datetime | None = None) -> list[RuleOutcome]:
    """What each rule would touch now (counts and the oldest timestamp; no values)."""
    at = at or datetime.now(UTC)
    return [count(rt, system, rule, at) for system, rule in rules(rt)]


def run_sweep(rt: Runtime, at: datetime | None = None, batch: int = 1000) -> list[RuleOutcome]:
    """Apply every rule; each one's outcome is in the audit trail (`retention.swept`)."""
    at = at or datetime.now(UTC)
    return [apply(rt, system, rule, at, batch) for system, rule in rules(rt)]


def count(rt: Runtime, system: str, rule: AnyRule, at: datetime) -> RuleOutcome:
    """One rule's dry run."""
    base = _base(rt, system, rule, at)
    try:
        return _count(rt, base, rule, at)
    except (_Blind, logs_retention.HoldUnreadable) as exc:
        return replace(base, skipped=str(exc))
    except Exception as exc:  # one system down: the others are still counted
        return replace(base, skipped=f"could not count: {safe_error(exc)}")


def apply(rt: Runtime, system: str, rule: AnyRule, at: datetime, batch: int = 1000
          ) -> RuleOutcome:
    """One rule's sweep, recorded in the audit trail (`retention.swept`)."""
    base = _base(rt, system, rule, at)
    started = time.perf_counter()
    try:
        outcome = _apply(rt, base, rule, at, batch)
    except (_Blind, logs_retention.HoldUnreadable) as exc:
        outcome = replace(base, skipped=str(exc))
    except Exception as exc:  # what the batches before committed stays done
        outcome = replace(base, skipped=f"failed: {safe_error(exc)}")
    else:
        outcome = replace(outcome, seconds=time.perf_counter() - started)
    rt.ledger.audit("retention.swept", None, {
        "system": system, "rule": rule.name, "target": outcome.target,
        "category": outcome.category, "action": outcome.action, "unit": outcome.unit,
        "cutoff": outcome.cutoff.isoformat(), "expired": outcome.expired,
        "changed": outcome.changed, "held": outcome.held, "files": outcome.files,
        "undated": outcome.undated, "locked": outcome.locked, "batches": outcome.batches,
        "longest_batch_s": round(outcome.longest_batch_s, 3),
        "seconds": round(outcome.seconds, 3), "skipped": outcome.skipped,
    })
    return outcome


def summary(o: RuleOutcome, dry_run: bool) -> str:
    """One line on a rule's outcome, for logs and terminals: names and counts only."""
    if dry_run:
        return (f"{o.system} {o.rule}: would {o.action} {o.expired} {o.unit} of {o.target} "
                f"({o.held} held, {o.undated} undated)")
    done = (f"erasures filed for {o.changed} accounts" if o.unit == "accounts"
            else f"{o.changed} {o.unit} {o.action.rstrip('e')}ed")
    files = f", {o.files} files deleted" if o.files else ""
    return (f"{o.system} {o.rule}: {done}{files}, {o.held} held, "
            f"{o.undated} undated, {o.locked} locked, {o.batches} batches, longest "
            f"{o.longest_batch_s:.3f} s")


def totals(outcomes: Sequence[RuleOutcome], dry_run: bool) -> dict[str, int]:
    """Per unit, what the rules changed (or would touch), and what holds kept."""
    out = {"rules": len(outcomes), "held": sum(o.held for o in outcomes)}
    for o in outcomes:
        done = (o.expired if dry_run else o.changed) or 0
        out[o.unit] = out.get(o.unit, 0) + done
    return out


# -- one rule, by kind ------------------------------------------------------------------------
def _count(rt: Runtime, base: RuleOutcome, rule: AnyRule, at: datetime) -> RuleOutcome:
    if isinstance(rule, RetentionRule):
        rows = sql_retention.expired(rt.sql(base.system), rule, base.cutoff,
                                     _held_accounts(rt, base, at))
        return replace(base, expired=rows.rows, held=rows.held, oldest=rows.oldest)
    if isinstance(rule, AccountRetentionRule):
        due = retention_accounts.due(rt, base.system, rule, base.cutoff)
        return replace(base, expired=due.accounts, oldest=due.oldest)
    if isinstance(rule, ObjectRetentionRule):
        objects = objects_retention.expired(
            _client(rt, base.system), _objects(rt, base.system), rule, base.cutoff,
            _held_accounts(rt, base, at), _existing(rt, rule))
        return replace(base, expired=objects.objects, held=objects.held,
                       undated=objects.undated, oldest=objects.oldest)
    lines = logs_retention.expired(_logs(rt, base.system), rule, base.cutoff,
                                   _held_lines(rt, base, at))
    return replace(base, expired=lines.lines, files=lines.files, held=lines.held,
                   undated=lines.undated, oldest=lines.oldest)


def _apply(rt: Runtime, base: RuleOutcome, rule: AnyRule, at: datetime, batch: int
           ) -> RuleOutcome:
    if isinstance(rule, RetentionRule):
        rows = sql_retention.sweep(rt.sql(base.system), rule, base.cutoff,
                                   _held_accounts(rt, base, at), batch)
        return replace(base, held=rows.held, changed=rows.changed, batches=rows.batches,
                       longest_batch_s=rows.longest_batch_s)
    if isinstance(rule, AccountRetentionRule):
        filed = retention_accounts.file_erasures(rt, base.system, rule, base.cutoff, batch)
        outcome = replace(base, expired=filed.accounts, changed=filed.filed,
                          batches=filed.batches, longest_batch_s=filed.longest_batch_s)
        if filed.refused:  # recorded as rejected with the reason; the run must show it
            outcome = replace(outcome, skipped=f"intake refused {filed.refused} of the "
                              "erasures (see the rejected requests in the report)")
        return outcome
    if isinstance(rule, ObjectRetentionRule):
        objects = objects_retention.sweep(
            _client(rt, base.system), _objects(rt, base.system), rule, base.cutoff,
            _held_accounts(rt, base, at), _existing(rt, rule), batch)
        return replace(base, changed=objects.objects, held=objects.held,
                       undated=objects.undated, locked=objects.locked,
                       batches=objects.batches, longest_batch_s=objects.longest_batch_s)
    lines = logs_retention.sweep(_logs(rt, base.system), rule, base.cutoff,
                                 _held_lines(rt, base, at))
    # One file at a time, not batches: `longest_batch_s` is the longest file's.
    return replace(base, changed=lines.lines, files=lines.files, held=lines.held,
                   undated=lines.undated, longest_batch_s=lines.longest_file_s)


def _base(rt: Runtime, system: str, rule: AnyRule, at: datetime) -> RuleOutcome:
    spec = rt.datamap.systems[system]
    cutoff = at.astimezone(UTC) - timedelta(days=rule.after_days)
    if isinstance(rule, RetentionRule):
        return RuleOutcome(system, rule.name, rule.table, rule.category, rule.action, "rows",
                           cutoff)
    if isinstance(rule, AccountRetentionRule):
        return RuleOutcome(system, rule.name, rule.table, "all", "erase", "accounts", cutoff)
    if isinstance(rule, ObjectRetentionRule):
        assert isinstance(spec, ObjectsSystem)
        return RuleOutcome(system, rule.name, rule.bucket, spec.buckets[rule.bucket].category,
                           "delete", "objects", cutoff)
    assert isinstance(spec, LogsSystem)
    return RuleOutcome(system, rule.name, rule.source, spec.category, "delete", "lines",
                       cutoff)


# -- what legal holds keep --------------------------------------------------------------------
class _Blind(Exception):
    """A hold covers the rule but what it protects cannot be recognised item by item."""


def _held_accounts(rt: Runtime, base: RuleOutcome, at: datetime
                   ) -> Callable[[Iterable[str]], set[str]] | None:
    """Account ids -> those a hold in force at `at` keeps (by keyed token); None when no
    hold covers the rule, and the sweep need not look at accounts at all."""
    tokens, blind = rt.ledger.held_account_tokens(base.system, base.category, at)
    if blind:
        raise _Blind(_blind_reason(blind, "an account id"))
    if not tokens:
        return None
    keyring = rt.ledger.keyring

    def held(accounts: Iterable[str]) -> set[str]:
        return {a for a in accounts if keyring.token("user_id", a) in tokens}

    return held


def _held_lines(rt: Runtime, base: RuleOutcome, at: datetime
                ) -> Callable[[Sequence[tuple[IdentityType, str]]], bool] | None:
    """The identities found in a log line -> whether one is a held subject's; None when no
    hold covers the rule. Each value is normalized as a ticket's would be, then compared by
    keyed token, so the ledger needs no raw identity."""
    spec = rt.datamap.systems[base.system]
    assert isinstance(spec, LogsSystem)
    tokens, blind = rt.ledger.held_tokens(base.system, base.category, at,
                                          [t.value for t in IdentityType])
    if blind:
        raise _Blind(_blind_reason(blind, "an identity"))
    if not tokens:
        return None
    keyring = rt.ledger.keyring

    def held(found: Sequence[tuple[IdentityType, str]]) -> bool:
        for kind, raw in found:
            try:
                value = normalize(kind, raw, spec.phone_region)
            except ValueError:
                continue  # not an identity of that type: nobody's
            if (kind.value, keyring.token(kind.value, value)) in tokens:
                return True
        return False

    return held


def _blind_reason(holds: list[str], what: str) -> str:
    named = ", ".join(h[:8] for h in holds)
    return (f"legal hold {named} covers this data but its subject has no {what} on "
            "record (its request was never resolved): run that request, or narrow the hold")


# -- the systems ------------------------------------------------------------------------------
def _objects(rt: Runtime, system: str) -> ObjectsSystem:
    spec = rt.datamap.systems[system]
    assert isinstance(spec, ObjectsSystem)
    return spec


def _client(rt: Runtime, system: str) -> Any:
    connector = rt.connector(system)
    assert isinstance(connector, ObjectsConnector)
    return connector.client


def _logs(rt: Runtime, system: str) -> LogsConnector:
    connector = rt.connector(system)
    assert isinstance(connector, LogsConnector)
    return connector


def _existing(rt: Runtime, rule: ObjectRetentionRule
              ) -> Callable[[Iterable[str]], set[str]] | None:
    ref = rule.orphans_of
    if ref is None:
        return None
    connector = rt.sql(ref.system)
    return lambda ids: sql_accounts.existing(connector, ref.table, ref.column, ids)
