"""How long the completion report takes for a large portfolio, against the 5 s target and
against writing the same frame with plain `DataFrame.to_csv`.

    python -m benchmarks.bench_report                     # 100,000 requests
    python -m benchmarks.bench_report --requests 20000 --repeat 3

It builds synthetic rows shaped like `requests_frame`'s output (a year of requests of every
type and regime, about 10% still open, the rest completed on time or late, a few rejected)
and a steps frame of two systems per request, then times, on a fixed clock:

- the baseline: `requests.to_csv(path, index=False)`, the cheapest way to write the report;
- the three charts (`dsrflow.charts.report_charts`, days left on each regime's calendar);
- `to_html` (the charts again, and both tables), written to a file;
- both CSV files (`report.csv`, `steps.csv`), as `write_reports` writes them.

The report's time is `to_html` (which includes the charts, also shown on their own) + the
CSV files; the table shows it, the target and report / baseline. With `--repeat N`
each timing is the best of N.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import machine as describe_machine
from dsrflow.charts import report_charts
from dsrflow.deadlines import Deadlines
from dsrflow.model import Regime, RequestType
from dsrflow.report import REQUEST_COLUMNS, STEP_COLUMNS, to_html

TARGET_S = 5.0
# Friday 20 November 2026, noon in Shanghai.
NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
SYSTEMS = ("userdb", "orders", "logs", "objects", "partner-ads")


def synthetic_requests(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    now = pd.Timestamp(NOW)
    received = now - pd.to_timedelta(rng.uniform(0, 365, n), unit="D").round("s")
    regimes = rng.choice([r.value for r in Regime], n, p=[0.6, 0.3, 0.1])
    types = rng.choice([t.value for t in RequestType], n)
    due = received + pd.to_timedelta(np.where(regimes == "gdpr", 30, 21), unit="D")
    due = due.floor("D") + pd.Timedelta(hours=15, minutes=59, seconds=59)
    respond = pd.to_timedelta(rng.gamma(4.0, 4.0, n), unit="D").round("s")
    completed = received + respond
    is_open = (completed > now) | (rng.random(n) < 0.05)
    rejected = ~is_open & (rng.random(n) < 0.02)
    state = np.where(completed <= due, "completed_on_time", "completed_late").astype(object)
    status = np.full(n, "completed", dtype=object)
    awaiting = is_open & (rng.random(n) < 0.15)
    open_state = np.where(
        now > due, "overdue",
        np.where(awaiting, "awaiting_verification",
                 np.where(due - now <= pd.Timedelta(days=4), "at_risk", "on_time")))
    state[is_open] = open_state[is_open]
    status[is_open] = np.where(awaiting, "awaiting_verification", "in_progress")[is_open]
    unknown = is_open & (rng.random(n) < 0.01)
    state[unknown] = "unknown"
    state[rejected] = "not_applicable"
    status[rejected] = "rejected"

    def iso(values: pd.DatetimeIndex, mask: np.ndarray) -> list[str | None]:
        text = values.strftime("%Y-%m-%dT%H:%M:%S+00:00")
        return [None if m else t for t, m in zip(text, mask, strict=True)]

    used = np.round(respond.total_seconds().to_numpy() / 86400 * 5 / 7).astype("int64")
    frame = pd.DataFrame({
        "request_id": [f"00000000-0000-4000-8000-{i:012d}" for i in range(n)],
        "ticket_id": [f"T-{i}" for i in range(n)],
        "type": _blank(types, rejected),
        "regime": _blank(regimes, rejected | unknown),
        "status": status,
        "received_at": iso(received, np.zeros(n, dtype=bool)),
        "due_at": iso(due, rejected | unknown),
        "completed_at": iso(completed, is_open | rejected),
        "deadline_state": state,
        "business_days_used": pd.array(_blank(used, rejected), dtype="Int64"),
        "reason": _blank(np.full(n, "identities: none valid", dtype=object), ~rejected),
    }, columns=REQUEST_COLUMNS)
    return frame


def _blank(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """`values` as objects, None where `mask`."""
    result = np.asarray(values, dtype=object).copy()
    result[mask] = None
    return result


def synthetic_steps(requests: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 1)
    ids = requests["request_id"][requests["status"] != "rejected"].to_numpy()
    ids = np.repeat(ids, 2)
    n = len(ids)
    found = rng.integers(0, 50, n)
    frame = pd.DataFrame({
        "request_id": ids,
        "system": rng.choice(SYSTEMS, n),
        "kind": "sql",
        "found": found,
        "deleted": found,
        "anonymized": 0,
        "retained": 0,
        "remaining": 0,
        "status": "succeeded",
        "reason": None,
    }, columns=STEP_COLUMNS)
    for column in ("found", "deleted", "anonymized", "retained", "remaining"):
        frame[column] = frame[column].astype("Int64")
    return frame


def best_of(repeat: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


@dataclass
class Timings:
    baseline_s: float
    charts_s: float
    html_s: float
    csv_s: float
    html_bytes: int

    @property
    def report_s(self) -> float:
        return self.html_s + self.csv_s


def measure(requests: pd.DataFrame, steps: pd.DataFrame, out: Path, repeat: int) -> Timings:
    deadlines = Deadlines()
    html_path = out / "report.html"

    def write_html() -> None:
        html_path.write_text(to_html(requests, steps, now=NOW, deadlines=deadlines))

    def write_csv() -> None:
        requests.to_csv(out / "report.csv", index=False)
        steps.to_csv(out / "steps.csv", index=False)

    report_charts(requests, NOW, deadlines)  # warm up: matplotlib's fonts, the calendars
    return Timings(
        baseline_s=best_of(repeat, lambda: requests.to_csv(out / "baseline.csv", index=False)),
        charts_s=best_of(repeat, lambda: report_charts(requests, NOW, deadlines)),
        html_s=best_of(repeat, write_html),
        csv_s=best_of(repeat, write_csv),
        html_bytes=html_path.stat().st_size,
    )


def machine() -> str:
    from importlib.metadata import version

    return describe_machine(f"pandas {pd.__version__}; matplotlib {version('matplotlib')}")


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_report",
                                     description=doc.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000,
                        help="synthetic requests (default 100000)")
    parser.add_argument("--repeat", type=int, default=1, help="best of N")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.repeat < 1:
        parser.error("--requests and --repeat: at least 1")

    requests = synthetic_requests(args.requests, args.seed)
    steps = synthetic_steps(requests, args.seed)
    out = Path(tempfile.mkdtemp(prefix="dsrflow-bench-report-"))
    try:
        t = measure(requests, steps, out, args.repeat)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    open_count = int((~requests["deadline_state"].isin(
        ["completed_on_time", "completed_late", "not_applicable"])).sum())
    print(f"# {len(requests):,} requests ({open_count:,} open), {len(steps):,} steps; "
          f"{machine()}")
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; best of {args.repeat}; "
          f"HTML {t.html_bytes / 2**20:,.1f} MiB")
    print()
    print("| requests | to_csv baseline (s) | charts (s) | to_html incl. charts (s) "
          "| CSV files (s) | report (s) | target (s) | report / baseline | within target |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {len(requests):,} | {t.baseline_s:.2f} | {t.charts_s:.2f} | {t.html_s:.2f} "
          f"| {t.csv_s:.2f} | {t.report_s:.2f} | {TARGET_S:.0f} "
          f"| {t.report_s / t.baseline_s:.1f}x | {'yes' if t.report_s <= TARGET_S else 'NO'} |")
    return 0 if t.report_s <= TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
