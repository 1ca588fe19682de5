"""The container image and the production compose file (issue 17), checked without a Docker
daemon (CI has none): the Dockerfile's shape (`make lint` also runs hadolint on it), what
docker-compose.yaml runs and publishes, that no secret is in either or in the build
context, and that the callback endpoint the image runs by default answers its health
check without serving the deployments."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import sqlworld
from tests.helpers import cli_config
from tests.workerpool import wait_for

ROOT = Path(__file__).resolve().parent.parent


def instructions(path: Path) -> list[tuple[str, str]]:
    """A Dockerfile's instructions, (KEYWORD, arguments), continuation lines joined and
    comments left out."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, rest = whole.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(ROOT / "Dockerfile")


def _final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last:]


def test_the_image_is_slim_python_311_pinned_and_runs_as_a_user_not_root(
    dockerfile: list[tuple[str, str]],
) -> None:
    bases = [args.split()[0] for k, args in dockerfile if k == "FROM"]
    assert bases and all(b.startswith("python:3.11") and "slim" in b for b in bases), bases
    assert not [b for b in bases if ":" not in b or b.endswith(":latest")]
    final = _final_stage(dockerfile)
    users = [args for k, args in final if k == "USER"]
    assert users, "the final stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    # Nothing after the USER runs as root again, and the entrypoint comes after it.
    keywords = [k for k, _ in final]
    assert keywords.index("ENTRYPOINT") > max(i for i, k in enumerate(keywords) if k == "USER")


def test_the_image_installs_the_wheel_without_demo_or_test_extras(
    dockerfile: list[tuple[str, str]],
) -> None:
    runs = " ".join(args for k, args in dockerfile if k == "RUN")
    assert re.search(r"pip wheel .*--no-deps", runs), runs
    final_runs = " ".join(args for k, args in _final_stage(dockerfile) if k == "RUN")
    assert re.search(r"pip install .*dsrflow-\*\.whl\)\[postgres\]", final_runs), final_runs
    assert not re.search(r"\[[^\]]*\b(demo|test)\b", runs)
    # Only the packages the wheel is built from are copied in: not examples/ or tests/.
    copied = [args.split()[0] for k, args in dockerfile if k == "COPY" and "--from" not in args]
    assert not [c for c in copied if c.startswith(("examples", "tests", "."))], copied


def test_the_image_runs_dsrflow_and_checks_the_port_it_exposes(
    dockerfile: list[tuple[str, str]],
) -> None:
    final = dict(_final_stage(dockerfile))
    assert json.loads(final["ENTRYPOINT"]) == ["dsrflow"]
    command = json.loads(final["CMD"])
    assert command[:2] == ["serve", "--callbacks-only"]
    port = command[command.index("--port") + 1]
    assert final["EXPOSE"].split() == [port]
    assert f"127.0.0.1:{port}/health" in final["HEALTHCHECK"]


def test_the_build_context_leaves_out_secrets_and_everything_but_the_packages() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored  # everything is out unless let back in below
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "dsrflow", "connectors", "pipeline",
                       "tasks", "flows", "deployments", "entrypoints"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
    return loaded


def _command(service: dict[str, Any]) -> list[str]:
    entry = service.get("entrypoint") or ["dsrflow"]
    return [*entry, *(service.get("command") or [])]


def test_compose_runs_the_production_shape(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prefect = services["prefect-server"]
    assert _command(prefect)[:3] == ["prefect", "server", "start"]
    assert prefect["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    workers = [s for s in services.values()
               if _command(s)[:3] == ["prefect", "worker", "start"]]
    assert len(workers) == 2
    assert all(_command(w)[_command(w).index("--pool") + 1] == "dsrflow" for w in workers)
    assert all(w["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
               for w in workers)
    assert _command(services["callbacks"])[:3] == ["dsrflow", "serve", "--callbacks-only"]
    # The deployments the workers run are those of deployments/prefect.yaml, on their pool.
    deploy = " ".join(_command(services["deploy"]))
    assert "prefect work-pool create dsrflow --type process" in deploy
    assert "deploy --all --prefect-file deployments/prefect.yaml" in deploy
    # The ledger and the certificates outlive the containers.
    assert {"pgdata", "certificates"} <= set(compose["volumes"])
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert all("certificates:/var/lib/dsrflow/certificates" in s["volumes"]
               for s in [*workers, services["callbacks"]])
    images = [s["image"] for s in services.values() if "image" in s]
    assert not [i for i in images if ":" not in i or i.endswith(":latest")], images


def test_compose_publishes_the_ui_on_loopback_and_the_callbacks(compose: dict[str, Any]) -> None:
    published = {name: s.get("ports", []) for name, s in compose["services"].items()}
    assert published["prefect-server"] == ["127.0.0.1:4200:4200"]
    assert published["callbacks"] == ["8787:8787"]
    assert not [n for n, p in published.items() if p and n not in ("prefect-server",
                                                                     "callbacks")]


def test_compose_takes_secrets_from_env_files_that_git_ignores(compose: dict[str, Any]) -> None:
    env_files = {f for s in compose["services"].values() for f in s.get("env_file", [])}
    assert env_files == {"deploy/dsrflow.env", "deploy/postgres.env"}
    for name in env_files:
        ignored = subprocess.run(["git", "check-ignore", "-q", name], cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{name} is not ignored by git"
        assert (ROOT / f"{name}.example").is_file()
    # No password, key or token is written into the compose file or the settings it mounts.
    secretish = re.compile(r"PASSWORD|_KEY$|TOKEN|SECRET|CONNECTION_URL|LEDGER_URL")
    for service in compose["services"].values():
        env = service.get("environment") or {}
        assert not [k for k in env if secretish.search(k)], env
    settings = yaml.safe_load((ROOT / "deploy" / "dsrflow.yaml").read_text())
    assert not {"ledger_url", "token_key", "encryption_key", "signing_key"} & set(settings)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_the_images_default_command_answers_its_health_check(tmp_path: Path) -> None:
    """What the image's CMD and HEALTHCHECK run, here without a container: `dsrflow serve
    --callbacks-only` answers GET /health, serves no deployment (no Prefect server is
    needed) and stops cleanly on SIGTERM, as `docker stop` sends."""
    _, url = sqlworld.sqlite_world(tmp_path, 3, 2)
    config = cli_config(tmp_path, sqlworld.datamap_doc(url))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DSRFLOW_", "PREFECT_API"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    final = dict(_final_stage(instructions(ROOT / "Dockerfile")))
    args = [a if a != "8787" else str(port) for a in json.loads(final["CMD"])]
    args = [a if a != "0.0.0.0" else "127.0.0.1" for a in args]  # loopback here
    proc = subprocess.Popen([sys.executable, "-m", "entrypoints.cli", *args, "--config",
                             str(config)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    def health() -> Any:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            assert proc.poll() is None, proc.communicate()[0]
            return None

    try:
        assert wait_for("an answer on /health", health, timeout=60, every=0.3) == {
            "status": "ok"}
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    # uvicorn shuts down, then re-raises the signal it caught: ended by SIGTERM, in time.
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert f"OpenDSR callbacks on http://127.0.0.1:{port}" in output
    assert "deployment" not in output.lower(), shlex.quote(output)
