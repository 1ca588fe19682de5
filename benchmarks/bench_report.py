"""How long the completion report takes for a large portfolio, against the 5 s target and
against writing the same frame with plain `DataFrame.to_csv`.

    python -m benchmarks.bench_report                     # 100,000 requests
    python -m benchmarks.bench_report --requests 20000 --repeat 3

It builds synthetic ledger contents in memory — requests shaped like `Ledger.all()`'s
records (a year of requests of every type and regime, about 10% still open, the rest
completed on time or late, a few rejected, a few extended), and step rows shaped like
`Ledger.steps()`'s (two systems per request, a verification after each erasure, the
access package or erasure certificate of closed requests) — and times, on a fixed clock:

- the baseline: `requests.to_csv(path, index=False)`, the cheapest way to write the report;
- the frames: `requests_frame`, `steps_frame` and `systems_frame` from those rows (what
  `write_reports` does after reading the ledger; the SQL reads are not timed);
- the three charts (`dsrflow.charts.report_charts`, days left on each regime's calendar);
- `to_html` (the charts again, the capped requests table, the per-system table and the
  steps of the requests shown), written to a file;
- the three CSV files (`report.csv`, `steps.csv`, `systems.csv`).

The report's time is frames + `to_html` (which includes the charts, also shown on their
own) + the CSV files; the table shows it, the target and report / baseline. With
`--repeat N` each timing is the best of N.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import machine as describe_machine
from dsrflow.charts import report_charts
from dsrflow.deadlines import CalendarUnavailable, Deadlines
from dsrflow.gates import Gate, GateDecision
from dsrflow.ledger import PartnerRequest, RequestRecord, StepRecord
from dsrflow.model import PartnerStatus, Regime, RequestType, Status, StepAction, StepStatus
from dsrflow.report import requests_frame, steps_frame, systems_frame, to_html

TARGET_S = 5.0
# Friday 20 November 2026, noon in Shanghai.
NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
SYSTEMS = ("userdb", "orders", "logs", "objects", "partner-ads")
PARTNER = "partner-ads"
ACTIONS = {
    "access": "collect", "portability": "collect", "erasure": "erase",
    "consent_withdrawal": "erase", "account_cancellation": "erase",
    "rectification": "rectify", "restriction": "restrict",
}


def synthetic_records(n: int, seed: int, deadlines: Deadlines) -> list[RequestRecord]:
    rng = np.random.default_rng(seed)
    now = pd.Timestamp(NOW)
    received = now - pd.to_timedelta(rng.uniform(0, 365, n), unit="D").round("s")
    # Named, not every Regime: the mix (and so the seeded data) must not change when a
    # regime is added.
    regimes = rng.choice([Regime.PIPL.value, Regime.GDPR.value, Regime.CCPA.value], n,
                         p=[0.6, 0.3, 0.1])
    types = rng.choice([t.value for t in RequestType], n)
    respond = pd.to_timedelta(rng.gamma(4.0, 4.0, n), unit="D").round("s")
    completed = received + respond
    is_open = (completed > now) | (rng.random(n) < 0.05)
    rejected = ~is_open & (rng.random(n) < 0.02)
    awaiting = is_open & (rng.random(n) < 0.15)
    unknown = is_open & (rng.random(n) < 0.01)
    # GDPR and CCPA allow an extension; about one request in twenty-five of those gets one.
    extended = ~rejected & (regimes != Regime.PIPL.value) & (rng.random(n) < 0.04)

    due_of: dict[tuple[str, date], datetime | None] = {}

    def due(regime: str, moment: datetime) -> datetime | None:
        key = (regime, moment.date())
        if key not in due_of:
            try:
                due_of[key] = deadlines.due(Regime(regime), moment)
            except CalendarUnavailable:
                due_of[key] = None
        return due_of[key]

    records = []
    for i in range(n):
        got = received[i].to_pydatetime()
        status = (Status.REJECTED if rejected[i] else
                  Status.AWAITING_VERIFICATION if awaiting[i] else
                  Status.IN_PROGRESS if is_open[i] else Status.COMPLETED)
        due_at = None if rejected[i] or unknown[i] else due(str(regimes[i]), got)
        extended_due = (due_at + pd.Timedelta(days=60).to_pytimedelta()
                        if extended[i] and due_at is not None else None)
        records.append(RequestRecord(
            id=f"00000000-0000-4000-8000-{i:012d}",
            ticket_id=f"T-{i}",
            type=None if rejected[i] else RequestType(str(types[i])),
            regime=None if rejected[i] else Regime(str(regimes[i])),
            channel="app",
            scope=None,
            status=status,
            reason="identities: none valid" if rejected[i] else None,
            received_at=got,
            verified_at=None if rejected[i] or awaiting[i] else got + pd.Timedelta(
                minutes=5).to_pytimedelta(),
            due_at=due_at,
            deadline_error=("the CN working-day calendar is not published"
                            if unknown[i] else None),
            completed_at=None if is_open[i] or rejected[i] else completed[i].to_pydatetime(),
            datamap_version=None if rejected[i] else "wishe-2026.11",
            policy_version=None if rejected[i] else "2026-11",
            extended_due_at=extended_due,
            extension_notice_at=(got + pd.Timedelta(days=10).to_pytimedelta()
                                 if extended_due else None),
            extension_reason="several systems and partners" if extended_due else None,
        ))
    return records


def synthetic_steps(
    records: Sequence[RequestRecord], seed: int
) -> tuple[list[StepRecord], list[PartnerRequest]]:
    """Rows as `Ledger.steps()` and `Ledger.partner_requests()` return them."""
    rng = np.random.default_rng(seed + 1)
    steps: list[StepRecord] = []
    partners: list[PartnerRequest] = []

    def step(request_id: str, system: str, kind: str, action: str, status: str,
             found: int | None = None, remaining: int | None = None,
             details: dict[str, Any] | None = None, error: str | None = None) -> None:
        erases = action == "erase"
        steps.append(StepRecord(
            id=len(steps), request_id=request_id, system=system, kind=kind,
            action=StepAction(action), status=StepStatus(status), found=found,
            deleted=found if erases else 0, anonymized=0, retained=0,
            remaining=remaining, attempts=1, error=error, details=details or {},
            started_at=NOW, finished_at=NOW,
        ))

    run = {"flow_run_id": "f" * 32, "task_run_id": "t" * 32}
    for record in records:
        if record.type is None:
            continue
        action = ACTIONS[record.type.value]
        for system in sorted(rng.choice(SYSTEMS, 2, replace=False)):
            found = int(rng.integers(0, 50))
            if system == PARTNER:
                done = not record.status.is_open
                step(record.id, system, "partner", action,
                     "succeeded" if done else "pending_external",
                     details={"partner_status": "completed"} if done else None,
                     error=None if done else "waiting for partner-ads")
                partners.append(PartnerRequest(
                    request_id=record.id, system=system, subject_request_id=f"s-{record.id}",
                    status=PartnerStatus.COMPLETED if done else PartnerStatus.SUBMITTED,
                    reference=f"PA-{record.id[-6:]}"))
                continue
            part = {"found": found, "retain_reasons": [] if found % 7 else ["tax law"]}
            step(record.id, system, "sql", action, "succeeded", found,
                 details={"users": part, "_run": run})
            if action == "erase":
                step(record.id, system, "sql", "verify", "succeeded", 0, remaining=0)
        if record.status is Status.COMPLETED and action in ("collect", "erase"):
            deliverable = "access-package" if action == "collect" else "erasure-certificate"
            step(record.id, deliverable, "deliverable",
                 "deliver" if action == "collect" else "certify", "succeeded",
                 details={"sha256": "ab" * 32, "_run": run})
    return steps, partners


class MemoryLedger:
    """What the report reads of a ledger, held in memory."""

    def __init__(self, records: list[RequestRecord], steps: list[StepRecord],
                 partners: list[PartnerRequest]) -> None:
        self.records, self.step_rows, self.partner_rows = records, steps, partners
        # Every screened request has its repeat check on record; one in twenty repeats.
        # Made here, as reading them from the ledger is not timed either.
        self.decisions = {
            r.id: {Gate.REPEAT: GateDecision(
                r.id, Gate.REPEAT, "flag" if i % 20 == 0 else "none", "checked",
                records[i - 1].id if i % 20 == 0 and i else None)}
            for i, r in enumerate(records)
        }

    def all(self) -> list[RequestRecord]:
        return self.records

    def steps(self, request_ids: Sequence[str] | None = None) -> list[StepRecord]:
        return self.step_rows

    def holds(self) -> list[object]:
        return []

    def held_parts(self) -> list[dict[str, object]]:
        return []

    def gate_decisions(self) -> dict[str, dict[Gate, GateDecision]]:
        return self.decisions

    def partner_requests(self, request_ids: Sequence[str] | None = None,
                         statuses: Sequence[str] | None = None) -> list[PartnerRequest]:
        return self.partner_rows


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
    frames_s: float
    charts_s: float
    html_s: float
    csv_s: float
    html_bytes: int

    @property
    def report_s(self) -> float:
        return self.frames_s + self.html_s + self.csv_s


@dataclass
class Frames:
    requests: pd.DataFrame
    steps: pd.DataFrame
    systems: pd.DataFrame


def measure(ledger: MemoryLedger, deadlines: Deadlines, out: Path, repeat: int
            ) -> tuple[Timings, Frames]:
    html_path = out / "report.html"

    def frames() -> Frames:
        steps = steps_frame(ledger)  # type: ignore[arg-type]
        return Frames(requests_frame(ledger, deadlines, NOW),  # type: ignore[arg-type]
                      steps, systems_frame(steps))

    built = frames()

    def write_html() -> None:
        html_path.write_text(to_html(built.requests, built.steps, now=NOW,
                                     deadlines=deadlines, systems=built.systems))

    def write_csv() -> None:
        built.requests.to_csv(out / "report.csv", index=False)
        built.steps.to_csv(out / "steps.csv", index=False)
        built.systems.to_csv(out / "systems.csv", index=False)

    report_charts(built.requests, NOW, deadlines)  # warm up: matplotlib's fonts
    timings = Timings(
        baseline_s=best_of(repeat, lambda: built.requests.to_csv(out / "baseline.csv",
                                                                 index=False)),
        frames_s=best_of(repeat, frames),
        charts_s=best_of(repeat, lambda: report_charts(built.requests, NOW, deadlines)),
        html_s=best_of(repeat, write_html),
        csv_s=best_of(repeat, write_csv),
        html_bytes=html_path.stat().st_size,
    )
    return timings, built


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

    deadlines = Deadlines()
    records = synthetic_records(args.requests, args.seed, deadlines)
    steps, partners = synthetic_steps(records, args.seed)
    ledger = MemoryLedger(records, steps, partners)
    out = Path(tempfile.mkdtemp(prefix="dsrflow-bench-report-"))
    try:
        t, built = measure(ledger, deadlines, out, args.repeat)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    open_count = int((~built.requests["deadline_state"].isin(
        ["completed_on_time", "completed_late", "not_applicable"])).sum())
    print(f"# {len(records):,} requests ({open_count:,} open), {len(steps):,} step rows "
          f"({len(built.steps):,} request × system); {machine()}")
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; best of {args.repeat}; "
          f"HTML {t.html_bytes / 2**20:,.1f} MiB")
    print()
    print("| requests | to_csv baseline (s) | frames (s) | charts (s) "
          "| to_html incl. charts (s) | CSV files (s) | report (s) | target (s) "
          "| report / baseline | within target |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {len(records):,} | {t.baseline_s:.2f} | {t.frames_s:.2f} | {t.charts_s:.2f} "
          f"| {t.html_s:.2f} | {t.csv_s:.2f} | {t.report_s:.2f} | {TARGET_S:.0f} "
          f"| {t.report_s / t.baseline_s:.1f}x | {'yes' if t.report_s <= TARGET_S else 'NO'} |")
    return 0 if t.report_s <= TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
