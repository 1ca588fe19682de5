"""`dsrflow sweep [--dry-run]`: the data map's retention rules, applied now."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from entrypoints.terminal import ConfigOption, console, open_runtime


def sweep(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count what each rule would "
                                          "touch; change nothing")] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="rows per transaction"
                                            )] = 1000,
    config: ConfigOption = None,
) -> None:
    """Delete or anonymize what the retention rules say has run out (privacy policy
    6.3.1(3), 7.4), leaving what legal holds keep. Exits 1 if a rule could not run."""
    from pipeline import retention

    rt = open_runtime(config)
    outcomes = retention.dry_run(rt) if dry_run else retention.run_sweep(rt, batch=batch_size)
    counted = "would touch" if dry_run else "changed"
    table = Table("system", "rule", "action", "cutoff", counted, "held",
                  *(("oldest",) if dry_run else ("batches", "longest batch (s)")), "note",
                  title="Retention sweep (dry run)" if dry_run else "Retention sweep")
    for o in outcomes:
        done = o.expired if dry_run else o.changed
        cells = [o.system, o.rule, o.action, f"{o.cutoff:%Y-%m-%d}",
                 "" if done is None else str(done), str(o.held)]
        if dry_run:
            cells.append(f"{o.oldest:%Y-%m-%d}" if o.oldest else "")
        else:
            cells += [str(o.batches), f"{o.longest_batch_s:.3f}"]
        table.add_row(*cells, o.skipped or "", style="red" if o.skipped else None)
    console.print(table)
    if not outcomes:
        console.print("The data map has no retention rules.")
    if any(o.skipped for o in outcomes):
        raise typer.Exit(1)
