"""End to end: N erasure tickets through intake and `dsrflow run` on a long-lived Prefect
server, across the demo world's SQL database, logs, S3 (a moto server in its own process)
and the reference OpenDSR partner, to every request completed and verified.

One world of `--users` accounts is built once; each round erases N accounts no earlier
round touched, so every round does real work. For each round it reports:

- requests/s from the first ticket submitted to the last request completed (the partner
  answers each request as soon as it has it and calls back; its callbacks close them);
- CPU-seconds per request: this process (dsrflow, the partner, the callback endpoint)
  plus the Prefect server's and the moto server's processes, each shown apart;
- the floor: the same work done by the connectors called directly, without Prefect or
  the ledger, in the same process just before the round, on a copy of the world's SQLite
  database and log files (`benchmarks/floor_work.py`). Its wall and CPU seconds are set
  against the run's (target: run at most 2x the floor), and what it erased against what
  the ledger recorded for the round, to show it did the same work;
- CPU seconds by phase (intake, run, callbacks): dsrflow's (this process's, less the
  reference partner's threads), split into the ledger's, each connector's and the rest
  (Prefect's engine and client, the pipeline between the calls);
- busy thread time in the run: the ledger and each connector, summed over threads (systems
  run side by side, partner exchanges on 8 threads: not comparable with wall seconds).

    .venv/bin/python -m benchmarks.bench_e2e                             # 100 and 1,000
    .venv/bin/python -m benchmarks.bench_e2e --requests 20 --users 400  # a quick look
    .venv/bin/python -m benchmarks.bench_e2e --requests 100,1000,10000 --users 20000

moto's S3 copies the whole bucket's listing on every `list_object_versions` call, so its
cost grows with the bucket, not with the request; its CPU is reported apart for that.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
import yaml

from benchmarks.floor_work import (
    FLOOR_CALLS,
    FLOOR_TOLERANCE,
    Floor,
    floor_partners,
    measure_floor,
)

ROUND_TIMEOUT = 3600.0  # seconds a round may take to complete before the bench gives up
CALLBACK_SENDERS = 8  # threads the partner sends its callbacks from
PARTNER_LABEL = "reference partner"  # its answers and callbacks, timed to be left out
CPU_PARTS = ("ledger", "sql", "logs", "s3", "partner")  # what the phases' CPU is split into


@dataclass
class Round:
    requests: int
    submit_seconds: float
    run_seconds: float
    total_seconds: float
    cpu: dict[str, float]
    busy: dict[str, float]
    statuses: dict[str, int]
    # Per phase (intake, run, callbacks): CPU seconds of dsrflow (this process's, less
    # the reference partner's threads) and of the ledger and each connector in it.
    phases: dict[str, dict[str, float]]
    phase_methods: dict[str, dict[str, float]]  # phase -> ledger method -> CPU s
    # What the ledger recorded the round's erasures changed, per system (rows deleted or
    # anonymized, log lines rewritten): set against what the floor changed.
    recorded: dict[str, int]
    floor: Floor | None = None


@dataclass
class _Frame:
    """A timed call under way in a thread: its family, and its timed callees' seconds."""

    family: str
    callees_busy: float = 0.0
    callees_cpu: float = 0.0


class BusyClock:
    """Busy thread time and thread CPU time per label. A call inside another of the same
    family (`ledger:get` inside `ledger:get_many`, a connector inside itself) counts once,
    in the outer one; a call of another family inside it (the ledger told of a log file's
    progress from inside the logs connector's erase) counts as its own, not the outer's."""

    def __init__(self) -> None:
        self.busy: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._local = threading.local()

    def wrap(self, cls: type, label: str, names: list[str], *, each: bool = False) -> None:
        """Time these methods under `label` (`label:method` each, with `each`)."""
        for name in names:
            setattr(cls, name, self._timed(getattr(cls, name),
                                           f"{label}:{name}" if each else label))

    def _timed(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        family = label.split(":", 1)[0]

        def timed(*args: Any, **kwargs: Any) -> Any:
            stack: list[_Frame] = self._local.__dict__.setdefault("stack", [])
            if stack and stack[-1].family == family:
                return fn(*args, **kwargs)
            frame = _Frame(family)
            stack.append(frame)
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                used = time.thread_time() - cpu
                stack.pop()
                if stack:
                    stack[-1].callees_busy += spent
                    stack[-1].callees_cpu += used
                with self._lock:
                    self.busy[label] += spent - frame.callees_busy
                    self.cpu[label] += used - frame.callees_cpu
        return timed

    def take(self) -> tuple[dict[str, float], dict[str, float]]:
        """Busy and CPU seconds per label since the last take."""
        with self._lock:
            out = dict(self.busy), dict(self.cpu)
            self.busy.clear()
            self.cpu.clear()
        return out


def instrument(clock: BusyClock) -> None:
    from connectors.logs import LogsConnector
    from connectors.objects import ObjectsConnector
    from connectors.opendsr import OpenDsrPartner
    from connectors.sql import SqlConnector
    from dsrflow.ledger import Ledger
    from examples.partner import ReferencePartner

    clock.wrap(Ledger, "ledger", [n for n in dir(Ledger) if not n.startswith("_")
                                  and callable(getattr(Ledger, n))
                                  and n not in ("engine", "keyring", "deadlines")],
               each=True)
    work = ["erase", "verify", "collect"]
    clock.wrap(SqlConnector, "sql", [*work, "discover", "birth_dates", "column_values"])
    clock.wrap(ObjectsConnector, "s3", work)
    clock.wrap(LogsConnector, "logs", work)
    clock.wrap(OpenDsrPartner, "partner", ["hand_over"])
    clock.wrap(ReferencePartner, PARTNER_LABEL, ["_route", "_notify"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server_process(argv: list[str], health: str, env: dict[str, str],
                   log: Path) -> Iterator[int]:
    """A server in its own process for the length of the block; yields its pid. Its
    output goes to `log` (a pipe nobody reads would fill and stall it)."""
    import httpx

    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(health, timeout=2).status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[0]} did not start: see {log}")
                time.sleep(0.25)  # polling a server's start-up, not synchronizing a test
            yield proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # moto's server ignores SIGTERM
                proc.kill()
                proc.wait(timeout=10)


def cpu_of(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def build(out: Path, users: int, log_lines: int, s3: str | None, partner: Any) -> Path:
    """The demo world at `out` (SQLite, logs, the moto S3 unless `s3` is None), its map
    without the manual partner (a person confirms that one: not throughput), and
    dsrflow's settings."""
    import boto3

    from examples.wishe.generate import build_world
    from examples.wishe.logs import write_logs
    from examples.wishe.objects import populate

    db_url = f"sqlite:///{out / 'wishe.db'}"
    build_world(db_url, users=users)
    if s3 is not None:
        populate(boto3.client("s3", endpoint_url=s3), db_url)
    write_logs(out / "logs", db_url, lines=log_lines)
    datamap = wishe_map(db_url, without=("courier",) if s3 else ("courier", "media"))
    systems = datamap["systems"]
    if s3 is not None:
        systems["media"].pop("endpoint_url_env", None)
        systems["media"]["endpoint_url"] = s3
    systems["adnet"]["endpoint"] = partner.url
    systems["adnet"]["callback_domains"] = [partner.domain]
    (out / "partners").mkdir()
    (out / "partners" / "adnet.pem").write_bytes(partner.certificate_pem)
    return write_config(out, datamap, prefect_home="prefect")


def wishe_map(db_url: str, without: tuple[str, ...]) -> dict[str, Any]:
    """The Wishe data map over the world at `db_url`, without these systems."""
    datamap: dict[str, Any] = yaml.safe_load(
        (Path(__file__).resolve().parent.parent / "examples/wishe/datamap.yaml").read_text())
    systems = datamap["systems"]
    for name in without:
        systems.pop(name)
    systems["userdb"].pop("url_env", None)
    systems["userdb"]["url"] = db_url
    return datamap


def write_config(out: Path, datamap: dict[str, Any], **settings: str) -> Path:
    """The map, fresh keys and dsrflow's settings in `out`; returns the settings file."""
    from dsrflow.settings import write_key_file

    (out / "datamap.yaml").write_text(yaml.safe_dump(datamap, sort_keys=False,
                                                     allow_unicode=True))
    write_key_file(out / "keys.json")
    config = out / "dsrflow.yaml"
    config.write_text(yaml.safe_dump({
        "ledger_url": "sqlite:///ledger.db", "datamap": "datamap.yaml",
        "key_file": "keys.json", "exports_dir": "exports",
        "certificates_dir": "certificates", **settings,
    }))
    return config


def emails(db_url: str, skip: int, n: int) -> list[str]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(
                "SELECT email FROM users WHERE email IS NOT NULL AND id > 20 ORDER BY id "
                "LIMIT :n OFFSET :skip"), {"n": n, "skip": skip}).scalars())
    finally:
        engine.dispose()


def tickets(rt: Any, addresses: list[str], tag: str) -> list[str]:
    """Erasure tickets for these accounts, recorded as intake records them."""
    from dsrflow.intake import submit

    now = datetime.now(UTC)
    ids = []
    for i, address in enumerate(addresses):
        body = {"ticket_id": f"{tag}-{i}", "type": "erasure", "regime": "pipl",
                "identities": [{"type": "email", "value": address}],
                "verification": {"method": "sms_otp",
                                 "verified_at": (now - timedelta(minutes=5)).isoformat()},
                "channel": "app", "received_at": (now - timedelta(minutes=10)).isoformat()}
        submitted = submit(rt.ledger, rt.datamap, json.dumps(body).encode(),
                           phone_regions=rt.settings.phone_regions)
        if submitted.reason:
            raise RuntimeError(f"ticket {tag}-{i} was {submitted.status.value}: "
                               f"{submitted.reason}")
        ids.append(submitted.request_id)
    return ids


def recorded_changes(rt: Any, request_ids: list[str]) -> dict[str, int]:
    """What the ledger's erasure steps say each system changed for these requests: rows
    deleted or anonymized, log lines rewritten."""
    from dsrflow.model import StepAction

    changed: dict[str, int] = defaultdict(int)
    for step in rt.ledger.steps(request_ids, actions=[StepAction.ERASE]):
        changed[step.system] += (step.deleted or 0) + (step.anonymized or 0)
    return dict(changed)


def one_round(rt: Any, partner: Any, addresses: list[str], clock: BusyClock,
              pids: dict[str, int], tag: str) -> Round:
    from dsrflow.model import OPEN_STATUSES, PartnerStatus, Status
    from entrypoints.cli import run_batch

    cpu_before = {name: cpu_of(pid) for name, pid in pids.items()}
    clock.take()
    busy: dict[str, float] = defaultdict(float)
    phases: dict[str, dict[str, float]] = {}
    phase_methods: dict[str, dict[str, float]] = {}
    mark = cpu_of(pids["dsrflow"])

    def phase(name: str) -> None:
        """Close a phase: the ledger's CPU in it, and this process's."""
        nonlocal mark
        b, u = clock.take()
        for k, v in b.items():
            busy[k] += v
        now_cpu = cpu_of(pids["dsrflow"])
        phase_methods[name] = {k.split(":", 1)[1]: v for k, v in u.items()
                               if k.startswith("ledger:")}
        parts: dict[str, float] = defaultdict(float)
        for k, v in u.items():
            parts[k.split(":", 1)[0]] += v
        # The reference partner answers and calls back from threads of this process: its
        # CPU is the partner's work, not dsrflow's.
        phases[name] = {"dsrflow": now_cpu - mark - parts.pop(PARTNER_LABEL, 0.0),
                        **{k: parts.get(k, 0.0) for k in CPU_PARTS}}
        mark = now_cpu

    started = time.perf_counter()
    ids = tickets(rt, addresses, tag)
    submitted = time.perf_counter()
    phase("intake")
    run_batch(ids)
    ran = time.perf_counter()
    phase("run")
    # The partner finishes each request it holds and calls back, from CALLBACK_SENDERS
    # threads (a partner's workers answer side by side); the callbacks close them.
    with ThreadPoolExecutor(CALLBACK_SENDERS) as senders:
        list(senders.map(partner.complete, [
            row.subject_request_id for row in rt.ledger.partner_requests(ids)
            if row.status is not PartnerStatus.COMPLETED]))
    deadline = time.monotonic() + ROUND_TIMEOUT
    while any(r.status in OPEN_STATUSES for r in rt.ledger.get_many(ids)):
        if time.monotonic() > deadline:
            raise RuntimeError("requests still open after the round's timeout")
        time.sleep(0.5)  # waiting for callbacks in flight, not synchronizing a test
    done = time.perf_counter()
    phase("callbacks")
    cpu = {name: cpu_of(pid) - cpu_before[name] for name, pid in pids.items()}
    statuses = Counter(r.status.value for r in rt.ledger.get_many(ids))
    assert set(statuses) <= {Status.COMPLETED.value, Status.PARTIALLY_COMPLETED.value,
                             Status.FAILED.value}
    busy["ledger"] = sum(v for k, v in busy.items() if k.startswith("ledger:"))
    return Round(len(ids), submitted - started, ran - submitted, done - started, cpu,
                 dict(busy), dict(statuses), phases, phase_methods,
                 recorded_changes(rt, ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", default="100,1000", help="N per round, comma-separated")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--log-lines", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--without-s3", action="store_true",
                        help="leave the objects system out (moto's cost grows with the bucket)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.requests.split(",")]
    if sum(sizes) > args.users - 20:
        parser.error("--users must exceed the sum of --requests (each round erases others)")

    from examples.partner import ReferencePartner

    out = Path(tempfile.mkdtemp(prefix="dsrflow-bench-e2e-"))
    home = out / "prefect-server"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1", "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                           "AWS_DEFAULT_REGION", "DO_NOT_TRACK")})
    api_port, s3_port = free_port(), free_port()
    bin_dir = Path(sys.executable).parent
    prefect = [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1",
               "--port", str(api_port)]
    moto = [str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)]
    token = "bench-adnet-token"
    os.environ["WISHE_ADNET_TOKEN"] = token
    try:
        with (server_process(prefect, f"http://127.0.0.1:{api_port}/api/health", env,
                             out / "prefect-server.log") as ppid,
              server_process(moto, f"http://127.0.0.1:{s3_port}/", env,
                             out / "moto.log") as mpid,
              ReferencePartner(token=token) as partner,
              ReferencePartner(token=token) as floor_partner):
            # Before Prefect is first imported (it reads its settings then).
            os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{api_port}/api"
            os.environ["PREFECT_HOME"] = str(out / "prefect-client")
            started = time.perf_counter()
            config = build(out, args.users, args.log_lines,
                           None if args.without_s3 else f"http://127.0.0.1:{s3_port}", partner)
            built = time.perf_counter() - started
            rounds = run_rounds(config, partner, floor_partner, sizes, args,
                                {"prefect server": ppid, "moto (S3)": mpid})
    finally:
        shutil.rmtree(out, ignore_errors=True)
    report(rounds, args, built)


def run_rounds(config: Path, partner: Any, floor_partner: Any, sizes: list[int],
               args: argparse.Namespace, pids: dict[str, int]) -> list[Round]:
    from deployments.callbacks import create_app, serving
    from dsrflow.settings import BatchSettings, load_settings
    from pipeline.runtime import Runtime, set_runtime

    settings = load_settings(config)
    settings.batches = BatchSettings(size=args.batch_size, concurrent=args.concurrent)
    rt = Runtime(settings)
    set_runtime(rt)
    clock = BusyClock()
    instrument(clock)
    rounds = []
    world = config.parent
    partners = floor_partners(rt, floor_partner)
    try:
        with serving(create_app(rt)) as callbacks:
            rt.settings.callback_base_url = callbacks
            skip = 0
            for n in sizes:
                addresses = emails(f"sqlite:///{world / 'wishe.db'}", skip, n)
                skip += n
                # Before the round (its clocks start afresh): on a copy of the world as the
                # round finds it.
                floor = measure_floor(rt, world, addresses, f"E2E{n}", partners,
                                      args.batch_size)
                done = one_round(rt, partner, addresses, clock,
                                 {"dsrflow": os.getpid(), **pids}, f"E2E{n}")
                rounds.append(replace(done, floor=floor))
    finally:
        for floor_client in partners.values():
            floor_client.close()
        rt.close()
    return rounds


def report(rounds: list[Round], args: argparse.Namespace, built: float) -> None:
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}; Python {platform.python_version()}")
    print(f"# world: {args.users:,} users, {args.log_lines:,} log lines (built in "
          f"{built:.0f} s); batches of {args.batch_size}, {args.concurrent} at once; "
          f"SQLite ledger and user database, {'no S3' if args.without_s3 else 'moto S3'}, "
          "the reference OpenDSR partner")
    print()
    print("| requests | submit s | run s | to all completed s | requests/s | "
          "CPU s/request (dsrflow + Prefect server) | moto CPU s/request | statuses |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rounds:
        ours = r.cpu["dsrflow"] + r.cpu["prefect server"]
        print(f"| {r.requests:,} | {r.submit_seconds:.1f} | {r.run_seconds:.1f} | "
              f"{r.total_seconds:.1f} | {r.requests / r.total_seconds:.2f} | "
              f"{ours / r.requests:.3f} | {r.cpu['moto (S3)'] / r.requests:.3f} | "
              f"{', '.join(f'{n} {s}' for s, n in sorted(r.statuses.items()))} |")
    print()
    report_floor(rounds)
    print()
    print("Busy seconds in the run, summed over threads:")
    print()
    print("| requests | run s | ledger busy s | sql busy s | logs busy s | s3 busy s | "
          "partner busy s | ledger s/request |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rounds:
        cells = " | ".join(f"{r.busy.get(k, 0.0):.1f}"
                           for k in ("ledger", "sql", "logs", "s3", "partner"))
        print(f"| {r.requests:,} | {r.run_seconds:.1f} | {cells} | "
              f"{r.busy.get('ledger', 0.0) / r.requests:.3f} |")
    print()
    last = rounds[-1]
    top = sorted(((v, k) for k, v in last.busy.items() if k.startswith("ledger:")),
                 reverse=True)[:8]
    print(f"Ledger at N={last.requests:,}: " + ", ".join(
        f"{k.split(':', 1)[1]} {v:.1f} s" for v, k in top))
    print()
    print("CPU seconds by phase: dsrflow's (this process less the reference partner's "
          "threads), of which the ledger's, each connector's (partner: the OpenDSR client) "
          "and the rest (Prefect's engine and client, the pipeline between the calls):")
    print()
    print("| requests | phase | dsrflow | " + " | ".join(CPU_PARTS) + " | the rest | "
          "ledger share |")
    print("|---:|---|---:|" + "---:|" * (len(CPU_PARTS) + 2))
    for r in rounds:
        for name, cpu in r.phases.items():
            rest = cpu["dsrflow"] - sum(cpu[k] for k in CPU_PARTS)
            print(f"| {r.requests:,} | {name} | {cpu['dsrflow']:.1f} | "
                  + " | ".join(f"{cpu[k]:.1f}" for k in CPU_PARTS)
                  + f" | {rest:.1f} | {100 * cpu['ledger'] / max(cpu['dsrflow'], 1e-9):.0f}% |")
    print()
    for name, methods in last.phase_methods.items():
        print(f"Ledger CPU by method at N={last.requests:,}, {name}: " + ", ".join(
            f"{k} {v:.2f} s" for k, v in sorted(methods.items(), key=lambda kv: -kv[1])[:8]))
    print()
    print("Busy seconds are summed over threads (systems run side by side, partner exchanges "
          "and callbacks on their own threads; a wait for a lock or an answer counts as "
          "busy): they say where the run's threads were, not what the work costs; the floor "
          "says that.")
    if len(rounds) > 1:
        a, b = rounds[-2], rounds[-1]
        per_a = (a.cpu["dsrflow"] + a.cpu["prefect server"]) / a.requests
        per_b = (b.cpu["dsrflow"] + b.cpu["prefect server"]) / b.requests
        print()
        print(f"CPU per request at N={b.requests:,} / at N={a.requests:,}: "
              f"{per_b / per_a:.2f}x (target at most 1.2x)")


def report_floor(rounds: list[Round]) -> None:
    """The run against the floor; the floor per connector call; the floor's work against
    the ledger's record of the round's."""
    floors = [(r, r.floor) for r in rounds if r.floor is not None]
    if not floors:
        return
    print("| requests | run s | to all completed s | floor s | floor CPU s | "
          "dsrflow CPU s in run | run / floor | (run + callbacks) / floor |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r, f in floors:
        after_intake = r.total_seconds - r.submit_seconds  # the run and the callbacks
        print(f"| {r.requests:,} | {r.run_seconds:.1f} | {r.total_seconds:.1f} | "
              f"{f.seconds:.1f} | {f.cpu:.1f} | {r.phases['run']['dsrflow']:.1f} | "
              f"{r.run_seconds / max(f.seconds, 1e-9):.2f}x | "
              f"{after_intake / max(f.seconds, 1e-9):.2f}x |")
    print()
    print("Floor per connector call, wall s / CPU s:")
    print()
    print("| requests | " + " | ".join(FLOOR_CALLS) + " |")
    print("|---:|" + "---:|" * len(FLOOR_CALLS))
    for r, f in floors:
        cells = " | ".join(f"{f.calls[k][0]:.2f} / {f.calls[k][1]:.2f}" if k in f.calls
                           else "-" for k in FLOOR_CALLS)
        print(f"| {r.requests:,} | {cells} |")
    print()
    print("Same work? Rows deleted or anonymized, log lines rewritten:")
    print()
    print("| requests | system | floor | ledger (the run) | floor verify: remaining |")
    print("|---:|---|---:|---:|---:|")
    mismatches = []
    for r, f in floors:
        for system, changed in sorted(f.changed.items()):
            recorded = r.recorded.get(system, 0)
            print(f"| {r.requests:,} | {system} | {changed:,} | {recorded:,} | "
                  f"{f.remaining.get(system, 0):,} |")
            if abs(changed - recorded) > FLOOR_TOLERANCE * max(changed, recorded, 1):
                mismatches.append(f"{system} at N={r.requests:,}: floor {changed:,}, "
                                  f"ledger {recorded:,}")
    print()
    print("The floor: the round's connector calls made directly, without Prefect or the "
          "ledger, on a copy of the world taken just before the round, in this process; "
          "micro-batches one after the other, the calls of a batch one at a time (the OpenDSR "
          "POSTs partner_concurrency at once, as the run sends them, to a second reference "
          "partner, with no callbacks). run / floor: `dsrflow run` against it; (run + "
          "callbacks) / floor: to every request completed, intake left out.")
    left_out = {k: v for _, f in floors for k, v in f.left_out.items()}
    for system, why in sorted(left_out.items()):
        print(f"Not in the floor: {system} ({why}).")
    for mismatch in mismatches:
        print(f"WARNING: the floor did not do the run's work: {mismatch} "
              f"(more than {FLOOR_TOLERANCE:.0%} apart)")


if __name__ == "__main__":
    main()
