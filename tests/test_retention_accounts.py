"""Accounts whose retention period ran out (policy 6.5: a cancelled account is purged 30
days after cancellation): a sweep files one erasure request per such account, never the
same account twice (a second sweep, or two at once), and the request erases that account
everywhere and nobody else."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dsrflow.datamap import DataMapError, parse_datamap
from dsrflow.model import RequestType, Status
from pipeline import retention, retention_accounts
from pipeline.runtime import Runtime, set_runtime
from tests.helpers import make_runtime

AT = datetime.now(UTC)

metadata = sa.MetaData()
accounts = sa.Table(
    "accounts", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("email", sa.String(320)),
    sa.Column("cancelled_at", sa.DateTime(timezone=True), index=True),
    sa.Column("born", sa.Date),
)
locations = sa.Table(
    "locations", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("lat", sa.Float),
)


def datamap_doc(url: str, **rule: Any) -> dict[str, Any]:
    return {"version": "t1", "policy_version": "p1", "systems": {"db": {
        "kind": "sql", "url": url,
        "tables": {
            "accounts": {"primary_key": ["id"], "birth_date_column": "born",
                         "identities": [{"type": "user_id", "column": "id"},
                                        {"type": "email", "column": "email"}],
                         "columns": {
                             "id": {"category": "account", "action": "retain",
                                    "reason": "the anonymized tombstone"},
                             "email": {"category": "contact", "action": "pseudonymize"},
                             "cancelled_at": {"category": "account", "action": "retain",
                                              "reason": "when the account ended"},
                             "born": {"category": "profile", "action": "null"}}},
            "locations": {"primary_key": ["id"],
                          "references": [{"columns": ["user_id"], "table": "accounts"}],
                          "columns": {c: {"category": "location", "action": "delete"}
                                      for c in ("id", "user_id", "lat")}},
        },
        "account_retention": [{
            "name": "cancelled-30d", "table": "accounts", "counts_from": "cancelled_at",
            "after_days": 30, "reason": "policy 6.5: purged 30 days after cancellation",
            **rule}],
    }}}


def _load(url: str, n: int, seed: int) -> dict[int, datetime | None]:
    """`n` accounts: a third never cancelled, the rest cancelled within ten days either side
    of the 30-day cutoff. Returns each account's cancellation."""
    rng = random.Random(seed)
    cancelled = {i: (None if i % 3 == 0 else AT - timedelta(days=30) + timedelta(
        seconds=rng.randint(-86400 * 10, 86400 * 10))) for i in range(1, n + 1)}
    engine = sa.create_engine(url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        # Every fourth account is a child's (ten years old), the others adults'.
        conn.execute(accounts.insert(), [
            {"id": i, "email": f"u{i}@example.com", "cancelled_at": c,
             "born": date(AT.year - (10 if i % 4 == 0 else 30), 6, 1)}
            for i, c in cancelled.items()])
        conn.execute(locations.insert(), [{"id": 10 * i + k, "user_id": i, "lat": rng.random()}
                                          for i in cancelled for k in range(3)])
    engine.dispose()
    return cancelled


def _expired(cancelled: dict[int, datetime | None]) -> set[str]:
    cutoff = AT - timedelta(days=30)
    return {str(i) for i, c in cancelled.items() if c is not None and c < cutoff}


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[tuple[Runtime, dict[int, datetime | None]]]:
    cancelled = _load(db_url, 30, seed=4)
    rt = make_runtime(tmp_path, datamap_doc(db_url), task_retries=0)
    yield rt, cancelled
    rt.close()


def _filed(rt: Runtime) -> dict[str, set[str]]:
    """Ticket id -> the user ids its request names (decrypted from the ledger)."""
    out: dict[str, set[str]] = {}
    with rt.ledger.engine.connect() as conn:
        ids = conn.execute(sa.text("SELECT id FROM requests WHERE channel = 'retention' "
                                   "AND status != 'rejected'")).scalars().all()
    for rid in ids:
        record = rt.ledger.get(rid)
        [subject] = rt.ledger.subjects([rid])
        assert record.type is RequestType.ERASURE and record.status is Status.VERIFIED
        assert record.ticket_id is not None
        out[record.ticket_id] = {i.value for i in subject.identities}
    return out


def test_a_rule_on_something_that_is_not_an_account_fails_at_load() -> None:
    cases: list[tuple[dict[str, Any], str, str | None]] = [
        ({"counts_from": "gone_at"}, "systems.db",
         "account_retention.0.counts_from: accounts has no mapped column 'gone_at'"),
        ({"table": "locations", "counts_from": "lat"}, "systems.db",
         "account_retention.0.table: locations has no user_id identity column: its rows do "
         "not name accounts"),
        ({"after_days": 0}, "systems.db.account_retention.0.after_days", None),
    ]
    for rule, path, message in cases:
        with pytest.raises(DataMapError) as caught:
            parse_datamap(datamap_doc("sqlite://", **rule), "datamap.yaml")
        assert caught.value.path == path
        if message:
            assert caught.value.message == message


def test_a_sweep_files_one_erasure_per_account_past_its_period_and_never_twice(
    world: tuple[Runtime, dict[int, datetime | None]],
) -> None:
    rt, cancelled = world
    expired = _expired(cancelled)
    assert 3 < len(expired) < 20  # both sides of the cutoff, and accounts never cancelled
    [counted] = retention.dry_run(rt, AT)
    assert (counted.unit, counted.expired, counted.changed) == ("accounts", len(expired), None)
    assert _filed(rt) == {}  # a dry run files nothing

    [swept] = retention.run_sweep(rt, AT, batch=4)
    assert (swept.expired, swept.changed, swept.skipped) == (len(expired), len(expired), None)
    assert swept.batches == -(-len(expired) // 4)
    filed = _filed(rt)
    assert sorted(ids for ids in map(sorted, filed.values())) == sorted([a] for a in expired)
    for ticket_id, ids in filed.items():
        # No raw id in what the report and the Prefect UI show: a keyed token.
        assert ticket_id.startswith("retention.cancelled-30d.")
        assert ticket_id == retention_accounts.ticket_id(rt, rt.datamap.sql("db")
                                                         .account_retention[0], next(iter(ids)))
        assert not any(part == next(iter(ids)) for part in ticket_id.split("."))

    [again] = retention.run_sweep(rt, AT)
    assert (again.expired, again.changed) == (0, 0)
    assert len(_filed(rt)) == len(expired)
    assert retention.dry_run(rt, AT)[0].expired == 0


def test_a_minors_only_rule_files_childrens_accounts_only(
    tmp_path: Path, db_url: str,
) -> None:
    """Policy 7.4: a child's cancelled account may have a shorter period than an adult's."""
    cancelled = _load(db_url, 30, seed=6)
    rt = make_runtime(tmp_path, datamap_doc(db_url, minors_only=True))
    try:
        [swept] = retention.run_sweep(rt, AT)
        filed = _filed(rt)
    finally:
        rt.close()
    children = {a for a in _expired(cancelled) if int(a) % 4 == 0}
    assert children and children != _expired(cancelled)
    assert swept.changed == len(children)
    assert {v for ids in filed.values() for v in ids} == children
    with pytest.raises(DataMapError) as caught:
        doc = datamap_doc("sqlite://", minors_only=True)
        del doc["systems"]["db"]["tables"]["accounts"]["birth_date_column"]
        parse_datamap(doc, "datamap.yaml")
    assert caught.value.message == ("account_retention.0.minors_only: accounts has no "
                                    "birth_date_column to tell a child's account")


def test_two_sweeps_at_once_file_each_account_once(
    world: tuple[Runtime, dict[int, datetime | None]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both sweeps looked before either filed (the ledger's look-up is blinded here): the
    ledger keeps one request per ticket id, and the second sweep counts none as filed."""
    rt, cancelled = world
    monkeypatch.setattr(type(rt.ledger), "known_tickets", lambda self, ids: set())
    rule = rt.datamap.sql("db").account_retention[0]
    first = retention_accounts.file_erasures(rt, "db", rule, AT - timedelta(days=30))
    second = retention_accounts.file_erasures(rt, "db", rule, AT - timedelta(days=30))
    assert first.filed == len(_expired(cancelled)) == second.accounts
    assert second.filed == 0 and second.refused == 0
    assert len(_filed(rt)) == len(_expired(cancelled))


def test_the_filed_erasure_erases_that_account_and_nobody_else(
    tmp_path: Path, prefect_server: list[Path],
) -> None:
    from flows.request import process_requests

    url = f"sqlite:///{tmp_path / 'app.db'}"
    cancelled = _load(url, 12, seed=7)
    expired = _expired(cancelled)
    assert 0 < len(expired) < 8
    # A child's account among them: the controller's own erasure waits for no guardian.
    assert any(int(a) % 4 == 0 for a in expired)
    rt = make_runtime(tmp_path, datamap_doc(url))
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        before = {t.name: {r[0]: tuple(r) for r in conn.execute(sa.select(t))}
                  for t in (accounts, locations)}
    previous = set_runtime(rt)
    try:
        retention.run_sweep(rt)
        with rt.ledger.engine.connect() as conn:
            ids = list(conn.execute(sa.text(
                "SELECT id FROM requests WHERE channel = 'retention'")).scalars())
        assert len(ids) == len(expired)
        outcome = process_requests(ids)
        assert set(outcome.values()) == {"completed"}
    finally:
        set_runtime(previous)
        rt.close()
    with engine.connect() as conn:
        after = {t.name: {r[0]: tuple(r) for r in conn.execute(sa.select(t))}
                 for t in (accounts, locations)}
    engine.dispose()
    for uid in before["accounts"]:
        gone = str(uid) in expired
        assert (after["accounts"][uid][1] != before["accounts"][uid][1]) is gone
        theirs = {k for k, r in before["locations"].items() if r[1] == uid}
        assert (theirs & set(after["locations"])) == (set() if gone else theirs)


def test_a_ticket_from_outside_cannot_claim_the_retention_channel(
    world: tuple[Runtime, dict[int, datetime | None]],
) -> None:
    """The channel skips the subject's gates (a guardian, repeats): a ticket that claims it
    is rejected with the reason, and nothing is filed under it."""
    from dsrflow.intake import submit
    from tests.helpers import ticket

    rt, _ = world
    forged = submit(rt.ledger, rt.datamap, ticket(
        "T-9", "erasure", [{"type": "user_id", "value": "4"}], channel="retention"))
    assert forged.status is Status.REJECTED
    assert forged.reason == ("channel 'retention' is reserved for the erasures dsrflow's "
                             "retention sweeps file")
    assert _filed(rt) == {}
