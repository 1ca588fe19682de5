"""How long the command line takes to start, against the interpreter's own start.

    python -m benchmarks.bench_startup              # median of 5
    python -m benchmarks.bench_startup --repeat 11

Times, each in a fresh interpreter (`sys.executable`, run from the repository root):

- the baseline: `python -c pass`, the interpreter's start;
- `python -m entrypoints.cli --help` and `... status --help` (issue 16: under 0.5 s,
  neither Prefect nor pandas loaded; tests/test_startup.py checks the imports);
- `python -c "import flows.request"`: what a command that runs a flow pays before it
  starts, for comparison.

Each is run once untimed (compiled bytecode and the OS's file cache warm), then the runs
go in rounds, one of each per round, so that a busy spell of the machine falls on all of
them; the table shows each one's median wall time, its ratio to the baseline's, and the
median CPU time (user + system) of the process, which other work on a shared machine moves
far less than the wall time.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from benchmarks import machine
from dsrflow.prefect_env import PRIVACY_DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "python -c pass"
RUNS: dict[str, list[str]] = {
    BASELINE: ["-c", "pass"],
    "dsrflow --help": ["-m", "entrypoints.cli", "--help"],
    "dsrflow status --help": ["-m", "entrypoints.cli", "status", "--help"],
    "import flows.request": ["-c", "import flows.request"],
}


def libraries() -> str:
    names = ("typer", "rich", "prefect", "pandas")
    return ", ".join(f"{name} {version(name)}" for name in names)


def clean_env(prefect_home: Path) -> dict[str, str]:
    """This checkout first on the path, no dsrflow config from the shell, and Prefect kept
    in a throw-away home and quiet (importing it writes its home)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DSRFLOW_CONFIG", "PYTHONPATH")}
    env.update(PRIVACY_DEFAULTS, PYTHONPATH=str(ROOT), PREFECT_HOME=str(prefect_home))
    return env


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def once(args: Sequence[str], env: Mapping[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of one run."""
    cpu, start = cpu_of_children(), time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start, cpu_of_children() - cpu


def medians(repeat: int, env: Mapping[str, str]) -> dict[str, tuple[float, float]]:
    """Per run: the median wall and CPU seconds."""
    for args in RUNS.values():
        once(args, env)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in RUNS}
    for _ in range(repeat):
        for name, args in RUNS.items():
            times[name].append(once(args, env))
    return {name: (statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs))
            for name, runs in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_startup",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each (median)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-startup-prefect-") as home:
        found = medians(args.repeat, clean_env(Path(home)))
    print(f"# {machine(libraries())}")
    # Other work on the machine moves these figures more than anything measured here.
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; median of {args.repeat}; load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    print()
    base = found[BASELINE][0]
    print("| run | median (s) | x interpreter start | CPU, median (s) |")
    print("|---|---:|---:|---:|")
    for name, (wall, cpu) in found.items():
        print(f"| `{name}` | {wall:.3f} | {wall / base:.1f}x | {cpu:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
