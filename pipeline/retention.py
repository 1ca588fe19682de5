"""Retention sweeps (privacy policy 6.3.1(3), 7.4): the data map's retention rules, applied
system by system. Plain Python: the CLI (`dsrflow sweep`) and, later, the scheduled flow
call these.

A dry run counts, per rule, the rows past the cutoff, those a legal hold keeps and the
oldest timestamp (no value). A sweep deletes or anonymizes the rest in bounded batches,
leaves what holds keep, and records each rule in the audit trail. A rule whose holds
cannot be honoured row by row (a held subject without an account id on record) is
skipped, with the reason: a sweep never guesses whom a hold protects.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from connectors import sql_retention
from dsrflow.datamap import RetentionRule
from dsrflow.errors import safe_error
from pipeline.runtime import Runtime


@dataclass(frozen=True)
class RuleOutcome:
    system: str
    rule: str
    table: str
    category: str
    action: str
    cutoff: datetime
    expired: int | None = None  # dry run: rows past the cutoff
    held: int = 0  # of them, kept by legal holds
    oldest: datetime | None = None  # dry run
    changed: int | None = None  # sweep: rows deleted or anonymized
    batches: int = 0
    longest_batch_s: float = 0.0
    seconds: float = 0.0
    skipped: str | None = None  # why the rule did not run


def rules(rt: Runtime) -> list[tuple[str, RetentionRule]]:
    return [(name, rule) for name, system in rt.datamap.sql_systems()
            for rule in system.retention]


def find_rule(rt: Runtime, system: str, name: str) -> RetentionRule:
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


def count(rt: Runtime, system: str, rule: RetentionRule, at: datetime) -> RuleOutcome:
    """One rule's dry run."""
    base = _base(system, rule, at)
    held, blind = _holds(rt, system, rule, at)
    if blind:
        return replace(base, skipped=_blind(blind))
    try:
        found = sql_retention.expired(rt.sql(system), rule, base.cutoff, held)
    except Exception as exc:  # one system down: the others are still counted
        return replace(base, skipped=f"could not count: {safe_error(exc)}")
    return replace(base, expired=found.rows, held=found.held, oldest=found.oldest)


def apply(rt: Runtime, system: str, rule: RetentionRule, at: datetime, batch: int = 1000
          ) -> RuleOutcome:
    """One rule's sweep, recorded in the audit trail (`retention.swept`)."""
    base = _base(system, rule, at)
    held, blind = _holds(rt, system, rule, at)
    if blind:
        outcome = replace(base, skipped=_blind(blind))
    else:
        started = time.perf_counter()
        try:
            swept = sql_retention.sweep(rt.sql(system), rule, base.cutoff, held, batch)
        except Exception as exc:  # what the batches before committed stays done
            outcome = replace(base, skipped=f"failed: {safe_error(exc)}")
        else:
            outcome = replace(
                base, held=swept.held, changed=swept.changed, batches=swept.batches,
                longest_batch_s=swept.longest_batch_s, seconds=time.perf_counter() - started)
    rt.ledger.audit("retention.swept", None, {
        "system": system, "rule": rule.name, "table": rule.table, "category": rule.category,
        "action": rule.action, "cutoff": outcome.cutoff.isoformat(),
        "changed": outcome.changed, "held": outcome.held, "batches": outcome.batches,
        "longest_batch_s": round(outcome.longest_batch_s, 3),
        "seconds": round(outcome.seconds, 3), "skipped": outcome.skipped,
    })
    return outcome


def _base(system: str, rule: RetentionRule, at: datetime) -> RuleOutcome:
    return RuleOutcome(system=system, rule=rule.name, table=rule.table,
                       category=rule.category, action=rule.action,
                       cutoff=at.astimezone(UTC) - timedelta(days=rule.after_days))


def _holds(rt: Runtime, system: str, rule: RetentionRule, at: datetime
           ) -> tuple[sql_retention.HeldAccounts | None, list[str]]:
    """Which account ids the holds in force keep in this rule's scope (by keyed token),
    and the holds whose subject has no account id on record."""
    tokens, blind = rt.ledger.held_account_tokens(system, rule.category, at)
    keyring = rt.ledger.keyring
    if not tokens:
        return None, blind  # no hold covers it: the sweep need not look at accounts

    def held(accounts: Iterable[str]) -> set[str]:
        return {a for a in accounts if keyring.token("user_id", a) in tokens}

    return held, blind


def _blind(holds: list[str]) -> str:
    named = ", ".join(h[:8] for h in holds)
    return (f"legal hold {named} covers this data but its subject has no account id on "
            "record (its request was never resolved): run that request, or narrow the hold")
