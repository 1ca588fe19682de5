"""Retention sweeps on SQL (privacy policy 6.3.1(3)): rules validated at load, a dry run
that counts, a sweep that removes exactly what has run out, leaves what legal holds keep,
and changes nothing the second time."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsrflow.crypto import is_pseudonym
from dsrflow.datamap import DataMapError, parse_datamap
from dsrflow.holds import HoldReason
from dsrflow.intake import submit
from pipeline import retention
from pipeline.runtime import Runtime
from tests.helpers import make_runtime, ticket

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NEXT_YEAR = (datetime.now(UTC) + timedelta(days=365)).date()

metadata = sa.MetaData()
accounts = sa.Table(
    "accounts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(320)),
)
locations = sa.Table(
    "locations", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("lat", sa.Float),
)
orders = sa.Table(
    "orders", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("buyer_phone", sa.String(64)),
    sa.Column("amount", sa.Integer),
)


def datamap_doc(url: str, rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"version": "t1", "policy_version": "p1", "systems": {"db": {
        "kind": "sql", "url": url,
        "tables": {
            "accounts": {"primary_key": ["id"],
                         "identities": [{"type": "user_id", "column": "id"},
                                        {"type": "email", "column": "email"}],
                         "columns": {"id": {"category": "account", "action": "retain",
                                            "reason": "orders point at it"},
                                     "email": {"category": "contact",
                                               "action": "pseudonymize"}}},
            "locations": {"primary_key": ["id"],
                          "references": [{"columns": ["user_id"], "table": "accounts"}],
                          "columns": {c: {"category": "location", "action": "delete"}
                                      for c in ("id", "user_id", "recorded_at", "lat")}},
            "orders": {"primary_key": ["id"],
                       "references": [{"columns": ["user_id"], "table": "accounts"}],
                       "columns": {
                           "id": {"category": "transaction", "action": "retain",
                                  "reason": "tax law: 3 years"},
                           "user_id": {"category": "transaction", "action": "retain",
                                       "reason": "tax law: 3 years"},
                           "created_at": {"category": "transaction", "action": "retain",
                                          "reason": "tax law: 3 years"},
                           "amount": {"category": "transaction", "action": "retain",
                                      "reason": "tax law: 3 years"},
                           "buyer_phone": {"category": "transaction",
                                           "action": "pseudonymize"}}},
        },
        "retention": rules if rules is not None else [
            {"name": "location-90d", "table": "locations", "category": "location",
             "counts_from": "recorded_at", "after_days": 90, "action": "delete"},
            {"name": "orders-3y", "table": "orders", "category": "transaction",
             "counts_from": "created_at", "after_days": 1095, "action": "anonymize"},
        ],
    }}}


# -- the rules, at load ---------------------------------------------------------------------------
@pytest.mark.parametrize(("rule", "message"), [
    ({"counts_from": "seen_at"}, "retention.0.counts_from: locations has no mapped column "
     "'seen_at'"),
    ({"category": "contact"}, "retention.0.category: locations holds no 'contact' data"),
    ({"table": "accounts", "category": "contact", "counts_from": "email"},
     "retention.0.action: locations, orders point at accounts's rows; anonymize them instead"),
    ({"table": "nowhere"}, "retention.0.table: no table 'nowhere' in this system"),
])
def test_a_bad_rule_fails_at_load_with_its_path(rule: dict[str, Any], message: str) -> None:
    base = {"name": "r", "table": "locations", "category": "location",
            "counts_from": "recorded_at", "after_days": 90, "action": "delete"}
    with pytest.raises(DataMapError) as caught:
        parse_datamap(datamap_doc("sqlite://", [{**base, **rule}]), "datamap.yaml")
    assert caught.value.path == "systems.db"
    assert caught.value.message == message
    with pytest.raises(DataMapError) as days:
        parse_datamap(datamap_doc("sqlite://", [{**base, "after_days": 0}]), "datamap.yaml")
    assert days.value.path == "systems.db.retention.0.after_days"


# -- a world with rows on both sides of every cutoff -------------------------------------------
def _load(url: str, rng: random.Random, n_accounts: int, n_rows: int) -> None:
    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(accounts.insert(), [{"id": i, "email": f"u{i}@example.com"}
                                         for i in range(1, n_accounts + 1)])
        # Ages in days around each cutoff (90 and 1095), to the second.
        conn.execute(locations.insert(), [
            {"id": i, "user_id": rng.randint(1, n_accounts),
             "recorded_at": AT - timedelta(days=90) + timedelta(seconds=rng.randint(-86400 * 3,
                                                                                    86400 * 3)),
             "lat": rng.random()} for i in range(1, n_rows + 1)])
        conn.execute(orders.insert(), [
            {"id": i, "user_id": rng.randint(1, n_accounts),
             "created_at": AT - timedelta(days=1095) + timedelta(
                 seconds=rng.randint(-86400 * 3, 86400 * 3)),
             "buyer_phone": f"+8613800{i:06d}", "amount": i} for i in range(1, n_rows + 1)])
    engine.dispose()


def _rows(url: str) -> dict[str, dict[int, dict[str, Any]]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        out = {t.name: {r.id: dict(r._mapping) for r in conn.execute(sa.select(t))}
               for t in (accounts, locations, orders)}
    engine.dispose()
    return out


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@pytest.fixture
def runtime(tmp_path: Path, db_url: str) -> Iterator[Runtime]:
    rt = make_runtime(tmp_path, datamap_doc(db_url), task_retries=0)
    yield rt
    rt.close()


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), batch=st.sampled_from([1, 3, 1000]),
       held=st.none() | st.integers(1, 4))
def test_property_a_sweep_removes_exactly_what_ran_out(
    runtime: Runtime, db_url: str, seed: int, batch: int, held: int | None,
) -> None:
    _load(db_url, random.Random(seed), 4, 40)
    if held is not None:
        # A hold on one account's location data, placed through a request of theirs.
        rid = submit(runtime.ledger, runtime.datamap, ticket(
            f"T-{seed}-{held}-{batch}", "access", [{"type": "user_id", "value": str(held)}]
        )).request_id
        hold = runtime.ledger.add_hold(rid, HoldReason.LEGAL_OBLIGATION, "order 1", NEXT_YEAR,
                                       "dpo", categories=["location"])
    before = _rows(db_url)
    counted = {o.rule: o for o in retention.dry_run(runtime, AT)}
    swept = {o.rule: o for o in retention.run_sweep(runtime, AT, batch=batch)}
    after = _rows(db_url)

    location_cutoff = AT - timedelta(days=90)
    gone = {i for i, r in before["locations"].items()
            if _aware(r["recorded_at"]) < location_cutoff and r["user_id"] != held}
    assert set(after["locations"]) == set(before["locations"]) - gone
    for i in after["locations"]:
        assert after["locations"][i] == before["locations"][i]
    order_cutoff = AT - timedelta(days=1095)
    for i, row in before["orders"].items():
        now = after["orders"][i]
        if _aware(row["created_at"]) < order_cutoff:  # transaction: not held
            assert is_pseudonym(now["buyer_phone"]) and now["amount"] == row["amount"]
        else:
            assert now == row
    assert after["accounts"] == before["accounts"]

    # Counted as facts: the dry run saw what the sweep then did.
    kept = sum(1 for r in before["locations"].values()
               if _aware(r["recorded_at"]) < location_cutoff and r["user_id"] == held)
    assert counted["location-90d"].expired == len(gone) + kept
    assert counted["location-90d"].held == swept["location-90d"].held == kept
    assert swept["location-90d"].changed == len(gone)
    assert swept["orders-3y"].changed == counted["orders-3y"].expired

    again = {o.rule: o for o in retention.run_sweep(runtime, AT, batch=batch)}
    assert [again[r].changed for r in ("location-90d", "orders-3y")] == [0, 0]
    assert _rows(db_url) == after
    if held is not None:
        runtime.ledger.release_hold(hold.id, "dpo", "done")


def test_a_hold_whose_subject_has_no_account_id_stops_its_rules(runtime: Runtime,
                                                                 db_url: str) -> None:
    """A hold placed through a request that gave only an email and was never resolved:
    the sweep cannot tell that subject's rows, so it touches none of that rule's."""
    _load(db_url, random.Random(1), 3, 12)
    rid = submit(runtime.ledger, runtime.datamap, ticket(
        "T-1", "access", [{"type": "email", "value": "u2@example.com"}])).request_id
    hold = runtime.ledger.add_hold(rid, HoldReason.CRIMINAL_INVESTIGATION, "case 3", NEXT_YEAR,
                                   "dpo", categories=["location"])
    before = _rows(db_url)
    outcome = {o.rule: o for o in retention.run_sweep(runtime, AT)}
    assert outcome["location-90d"].changed is None
    assert outcome["location-90d"].skipped is not None
    assert f"legal hold {hold.id[:8]} covers this data" in outcome["location-90d"].skipped
    assert _rows(db_url)["locations"] == before["locations"]
    assert outcome["orders-3y"].skipped is None and outcome["orders-3y"].changed
    with runtime.ledger.engine.connect() as conn:
        events = conn.execute(sa.text(
            "SELECT count(*) FROM audit_events WHERE event = 'retention.swept'")).scalar_one()
    assert events == 2


# -- the scheduled flow, on a real Prefect server -----------------------------------------------
def test_the_retention_sweep_flow_counts_then_sweeps_and_shows_it(
    tmp_path: Path, prefect_server: list[Path],
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.retention import SweepIncomplete, retention_sweep
    from pipeline.runtime import set_runtime

    url = f"sqlite:///{tmp_path / 'app.db'}"
    _load(url, random.Random(3), 3, 30)
    now = datetime.now(UTC)
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # rows around today's cutoffs, as the flow sees them
        conn.execute(sa.text("UPDATE locations SET recorded_at = :old WHERE id <= 10"),
                     {"old": now - timedelta(days=100)})
        conn.execute(sa.text("UPDATE locations SET recorded_at = :new WHERE id > 10"),
                     {"new": now - timedelta(days=10)})
    engine.dispose()
    rt = make_runtime(tmp_path, datamap_doc(url))
    previous = set_runtime(rt)
    try:
        counted = retention_sweep(dry_run=True)
        assert counted["rows"] >= 10 and len(_rows(url)["locations"]) == 30
        swept = retention_sweep(batch_size=4)
        assert len(_rows(url)["locations"]) == 20
        assert swept["rows"] == counted["rows"]
        assert retention_sweep()["rows"] == 0
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retention-sweep"])))
        latest = max(found, key=lambda a: a.created or now)
        data = latest.data if isinstance(latest.data, list) else json.loads(str(latest.data))
        rows = {r["rule"]: r for r in data}
        assert rows["location-90d"]["changed"] == 0 and rows["location-90d"]["skipped"] == ""

        # The completion report has a sweep section: every rule applied, oldest first.
        from dsrflow.report import sweeps_frame, write_reports

        sweeps = sweeps_frame(rt.ledger)
        location = sweeps[sweeps["rule"] == "location-90d"]
        assert location["changed"].tolist() == [10, 0]  # the ten rows past 90 days, once
        assert location["batches"].tolist()[0] == 3  # ten rows, four at a time
        assert location["skipped"].isna().all()
        paths = write_reports(tmp_path / "report", rt.ledger, rt.deadlines)
        assert len(pd.read_csv(paths["sweeps.csv"])) == 4
        assert "<h2>Retention sweeps</h2>" in paths["report.html"].read_text()

        # A hold it cannot honour row by row: the run fails, and says which rule.
        rid = submit(rt.ledger, rt.datamap, ticket(
            "T-1", "access", [{"type": "email", "value": "u1@example.com"}])).request_id
        rt.ledger.add_hold(rid, HoldReason.PUBLIC_SAFETY, "notice 4", NEXT_YEAR, "dpo",
                           categories=["location"])
        with pytest.raises(SweepIncomplete, match="1 of 2 rules did not run: db location-90d"):
            retention_sweep()
    finally:
        set_runtime(previous)
        rt.close()


def test_a_held_account_whose_rows_run_out_during_the_sweep_keeps_them(
    tmp_path: Path, db_url: str,
) -> None:
    """The sweep works out whose rows are held from the accounts it sees at the start; an
    account whose first expired rows appear later (inserted mid-sweep, here) is checked in
    the batch that meets it, and that batch is redone without it."""
    from connectors.sql import SqlConnector
    from connectors.sql_retention import sweep

    _load(db_url, random.Random(5), 3, 40)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(accounts.insert(), [{"id": 9, "email": "late@example.com"}])
    system = parse_datamap(datamap_doc(db_url)).sql("db")
    connector = SqlConnector("db", system)
    rule = system.retention[0]
    cutoff = AT - timedelta(days=90)
    expired = sum(1 for r in _rows(db_url)["locations"].values()
                  if _aware(r["recorded_at"]) < cutoff)
    asked: list[set[str]] = []

    def held(accounts: Any) -> set[str]:
        accounts = set(accounts)
        asked.append(accounts)
        return accounts & {"9"}

    def late_rows(progress: Any) -> None:
        if progress.batches == 1:  # after the first batch: account 9's old rows turn up
            with engine.begin() as conn:
                conn.execute(locations.insert(), [
                    {"id": 1000 + i, "user_id": 9, "recorded_at": cutoff - timedelta(days=9),
                     "lat": 0.5} for i in range(3)])

    try:
        swept = sweep(connector, rule, cutoff, held, batch=2, progress=late_rows)
    finally:
        connector.dispose()
    left = _rows(db_url)["locations"]
    assert {i for i, r in left.items() if r["user_id"] == 9} == {1000, 1001, 1002}
    assert all(_aware(r["recorded_at"]) >= cutoff for r in left.values() if r["user_id"] != 9)
    assert asked[1:] == [{"9"}]  # checked once more, in the batch that met it
    assert swept.changed == expired  # what had run out at the start, and nothing of 9's
    engine.dispose()
