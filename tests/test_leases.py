"""One run per request at a time: leases in the ledger (SQLite and PostgreSQL), the gate
that skips what another run holds, and two `dsrflow run` started at once on one config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dsrflow.intake import submit
from dsrflow.ledger import Ledger
from dsrflow.model import Status
from dsrflow.settings import load_settings
from flows.request import process_requests
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import cli_config, make_runtime, ticket
from tests.test_ledger import make_ticket, race

TTL = timedelta(minutes=10)


def _requests(ledger: Ledger, n: int) -> list[str]:
    return [ledger.accept(make_ticket(f"L-{i}"), "dm", "pol")[0] for i in range(n)]


def test_runs_racing_for_a_batch_each_request_goes_to_exactly_one(ledger: Ledger) -> None:
    ids = _requests(ledger, 12)
    taken = race(4, lambda: ledger.take_leases(ids, f"run-{os.urandom(4).hex()}", TTL))
    winners = [t for t in taken if t.granted]
    assert len(winners) == 1 and sorted(winners[0].granted) == sorted(ids)
    owner = ledger.lease_holders(ids)[ids[0]].owner
    for losers in (t for t in taken if not t.granted):
        assert set(losers.held) == set(ids)
        assert {h.owner for h in losers.held.values()} == {owner}
    assert ledger.verify_audit_chain() is None


def test_a_lease_is_renewed_by_its_holder_released_only_by_it_and_taken_over_once_expired(
    ledger: Ledger,
) -> None:
    ids = _requests(ledger, 3)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert ledger.take_leases(ids[:2], "dead-run", TTL, at=an_hour_ago).granted == ids[:2]
    assert ledger.take_leases(ids[2:], "live-run", TTL).granted == ids[2:]
    assert ledger.expired_leases() == {ids[0]: "dead-run", ids[1]: "dead-run"}

    # Another run may not release what it does not hold.
    assert ledger.release_leases(ids, "someone-else") == 0
    # A live lease is refused to others; an expired one is taken over.
    taken = ledger.take_leases(ids, "new-run", TTL)
    assert sorted(taken.granted) == sorted(ids[:2]) and set(taken.held) == {ids[2]}
    assert taken.held[ids[2]].owner == "live-run"
    assert ledger.expired_leases() == {}
    # The dead run, come back to life, no longer holds anything to renew.
    assert ledger.renew_leases("dead-run", TTL) == []
    assert sorted(ledger.renew_leases("new-run", TTL)) == sorted(ids[:2])
    assert ledger.release_leases(ids[:2], "new-run") == 2
    assert set(ledger.lease_holders(ids)) == {ids[2]}


# -- the gate and the flow --------------------------------------------------------------------
@pytest.fixture
def runtime(tmp_path: Path, prefect_server: list[Path]) -> Iterator[Runtime]:
    _, url = sqlworld.sqlite_world(tmp_path, 5, 6)
    rt = make_runtime(tmp_path, sqlworld.datamap_doc(url))
    previous = set_runtime(rt)
    yield rt
    set_runtime(previous)
    rt.close()


def test_a_run_skips_what_another_run_holds_and_says_which(runtime: Runtime) -> None:
    ids = [submit(runtime.ledger, runtime.datamap, ticket(
        f"G-{uid}", "erasure", [{"type": "user_id", "value": str(uid)}])).request_id
        for uid in (1, 2)]
    runtime.ledger.take_leases(ids[:1], "the-scheduled-run", TTL)

    outcome = process_requests(ids)
    assert outcome[ids[0]].startswith("held by run the-scheduled-run until")
    assert outcome[ids[1]] == "completed"
    # Nothing was done to the held request: no step, still verified, still held.
    assert runtime.ledger.steps([ids[0]]) == []
    assert runtime.ledger.get(ids[0]).status is Status.VERIFIED
    assert runtime.ledger.lease_holders(ids) == {
        ids[0]: runtime.ledger.lease_holders(ids)[ids[0]]}
    assert runtime.ledger.lease_holders(ids)[ids[0]].owner == "the-scheduled-run"

    # Once the other run lets go, the request runs.
    runtime.ledger.release_leases(ids[:1], "the-scheduled-run")
    assert process_requests(ids[:1]) == {ids[0]: "completed"}
    assert runtime.ledger.lease_holders(ids) == {}


def test_a_run_whose_lease_ran_out_stops_working_on_what_another_took_over(
    runtime: Runtime,
) -> None:
    """A run stalled past its leases' life (a paused machine): another run took one of its
    requests over. Its next renewal finds out, and it goes on with the others only."""
    from pipeline.leases import Hold

    ids = [submit(runtime.ledger, runtime.datamap, ticket(
        f"H-{uid}", "erasure", [{"type": "user_id", "value": str(uid)}])).request_id
        for uid in (1, 2)]
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    runtime.ledger.take_leases(ids, "stalled-run", TTL, at=an_hour_ago)
    hold = Hold(runtime, "stalled-run", ids)
    assert hold.still(ids) == ids
    assert runtime.ledger.take_leases(ids[:1], "new-run", TTL).granted == ids[:1]
    hold.renew()
    assert hold.still(ids) == ids[1:] and hold.lost() == ids[:1]
    assert runtime.ledger.lease_holders(ids)[ids[1]].expires_at > datetime.now(UTC)


# -- two `dsrflow run` at once ----------------------------------------------------------------
@pytest.mark.slow  # two `dsrflow run` processes, each with its Prefect server: half a minute
def test_two_runs_at_once_on_one_config_do_every_step_once(tmp_path: Path) -> None:
    """The operator's run next to a scheduled one: both `dsrflow run` on the same settings
    (the same embedded Prefect server's database, the same requests), started together.
    The second waits for the first and says so, then skips what is done: every step ran
    once, and the certificates count exactly the rows that left the database."""
    _, url = sqlworld.sqlite_world(tmp_path, 8, 6)
    uids = [1, 2, 3]
    sqlworld.unfollow_among(url, uids)
    config = cli_config(tmp_path, sqlworld.datamap_doc(url))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    dsrflow = [sys.executable, "-m", "entrypoints.cli"]
    for uid in uids:
        path = tmp_path / f"T-{uid}.json"
        path.write_text(json.dumps(ticket(f"T-{uid}", "erasure",
                                          [{"type": "user_id", "value": str(uid)}])))
        subprocess.run([*dsrflow, "submit", str(path), "--config", str(config)], env=env,
                       check=True, capture_output=True, cwd=tmp_path)
    before = sqlworld.total_rows(url)

    runs = [subprocess.Popen([*dsrflow, "run", "--config", str(config)], env=env,
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    results = [(run.communicate(timeout=600), run.returncode) for run in runs]
    for (out, errors), code in results:
        assert code == 0, (out, errors)
    said = "\n".join(errors for (_, errors), _ in results)
    assert "another dsrflow run is using the embedded Prefect server" in said
    assert said.count("not run: request is completed") == len(uids)

    rt = Runtime(load_settings(config))
    try:
        records = rt.ledger.all()
        assert {r.status for r in records} == {Status.COMPLETED}
        steps = rt.ledger.steps([r.id for r in records])
        # (A resolve step is recorded by its outcome alone: it counts no attempts.)
        assert steps and all(s.attempts == 1 for s in steps
                             if s.action != "resolve"), [
            (s.system, s.action, s.status, s.attempts) for s in steps]
        deleted, certified = sqlworld.deleted_as_recorded(steps)
    finally:
        rt.close()
    gone = before - sqlworld.total_rows(url)
    assert gone > 0 and deleted == gone and certified == gone
