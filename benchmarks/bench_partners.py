"""How long handing a batch of requests to an OpenDSR partner takes: one request at a time
against `partner_concurrency` at once (issue 16), in the same run.

    python -m benchmarks.bench_partners --requests 1000
    python -m benchmarks.bench_partners --requests 1000 --delay 0.05   # a partner 50 ms away
    python -m benchmarks.bench_partners --requests 200 --concurrency 1 4 8 16

The reference partner (`examples/partner`) runs in a process of its own on loopback, as a
partner is another machine: its work (validating, signing every answer with RSA-2048) does
not share this process's interpreter. `--delay` makes it wait that long before every
answer, as a partner farther away than loopback does.

Each run hands its own N fresh erasure requests (accepted into a SQLite ledger beforehand,
not timed) to the partner through `pipeline.partners.send`, what the flow's partner task
calls: the batch's ids minted and committed in one ledger transaction, the POSTs (each
answer's signature verified), each acknowledgement recorded in the ledger as it arrives.
Every request must end `submitted` in the ledger, or the benchmark fails. With
`--repeat R` the runs take turns R times and each figure is the median.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cryptography
import httpx

from benchmarks import machine as describe_machine
from dsrflow.intake import submit
from dsrflow.ledger import RequestRecord
from dsrflow.model import PartnerStatus
from dsrflow.settings import Settings
from pipeline import partners
from pipeline.runtime import Runtime
from tests.helpers import make_runtime, ticket

SYSTEM = "adnet"
DEFAULT_BOUND = Settings.model_fields["partner_concurrency"].default


@contextmanager
def reference_partner(folder: Path, delay: float) -> Iterator[str]:
    """The reference partner in a child process; yields its endpoint (its certificate is
    written to `folder / partner.pem`)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.partner", "--cert-out", str(folder / "partner.pem"),
         "--delay", str(delay)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "OpenDSR reference partner at http://... (...)"
        if " at " not in line:
            raise RuntimeError("the reference partner did not start")
        yield line.split(" at ", 1)[1].split()[0]
    finally:
        process.terminate()
        process.wait(timeout=30)


def runtime(folder: Path, endpoint: str) -> Runtime:
    doc: dict[str, Any] = {
        "version": "bench-1",
        "policy_version": "bench",
        "systems": {SYSTEM: {
            "kind": "partner", "protocol": "opendsr", "categories": ["contact"],
            "endpoint": endpoint, "certificate": "partner.pem",
            "identities": [{"type": "email", "format": "sha256"}],
            "callback_domains": ["partner.dsrflow.test"],
        }},
    }
    return make_runtime(folder, doc)


def requests(rt: Runtime, label: str, n: int) -> list[RequestRecord]:
    ids = [submit(rt.ledger, rt.datamap, ticket(
        f"{label}-{k}", "erasure", [{"type": "email", "value": f"{label}.{k}@example.com"}]
    )).request_id for k in range(n)]
    return rt.ledger.get_many(ids)


def timed_send(rt: Runtime, members: Sequence[RequestRecord], bound: int) -> float:
    rt.settings.partner_concurrency = bound
    start = time.perf_counter()
    partners.send(rt, SYSTEM, members)
    elapsed = time.perf_counter() - start
    rows = rt.ledger.partner_requests([m.id for m in members])
    sent = sum(1 for r in rows if r.status is PartnerStatus.SUBMITTED)
    if sent != len(members):
        raise SystemExit(f"concurrency {bound}: {sent} of {len(members)} requests submitted")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_partners",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests per run")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="the partner waits this long before every answer (s)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, DEFAULT_BOUND],
                        help=f"bounds to compare (default: 1 and {DEFAULT_BOUND}, the "
                        "setting's default); the first is the baseline")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)

    print(describe_machine(f"httpx {httpx.__version__}, cryptography "
                           f"{cryptography.__version__}"))
    print(f"{args.requests} requests per run; partner delay {args.delay * 1000:.0f} ms; "
          f"{args.repeat} round(s)")
    times: dict[int, list[float]] = {bound: [] for bound in args.concurrency}
    with tempfile.TemporaryDirectory(prefix="dsrflow-bench-partners-") as tmp:
        folder = Path(tmp)
        with reference_partner(folder, args.delay) as endpoint:
            rt = runtime(folder, endpoint)
            try:
                batches = {
                    (round_, bound): requests(rt, f"r{round_}c{bound}", args.requests)
                    for round_ in range(args.repeat) for bound in args.concurrency
                }
                for round_ in range(args.repeat):
                    for bound in args.concurrency:
                        times[bound].append(timed_send(rt, batches[(round_, bound)], bound))
            finally:
                rt.close()
    baseline = statistics.median(times[args.concurrency[0]])
    print(f"\n| concurrency | seconds | requests/s | speed-up over {args.concurrency[0]} |")
    print("|---:|---:|---:|---:|")
    for bound in args.concurrency:
        seconds = statistics.median(times[bound])
        print(f"| {bound} | {seconds:.2f} | {args.requests / seconds:,.0f} | "
              f"{baseline / seconds:.2f}x |")


if __name__ == "__main__":
    main()
