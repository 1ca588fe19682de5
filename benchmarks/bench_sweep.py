"""Retention sweep throughput on PostgreSQL, against a hand-written batched DELETE.

N location rows (the demo schema's `location_history`, with an index on `recorded_at`),
E of them past the 90-day cutoff, one account under a legal hold. Two runs on identical
data, in the same process and server:

- the baseline: `DELETE FROM location_history WHERE id IN (SELECT id FROM
  location_history WHERE recorded_at < :cutoff LIMIT :batch)`, repeated until nothing is
  deleted, one transaction per statement (what a DBA would write; it knows no holds);
- dsrflow's sweep (`connectors.sql_retention.sweep`, the rule `location-90d`, the same
  batch size), with no hold in force (the same statement) and with one account held: the
  expired rows' accounts grouped and checked by keyed token before the first batch and
  once more after the last, each batch taking only rows of accounts found free (a
  temporary table its statement joins).

It reports rows/s, the longest single transaction of each (its locks live that long) and
the ratio. Targets (issue 15): at most 1.5x the baseline's time, no transaction over 1 s.

    .venv/bin/python -m benchmarks.bench_sweep                    # 5,000,000 / 1,000,000
    .venv/bin/python -m benchmarks.bench_sweep --repeat 3         # the median of three rounds
    .venv/bin/python -m benchmarks.bench_sweep --rows 200000 --expired 40000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from connectors.sql import SqlConnector
from connectors.sql_retention import sweep
from dsrflow.crypto import Keyring, new_key
from dsrflow.datamap import parse_datamap
from tests.postgres import postgres

HELD_ACCOUNT = 6  # owns expired rows (every fifth row; accounts 1 + g mod N)


def load(url: str, rows: int, expired: int, accounts: int) -> None:
    """The table and its copy to restore between runs; generated in the server."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS location_history, users, lh_source"))
        conn.execute(sa.text("CREATE TABLE users (id bigint PRIMARY KEY, email text)"))
        conn.execute(sa.text(
            "INSERT INTO users SELECT g, 'u' || g || '@example.com' "
            "FROM generate_series(1, :n) g"), {"n": accounts})
        # Expired rows are spread over the table, as a real history is: every k-th row.
        conn.execute(sa.text(
            "CREATE TABLE lh_source AS SELECT g AS id, 1 + (g % :accounts) AS user_id, "
            "CASE WHEN g % :every = 0 THEN now() - interval '200 days' - (g % 1000) * "
            "interval '1 minute' ELSE now() - (g % 80) * interval '1 day' END AS recorded_at, "
            "random() AS latitude, random() AS longitude "
            "FROM generate_series(1, :rows) g"),
            {"accounts": accounts, "every": rows // expired, "rows": rows})
    engine.dispose()


def restore(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE IF EXISTS location_history"))
        conn.execute(sa.text(
            "CREATE TABLE location_history (id bigint PRIMARY KEY, user_id bigint NOT NULL "
            "REFERENCES users(id), recorded_at timestamptz NOT NULL, latitude double "
            "precision, longitude double precision)"))
        conn.execute(sa.text("INSERT INTO location_history SELECT * FROM lh_source"))
        conn.execute(sa.text(
            "CREATE INDEX ix_lh_recorded_at ON location_history (recorded_at)"))
        conn.execute(sa.text("ANALYZE location_history"))
    engine.dispose()


def baseline(url: str, cutoff: datetime, batch: int) -> tuple[float, float, int]:
    engine = sa.create_engine(url)
    deleted, longest = 0, 0.0
    start = time.perf_counter()
    while True:
        began = time.perf_counter()
        with engine.begin() as conn:
            n = conn.execute(sa.text(
                "DELETE FROM location_history WHERE id IN (SELECT id FROM location_history "
                "WHERE recorded_at < :cutoff LIMIT :batch)"), {"cutoff": cutoff, "batch": batch}
            ).rowcount
        longest = max(longest, time.perf_counter() - began)
        deleted += n
        if n == 0:
            break
    elapsed = time.perf_counter() - start
    engine.dispose()
    return elapsed, longest, deleted


def dsrflow_sweep(url: str, cutoff: datetime, batch: int, with_hold: bool
                  ) -> tuple[float, float, int, int]:
    doc = {"version": "b", "policy_version": "b", "systems": {"db": {
        "kind": "sql", "url": url,
        "tables": {
            "users": {"primary_key": ["id"], "identities": [
                {"type": "user_id", "column": "id"}, {"type": "email", "column": "email"}],
                "columns": {"id": {"category": "account", "action": "retain",
                                   "reason": "id"},
                            "email": {"category": "contact", "action": "pseudonymize"}}},
            "location_history": {"primary_key": ["id"], "references": [
                {"columns": ["user_id"], "table": "users"}],
                "columns": {c: {"category": "location", "action": "delete"} for c in (
                    "id", "user_id", "recorded_at", "latitude", "longitude")}}},
        "retention": [{"name": "location-90d", "table": "location_history",
                       "category": "location", "counts_from": "recorded_at",
                       "after_days": 90, "action": "delete"}]}}}
    system = parse_datamap(doc).sql("db")
    connector = SqlConnector("db", system)
    keyring = Keyring(token_key=new_key(), encryption_key=new_key())
    held_tokens = {keyring.token("user_id", str(HELD_ACCOUNT))}

    def held(accounts: Iterable[str]) -> set[str]:
        return {a for a in accounts if keyring.token("user_id", a) in held_tokens}

    start = time.perf_counter()
    swept = sweep(connector, system.retention[0], cutoff, held if with_hold else None, batch)
    elapsed = time.perf_counter() - start
    connector.dispose()
    return elapsed, swept.longest_batch_s, swept.changed, swept.held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--expired", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of the three runs, in turn; the median time is reported")
    args = parser.parse_args()
    cutoff = datetime.now(UTC) - timedelta(days=90)
    runs: dict[str, list[tuple[float, float, int, int]]] = {"base": [], "free": [], "hold": []}
    with postgres("-c shared_buffers=256MB -c work_mem=16MB") as admin:
        setup = time.perf_counter()
        load(admin, args.rows, args.expired, args.accounts)
        loaded = time.perf_counter() - setup
        for _ in range(args.repeat):  # in turn, so that a busy spell hits all three alike
            restore(admin)
            runs["base"].append((*baseline(admin, cutoff, args.batch), 0))
            restore(admin)
            runs["free"].append(dsrflow_sweep(admin, cutoff, args.batch, False))
            restore(admin)
            runs["hold"].append(dsrflow_sweep(admin, cutoff, args.batch, True))
    seconds = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
    lock = {k: max(r[1] for r in v) for k, v in runs.items()}
    deleted = {k: v[-1][2] for k, v in runs.items()}
    held = runs["hold"][-1][3]
    print(f"# {args.rows:,} rows, {args.expired:,} past the cutoff, {args.accounts:,} "
          f"accounts (one held), batches of {args.batch:,}; data made in {loaded:.1f} s")
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}; Python {platform.python_version()}; "
          f"PostgreSQL server started by tests/postgres.py (fsync off)")
    if args.repeat > 1:
        print(f"# seconds: the median of {args.repeat} rounds; longest transaction: of all; "
              "each round (s): " + "; ".join(
                  f"{k} " + ", ".join(f"{r[0]:.2f}" for r in v) for k, v in runs.items()))
    print()
    print("| run | rows deleted | held | seconds | rows/s | longest transaction (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, what, kept in (("base", "hand-written batched DELETE", "-"),
                            ("free", "dsrflow sweep, no hold in force", "-"),
                            ("hold", "dsrflow sweep, one account held", f"{held:,}")):
        print(f"| {what} | {deleted[key]:,} | {kept} | {seconds[key]:.2f} | "
              f"{deleted[key] / seconds[key]:,.0f} | {lock[key]:.3f} |")
    print()
    for key, what in (("free", "no hold"), ("hold", "one hold")):
        ratio = seconds[key] / seconds["base"]
        print(f"sweep ({what}) / baseline: {ratio:.2f}x (target at most 1.5x); longest "
              f"transaction {lock[key]:.3f} s (target at most 1 s): "
              f"{'met' if ratio <= 1.5 and lock[key] <= 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
