"""The report's charts: small pure functions that compute each chart's data from a
`requests_frame`, and matplotlib figures of them rendered to PNG (the Agg canvas, set
explicitly; pyplot and its global state are never used) for embedding in the HTML page as
`data:` URIs.

Images are deterministic: fixed size and dpi, no timestamps, no software metadata.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from dsrflow.deadlines import CalendarUnavailable, Deadlines
from dsrflow.model import Regime

OPEN_STATES = ("on_time", "extended", "at_risk", "overdue", "awaiting_verification", "unknown")
CLOSED_STATES = frozenset({"completed_on_time", "completed_late", "not_applicable"})
STATE_COLOURS = {
    "on_time": "#2e7d32",
    "extended": "#00838f",
    "at_risk": "#f9a825",
    "overdue": "#c62828",
    "awaiting_verification": "#1565c0",
    "unknown": "#9e9e9e",
}
OTHER_COLOUR = "#6d4c41"  # a state this module does not know yet
CALENDAR_DAYS_COLOUR = "#1565c0"
BUSINESS_DAYS_COLOUR = "#90caf9"
MAX_DAYS_SHOWN = 15
MIN_BUCKET_SLOTS = 6  # days left beyond this share one bar, "15+"
FIGSIZE = (7.0, 3.2)
DPI = 100


# -- chart data -----------------------------------------------------------------------------
def _utc(column: pd.Series) -> pd.Series:
    return pd.to_datetime(column, utc=True, format="ISO8601", errors="coerce")


def effective_due(frame: pd.DataFrame) -> pd.Series:
    """Each row's binding due date: `extended_due_at` where a request was extended, else
    `due_at` (a frame without the column has no extensions)."""
    due = _utc(frame["due_at"])
    if "extended_due_at" not in frame:
        return due
    extended = _utc(frame["extended_due_at"])
    return extended.where(extended.notna(), due)


def business_days_left(
    frame: pd.DataFrame, now: datetime, deadlines: Deadlines | None = None
) -> pd.Series:
    """Working days from `now` to each row's effective due date (`effective_due`;
    negative once overdue; <NA> when unknown). With `deadlines`, each regime's calendar
    (`Deadlines.working_days_used`); without, or for rows without a regime, Monday to
    Friday in UTC."""
    due = effective_due(frame)
    result = pd.Series(pd.NA, index=frame.index, dtype="Int64")
    known = due.notna()
    if not known.any():
        return result
    now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    today = np.datetime64(now.astimezone(UTC).date(), "D")
    due_days = due[known].dt.tz_convert(None).to_numpy().astype("datetime64[D]")
    # busday_count counts [begin, end): shifting both by a day counts (today, due].
    ahead = np.busday_count(today + 1, due_days + 1)
    behind = np.busday_count(due_days + 1, today + 1)
    result[known] = np.where(due_days >= today, ahead, -behind)
    if deadlines is None:
        return result
    # Few distinct (regime, due date) pairs even among many requests: each is counted once.
    cache: dict[tuple[str, pd.Timestamp], int | None] = {}
    counted = known & frame["regime"].notna()
    values: list[int | None] = []
    for regime, due_at in zip(frame["regime"][counted], due[counted], strict=True):
        key = (str(regime), due_at)
        if key not in cache:
            cache[key] = _calendar_days_left(deadlines, key[0], now, due_at.to_pydatetime())
        values.append(cache[key])
    result[counted] = pd.array(values, dtype="Int64")
    return result


def _calendar_days_left(
    deadlines: Deadlines, regime_name: str, now: datetime, due_at: datetime
) -> int | None:
    try:
        regime = Regime(regime_name)
        if due_at >= now:
            return deadlines.working_days_used(regime, now, due_at)
        return -deadlines.working_days_used(regime, due_at, now)
    except (ValueError, CalendarUnavailable):
        return None


def _days_label(days: int | None) -> str:
    if days is None:
        return "n/a"
    n = int(days)
    if n < 0:
        return "<0"
    return f"{MAX_DAYS_SHOWN}+" if n >= MAX_DAYS_SHOWN else str(n)


DAY_BUCKETS = ["<0", *(str(n) for n in range(MAX_DAYS_SHOWN)), f"{MAX_DAYS_SHOWN}+", "n/a"]


def open_by_days_left(
    frame: pd.DataFrame, now: datetime, deadlines: Deadlines | None = None
) -> pd.DataFrame:
    """Open requests counted by business days left (rows: buckets `<0`, `0` … `14`, `15+`,
    `n/a`, only those with requests) and deadline state (columns: the open states, then any
    other state found)."""
    open_rows = frame[~frame["deadline_state"].isin(CLOSED_STATES)]
    extra = sorted(set(open_rows["deadline_state"].dropna().astype(str)) - set(OPEN_STATES))
    columns = [*OPEN_STATES, *extra]
    if open_rows.empty:
        return pd.DataFrame(columns=columns, dtype="int64").rename_axis("days_left")
    left = business_days_left(open_rows, now, deadlines)
    buckets = pd.Categorical([_days_label(None if pd.isna(v) else int(v)) for v in left],
                             categories=DAY_BUCKETS)
    table = pd.crosstab(buckets, open_rows["deadline_state"].astype(str).to_numpy(),
                        dropna=False)
    table = table.reindex(columns=columns, fill_value=0)
    table = table[table.sum(axis=1) > 0].astype("int64")
    table.index = pd.Index([str(i) for i in table.index], name="days_left")
    table.columns.name = None
    return table


def ontime_by_week(frame: pd.DataFrame) -> pd.DataFrame:
    """Completed requests by ISO week of completion (index: the week's Monday, a `date`):
    `on_time`, `late`, and `rate` = on_time / (on_time + late)."""
    done = frame[frame["deadline_state"].isin(["completed_on_time", "completed_late"])]
    completed = _utc(done["completed_at"])
    done = done[completed.notna()]
    completed = completed[completed.notna()]
    if done.empty:
        return pd.DataFrame(
            {"on_time": pd.Series(dtype="int64"), "late": pd.Series(dtype="int64"),
             "rate": pd.Series(dtype="float64")}
        ).rename_axis("week")
    day = completed.dt.tz_convert(None).dt.normalize()
    monday = (day - pd.to_timedelta(day.dt.weekday, unit="D")).dt.date
    on_time = (done["deadline_state"] == "completed_on_time").astype("int64")
    table = pd.DataFrame({"week": monday.to_numpy(), "on_time": on_time.to_numpy(),
                          "late": (1 - on_time).to_numpy()})
    table = table.groupby("week", sort=True)[["on_time", "late"]].sum()
    table["rate"] = table["on_time"] / (table["on_time"] + table["late"])
    return table


def median_days_by_type(frame: pd.DataFrame) -> pd.DataFrame:
    """Completed requests by type (index, sorted): `requests`, `median_days` (calendar days
    from received to completed) and `median_business_days` (`business_days_used`)."""
    done = frame[frame["deadline_state"].isin(["completed_on_time", "completed_late"])
                 & frame["type"].notna()]
    received = _utc(done["received_at"])
    completed = _utc(done["completed_at"])
    days = (completed - received).dt.total_seconds() / 86400
    table = pd.DataFrame({
        "type": done["type"].astype(str).to_numpy(),
        "days": days.to_numpy(dtype="float64", na_value=np.nan),
        "business_days": pd.to_numeric(done["business_days_used"], errors="coerce")
        .to_numpy(dtype="float64", na_value=np.nan),
    })
    table = table[~np.isnan(table["days"])]
    grouped = table.groupby("type", sort=True)
    result = pd.DataFrame({
        "requests": grouped.size().astype("int64"),
        "median_days": grouped["days"].median().astype("float64"),
        "median_business_days": grouped["business_days"].median().astype("float64"),
    })
    result.index.name = "type"
    return result


# -- figures --------------------------------------------------------------------------------
def _figure(title: str) -> tuple[Figure, Axes]:
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.set_title(title, fontsize=11, loc="left")
    axes.spines[["top", "right"]].set_visible(False)
    return figure, axes


def _no_data(axes: Axes) -> None:
    axes.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=14,
              color="#6b7280", transform=axes.transAxes)
    axes.set_xticks([])
    axes.set_yticks([])


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _legend_outside(axes: Axes, handles: list[Patch]) -> None:
    """The legend to the right of the plot, never over it: a frameless legend drawn over
    a bar of its own colour loses its swatch (one state with one bar fills the plot)."""
    axes.legend(handles=handles, fontsize=8, frameon=False, loc="upper left",
                bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def figure_open_by_days_left(
    frame: pd.DataFrame, now: datetime, deadlines: Deadlines | None = None
) -> Figure:
    data = open_by_days_left(frame, now, deadlines)
    figure, axes = _figure("Open requests by business days left")
    if data.empty:
        _no_data(axes)
        return figure
    x = np.arange(len(data.index))
    bottom = np.zeros(len(data.index))
    handles = []
    for state in data.columns:
        counts = data[state].to_numpy(dtype="float64")
        if counts.any():
            colour = STATE_COLOURS.get(state, OTHER_COLOUR)
            axes.bar(x, counts, bottom=bottom, label=state, color=colour)
            # A swatch of its own, not one copied from the state's first bar.
            handles.append(Patch(facecolor=colour, label=state))
        bottom += counts
    axes.set_xticks(x, list(data.index))
    # Room for a few buckets at least: one lone bar as wide as the plot reads as a block.
    axes.set_xlim(-0.6, max(len(x), MIN_BUCKET_SLOTS) - 0.4)
    axes.set_xlabel("business days left")
    axes.set_ylabel("requests")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_outside(axes, handles)
    return figure


def chart_open_by_days_left(
    frame: pd.DataFrame, now: datetime, deadlines: Deadlines | None = None
) -> bytes:
    return _png(figure_open_by_days_left(frame, now, deadlines))


def figure_ontime_by_week(frame: pd.DataFrame) -> Figure:
    data = ontime_by_week(frame)
    figure, axes = _figure("On-time rate by week of completion")
    if data.empty:
        _no_data(axes)
        return figure
    x = np.arange(len(data.index))
    axes.plot(x, data["rate"].to_numpy() * 100, marker="o", color="#1565c0")
    labels = [w.isoformat() if isinstance(w, date) else str(w) for w in data.index]
    step = max(1, len(labels) // 12)
    axes.set_xticks(x[::step], labels[::step], rotation=30, ha="right",
                    fontsize=8)
    axes.set_ylim(0, 105)
    axes.set_ylabel("% on time")
    axes.set_xlabel("week starting (UTC)")
    return figure


def chart_ontime_by_week(frame: pd.DataFrame) -> bytes:
    return _png(figure_ontime_by_week(frame))


def figure_median_days_by_type(frame: pd.DataFrame) -> Figure:
    data = median_days_by_type(frame)
    figure, axes = _figure("Median days to respond by request type")
    if data.empty:
        _no_data(axes)
        return figure
    y = np.arange(len(data.index))
    height = 0.38
    axes.barh(y - height / 2, data["median_days"].to_numpy(), height,
              label="calendar days", color=CALENDAR_DAYS_COLOUR)
    axes.barh(y + height / 2, data["median_business_days"].fillna(0).to_numpy(),
              height, label="business days", color=BUSINESS_DAYS_COLOUR)
    axes.set_yticks(y, [f"{t} ({n})" for t, n in zip(data.index, data["requests"],
                                                       strict=True)])
    axes.invert_yaxis()
    axes.set_xlabel("median days, received to completed (requests)")
    _legend_outside(axes, [Patch(facecolor=CALENDAR_DAYS_COLOUR, label="calendar days"),
                           Patch(facecolor=BUSINESS_DAYS_COLOUR, label="business days")])
    return figure


def chart_median_days_by_type(frame: pd.DataFrame) -> bytes:
    return _png(figure_median_days_by_type(frame))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def report_charts(
    frame: pd.DataFrame, now: datetime | None = None, deadlines: Deadlines | None = None
) -> list[tuple[str, bytes]]:
    """The three charts, as (alt text, PNG bytes), in page order."""
    moment = now or datetime.now(UTC)
    makers: list[tuple[str, Callable[[], bytes]]] = [
        ("Open requests by business days left, stacked by deadline state",
         lambda: chart_open_by_days_left(frame, moment, deadlines)),
        ("On-time rate by week of completion", lambda: chart_ontime_by_week(frame)),
        ("Median days to respond by request type", lambda: chart_median_days_by_type(frame)),
    ]
    return [(alt, make()) for alt, make in makers]
