"""The completion report: one row per request (`report.csv`), one per request × system
(`steps.csv`), one per system (`systems.csv`), an HTML page, Markdown for Prefect
artifacts, and a page for a single request. Built with pandas from the ledger; it shows
request and ticket ids, never identities.

A `ReportFilter` narrows the report to some statuses, regimes, types, deadline states and
days of receipt; the steps and the per-system totals follow the requests that pass.
"""

from dsrflow.model import RUN_KEY
from dsrflow.report.filters import FilterError, ReportFilter, filter_requests, make_filter, steps_of
from dsrflow.report.frames import (
    DEADLINE_STATES,
    REQUEST_COLUMNS,
    STEP_COLUMNS,
    SWEEP_COLUMNS,
    SYSTEM_COLUMNS,
    requests_frame,
    steps_frame,
    sweeps_frame,
    systems_frame,
)
from dsrflow.report.pages import HTML_MAX_ROWS, html_rows, to_html, to_markdown, write_reports
from dsrflow.report.request_view import build_request_view, request_view, request_view_markdown
from dsrflow.sla import deadline_state

__all__ = [
    "DEADLINE_STATES", "HTML_MAX_ROWS", "REQUEST_COLUMNS", "RUN_KEY", "STEP_COLUMNS",
    "SWEEP_COLUMNS", "SYSTEM_COLUMNS", "FilterError", "ReportFilter", "build_request_view",
    "deadline_state", "filter_requests", "html_rows", "make_filter", "request_view",
    "request_view_markdown", "requests_frame", "steps_frame", "steps_of", "sweeps_frame",
    "systems_frame", "to_html", "to_markdown", "write_reports",
]
