"""End to end: N erasure tickets through intake and `dsrflow run` on a long-lived Prefect
server, across the demo world's SQL database, logs, S3 (a moto server in its own process)
and the reference OpenDSR partner, to every request completed and verified.

One world of `--users` accounts is built once; each round erases N accounts no earlier
round touched, so every round does real work. For each round it reports:

- requests/s from the first ticket submitted to the last request completed (the partner
  answers each request as soon as it has it and calls back; its callbacks close them);
- CPU-seconds per request: this process (dsrflow, the partner, the callback endpoint)
  plus the Prefect server's and the moto server's processes, each shown apart;
- where the busy thread time went: the ledger, each connector, and the rest (Prefect's
  engine, the task runner, dsrflow's own code between them); the connectors' share is the
  floor no orchestration can go under, and `overhead` is the busy time over it.

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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
import yaml

ROUND_TIMEOUT = 3600.0  # seconds a round may take to complete before the bench gives up
CALLBACK_SENDERS = 8  # threads the partner sends its callbacks from


@dataclass
class Round:
    requests: int
    submit_seconds: float
    run_seconds: float
    total_seconds: float
    cpu: dict[str, float]
    busy: dict[str, float]
    statuses: dict[str, int]
    # Per phase (intake, run, callbacks): the ledger's CPU seconds and this process's.
    phases: dict[str, tuple[float, float]]
    phase_methods: dict[str, dict[str, float]]  # phase -> ledger method -> CPU s


class BusyClock:
    """Busy thread time and thread CPU time per label: the outermost timed call of a
    thread counts, so a connector calling the ledger (or another connector) is not
    counted twice."""

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
        def timed(*args: Any, **kwargs: Any) -> Any:
            if getattr(self._local, "inside", False):
                return fn(*args, **kwargs)
            self._local.inside = True
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                used = time.thread_time() - cpu
                self._local.inside = False
                with self._lock:
                    self.busy[label] += spent
                    self.cpu[label] += used
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

    clock.wrap(Ledger, "ledger", [n for n in dir(Ledger) if not n.startswith("_")
                                  and callable(getattr(Ledger, n))
                                  and n not in ("engine", "keyring", "deadlines")],
               each=True)
    work = ["erase", "verify", "collect"]
    clock.wrap(SqlConnector, "sql", [*work, "discover", "birth_dates", "column_values"])
    clock.wrap(ObjectsConnector, "s3", work)
    clock.wrap(LogsConnector, "logs", work)
    clock.wrap(OpenDsrPartner, "partner", ["hand_over"])


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


def one_round(rt: Any, partner: Any, addresses: list[str], clock: BusyClock,
              pids: dict[str, int], tag: str) -> Round:
    from dsrflow.model import OPEN_STATUSES, PartnerStatus, Status
    from entrypoints.cli import run_batch

    cpu_before = {name: cpu_of(pid) for name, pid in pids.items()}
    clock.take()
    busy: dict[str, float] = defaultdict(float)
    phases: dict[str, tuple[float, float]] = {}
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
        phases[name] = (sum(phase_methods[name].values()), now_cpu - mark)
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
                 dict(busy), dict(statuses), phases, phase_methods)


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
              ReferencePartner(token=token) as partner):
            # Before Prefect is first imported (it reads its settings then).
            os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{api_port}/api"
            os.environ["PREFECT_HOME"] = str(out / "prefect-client")
            started = time.perf_counter()
            config = build(out, args.users, args.log_lines,
                           None if args.without_s3 else f"http://127.0.0.1:{s3_port}", partner)
            built = time.perf_counter() - started
            rounds = run_rounds(config, partner, sizes, args, {"prefect server": ppid,
                                                                "moto (S3)": mpid})
    finally:
        shutil.rmtree(out, ignore_errors=True)
    report(rounds, args, built)


def run_rounds(config: Path, partner: Any, sizes: list[int], args: argparse.Namespace,
               pids: dict[str, int]) -> list[Round]:
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
    db_url = config.parent / "wishe.db"
    try:
        with serving(create_app(rt)) as callbacks:
            rt.settings.callback_base_url = callbacks
            skip = 0
            for n in sizes:
                addresses = emails(f"sqlite:///{db_url}", skip, n)
                skip += n
                rounds.append(one_round(rt, partner, addresses, clock,
                                        {"dsrflow": os.getpid(), **pids}, f"E2E{n}"))
    finally:
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
    print("| requests | run s | ledger | sql | logs | s3 | partner | connectors (the floor) | "
          "run / floor | ledger s/request |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rounds:
        floor = sum(r.busy.get(k, 0.0) for k in ("sql", "logs", "s3", "partner"))
        cells = " | ".join(f"{r.busy.get(k, 0.0):.1f}"
                           for k in ("ledger", "sql", "logs", "s3", "partner"))
        print(f"| {r.requests:,} | {r.run_seconds:.1f} | {cells} | {floor:.1f} | "
              f"{r.run_seconds / max(floor, 1e-9):.2f}x | "
              f"{r.busy.get('ledger', 0.0) / r.requests:.3f} |")
    print()
    last = rounds[-1]
    top = sorted(((v, k) for k, v in last.busy.items() if k.startswith("ledger:")),
                 reverse=True)[:8]
    print(f"Ledger at N={last.requests:,}: " + ", ".join(
        f"{k.split(':', 1)[1]} {v:.1f} s" for v, k in top))
    print()
    print("| requests | phase | ledger CPU s | dsrflow process CPU s | ledger share |")
    print("|---:|---|---:|---:|---:|")
    for r in rounds:
        for name, (ledger, process) in r.phases.items():
            print(f"| {r.requests:,} | {name} | {ledger:.1f} | {process:.1f} | "
                  f"{100 * ledger / max(process, 1e-9):.0f}% |")
    print()
    for name, methods in last.phase_methods.items():
        print(f"Ledger CPU by method at N={last.requests:,}, {name}: " + ", ".join(
            f"{k} {v:.2f} s" for k, v in sorted(methods.items(), key=lambda kv: -kv[1])[:8]))
    print()
    print("Busy seconds are summed over threads (systems run side by side, callbacks arrive "
          "on their own threads; a wait for a lock counts as busy); the floor is the "
          "connectors' own time in the run, what the same work costs called directly.")
    if len(rounds) > 1:
        a, b = rounds[-2], rounds[-1]
        per_a = (a.cpu["dsrflow"] + a.cpu["prefect server"]) / a.requests
        per_b = (b.cpu["dsrflow"] + b.cpu["prefect server"]) / b.requests
        print()
        print(f"CPU per request at N={b.requests:,} / at N={a.requests:,}: "
              f"{per_b / per_a:.2f}x (target at most 1.2x)")


if __name__ == "__main__":
    main()
