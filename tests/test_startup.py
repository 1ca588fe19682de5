"""Start-up (issue 16): `dsrflow --help`, every command's and group's `--help`, and the
commands that run no flow load neither Prefect nor pandas. Each case runs in a fresh
interpreter, since this process has imported both long ago. No timings here:
`python -m benchmarks.bench_startup` measures them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.core import TyperGroup

from entrypoints.cli import app
from tests import sqlworld
from tests.helpers import cli_config, ticket

ROOT = Path(__file__).resolve().parent.parent

# Never loaded by `--help`: each is a command's business, when it runs.
NOT_FOR_HELP = ("prefect", "pandas", "matplotlib", "sqlalchemy", "boto3")
NOT_FOR_LEAN_COMMANDS = ("prefect", "pandas", "matplotlib")
NOT_WITHOUT_A_FLOW = ("prefect",)

# The commands that run flows (Prefect is what they are for).
RUN_FLOWS = frozenset({("run",), ("demo",), ("serve",)})
# Those that show the report's frames (dsrflow.report, built with pandas): the status
# table after a change, the report, a sweep's table. Prefect they do not need.
SHOW_FRAMES = frozenset({
    ("status",), ("report",), ("sweep",), ("verify",), ("refuse",), ("extend",),
    ("guardian", "verify"), ("partner", "confirm"),
})

# Runs each argument list of stdin's JSON with typer's runner, in order, in this fresh
# interpreter, and says after each which of argv[1]'s modules are loaded.
RUNNER = """
import json, sys
from typer.testing import CliRunner
from entrypoints.cli import app
watched = json.loads(sys.argv[1])
results = []
for args in json.loads(sys.stdin.read()):
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    results.append({"args": args, "exit_code": result.exit_code, "output": result.output,
                    "loaded": [m for m in watched if m in sys.modules]})
print(json.dumps(results))
"""


def run_fresh(commands: list[list[str]], watched: tuple[str, ...]) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "DSRFLOW_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(watched)],
                          input=json.dumps(commands), capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


def commands(command: object, prefix: tuple[str, ...] = ()) -> Iterator[
        tuple[tuple[str, ...], object]]:
    """The app and every group and command under it, each with the words that name it."""
    yield prefix, command
    if isinstance(command, TyperGroup):
        for name, sub in command.commands.items():
            yield from commands(sub, (*prefix, name))


def leaf_commands() -> set[tuple[str, ...]]:
    """Every command of the app that is not a group."""
    return {path for path, command in commands(typer.main.get_command(app))
            if not isinstance(command, TyperGroup)}


def test_help_of_the_app_and_of_every_command_loads_none_of_them() -> None:
    paths = [path for path, _ in commands(typer.main.get_command(app))]
    assert {(), ("status",), ("hold",), ("hold", "list"), ("run",)} <= set(paths)

    results = run_fresh([[*p, "--help"] for p in paths], NOT_FOR_HELP)

    for result in results:
        assert result["exit_code"] == 0, result
        assert "Usage" in result["output"], result["args"]
        assert result["loaded"] == [], result["args"]


@pytest.fixture
def config(tmp_path: Path) -> tuple[Path, str]:
    """A dsrflow.yaml over a small SQLite world, and the email of one of its users."""
    world, url = sqlworld.sqlite_world(tmp_path, 7, 3)
    return cli_config(tmp_path, sqlworld.datamap_doc(url)), world.user(1)["email"]


def command_of(args: list[str]) -> tuple[str, ...]:
    """The command an argument list runs: its group's name (if any) and its own."""
    group: object = typer.main.get_command(app)
    path: list[str] = []
    for word in args:
        assert isinstance(group, TyperGroup)
        group = group.commands[word]
        path.append(word)
        if not isinstance(group, TyperGroup):
            return tuple(path)
    raise AssertionError(f"{args} names no command")


def test_commands_without_a_flow_load_no_prefect_and_the_lean_ones_no_pandas(
    config: tuple[Path, str], tmp_path: Path
) -> None:
    path, email = config
    c = ["--config", str(path)]
    ticket_file = tmp_path / "T-1.json"
    ticket_file.write_text(json.dumps(ticket("T-1", "erasure",
                                             [{"type": "email", "value": email}])))
    key = str(tmp_path / "more-keys.json")
    # Each with the exit code of the path it takes: the one that does the work where a
    # scratch ledger allows it, else the refusal (after the imports the work needs).
    lean: list[tuple[list[str], int]] = [
        (["keys", "new", key], 0),
        (["keys", "add-signing", key], 1),  # it has one already
        (["keys", "rotate-signing", key], 0),
        (["keys", "rotate-encryption", key], 2),  # refused, always
        (["keys", "public-key", *c], 0),
        (["certificate", "verify", key, *c], 1),  # a key file is no certificate
        (["datamap", "check", str(tmp_path / "datamap.yaml")], 0),
        (["datamap", "draft", "--db", f"sqlite:///{tmp_path / 'userdb.sqlite'}"], 0),
        (["submit", str(ticket_file), *c], 0),
        (["hold", "add", "--ticket", "T-1", "--reason", "legal_obligation", "--citation",
          "order 1", "--until", "2099-12-31", "--approved-by", "counsel", *c], 0),
        (["hold", "list", "--all", *c], 0),
        # "" starts every hold's id, and the ledger has one.
        (["hold", "release", "", "--by", "counsel", "--reason", "lifted", *c], 0),
        (["audit", *c], 0),
        (["package", "open", key, "--key", "x"], 1),
        (["package", "handed-over", "nope", "--channel", "sms", "--by", "me", *c], 1),
        (["package", "expire", *c], 0),
        (["partner", "retry", "nope", "adnet", *c], 1),
        (["partner", "check", *c], 0),
        (["tombstones", "replay", "--system", "db", *c], 0),
    ]
    framed: list[tuple[list[str], int]] = [
        (["status", *c], 0),
        (["report", "--format", "md", *c], 0),
        (["sweep", "--dry-run", *c], 0),
        (["verify", "nope", "--method", "sms", *c], 1),
        (["guardian", "verify", "nope", "--method", "court_order", *c], 1),
        (["extend", "nope", "--reason", "volume", *c], 2),
        (["partner", "confirm", "nope", "adnet", "--by", "me", "--reference", "r", *c], 1),
        (["refuse", "nope", "--reason", "unfounded", *c], 1),
    ]
    # Every command that runs no flow is tested here: a new one must say which kind it is.
    assert {command_of(a) for a, _ in framed} == SHOW_FRAMES
    assert {command_of(a) for a, _ in lean} == leaf_commands() - RUN_FLOWS - SHOW_FRAMES

    # The lean ones first: pandas, once loaded, stays.
    results = run_fresh([a for a, _ in lean + framed], NOT_FOR_LEAN_COMMANDS)

    for i, ((args, code), result) in enumerate(zip(lean + framed, results, strict=True)):
        assert result["exit_code"] == code, result
        unwanted = NOT_FOR_LEAN_COMMANDS if i < len(lean) else NOT_WITHOUT_A_FLOW
        assert not set(result["loaded"]) & set(unwanted), (args, result["loaded"])
    submitted = next(r for r in results if r["args"][0] == "submit")
    assert "T-1: accepted as request" in submitted["output"], submitted
