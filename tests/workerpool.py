"""Production topology for tests: a Prefect server on PostgreSQL (`prefect server start` in
a subprocess), the `dsrflow` process work pool with deployments/prefect.yaml deployed to
it, and `prefect worker start` processes that can be killed outright.

Everything here is the real thing started the way the README tells an operator to; only
the server's scheduler is off, so that the deployments' schedules start nothing the test
did not ask for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import httpx

from tests.postgres import free_port

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 120,
             every: float = 0.25) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def prefect_env(home: Path, api_url: str | None = None, **more: str) -> dict[str, str]:
    """The environment of a Prefect process of the test: its own home, no analytics, the
    checkout first on the path (the worktree, not whatever the venv installed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_CLI_PROMPT": "false",
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]),
    })
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(more)
    return env


@dataclass
class Process:
    """A long-running Prefect process in a session of its own (so its group can be killed
    with everything it started), its output in a file for the failure message."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    _out: IO[bytes] = field(repr=False)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and its group: no cleanup, no goodbye to the server."""
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        self._out.close()


def start(name: str, args: list[str], env: dict[str, str], folder: Path) -> Process:
    log = folder / f"{name}.log"
    out = log.open("wb")
    popen = subprocess.Popen([sys.executable, "-m", "prefect", *args], env=env, cwd=ROOT,
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Process(name, popen, log, out)


@contextmanager
def prefect_server(database_url: str, folder: Path) -> Iterator[str]:
    """`prefect server start` on PostgreSQL on a free port; yields the API URL."""
    port = free_port()
    env = prefect_env(
        folder / "server-home",
        PREFECT_API_DATABASE_CONNECTION_URL=database_url,
        # Schedules would start intake, sweeps and reports on the workers mid-test.
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
        # A dead holder's concurrency slot is taken back within a second of its lease's
        # end (default: every 15 s).
        PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS="1",
        PREFECT_UI_ENABLED="false",
    )
    server = start("server", ["server", "start", "--host", "127.0.0.1", "--port", str(port)],
                   env, folder)
    api = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        if not server.alive():
            raise AssertionError(f"prefect server exited:\n{server.tail()}")
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for("the Prefect server to answer", healthy, timeout=120, every=0.5)
        yield api
    finally:
        server.stop()


def prefect_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def deploy(env: dict[str, str]) -> None:
    """What the README tells an operator: the process pool, then every deployment of
    prefect.yaml onto it."""
    prefect_cli(["work-pool", "create", "dsrflow", "--type", "process"], env)
    prefect_cli(["--no-prompt", "deploy", "--all", "--prefect-file",
                 "deployments/prefect.yaml"], env)


def worker(name: str, env: dict[str, str], folder: Path, limit: int = 1) -> Process:
    """`prefect worker start --pool dsrflow --name NAME`, taking at most `limit` flow runs
    at once."""
    return start(name, ["worker", "start", "--pool", "dsrflow", "--name", name,
                        "--limit", str(limit)], env, folder)
