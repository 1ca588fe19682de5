"""Which systems are limited, and to how many runs at once (plain Python: the task layer
turns these into Prefect global concurrency limits and holds their slots)."""

from __future__ import annotations

from dsrflow.settings import ConfigError
from pipeline.runtime import Runtime

LIMIT_PREFIX = "dsrflow-system-"


def limit_name(system: str) -> str:
    """The Prefect global concurrency limit of a system."""
    return f"{LIMIT_PREFIX}{system}"


def system_limits(rt: Runtime) -> dict[str, int]:
    """`limits.systems` of the settings, each checked against the data map: a limit on a
    system the data map does not have is a typo that would protect nothing, so it is an
    error naming the setting, not a silent no-op."""
    limits = rt.settings.limits.systems
    unknown = sorted(set(limits) - set(rt.datamap.systems))
    if unknown:
        raise ConfigError(
            f"limits.systems.{unknown[0]}: no system of that name in the data map "
            f"(systems: {', '.join(sorted(rt.datamap.systems))})"
        )
    return dict(limits)
