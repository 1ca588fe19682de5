"""`dsrflow tombstones replay`: erase again, on a database restored from a backup, every
subject whose erasure completed since the backup."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Annotated

import typer

from entrypoints.terminal import ConfigOption, Typer, console, fail, open_runtime

tombstones_app = Typer(help="Erasure tombstones: replay erasures after a backup restore.",
                       no_args_is_help=True)


@tombstones_app.command("replay")
def replay(
    system: Annotated[str, typer.Option(help="the SQL system that was restored")],
    since: Annotated[str | None, typer.Option(
        help="YYYY-MM-DD: replay the erasures completed since this day (UTC), the backup's "
        "day; default: every erasure ever")] = None,
    config: ConfigOption = None,
) -> None:
    """Find each erased subject again by keyed token in the restored system and erase them
    again (legal holds kept), then verify. Exits 1 if anything is left."""
    from dsrflow.datamap import SqlSystem
    from pipeline.tombstones import replay as run_replay

    rt = open_runtime(config)
    if not isinstance(rt.datamap.systems.get(system), SqlSystem):
        raise fail(f"{system} is not a SQL system of the data map", 2)
    try:
        start = (datetime.combine(date.fromisoformat(since), time(0), tzinfo=UTC)
                 if since else None)
    except ValueError:
        raise fail("--since must be a date, YYYY-MM-DD", 2) from None
    done = run_replay(rt, system, start)
    console.print(
        f"{system}: {done.tombstones} erasures since {since or 'ever'}, {done.found} of "
        f"their subjects found again; {done.deleted} rows deleted, {done.anonymized} "
        f"anonymized, {done.retained} kept (holds, shared rows); left: {done.remaining}",
        markup=False, highlight=False)
    if done.remaining:
        raise typer.Exit(1)
