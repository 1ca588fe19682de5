"""Erasure tombstones and their replay after a backup restore, on PostgreSQL: snapshot the
database, erase subjects, restore the snapshot (the erased people are back), replay: they
are gone again, and nothing else changed."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dsrflow.crypto import is_pseudonym
from dsrflow.holds import HoldReason
from dsrflow.intake import submit
from flows.request import process_requests
from pipeline.runtime import Runtime, set_runtime
from pipeline.tombstones import replay
from tests import sqlworld
from tests.helpers import make_runtime, ticket

NEXT_YEAR = (datetime.now(UTC) + timedelta(days=365)).date()


@pytest.fixture
def app_db(postgres_server: str) -> Iterator[tuple[str, sa.Engine, str]]:
    """An app database and an admin connection that can copy it (CREATE DATABASE ...
    TEMPLATE: what a snapshot and a restore do to a whole database)."""
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    quote = admin.dialect.identifier_preparer.quote
    name = f"app_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {quote(name)}"))
    url = postgres_server.rsplit("/", 1)[0] + f"/{name}"
    yield url, admin, name
    with admin.connect() as conn:
        for db in (name, f"{name}_snap"):
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quote(db)} WITH (FORCE)"))
    admin.dispose()


def _copy(admin: sa.Engine, source: str, target: str) -> None:
    # Database names cannot be bound parameters: they are quoted by the dialect (and are
    # the test's own, made from a UUID).
    quote = admin.dialect.identifier_preparer.quote
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {quote(target)} WITH (FORCE)"))
        # The source must have no other session: the runtime's pool is disposed first.
        conn.execute(sa.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
            {"d": source})
        conn.execute(sa.text(f"CREATE DATABASE {quote(target)} TEMPLATE {quote(source)}"))


def _normalized(rows: dict[str, dict[tuple[Any, ...], dict[str, Any]]]) -> dict[str, Any]:
    """Rows with every pseudonym written as one marker: two erasures under different keys
    write different pseudonyms for the same value, and both are anonymous."""
    return {t: {k: {c: "pn_*" if is_pseudonym(v) else v for c, v in row.items()}
                for k, row in table.items()} for t, table in rows.items()}


def test_a_restore_brings_erased_people_back_and_a_replay_erases_them_again(
    tmp_path: Path, app_db: tuple[str, sa.Engine, str], prefect_server: list[Path],
) -> None:
    url, admin, name = app_db
    engine = sa.create_engine(url)
    world = sqlworld.generate(random.Random(17), 8)
    sqlworld.load(engine, world)
    engine.dispose()
    rt: Runtime = make_runtime(tmp_path, sqlworld.datamap_doc(url))
    previous = set_runtime(rt)
    try:
        _copy(admin, name, f"{name}_snap")  # last night's backup
        original = _snapshot(url)

        erased = [submit(rt.ledger, rt.datamap, ticket(
            f"T-{uid}", "erasure", [{"type": "email", "value": str(world.user(uid)["email"])}]
        )).request_id for uid in (2, 5)]
        withdrawn = submit(rt.ledger, rt.datamap, ticket(
            "T-W", "consent_withdrawal", [{"type": "user_id", "value": "6"}], scope=["media"]
        )).request_id
        access = submit(rt.ledger, rt.datamap, ticket(
            "T-A", "access", [{"type": "user_id", "value": "7"}])).request_id
        # One of them has a legal hold on their content: kept by the erasure and the replay.
        rt.ledger.add_hold(erased[1], HoldReason.LEGAL_OBLIGATION, "court order 9",
                           NEXT_YEAR, "dpo", categories=["content"])
        outcome = process_requests([*erased, withdrawn, access])
        assert set(outcome.values()) == {"completed"}
        after_erasure = _snapshot(url)
        assert after_erasure != original
        stones = {t.request_id: t for t in rt.ledger.tombstones()}
        assert set(stones) == {*erased, withdrawn}  # an access leaves none
        assert stones[withdrawn].scope == frozenset({"media"})
        assert all("user_id" in t.tokens for t in stones.values())

        # The restore: the backup replaces the database; the erased people are back.
        rt.sql("db").engine.dispose()
        _copy(admin, f"{name}_snap", name)
        assert _snapshot(url) == original

        done = replay(rt, "db")
        assert (done.tombstones, done.found, done.remaining) == (3, 3, 0)
        assert done.deleted > 0 and done.retained > 0
        # Gone again, exactly as after the erasure, and nothing else changed.
        assert _normalized(_snapshot(url)) == _normalized(after_erasure)

        again = replay(rt, "db")
        assert (again.deleted, again.anonymized, again.remaining) == (0, 0, 0)
        with rt.ledger.engine.connect() as conn:
            replays = conn.execute(sa.text(
                "SELECT count(*) FROM audit_events WHERE event = 'tombstones.replayed'"
            )).scalar_one()
        assert replays == 2
        assert rt.ledger.verify_audit_chain() is None
    finally:
        set_runtime(previous)
        rt.close()


def _snapshot(url: str) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    engine = sa.create_engine(url)
    try:
        return sqlworld.snapshot(engine)
    finally:
        engine.dispose()
