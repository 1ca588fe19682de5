"""`dsrflow sweep [--dry-run]`: the data map's retention rules, applied now."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from entrypoints.terminal import ConfigOption, console, open_runtime

if TYPE_CHECKING:
    from pipeline.retention import RuleOutcome


def sweep(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count what each rule would "
                                          "touch; change nothing")] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="rows, objects or "
                                            "accounts per batch")] = 1000,
    config: ConfigOption = None,
) -> None:
    """Delete or anonymize what the retention rules say has run out (privacy policy 3.1,
    6.3.1(3), 6.5, 7.4) — SQL rows, log lines, objects — and file an erasure for each
    account whose period ended, leaving what legal holds keep. Exits 1 if a rule could not
    run."""
    from pipeline import retention

    rt = open_runtime(config)
    outcomes = retention.dry_run(rt) if dry_run else retention.run_sweep(rt, batch=batch_size)
    console.print(sweep_table(outcomes, dry_run))
    if not outcomes:
        console.print("The data map has no retention rules.")
    if any(o.skipped for o in outcomes):
        raise typer.Exit(1)


def sweep_table(outcomes: Sequence[RuleOutcome], dry_run: bool) -> Table:
    """Per rule: what it would touch or changed, in its unit, what holds kept, and why it
    did not run (names and counts only). A narrow terminal keeps the rule, the counts and
    the note, and leaves out the rest (the caption says which)."""
    import pandas as pd

    from entrypoints.cli import frame_table

    counted = "would touch" if dry_run else "changed"
    rows = []
    for o in outcomes:
        done = o.expired if dry_run else o.changed
        rows.append({
            "system": o.system, "rule": o.rule, "target": o.target, "action": o.action,
            "cutoff": f"{o.cutoff:%Y-%m-%d}",
            counted: "" if done is None else f"{done} {o.unit}", "held": str(o.held),
            **({"oldest": f"{o.oldest:%Y-%m-%d}" if o.oldest else ""} if dry_run else
               {"batches": str(o.batches), "longest batch (s)": f"{o.longest_batch_s:.3f}"}),
            # Free text, which the table wraps rather than leaves out.
            "note": o.skipped or _note(o),
        })
    headers = ["system", "rule", "target", "action", "cutoff", counted, "held",
               *(["oldest"] if dry_run else ["batches", "longest batch (s)"]), "note"]
    return frame_table(pd.DataFrame(rows, columns=headers), {h: h for h in headers},
                       "Retention sweep (dry run)" if dry_run else "Retention sweep",
                       first_kept=("rule", counted, "held", "note", "system"))


def _note(o: RuleOutcome) -> str:
    parts = []
    if o.files:
        parts.append(f"{o.files} files deleted whole")
    if o.undated:
        parts.append(f"{o.undated} kept: no readable time")
    if o.locked:
        parts.append(f"{o.locked} versions locked (Object Lock)")
    return "; ".join(parts)
