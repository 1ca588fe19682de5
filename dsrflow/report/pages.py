"""The report as pages: a self-contained HTML page with charts (the portfolio), Markdown
for Prefect artifacts, and the files `write_reports` leaves in a folder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from markupsafe import Markup, escape

from dsrflow.deadlines import Deadlines
from dsrflow.ledger import Ledger
from dsrflow.report.filters import ReportFilter, filter_requests, steps_of
from dsrflow.report.frames import (
    CLOSED_STATES,
    REQUEST_COLUMNS,
    aware,
    is_missing,
    iso,
    requests_frame,
    steps_frame,
    sweeps_frame,
    systems_frame,
    utc_column,
)
from dsrflow.templates import render

# Retention rules applied that the page lists (the most recent); sweeps.csv has all.
SWEEPS_SHOWN = 50
# Rows of the requests table in the HTML page: 100,000 rows made a 56 MiB page that no
# browser shows comfortably; report.csv keeps every row.
HTML_MAX_ROWS = 2000


def to_markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(_md_cell(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def _md_cell(value: Any) -> str:
    if is_missing(value):
        return ""
    # A pipe or a line break would end the cell or the row.
    return " ".join(str(value).replace("|", "\\|").split())


_ROW_FILTERS = ("status", "regime", "type")
# Prose columns wrap; ids, dates and counts stay on one line each.
TEXT_COLUMNS = {"reason": "text", "extension_reason": "text", "retained because": "text",
                 "error": "text"}


def generated_at() -> str:
    """The footer's time of every page."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def html_rows(requests: pd.DataFrame, max_rows: int | None = HTML_MAX_ROWS) -> pd.DataFrame:
    """The requests the page shows, in its order: open requests first, the most urgent
    (effective) due date first, then closed ones, the most recently completed first. At
    most `max_rows` of them (None: all)."""
    state = requests["deadline_state"].astype(str)
    is_open = ~state.isin(CLOSED_STATES)
    due = utc_column(requests["due_at"])
    if "extended_due_at" in requests:
        extended = utc_column(requests["extended_due_at"])
        due = extended.where(extended.notna(), due)
    ended = utc_column(requests["completed_at"])
    ended = ended.where(ended.notna(), utc_column(requests["received_at"]))
    opened = requests[is_open].assign(_key=due[is_open]).sort_values(
        "_key", na_position="last", kind="stable")
    closed = requests[~is_open].assign(_key=ended[~is_open]).sort_values(
        "_key", ascending=False, na_position="last", kind="stable")
    ordered = pd.concat([opened, closed]).drop(columns="_key")
    return ordered if max_rows is None else ordered.head(max(max_rows, 0))


def to_html(
    requests: pd.DataFrame, steps: pd.DataFrame, title: str = "dsrflow report", *,
    now: datetime | None = None, deadlines: Deadlines | None = None,
    systems: pd.DataFrame | None = None, filter: ReportFilter | None = None,
    max_rows: int | None = HTML_MAX_ROWS, sweeps: pd.DataFrame | None = None,
) -> str:
    """The page: the filter applied, a summary, three charts (embedded PNGs) of every
    request given, the requests table (at most `max_rows` rows, see `html_rows`; None:
    all), the per-system table (`systems`, default `systems_frame(steps)`) and the steps
    of the requests shown. `now` is the clock the "days left" chart counts from (default:
    the current time); `deadlines`, when given, counts them on each regime's calendar
    (otherwise Monday to Friday)."""
    from dsrflow.charts import data_uri, report_charts

    if systems is None:
        systems = systems_frame(steps)
    shown = html_rows(requests, max_rows)
    shown_steps = steps_of(steps, shown) if len(shown) < len(requests) else steps
    counts = requests["deadline_state"].value_counts().to_dict()
    sensitive = steps[steps["sensitive"].notna()] if "sensitive" in steps else steps.iloc[:0]
    return render(
        "report.html", title=title, generated_at=generated_at(),
        filter=filter.describe() if filter else "none (every request)",
        tickets=len(requests), counts=sorted((str(k), v) for k, v in counts.items()),
        sensitive_requests=sensitive["request_id"].nunique(), sensitive_steps=len(sensitive),
        as_of=iso(aware(now)) if now is not None else None,
        charts=[(alt, data_uri(png)) for alt, png in report_charts(requests, now, deadlines)],
        shown=len(shown), total=len(requests),
        row_filters=[(c, sorted({str(v) for v in shown[c] if not is_missing(v)}))
                     for c in _ROW_FILTERS],
        requests_table=html_table(shown[_PAGE_ORDER], table_id="requests",
                                  row_attrs=_ROW_FILTERS, classes=TEXT_COLUMNS),
        systems_table=html_table(systems),
        steps_shown=len(shown_steps), steps_total=len(steps),
        steps_table=html_table(shown_steps, classes=TEXT_COLUMNS),
        # The latest first: the page keeps the last SWEEPS_SHOWN; sweeps.csv has all.
        sweeps_table=(html_table(sweeps.iloc[::-1].head(SWEEPS_SHOWN),
                                 classes={"skipped": "text"})
                      if sweeps is not None and len(sweeps) else None),
        sweeps_shown=min(len(sweeps), SWEEPS_SHOWN) if sweeps is not None else 0,
        sweeps_total=len(sweeps) if sweeps is not None else 0,
    )


# The page leads with what a reader scans for (where each request stands and by when);
# report.csv keeps REQUEST_COLUMNS' order.
_LEAD = ["ticket_id", "type", "regime", "status", "deadline_state", "due_at", "extended_due_at",
         "business_days_left"]
_PAGE_ORDER = _LEAD + [c for c in REQUEST_COLUMNS if c not in _LEAD]


def html_table(
    frame: pd.DataFrame, *, table_id: str | None = None, row_attrs: Sequence[str] = (),
    classes: Mapping[str, str] | None = None,
) -> Markup:
    """The frame as an HTML table, every cell escaped and missing values empty: what
    `DataFrame.to_html(index=False, na_rep="", escape=True)` gives (`<NA>` aside), built
    column by column so that a table of 100,000 rows takes well under a second (a
    template's loop would not). `row_attrs`: columns repeated as `data-<column>`
    attributes of each row (the page's row filter reads them); `classes`: a CSS class for
    some columns' cells (given by the code, never by data)."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in frame.columns)
    columns = [_cells(frame[c]) for c in frame.columns]
    classes = classes or {}
    opens = [f'<td class="{classes[c]}">' if c in classes else "<td>" for c in frame.columns]
    attrs = [_cells(frame[c]) for c in row_attrs]
    starts = (
        ["<tr" + "".join(f' data-{name}="{value}"' for name, value in zip(
            row_attrs, values, strict=True)) + ">" for values in zip(*attrs, strict=True)]
        if row_attrs else ["<tr>"] * len(frame)
    )
    rows = "\n".join(
        start + "".join(o + c + "</td>" for o, c in zip(opens, cells, strict=True)) + "</tr>"
        for start, cells in zip(starts, zip(*columns, strict=True), strict=True)
    ) if len(frame.columns) else ""
    ident = f' id="{escape(table_id)}"' if table_id else ""
    return Markup(f'<table class="dataframe"{ident}>\n<thead><tr style="text-align: right;">'
                  f"{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>")


def _cells(column: pd.Series) -> list[str]:
    return ["" if is_missing(v) else str(escape(str(v))) for v in column.astype(object).tolist()]


def write_reports(
    out_dir: Path, ledger: Ledger, deadlines: Deadlines, now: datetime | None = None,
    at_risk_days: int = 3, *, filter: ReportFilter | None = None,
    max_rows: int | None = HTML_MAX_ROWS,
) -> dict[str, Path]:
    """report.csv, steps.csv, systems.csv and report.html, for the requests `filter` lets
    through (default: all); the page's requests table shows at most `max_rows` of them.
    sweeps.csv: every retention rule applied (the filter is about requests: not these)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    requests = filter_requests(requests_frame(ledger, deadlines, now, at_risk_days), filter)
    steps = steps_of(steps_frame(ledger), requests)
    systems = systems_frame(steps)
    sweeps = sweeps_frame(ledger)
    paths = {name: out_dir / name for name in (
        "report.csv", "steps.csv", "systems.csv", "sweeps.csv", "report.html")}
    requests.to_csv(paths["report.csv"], index=False)
    steps.to_csv(paths["steps.csv"], index=False)
    systems.to_csv(paths["systems.csv"], index=False)
    sweeps.to_csv(paths["sweeps.csv"], index=False)
    paths["report.html"].write_text(to_html(
        requests, steps, now=now, deadlines=deadlines, systems=systems, filter=filter,
        max_rows=max_rows, sweeps=sweeps,
    ))
    return paths
