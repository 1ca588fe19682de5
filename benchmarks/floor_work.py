"""The floor of `bench_e2e`: a round's connector work done by the connectors alone, with
no Prefect and no ledger, in the benchmark's process, on a copy of the world taken just
before the round, so what the run adds to it can be measured (issue 16: the run at most
twice the floor).

Micro-batches of the run's size one after the other, and in each, one call after the
other as `pipeline/steps.py` makes them: every SQL system's `discover` (identity
resolution) and `birth_dates` (the guardian gate), `erase` in the SQL and log systems
with the identities learnt, one OpenDSR POST per request to a reference partner of its own
(`partner_concurrency` at once, as the run sends them; no callbacks), then `verify` in the
SQL and log systems. S3 is left out (moto's cost is its own, reported apart).
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLOOR_TOLERANCE = 0.03  # the floor's counts may differ from the ledger's by this share
FLOOR_CALLS = ("sql:discover", "sql:birth_dates", "sql:erase", "sql:verify", "logs:erase",
               "logs:verify", "partner:hand_over")  # the columns of its per-call table


def copy_world(world: Path, scratch: Path) -> None:
    """The world's mutable data as it stands now, in `scratch`: the user database (through
    SQLite's backup: consistent whatever its journal holds) and the log files."""
    scratch.mkdir()
    with (closing(sqlite3.connect(world / "wishe.db")) as source,
          closing(sqlite3.connect(scratch / "wishe.db")) as target):
        source.backup(target)
    shutil.copytree(world / "logs", scratch / "logs", symlinks=True)


def floor_connectors(rt: Any, world: Path, scratch: Path) -> tuple[dict[str, Any],
                                                                    dict[str, Any]]:
    """The SQL and log systems' connectors over the copy in `scratch`, built as the runtime
    builds them (before the clock starts: the runtime builds its own once per process)."""
    from connectors.logs import LogsConnector
    from connectors.sql import SqlConnector
    from dsrflow.datamap import LogsSystem, SqlSystem

    sql: dict[str, Any] = {}
    logs: dict[str, Any] = {}
    for name, spec in rt.datamap.systems.items():
        if isinstance(spec, SqlSystem):
            assert spec.url is not None and str(world) in spec.url  # the bench's own world
            sql[name] = SqlConnector(name, spec.model_copy(
                update={"url": spec.url.replace(str(world), str(scratch))}))
        elif isinstance(spec, LogsSystem):
            # Its sources' paths are relative to the base directory: the copy's.
            logs[name] = LogsConnector(name, spec, base_dir=scratch,
                                       state_dir=scratch / "state" / name)
    return sql, logs


def floor_partners(rt: Any, reference: Any) -> dict[str, Any]:
    """The data map's OpenDSR partners, each sending to `reference` (a reference partner of
    the floor's own, so its requests never mix with the round's)."""
    from connectors.opendsr import OpenDsrClient, OpenDsrPartner
    from dsrflow.datamap import PartnerSystem

    partners = {}
    for name, spec in rt.datamap.systems.items():
        if isinstance(spec, PartnerSystem) and spec.protocol == "opendsr":
            client = OpenDsrClient(reference.url, reference.token,
                                   certificate_pem=reference.certificate_pem,
                                   allowed_domains=[reference.domain], name=name)
            partners[name] = OpenDsrPartner(name, spec.model_copy(
                update={"endpoint": reference.url}), client=client)
    return partners


def measure_floor(rt: Any, world: Path, addresses: list[str], tag: str,
                  partners: dict[str, Any], batch_size: int) -> Floor:
    """The round's work done by the connectors alone, on a copy of the world taken before
    the round: no Prefect, no ledger. Micro-batches of `batch_size`, one after the other."""
    from dsrflow.datamap import ObjectsSystem
    from dsrflow.identities import Identity, IdentityType, Subject
    from dsrflow.model import Regime

    scratch = world / f"floor-{tag}"
    copy_world(world, scratch)
    sql, logs = floor_connectors(rt, world, scratch)
    floor = Floor(0.0, 0.0, left_out={
        name: "S3 on moto, whose cost is reported apart" for name, spec
        in rt.datamap.systems.items() if isinstance(spec, ObjectsSystem)})
    # As intake records a ticket's email, read in the regime's region (all tickets are PIPL).
    region = rt.settings.phone_regions.get(Regime.PIPL)
    subjects = [Subject(request_id=f"floor-{tag}-{i}", phone_region=region,
                        identities=(Identity.read(IdentityType.EMAIL, address, region),))
                for i, address in enumerate(addresses)]
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(subjects), batch_size):
            floor_batch(rt, floor, subjects[start:start + batch_size], sql, logs, partners)
        floor.seconds = time.perf_counter() - wall
        floor.cpu = time.process_time() - cpu
    finally:
        for connector in sql.values():
            connector.dispose()
        shutil.rmtree(scratch, ignore_errors=True)
    return floor


def floor_batch(rt: Any, floor: Floor, subjects: list[Any], sql: dict[str, Any],
                logs: dict[str, Any], partners: dict[str, Any]) -> None:
    """One micro-batch, the connectors called as `pipeline/steps.py` calls them, one at a
    time: resolve identities in every SQL system (and read birth dates, as the screening
    does), erase everywhere with what was learnt, then verify. No holds (the world has
    none) and no scope (the tickets erase everything)."""
    from dsrflow.crypto import Pseudonymizer, new_key
    from pipeline.partners import concurrency

    learnt: dict[str, set[Any]] = defaultdict(set)
    for connector in sql.values():
        with floor.timing("sql:discover"):
            found = connector.discover(subjects)
        for rid, discovery in found.items():
            learnt[rid] |= discovery.found
    subjects = [s.model_copy(update={"identities": (*s.identities, *sorted(
        learnt[s.request_id] - set(s.identities), key=lambda i: (i.type.value, i.value)))})
        for s in subjects]
    for connector in sql.values():
        if any(t.birth_date_column for t in connector.system.tables.values()):
            with floor.timing("sql:birth_dates"):
                connector.birth_dates(subjects)
    # The ledger mints one key per request and keeps it encrypted; the connectors' work
    # with it is the same.
    keys = {s.request_id: Pseudonymizer(new_key()) for s in subjects}
    for kind, connectors in (("sql", sql), ("logs", logs)):
        for name, connector in connectors.items():
            with floor.timing(f"{kind}:erase"):
                outcomes = connector.erase(subjects, None, keys)
            floor.changed[name] = floor.changed.get(name, 0) + sum(
                o.total("deleted") + o.total("anonymized") for o in outcomes.values())
    for name, partner in partners.items():
        with floor.timing("partner:hand_over"):
            hand_over_all(partner, subjects, concurrency(rt, name))
    for kind, connectors in (("sql", sql), ("logs", logs)):
        for name, connector in connectors.items():
            with floor.timing(f"{kind}:verify"):
                outcomes = connector.verify(subjects, None)
            floor.remaining[name] = floor.remaining.get(name, 0) + sum(
                o.total("remaining") for o in outcomes.values())


def hand_over_all(partner: Any, subjects: list[Any], bound: int) -> None:
    """One OpenDSR erasure request per subject, `bound` at once as the run sends them
    (`pipeline.partners.send`), without a callback URL (the floor waits for no answer)."""
    from connectors.partner import new_subject_request_id
    from dsrflow.model import Regime, RequestType

    def one(subject: Any) -> Any:
        return partner.hand_over(subject, RequestType.ERASURE.value, Regime.PIPL.value,
                                 new_subject_request_id(), None)

    with ThreadPoolExecutor(min(bound, len(subjects)),
                            thread_name_prefix="floor-hand-over") as pool:
        list(pool.map(one, subjects))


@dataclass
class Floor:
    """The round's connector work called directly on a copy of the world (no Prefect, no
    ledger): wall and CPU seconds, in all and per connector call, and what it changed."""

    seconds: float
    cpu: float
    calls: dict[str, list[float]] = field(default_factory=dict)  # "sql:erase" -> [wall, CPU]
    changed: dict[str, int] = field(default_factory=dict)  # system -> deleted + anonymized
    remaining: dict[str, int] = field(default_factory=dict)  # system -> verify still found
    left_out: dict[str, str] = field(default_factory=dict)  # system -> why not in it

    @contextmanager
    def timing(self, label: str) -> Iterator[None]:
        """Wall and process CPU seconds of the block, added to `label`'s: calls are made
        one at a time, so the process's CPU in the block is the call's (and the in-process
        partner's, answering it)."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            spent = self.calls.setdefault(label, [0.0, 0.0])
            spent[0] += time.perf_counter() - wall
            spent[1] += time.process_time() - cpu
