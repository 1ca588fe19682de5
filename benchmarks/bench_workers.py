"""What a second worker buys: N erasures through a PostgreSQL-backed Prefect server and the
`dsrflow` process work pool, first with one `prefect worker`, then with two.

The production topology of the README's "Running on workers", on one machine: PostgreSQL
(`tests/postgres.py`) holds the ledger, the Wishe user database and Prefect's database;
`prefect server start` runs on it (its scheduler off, so no schedule starts anything);
`deployments/prefect.yaml` is deployed to the `dsrflow` process pool; workers are
`prefect worker start --pool dsrflow --limit K` (`tests/workerpool.py`, shared with
`tests/test_workers.py`). The data map is Wishe's user database only (no partner, no S3;
`--log-lines` adds the app and access logs).

Each round submits N erasure tickets to the ledger, then starts their batches (of
`batches.size` = `--batch-size`) the way intake starts them (`run_deployment` of
`process-requests/process-requests`, the batch's idempotency key), all at once, and waits
for every request to close. Each round erases accounts no earlier round touched. Before
the first round, three batches of one erasure each run on the first worker, one after the
other (the first flow run of a fresh server and worker pays one-off costs: not counted;
the others' CPU is reported, what a flow run costs with almost nothing to do). Reported
per round:

- requests/s from the first batch started to the last request completed (the ledger's
  `completed_at`);
- the batches each worker took (the flow run's label `prefect.worker.name`), each flow
  run's seconds (Prefect's start to end: from when its process, started and done
  importing, set it running) and the longest from a batch's start to that (the worker's
  poll, a free slot, the process's start and imports);
- CPU seconds per request of each worker (psutil: the worker and its flow runs'
  processes, which it waits for, so their CPU is added to it), of the Prefect server, of
  PostgreSQL (the postmaster and its backends) and of this process; and the whole
  machine's busy CPU over the round, in cores, which says whether the cores were the
  bound and whether anything else was running.

    .venv/bin/python -m benchmarks.bench_workers                        # 800 a round
    .venv/bin/python -m benchmarks.bench_workers --requests 200 --batch-size 50
    .venv/bin/python -m benchmarks.bench_workers --workers 1,2,1,2      # alternate
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
import yaml

from benchmarks import machine
from benchmarks.bench_e2e import emails, tickets, wishe_map, write_config
from tests.postgres import create_database, postgres
from tests.workerpool import ROOT, Process, deploy, prefect_env, prefect_server, wait_for, worker

DEPLOYMENT = "process-requests/process-requests"
POOL = "dsrflow"
ROUND_TIMEOUT = 900.0  # seconds a round may take to complete before the bench gives up
NAMES = ("worker-a", "worker-b", "worker-c", "worker-d")
WARM_UPS = 3  # batches of one request before the first round


@dataclass
class Round:
    workers: int
    requests: int
    batches: int
    seconds: float                 # first batch started -> last request completed
    taken: dict[str, int]          # batches per worker (label prefect.worker.name)
    run_seconds: list[float]       # each flow run, start to end (Prefect's times)
    longest_wait: float            # the longest a batch waited for a worker (created -> start)
    cpu: dict[str, float]          # CPU seconds: each worker, "prefect server", ...
    machine_busy: float            # CPU seconds the whole machine was busy in the round
    window: float                  # seconds over which the CPU was measured
    statuses: dict[str, int]       # the requests' statuses in the ledger
    states: dict[str, int]         # the flow runs' final states in Prefect


# -- measuring ----------------------------------------------------------------------------
def cpu_tree(pid: int) -> float:
    """CPU seconds of a process and its descendants: its own and its live descendants',
    plus those of descendants that ended (the kernel adds a child's CPU to its parent's
    `children_*` once the parent waits for it)."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def own_cpu() -> float:
    """This process's CPU seconds, without its children (the server and the workers)."""
    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


def machine_busy() -> float:
    """CPU seconds every core of the machine has been busy since boot."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0)
                 + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0))


def postmaster_pid(admin_url: str) -> int:
    engine = sa.create_engine(admin_url)
    try:
        with engine.connect() as conn:
            data = conn.execute(sa.text("SHOW data_directory")).scalar_one()
    finally:
        engine.dispose()
    return int((Path(data) / "postmaster.pid").read_text().split()[0])


def server_pid(api: str) -> int:
    """The `prefect server start` this process started for `api` (its port in the
    command line)."""
    port = api.rsplit(":", 1)[1].split("/", 1)[0]
    for child in psutil.Process().children():
        cmdline = child.cmdline()
        if "server" in cmdline and port in cmdline:
            return int(child.pid)
    raise RuntimeError(f"no Prefect server process for {api}")


# -- the world ----------------------------------------------------------------------------
def build(out: Path, userdb: str, ledger_url: str, users: int, log_lines: int,
          batch_size: int) -> Path:
    """The Wishe world on PostgreSQL, its map (the user database; the logs if asked for)
    and dsrflow's settings with a PostgreSQL ledger and batches of `batch_size`."""
    from examples.wishe.generate import build_world
    from examples.wishe.logs import write_logs

    build_world(userdb, users=users)
    without = ["media", "adnet", "courier"]
    if log_lines:
        write_logs(out / "logs", userdb, lines=log_lines)
    else:
        without.append("applogs")
    config = write_config(out, wishe_map(userdb, without=tuple(without)),
                          ledger_url=ledger_url)
    settings = yaml.safe_load(config.read_text())
    settings["batches"] = {"size": batch_size}
    config.write_text(yaml.safe_dump(settings))
    return config


# -- Prefect ------------------------------------------------------------------------------
def flow_runs(run_ids: list[str]) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return list(client.read_flow_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[uuid.UUID(r) for r in run_ids]))))


def all_final(run_ids: list[str]) -> list[Any] | None:
    runs = flow_runs(run_ids)
    done = [r for r in runs if r.state and r.state.is_final()]
    return runs if len(done) == len(run_ids) else None


def online(names: list[str]) -> bool:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        found = client.read_workers_for_work_pool(POOL)
    return {w.name for w in found if w.status.value == "ONLINE"} >= set(names)


def settle(workers: list[Process]) -> None:
    """Wait until the workers' flow-run processes have exited and been waited for, so that
    their CPU is in their worker's; a few seconds at most after their runs ended."""
    def gone() -> bool:
        return not any(psutil.Process(w.popen.pid).children() for w in workers)

    # Polling for the processes' exit, with a deadline; not synchronising the benchmark.
    wait_for("the flow runs' processes to exit", gone, timeout=60, every=0.2)


# -- the rounds ---------------------------------------------------------------------------
def run_rounds(config: Path, env: dict[str, str], folder: Path, args: argparse.Namespace,
               userdb: str, pids: dict[str, int]) -> tuple[list[Round], list[float]]:
    from dsrflow.ledger.schema import requests
    from dsrflow.settings import load_settings
    from pipeline.runtime import Runtime
    from tasks.intake import start_deployment_run

    rt = Runtime(load_settings(config))
    running: dict[str, Process] = {}
    rounds: list[Round] = []
    one_cpu: list[float] = []
    try:
        skip = 0
        for number, count in enumerate(args.workers, 1):
            names = list(NAMES[:count])
            for name in [n for n in running if n not in names]:
                running.pop(name).stop()
            for name in names:
                if name not in running:
                    running[name] = worker(name, env, folder, limit=args.limit)
            # Polling the workers' start-up, with a deadline.
            wait_for(f"workers {names} online", partial(online, names), timeout=180, every=0.5)
            if number == 1:
                one_cpu = warm_up(rt, running[names[0]], start_deployment_run,
                                  emails(userdb, skip, WARM_UPS))
                skip += WARM_UPS
            addresses = emails(userdb, skip, args.requests)
            if len(addresses) < args.requests:
                raise RuntimeError(f"round {number}: the world has too few accounts left; "
                                   "raise --users")
            ids = tickets(rt, addresses, f"W{number}")
            skip += args.requests
            batches = rt.settings.batches.split(ids)
            procs = [running[n] for n in names]

            cpu_before = {n: cpu_tree(running[n].popen.pid) for n in names}
            cpu_before.update({k: cpu_tree(pid) for k, pid in pids.items()})
            busy_before, bench_before = machine_busy(), own_cpu()
            window = time.perf_counter()
            started = datetime.now(UTC)
            run_ids = [str(start_deployment_run.fn(DEPLOYMENT, b)) for b in batches]
            # Polling for completion, with the round's deadline.
            runs = wait_for(f"round {number}'s flow runs to end", partial(all_final, run_ids),
                            timeout=ROUND_TIMEOUT, every=0.5)
            settle(procs)
            cpu = {n: cpu_tree(running[n].popen.pid) - cpu_before[n] for n in names}
            cpu.update({k: cpu_tree(pid) - cpu_before[k] for k, pid in pids.items()})
            cpu["bench"] = own_cpu() - bench_before
            busy = machine_busy() - busy_before
            window = time.perf_counter() - window

            if any(r.state.type.value != "COMPLETED" for r in runs):
                raise RuntimeError(f"round {number}: flow runs ended " + ", ".join(
                    sorted({r.state.type.value for r in runs})))
            records = rt.ledger.get_many(ids)
            statuses = Counter(r.status.value for r in records)
            if any(r.status.is_open for r in records):
                raise RuntimeError(f"round {number}: runs ended, requests still open: "
                                   f"{dict(statuses)}")
            with rt.ledger.engine.connect() as conn:
                last = conn.execute(sa.select(sa.func.max(sa.func.coalesce(
                    requests.c.completed_at, requests.c.updated_at))).where(
                    requests.c.id.in_(ids))).scalar_one()
            if last.tzinfo is None:
                last = last.replace(tzinfo=UTC)
            taken = Counter(str(r.labels.get("prefect.worker.name")) for r in runs)
            rounds.append(Round(
                workers=count, requests=len(ids), batches=len(batches),
                seconds=(last - started).total_seconds(), taken=dict(taken),
                run_seconds=[(r.end_time - r.start_time).total_seconds() for r in runs
                             if r.start_time and r.end_time],
                longest_wait=max((r.start_time - r.created).total_seconds() for r in runs
                                 if r.start_time and r.created),
                cpu=cpu, machine_busy=busy, window=window, statuses=dict(statuses),
                states=dict(Counter(r.state.type.value for r in runs))))
    finally:
        for proc in running.values():  # workers before the server they talk to
            proc.stop()
        rt.close()
    return rounds, one_cpu


def warm_up(rt: Any, first: Process, start: Any, addresses: list[str]) -> list[float]:
    """A batch of one erasure for each address, one after the other, on the first worker:
    the first flow run of a fresh server, pool and worker pays one-off costs (Prefect
    creates what it needs, the operating system caches the files). Returns the worker's
    CPU seconds for each batch after the first: what a flow run costs with (almost)
    nothing to do (its own process, imports, Prefect's state changes)."""
    spent = []
    for i, address in enumerate(addresses):
        [rid] = tickets(rt, [address], f"WARM{i}")
        before = cpu_tree(first.popen.pid)
        run_id = str(start.fn(DEPLOYMENT, [rid]))
        # Polling for completion, with a deadline.
        runs = wait_for("the warm-up run to end", partial(all_final, [run_id]), timeout=300,
                        every=0.5)
        settle([first])
        if runs[0].state.type.value != "COMPLETED":
            raise RuntimeError(f"the warm-up run ended {runs[0].state.type.value}")
        spent.append(cpu_tree(first.popen.pid) - before)
    return spent[1:]


# -- main ---------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=800, help="erasures per round")
    parser.add_argument("--batch-size", type=int, default=100, help="batches.size")
    parser.add_argument("--limit", type=int, default=2,
                        help="flow runs at once per worker (prefect worker --limit)")
    parser.add_argument("--workers", default="1,2", help="workers in each round")
    parser.add_argument("--poll", type=float, default=1.0,
                        help="PREFECT_WORKER_QUERY_SECONDS: how often a worker asks for runs")
    parser.add_argument("--users", type=int, default=0,
                        help="accounts in the world (default: enough for every round)")
    parser.add_argument("--log-lines", type=int, default=0,
                        help="add the app and access logs, with this many lines")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (the server's and workers' logs)")
    args = parser.parse_args()
    args.workers = [int(n) for n in args.workers.split(",")]
    if not all(1 <= n <= len(NAMES) for n in args.workers):
        parser.error(f"--workers: 1 to {len(NAMES)} a round")
    # Each round erases accounts no earlier one touched, by email (about 70% of the
    # accounts have one; the first 20 are the demo's subjects).
    needed = args.requests * len(args.workers) + WARM_UPS
    args.users = args.users or int(needed * 1.6) + 100

    out = Path(tempfile.mkdtemp(prefix="dsrflow-bench-workers-"))
    # Before Prefect is first imported (it reads its settings then).
    os.environ.update({"PREFECT_HOME": str(out / "client"), "DO_NOT_TRACK": "1",
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    try:
        with postgres() as admin:
            userdb = create_database(admin, "wishe")
            ledger_url = create_database(admin, "ledger")
            prefect_db = create_database(admin, "prefect")
            began = time.perf_counter()
            config = build(out, userdb, ledger_url, args.users, args.log_lines,
                           args.batch_size)
            built = time.perf_counter() - began
            with prefect_server(prefect_db.replace("+psycopg", "+asyncpg"), out) as api:
                os.environ["PREFECT_API_URL"] = api
                env = prefect_env(out / "home", api, DSRFLOW_ROOT=str(ROOT),
                                  DSRFLOW_CONFIG=str(config),
                                  PREFECT_WORKER_QUERY_SECONDS=str(args.poll))
                deploy(env)
                pids = {"prefect server": server_pid(api), "postgresql": postmaster_pid(admin)}
                rounds, one_cpu = run_rounds(config, env, out, args, userdb, pids)
    finally:
        if args.keep:
            print(f"kept {out}")
        else:
            shutil.rmtree(out, ignore_errors=True)
    report(rounds, args, built, one_cpu)


def report(rounds: list[Round], args: argparse.Namespace, built: float,
           one_cpu: list[float]) -> None:
    import prefect

    cores = os.cpu_count() or 1
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
          f"{machine(f'Prefect {prefect.__version__}, psutil {psutil.__version__}')}")
    print(f"# world: {args.users:,} Wishe users on PostgreSQL (built in {built:.0f} s)"
          f"{f', {args.log_lines:,} log lines' if args.log_lines else ', no logs'}; "
          f"PostgreSQL ledger; no partner; {args.requests:,} erasures a round in batches of "
          f"{args.batch_size}, started as intake starts them; workers with --limit "
          f"{args.limit}, polling every {args.poll:g} s")
    print()
    print("| workers | requests | batches | first start to last completed s | requests/s | "
          "batches per worker | flow run s, median (min-max) | started to running, longest s "
          "| requests | flow runs |")
    print("|---:|---:|---:|---:|---:|---|---|---:|---|---|")
    for r in rounds:
        runs = r.run_seconds
        print(f"| {r.workers} | {r.requests:,} | {r.batches} | {r.seconds:.1f} | "
              f"{r.requests / r.seconds:.2f} | "
              f"{', '.join(f'{n} {k}' for n, k in sorted(r.taken.items()))} | "
              f"{statistics.median(runs):.1f} ({min(runs):.1f}-{max(runs):.1f}) | "
              f"{r.longest_wait:.1f} | "
              f"{', '.join(f'{n} {s}' for s, n in sorted(r.statuses.items()))} | "
              f"{', '.join(f'{n} {s.lower()}' for s, n in sorted(r.states.items()))} |")
    print()
    print("| workers | CPU s/request: each worker (with its flow runs) | all workers | "
          "all workers, CPU s/batch | Prefect server | PostgreSQL | this process | "
          f"cores busy: workers, server, PostgreSQL | machine busy, cores (of {cores}) | "
          "of which these processes |")
    print("|---:|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in rounds:
        names = sorted(n for n in r.cpu if n.startswith("worker-"))
        workers = sum(r.cpu[n] for n in names)
        ours = sum(r.cpu.values())
        print(f"| {r.workers} | "
              f"{', '.join(f'{n} {r.cpu[n] / r.requests:.3f}' for n in names)} | "
              f"{workers / r.requests:.3f} | {workers / r.batches:.1f} | "
              f"{r.cpu['prefect server'] / r.requests:.3f} | "
              f"{r.cpu['postgresql'] / r.requests:.3f} | {r.cpu['bench'] / r.requests:.3f} | "
              f"{workers / r.window:.2f}, {r.cpu['prefect server'] / r.window:.2f}, "
              f"{r.cpu['postgresql'] / r.window:.2f} | "
              f"{r.machine_busy / r.window:.2f} | {ours / r.window:.2f} |")
    print()
    print(f"A batch of one erasure cost its worker {', '.join(f'{c:.1f}' for c in one_cpu)} "
          "CPU-s (the warm-ups after the first): a flow run's own process, imports and state "
          "changes, and one request.")
    base: Round | None = None
    for i, r in enumerate(rounds, 1):
        if r.workers == 1:
            base = r
        elif base is not None:  # against the last round with one worker
            print(f"round {i}, {r.workers} workers / 1: "
                  f"{(r.requests / r.seconds) / (base.requests / base.seconds):.2f}x "
                  "requests/s")


if __name__ == "__main__":
    main()
