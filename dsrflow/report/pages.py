"""The report as pages: a self-contained HTML page with charts (the portfolio), Markdown
for Prefect artifacts, and the files `write_reports` leaves in a folder."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

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
    systems_frame,
    utc_column,
)

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


_STYLE = """\
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1d2433; }
table { border-collapse: collapse; font-size: 0.85rem; margin-bottom: 2rem; }
th, td { border-bottom: 1px solid #dde1e8; padding: 0.3rem 0.6rem; text-align: left; }
th { background: #f3f5f9; }
td { white-space: nowrap; }
td.text, table.facts td { white-space: normal; min-width: 14rem; }
table.facts th { width: 14rem; }
.scroll { overflow-x: auto; }
.charts { display: flex; flex-wrap: wrap; gap: 1rem; margin-bottom: 1rem; }
.charts img { width: min(700px, calc(50% - 1rem)); min-width: 420px; height: auto; }
.filter, .note { color: #4b5563; }
.controls label { margin-right: 1rem; }
td.sha { font-family: ui-monospace, monospace; font-size: 0.75rem; word-break: break-all; }"""

# Narrows the rows already on the page; `dsrflow report --status ...` narrows the report.
_ROW_FILTER_SCRIPT = """\
<script>
(function () {
  var table = document.getElementById("requests");
  var selects = document.querySelectorAll("select[data-filter]");
  var count = document.getElementById("rows-shown");
  function apply() {
    var rows = table.tBodies[0].rows, shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var keep = true;
      selects.forEach(function (s) {
        if (s.value && rows[i].getAttribute("data-" + s.dataset.filter) !== s.value) {
          keep = false;
        }
      });
      rows[i].hidden = !keep;
      if (keep) { shown++; }
    }
    count.textContent = shown + " rows";
  }
  selects.forEach(function (s) { s.addEventListener("change", apply); });
  apply();
})();
</script>"""
_ROW_FILTERS = ("status", "regime", "type")
# Prose columns wrap; ids, dates and counts stay on one line each.
TEXT_COLUMNS = {"reason": "text", "extension_reason": "text", "retained because": "text",
                 "error": "text"}


def page(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
{_STYLE}
</style></head><body>
{body}
<p><small>Generated {datetime.now(UTC).isoformat(timespec="seconds")}. No identities are
shown: requests are identified by ticket and request id only.</small></p>
</body></html>
"""


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
    max_rows: int | None = HTML_MAX_ROWS,
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
    counts = requests["deadline_state"].value_counts().to_dict()
    summary = " · ".join(f"{html.escape(str(k))}: {v}" for k, v in sorted(counts.items()))
    charts = "\n".join(
        f'<img src="{data_uri(png)}" alt="{html.escape(alt)}">'
        for alt, png in report_charts(requests, now, deadlines)
    )
    shown = html_rows(requests, max_rows)
    request_note = ""
    if len(shown) < len(requests):
        request_note = (
            f'<p class="note">{len(shown):,} of {len(requests):,} shown: open requests '
            "first, the most urgent due date first, then the most recently closed; "
            "report.csv has all.</p>\n")
    shown_steps = steps_of(steps, shown) if len(shown) < len(requests) else steps
    steps_note = ""
    if len(shown_steps) < len(steps):
        steps_note = (f'<p class="note">The steps of the requests shown: {len(shown_steps):,} '
                      f"of {len(steps):,}; steps.csv has all.</p>\n")
    clock = f" · as of {iso(aware(now))}" if now is not None else ""
    body = f"""<h1>{html.escape(title)}</h1>
<p class="filter">Filter: {html.escape(filter.describe() if filter else "none (every request)")}</p>
<p>{len(requests)} tickets · {summary}{clock}</p>
<div class="charts">
{charts}
</div>
<h2>Requests</h2>
{request_note}{_row_filter_controls(shown)}
<div class="scroll">
{html_table(shown[_PAGE_ORDER], table_id="requests", row_attrs=_ROW_FILTERS,
            classes=TEXT_COLUMNS)}
</div>
<h2>Per system</h2>
<div class="scroll">
{html_table(systems)}
</div>
<h2>Per request and system</h2>
{steps_note}<div class="scroll">
{html_table(shown_steps, classes=TEXT_COLUMNS)}
</div>
{_ROW_FILTER_SCRIPT}"""
    return page(title, body)


# The page leads with what a reader scans for (where each request stands and by when);
# report.csv keeps REQUEST_COLUMNS' order.
_LEAD = ["ticket_id", "type", "regime", "status", "deadline_state", "due_at", "extended_due_at",
         "business_days_left"]
_PAGE_ORDER = _LEAD + [c for c in REQUEST_COLUMNS if c not in _LEAD]


def _row_filter_controls(shown: pd.DataFrame) -> str:
    selects = []
    for column in _ROW_FILTERS:
        values = sorted({str(v) for v in shown[column] if not is_missing(v)})
        options = "".join(f'<option value="{html.escape(v)}">{html.escape(v)}</option>'
                          for v in values)
        selects.append(f'<label>{column} <select data-filter="{column}">'
                       f'<option value="">all</option>{options}</select></label>')
    return (f'<p class="controls">Show only: {"".join(selects)}'
            '<span id="rows-shown"></span></p>')


def html_table(
    frame: pd.DataFrame, *, table_id: str | None = None, row_attrs: Sequence[str] = (),
    classes: Mapping[str, str] | None = None,
) -> str:
    """The frame as an HTML table, every cell escaped and missing values empty: what
    `DataFrame.to_html(index=False, na_rep="", escape=True)` gives (`<NA>` aside), built
    column by column so that a table of 100,000 rows takes well under a second.
    `row_attrs`: columns repeated as `data-<column>` attributes of each row (the page's
    row filter reads them); `classes`: a CSS class for some columns' cells."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
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
    ident = f' id="{html.escape(table_id)}"' if table_id else ""
    return (f'<table class="dataframe"{ident}>\n<thead><tr style="text-align: right;">{head}'
            f"</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>")


def _cells(column: pd.Series) -> list[str]:
    return ["" if is_missing(v) else html.escape(str(v)) for v in column.astype(object).tolist()]


def write_reports(
    out_dir: Path, ledger: Ledger, deadlines: Deadlines, now: datetime | None = None,
    at_risk_days: int = 3, *, filter: ReportFilter | None = None,
    max_rows: int | None = HTML_MAX_ROWS,
) -> dict[str, Path]:
    """report.csv, steps.csv, systems.csv and report.html, for the requests `filter` lets
    through (default: all); the page's requests table shows at most `max_rows` of them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    requests = filter_requests(requests_frame(ledger, deadlines, now, at_risk_days), filter)
    steps = steps_of(steps_frame(ledger), requests)
    systems = systems_frame(steps)
    paths = {name: out_dir / name
             for name in ("report.csv", "steps.csv", "systems.csv", "report.html")}
    requests.to_csv(paths["report.csv"], index=False)
    steps.to_csv(paths["steps.csv"], index=False)
    systems.to_csv(paths["systems.csv"], index=False)
    paths["report.html"].write_text(to_html(
        requests, steps, now=now, deadlines=deadlines, systems=systems, filter=filter,
        max_rows=max_rows,
    ))
    return paths
