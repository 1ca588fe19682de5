"""The retention sweep's tasks: one rule at a time (counted, or applied), and what the
Prefect UI shows of the sweep (ids, names and counts; no value of any row)."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from dsrflow.errors import raises_safely
from pipeline import retention
from pipeline.runtime import get_runtime
from tasks.limits import system_slot

_TASK = {"cache_policy": NO_CACHE, "persist_result": False}


def rule_names() -> list[tuple[str, str]]:
    """(system, rule name) of every retention rule in the data map."""
    return [(system, rule.name) for system, rule in retention.rules(get_runtime())]


@task(name="sweep-rule", task_run_name="{system}:{name}", **_TASK)  # type: ignore[call-overload]
@raises_safely
def sweep_rule(system: str, name: str, at: datetime, dry_run: bool, batch_size: int
               ) -> retention.RuleOutcome:
    rt = get_runtime()
    rule = retention.find_rule(rt, system, name)
    with system_slot(system):  # a sweep counts against the system's limit too
        outcome = (retention.count(rt, system, rule, at) if dry_run
                   else retention.apply(rt, system, rule, at, batch_size))
    logger = get_run_logger()
    if outcome.skipped:
        logger.warning("%s %s not applied: %s", system, name, outcome.skipped)
    else:
        logger.info("%s", retention.summary(outcome, dry_run))
    return outcome


@task(name="publish-sweep", **_TASK)  # type: ignore[call-overload]
@raises_safely
def publish_sweep(outcomes: list[retention.RuleOutcome], dry_run: bool) -> None:
    create_table_artifact(
        key="retention-sweep",
        table=[{
            "system": o.system, "rule": o.rule, "target": o.target, "category": o.category,
            "action": o.action, "unit": o.unit, "cutoff": o.cutoff.date().isoformat(),
            ("would touch" if dry_run else "changed"): o.expired if dry_run else o.changed,
            "held": o.held, "files deleted": o.files, "undated": o.undated,
            "locked": o.locked, "batches": o.batches,
            "longest batch (s)": round(o.longest_batch_s, 3), "seconds": round(o.seconds, 3),
            "skipped": o.skipped or "",
        } for o in outcomes],
        description=("Retention sweep (dry run): what each rule would touch" if dry_run
                     else "Retention sweep: what each rule changed and kept"),
    )
