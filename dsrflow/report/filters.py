"""Narrowing the report: a `ReportFilter` lets through some statuses, regimes, types,
deadline states and days of receipt; the steps and the per-system totals follow the
requests that pass."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from dsrflow.model import Regime, RequestType, Status
from dsrflow.report.frames import DEADLINE_STATES, utc_column

_CHOICES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # field: (the frame's column, what a value is called, the allowed values)
    "statuses": ("status", "status", tuple(s.value for s in Status)),
    "regimes": ("regime", "regime", tuple(r.value for r in Regime)),
    "types": ("type", "type", tuple(t.value for t in RequestType)),
    "deadline_states": ("deadline_state", "deadline state", DEADLINE_STATES),
}
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


class FilterError(ValueError):
    """A filter value that is not allowed; the message lists what is."""


class ReportFilter(BaseModel):
    """Which requests a report covers. Each list names the values let through (empty: all
    of them); `received_from` and `received_to` are calendar days in UTC, both included."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    statuses: list[str] = []
    regimes: list[str] = []
    types: list[str] = []
    deadline_states: list[str] = []
    received_from: date | None = None
    received_to: date | None = None

    @field_validator("statuses", "regimes", "types", "deadline_states", mode="before")
    @classmethod
    def _allowed(cls, value: Any, info: ValidationInfo) -> list[str]:
        _, label, allowed = _CHOICES[str(info.field_name)]
        given = [value] if isinstance(value, str) else list(value or [])
        # "a,b" as well as a repeated option: both are natural on a command line.
        names = [part.strip().lower() for item in given for part in str(item).split(",")]
        names = [name for name in names if name]
        unknown = [name for name in names if name not in allowed]
        if unknown:
            quoted = ", ".join(repr(u) for u in unknown)
            raise ValueError(f"unknown {label} {quoted}; allowed: {', '.join(allowed)}")
        return list(dict.fromkeys(names))

    @field_validator("received_from", "received_to", mode="before")
    @classmethod
    def _day(cls, value: Any, info: ValidationInfo) -> Any:
        name = str(info.field_name)
        if isinstance(value, datetime):
            raise ValueError(f"{name}: a calendar day (YYYY-MM-DD), not a moment")
        if isinstance(value, str):
            try:
                if not _DAY.fullmatch(value.strip()):
                    raise ValueError(value)
                return date.fromisoformat(value.strip())
            except ValueError:
                raise ValueError(f"{name}: {value!r} is not a date (YYYY-MM-DD)") from None
        return value

    @model_validator(mode="after")
    def _ordered(self) -> ReportFilter:
        if self.received_from and self.received_to and self.received_from > self.received_to:
            raise ValueError(f"received_from {self.received_from} is after received_to "
                             f"{self.received_to}")
        return self

    @property
    def is_empty(self) -> bool:
        return not self._parts()

    def describe(self) -> str:
        """One line for the page: what was let through."""
        return " · ".join(self._parts()) or "none (every request)"

    def _parts(self) -> list[str]:
        parts = [
            f"{label}: {', '.join(getattr(self, name))}"
            for name, (_, label, _) in _CHOICES.items()
            if getattr(self, name)
        ]
        first, last = self.received_from, self.received_to
        if first and last:
            parts.append(f"received {first} to {last} (UTC, inclusive)")
        elif first:
            parts.append(f"received on or after {first} (UTC)")
        elif last:
            parts.append(f"received on or before {last} (UTC)")
        return parts


def make_filter(**values: Any) -> ReportFilter:
    """A `ReportFilter`, or a `FilterError` whose message says what is wrong and what is
    allowed (pydantic's own message is for developers)."""
    try:
        return ReportFilter(**values)
    except ValidationError as exc:
        raise FilterError("; ".join(
            str(e["msg"]).removeprefix("Value error, ") for e in exc.errors()
        )) from None


def filter_requests(frame: pd.DataFrame, report_filter: ReportFilter | None) -> pd.DataFrame:
    """The rows of a `requests_frame` that pass the filter."""
    if report_filter is None or report_filter.is_empty:
        return frame
    mask = np.ones(len(frame), dtype=bool)
    for name, (column, _, _) in _CHOICES.items():
        allowed = getattr(report_filter, name)
        if allowed:
            mask &= frame[column].isin(allowed).to_numpy()
    if report_filter.received_from or report_filter.received_to:
        day = utc_column(frame["received_at"]).dt.floor("D")
        if report_filter.received_from:
            mask &= (day >= pd.Timestamp(report_filter.received_from, tz=UTC)).to_numpy()
        if report_filter.received_to:
            mask &= (day <= pd.Timestamp(report_filter.received_to, tz=UTC)).to_numpy()
    return frame[mask].reset_index(drop=True)


def steps_of(steps: pd.DataFrame, requests: pd.DataFrame) -> pd.DataFrame:
    """The step rows of these requests (a filtered report's steps)."""
    return steps[steps["request_id"].isin(requests["request_id"])].reset_index(drop=True)
