"""Retention sweep: the data map's retention rules, applied on a schedule (privacy policy
3.1, 6.3.1(3), 6.5, 7.4).

    each rule, one after the other: count (dry run), or delete / anonymize what ran out
      (SQL rows, log lines, objects) in bounded batches, or file an erasure for each
      account whose period ended, leaving what legal holds keep; a progress bar advances
      per rule
    publish a table artifact: per rule, what it changed (rows, lines, objects, erasures
      filed for accounts) and what holds kept, batches, the longest batch
    fail the run if a rule could not run (a system down, a hold it cannot honour)

Parameters carry no personal data: a flag and a batch size.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow

from dsrflow.errors import raises_safely
from pipeline import retention
from tasks.monitoring import RunProgress
from tasks.retention import publish_sweep, rule_names, sweep_rule


class SweepIncomplete(RuntimeError):
    """A rule could not run: the run is marked failed so it shows in the UI."""


@flow(name="retention-sweep", persist_result=False)
@raises_safely
def retention_sweep(dry_run: bool = False, batch_size: int = 1000) -> dict[str, int]:
    """Apply (or, with `dry_run`, count) every retention rule of the data map."""
    at = datetime.now(UTC)  # one cutoff per rule for the whole run
    names = rule_names()
    progress = RunProgress(len(names), unit="retention rules")
    outcomes = []
    for system, name in names:
        outcomes.append(sweep_rule(system, name, at, dry_run, batch_size))
        progress.advance(f"{system} {name}")
    publish_sweep(outcomes, dry_run)
    skipped = [o for o in outcomes if o.skipped]
    if skipped:
        raise SweepIncomplete(f"{len(skipped)} of {len(outcomes)} rules did not run: "
                              + ", ".join(f"{o.system} {o.rule}" for o in skipped))
    return retention.totals(outcomes, dry_run)
