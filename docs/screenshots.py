"""Screenshots of the Prefect UI after `dsrflow demo`, for the README.

    .venv/bin/python docs/screenshots.py [--out docs/images] [--users 60]

1. starts a throwaway Prefect server on a free loopback port (PREFECT_HOME in a temp
   folder, analytics off) and waits for `/api/health`;
2. runs `dsrflow demo` against it (PREFECT_API_URL), so the flow run, task runs,
   artifacts and `dsr.request.*` events land there;
3. finds the `dsr-batch-…` flow run and its `dsr-batch` table artifact over the REST API;
4. screenshots the UI's pages with headless Chromium (Debian's `chromium` package),
   checking first, with `--dump-dom`, that each page rendered what it should, and the
   demo's HTML report (`report.png`);
5. stops the server and prints the files written (each kept under `--max-kb`).

Prefect 3.9 serves two UIs: the new one under `/v2` (where `/` sends a browser) and the
classic one at `/`. The screenshots are of `/v2`, what a person opening the server sees.
Nothing here reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Debian's /usr/bin/chromium is a shell launcher; the binary behind it starts the same
# way without the launcher's noise.
DEBIAN_CHROMIUM_BINARY = Path("/usr/lib/chromium/chromium")
BATCH_ARTIFACT_KEY = "dsr-batch"


@dataclass(frozen=True)
class Page:
    file: str
    path: str  # under the server's root, query included
    expect: tuple[str, ...]  # texts the rendered DOM must hold
    what: str
    size: tuple[int, int] = (1400, 900)


class ScreenshotError(RuntimeError):
    pass


# --- tools -------------------------------------------------------------------------------


def find_chromium(explicit: str | None) -> str:
    if explicit:
        if not Path(explicit).exists() and not shutil.which(explicit):
            raise ScreenshotError(f"--chromium {explicit}: not found")
        return explicit
    if DEBIAN_CHROMIUM_BINARY.exists():
        return str(DEBIAN_CHROMIUM_BINARY)
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise ScreenshotError(
        "Chromium is not installed (no /usr/bin/chromium).\n"
        "  On Debian/Ubuntu, as root:  apt-get update && apt-get install -y chromium\n"
        "  or pass --chromium /path/to/chrome."
    )


def find_tool(name: str) -> str:
    """`prefect` / `dsrflow` from the running interpreter's venv, else the repo's."""
    for folder in (Path(sys.executable).parent, REPO / ".venv" / "bin"):
        candidate = folder / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        raise ScreenshotError(
            f"`{name}` not found: run this with the project's venv "
            "(.venv/bin/python docs/screenshots.py)"
        )
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def quiet_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PREFECT_") or key == "PREFECT_LOGGING_LEVEL"
    }
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
    )
    env.update(extra)
    return env


# --- the server --------------------------------------------------------------------------


@contextlib.contextmanager
def prefect_server(work: Path, port: int, timeout: float) -> Iterator[str]:
    """A Prefect server on 127.0.0.1:port; yields its API URL; stops it (its own process
    group, started here) at the end."""
    home = work / "prefect-home"
    home.mkdir()
    api = f"http://127.0.0.1:{port}/api"
    env = quiet_env(
        PREFECT_HOME=str(home),
        # Without this the UI's JavaScript calls the default :4200, not this port.
        PREFECT_SERVER_UI_API_URL=api,
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    log_path = work / "server.log"
    print(f"starting a Prefect server on 127.0.0.1:{port} (log: {log_path})", flush=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [find_tool("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_healthy(api, proc, timeout, log_path)
        yield api
    finally:
        stop_group(proc)


def wait_healthy(api: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise ScreenshotError(f"the Prefect server exited ({proc.returncode}):\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                if response.status == 200:
                    print(f"  healthy after {time.monotonic() - started:.0f} s", flush=True)
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise ScreenshotError(f"the Prefect server was not healthy after {timeout:.0f} s:\n{tail(log)}")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    # Whatever the server started in its group (uvicorn workers, services) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    print("Prefect server stopped", flush=True)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def api_post(api: str, route: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"{api}{route}",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


# --- the demo ----------------------------------------------------------------------------


def run_demo(api: str, work: Path, users: int) -> None:
    out = work / "demo-out"
    log_path = work / "demo.log"
    print(f"running `dsrflow demo --users {users}` against {api} (log: {log_path})", flush=True)
    with open(log_path, "wb") as log:
        result = subprocess.run(
            [find_tool("dsrflow"), "demo", "--users", str(users), "--out", str(out)],
            # The demo's world and stand-ins live in the checkout (`examples/`), not in
            # the installed package: the checkout goes on the path.
            env=quiet_env(PREFECT_API_URL=api, COLUMNS="120", PYTHONPATH=str(REPO)),
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=900,
            check=False,
        )
    if result.returncode != 0:
        raise ScreenshotError(f"dsrflow demo failed ({result.returncode}):\n{tail(log_path)}")


def find_batch_run(api: str) -> dict[str, Any]:
    runs = api_post(
        api,
        "/flow_runs/filter",
        {
            "flow_runs": {"name": {"like_": "dsr-batch-"}},
            "sort": "START_TIME_DESC",
            "limit": 10,
        },
    )
    runs = [run for run in runs if run["name"].startswith("dsr-batch-")]
    if not runs:
        raise ScreenshotError("the demo recorded no dsr-batch-… flow run on the server")
    return dict(runs[0])


def find_artifacts(api: str, flow_run_id: str) -> list[dict[str, Any]]:
    return list(
        api_post(
            api,
            "/artifacts/filter",
            {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200},
        )
    )


# Not a UI page: the demo's report.html, opened from disk (path: under the demo's folder).
REPORT_PAGE = Page("report.png", "report.html", ("Per system",),
                   "the HTML report: charts, then requests and systems", size=(1400, 1700))


def pages_for(run: dict[str, Any], artifacts: list[dict[str, Any]]) -> list[Page]:
    run_id, name = run["id"], run["name"]
    table = next(
        (a for a in artifacts if a.get("key") == BATCH_ARTIFACT_KEY),
        next((a for a in artifacts if a.get("type") == "table"), None),
    )
    if table is None:
        raise ScreenshotError(f"flow run {name} has no {BATCH_ARTIFACT_KEY} table artifact")
    events = quote(json.dumps(["dsr.request.*"], separators=(",", ":")))
    return [
        Page(
            "ui-runs.png",
            "/v2/runs",
            (name, "Flow Runs"),
            "the Runs list with the demo's batch run",
        ),
        Page(
            "ui-flow-run.png",
            f"/v2/runs/flow-run/{run_id}",
            (name, "Task Runs"),
            "the batch flow run: task graph (per system) and logs",
        ),
        Page(
            "ui-flow-run-task-runs.png",
            f"/v2/runs/flow-run/{run_id}?tab=TaskRuns",
            (name, "publish-results"),
            "the batch flow run's Task Runs tab",
        ),
        Page(
            "ui-flow-run-artifacts.png",
            f"/v2/runs/flow-run/{run_id}?tab=Artifacts",
            (name, BATCH_ARTIFACT_KEY),
            "the batch flow run's Artifacts tab: the batch table and the progress bar",
            size=(1400, 1250),
        ),
        Page(
            "ui-artifact-batch-table.png",
            f"/v2/artifacts/artifact/{table['id']}",
            (str(table.get("key") or ""), "WSH-"),
            "the dsr-batch table artifact: one row per request",
            size=(1800, 950),
        ),
        Page(
            "ui-events.png",
            f"/v2/events?events={events}",
            ("dsr.request",),
            "the Event Feed filtered to dsr.request.* events",
        ),
    ]


# --- the browser -------------------------------------------------------------------------


def chromium_args(chromium: str, profile: Path, size: tuple[int, int], budget_ms: int) -> list[str]:
    return [
        chromium,
        "--headless",
        "--no-sandbox",  # root has no sandbox
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--mute-audio",
        f"--user-data-dir={profile}",
        f"--window-size={size[0]},{size[1]}",
        f"--virtual-time-budget={budget_ms}",
    ]


def run_chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def capture(chromium: str, url: str, page: Page, target: Path, work: Path, budget_ms: int) -> None:
    """Check the page renders its expected text, then screenshot it; retry with a longer
    budget if the single-page app had not finished."""
    for attempt, budget in enumerate((budget_ms, budget_ms * 2), start=1):
        with tempfile.TemporaryDirectory(dir=work, prefix="chromium-") as profile:
            args = chromium_args(chromium, Path(profile), page.size, budget)
            dom = run_chromium([*args, "--dump-dom", url], timeout=budget / 1000 + 90)
            missing = [text for text in page.expect if text not in dom.stdout]
            if missing:
                if attempt == 1:
                    print(f"  {page.file}: not rendered yet ({missing}), retrying", flush=True)
                    continue
                raise ScreenshotError(
                    f"{url} did not render {missing}; chromium said:\n{dom.stderr[-2000:]}"
                )
        with tempfile.TemporaryDirectory(dir=work, prefix="chromium-") as profile:
            args = chromium_args(chromium, Path(profile), page.size, budget)
            shot = run_chromium([*args, f"--screenshot={target}", url], timeout=budget / 1000 + 90)
        if shot.returncode != 0 or not target.exists():
            raise ScreenshotError(f"chromium could not screenshot {url}:\n{shot.stderr[-2000:]}")
        return


def shrink(path: Path, max_kb: int) -> None:
    """Re-save losslessly; quantize to a palette if still over `max_kb`."""
    try:
        from PIL import Image
    except ImportError:
        if path.stat().st_size > max_kb * 1024:
            print(f"  warning: {path.name} is over {max_kb} KB and Pillow is missing")
        return
    with Image.open(path) as image:
        image.load()
    image.save(path, optimize=True)
    if path.stat().st_size > max_kb * 1024:
        for colors in (256, 128, 64):
            image.convert("RGB").quantize(
                colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
            ).save(path, optimize=True)
            if path.stat().st_size <= max_kb * 1024:
                break
    if path.stat().st_size > max_kb * 1024:
        print(f"  warning: {path.name} is still {path.stat().st_size // 1024} KB")


# --- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--users", type=int, default=60, help="the demo's world size")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--chromium", help="browser binary (default: Debian's chromium)")
    parser.add_argument("--budget-ms", type=int, default=15000, help="virtual time per page")
    parser.add_argument("--max-kb", type=int, default=400, help="largest PNG to keep")
    parser.add_argument("--server-timeout", type=float, default=180)
    parser.add_argument("--keep-temp", action="store_true", help="keep the temp folder")
    args = parser.parse_args(argv)

    try:
        chromium = find_chromium(args.chromium)
    except ScreenshotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dsrflow-screenshots-"))
    written: list[tuple[Path, Page]] = []
    try:
        with prefect_server(work, args.port or free_port(), args.server_timeout) as api:
            run_demo(api, work, args.users)
            run = find_batch_run(api)
            artifacts = find_artifacts(api, run["id"])
            print(f"flow run {run['name']} ({run['id']}), {len(artifacts)} artifacts", flush=True)
            root = api.removesuffix("/api")
            for page in pages_for(run, artifacts):
                target = out / page.file
                print(f"  {page.file} <- {page.path}", flush=True)
                capture(chromium, root + page.path, page, target, work, args.budget_ms)
                shrink(target, args.max_kb)
                written.append((target, page))
        # The demo's HTML report is a file: no server needed.
        target = out / REPORT_PAGE.file
        print(f"  {REPORT_PAGE.file} <- {REPORT_PAGE.path}", flush=True)
        report = (work / "demo-out" / REPORT_PAGE.path).as_uri()
        capture(chromium, report, REPORT_PAGE, target, work, args.budget_ms)
        shrink(target, args.max_kb)
        written.append((target, REPORT_PAGE))
    except (ScreenshotError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}", file=sys.stderr)
        print(f"(logs kept in {work})", file=sys.stderr)
        return 1
    if args.keep_temp:
        print(f"temp folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nwrote {len(written)} screenshots:")
    for path, page in written:
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        print(f"  {shown}  ({path.stat().st_size // 1024} KB)  {page.what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
