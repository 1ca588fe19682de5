"""Benchmarks: `python -m benchmarks.bench_logs --help`, `python -m benchmarks.bench_report`."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine(libraries: str) -> str:
    """What the numbers were measured on: cores, CPU model, Python, the libraries that
    matter for the benchmark, the OS."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} cores, {cpu}; Python {platform.python_version()}; {libraries}; "
            f"{platform.system()} {platform.release()}")
