"""One ticket through a served deployment: from `submit` to the request completed, with a
long-lived Prefect server and `dsrflow serve` already running, when no partner must answer
(the demo world's user database and logs; no S3, no partners).

Each round submits one erasure, starts `process-requests` through its deployment (as
intake does) and waits for the request to close. The baseline, in the same run: the same
deployment started with no request at all, the cost of a served flow run itself (the
runner's poll for scheduled runs, a subprocess importing the flow, Prefect's state round
trips). Target (issue 16): under 5 s.

    .venv/bin/python -m benchmarks.bench_latency [--rounds 5] [--poll 1]

`--poll` is PREFECT_RUNNER_POLL_FREQUENCY for `dsrflow serve`: how often the runner asks
the server for runs to start (Prefect's default, 10 s, is most of the latency alone).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.bench_e2e import free_port, server_process, wishe_map, write_config

DEPLOYMENT = "process-requests/process-requests"
ROUND_TIMEOUT = 120.0


def build(out: Path, users: int) -> Path:
    from examples.wishe.generate import build_world
    from examples.wishe.logs import write_logs

    db_url = f"sqlite:///{out / 'wishe.db'}"
    build_world(db_url, users=users)
    write_logs(out / "logs", db_url, lines=2000)
    return write_config(out, wishe_map(db_url, without=("media", "adnet", "courier")))


def wait_for_deployment(seconds: float) -> None:
    from prefect import get_client

    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while True:
            try:
                client.read_deployment_by_name(DEPLOYMENT)
                return
            except Exception:  # not registered yet
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)  # polling a server's start-up, not synchronizing a test


def served_run(request_ids: list[str]) -> float:
    """Start the deployment for these ids and wait for the flow run to end: seconds."""
    from prefect.deployments import run_deployment

    started = time.perf_counter()
    run: Any = run_deployment(DEPLOYMENT, parameters={"request_ids": request_ids},
                              timeout=ROUND_TIMEOUT, poll_interval=0.2)
    if not run.state or not run.state.is_final():
        raise RuntimeError("the served run did not finish in time")
    if not run.state.is_completed():  # a crashed run is not a measure of a served run
        raise RuntimeError(f"the served run ended {run.state.type.value}, not completed")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--poll", type=float, default=1.0)
    parser.add_argument("--users", type=int, default=200)
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="dsrflow-bench-latency-"))
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}/api"
    env = {**os.environ, "PREFECT_HOME": str(out / "prefect-server"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    bin_dir = Path(sys.executable).parent
    prefect = [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1",
               "--port", str(api_port)]
    try:
        config = build(out, args.users)
        serve = [str(bin_dir / "dsrflow"), "serve", "--config", str(config),
                 "--port", str(free_port())]
        serve_env = {**env, "PREFECT_API_URL": api, "PREFECT_HOME": str(out / "serve-home"),
                     "PREFECT_RUNNER_POLL_FREQUENCY": str(args.poll)}
        with server_process(prefect, f"{api}/health", env, out / "prefect-server.log"):
            os.environ.update({"PREFECT_API_URL": api, "PREFECT_HOME": str(out / "client"),
                               "DO_NOT_TRACK": "1"})
            with server_process(serve, f"{api}/health", serve_env, out / "serve.log"):
                wait_for_deployment(120)
                empty, ticket = rounds(config, args.rounds)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores; runner poll "
          f"{args.poll} s; {args.rounds} rounds, median (min-max)")
    print()
    print("| served run | seconds |")
    print("|---|---:|")
    for what, seconds in (("no request (the baseline)", empty),
                          ("one erasure, submit to completed", ticket)):
        print(f"| {what} | {statistics.median(seconds):.2f} "
              f"({min(seconds):.2f}-{max(seconds):.2f}) |")
    print()
    print(f"one ticket / baseline: {statistics.median(ticket) / statistics.median(empty):.2f}x;"
          f" target under 5 s")


def rounds(config: Path, n: int) -> tuple[list[float], list[float]]:
    from dsrflow.intake import submit
    from dsrflow.model import Status
    from dsrflow.settings import load_settings
    from pipeline.runtime import Runtime

    rt = Runtime(load_settings(config))
    empty, ticket = [], []
    try:
        served_run([])  # the first run of a fresh runner pays its own start: not counted
        for i in range(n):
            empty.append(served_run([]))
            now = datetime.now(UTC)
            started = time.perf_counter()
            body = {"ticket_id": f"LAT-{i}", "type": "erasure", "regime": "pipl",
                    "identities": [{"type": "user_id", "value": str(30 + i)}],
                    "verification": {"method": "sms_otp",
                                     "verified_at": (now - timedelta(minutes=1)).isoformat()},
                    "channel": "app",
                    "received_at": (now - timedelta(minutes=2)).isoformat()}
            submitted = submit(rt.ledger, rt.datamap, json.dumps(body).encode())
            if submitted.reason:
                raise RuntimeError(f"round {i}: the ticket was {submitted.status.value}: "
                                   f"{submitted.reason}")
            rid = submitted.request_id
            served_run([rid])
            ticket.append(time.perf_counter() - started)
            status = rt.ledger.get(rid).status
            if status is not Status.COMPLETED:
                raise RuntimeError(f"round {i}: the request ended {status.value}")
    finally:
        rt.close()
    return empty, ticket


if __name__ == "__main__":
    main()
