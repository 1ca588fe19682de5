"""The HTML report's charts: three embedded PNGs, an empty report that still renders, and
the numbers behind the charts checked by hand on a small frame."""

from __future__ import annotations

import base64
import io
import re
from datetime import UTC, date, datetime

import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.legend import Legend

from dsrflow.charts import (
    STATE_COLOURS,
    business_days_left,
    figure_median_days_by_type,
    figure_open_by_days_left,
    median_days_by_type,
    ontime_by_week,
    open_by_days_left,
    report_charts,
)
from dsrflow.deadlines import Deadlines
from dsrflow.report import REQUEST_COLUMNS, STEP_COLUMNS, to_html

# Friday 20 November 2026, noon in Shanghai.
NOW = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def row(
    n: int, state: str, *, type_: str = "erasure", regime: str | None = "pipl",
    status: str = "in_progress", received: str | None = None, due: str | None = None,
    completed: str | None = None, used: int | None = None, extended: str | None = None,
) -> dict[str, object]:
    return {
        "request_id": f"r{n}", "ticket_id": f"T-{n}", "type": type_, "regime": regime,
        "status": status, "received_at": received, "due_at": due, "completed_at": completed,
        "deadline_state": state, "business_days_used": used, "reason": None,
        "extended_due_at": extended,
    }


def frame(rows: list[dict[str, object]]) -> pd.DataFrame:
    result = pd.DataFrame(rows, columns=REQUEST_COLUMNS)
    result["business_days_used"] = result["business_days_used"].astype("Int64")
    return result


@pytest.fixture
def small() -> pd.DataFrame:
    return frame([
        # Completed in the week of Monday 2 November 2026: 2 on time, 1 late.
        row(1, "completed_on_time", status="completed", received="2026-11-01T04:00:00+00:00",
            completed="2026-11-03T04:00:00+00:00", used=2),  # 2 days
        row(2, "completed_on_time", status="completed", received="2026-10-30T04:00:00+00:00",
            completed="2026-11-08T16:00:00+00:00", used=6),  # 9.5 days (Sunday, same week)
        row(3, "completed_late", status="completed", type_="access",
            received="2026-10-01T04:00:00+00:00", completed="2026-11-02T04:00:00+00:00",
            used=22),  # 32 days
        # The week of Monday 9 November: 1 late.
        row(4, "completed_late", status="completed", received="2026-10-20T04:00:00+00:00",
            completed="2026-11-09T00:00:00+00:00", used=14),  # 19.833… days
        # Open ones (the days-left chart), and rows no chart counts as completed.
        row(5, "on_time", due="2026-12-04T15:59:59+00:00"),
        row(6, "at_risk", due="2026-11-24T15:59:59+00:00"),
        row(7, "overdue", due="2026-11-18T15:59:59+00:00"),
        row(8, "awaiting_verification", status="awaiting_verification",
            due="2026-11-24T15:59:59+00:00"),
        row(9, "unknown", regime=None),
        row(10, "not_applicable", type_="", regime=None, status="rejected"),
    ])


def decoded_images(page: str) -> list[bytes]:
    return [base64.b64decode(data, validate=True) for data in IMG.findall(page)]


def assert_png(data: bytes) -> None:
    assert data.startswith(PNG_SIGNATURE)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - matplotlib depends on Pillow
        return
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
        assert image.format == "PNG"
        assert image.size == (700, 320)


# -- the page -------------------------------------------------------------------------------
def test_html_embeds_three_png_charts_above_the_tables(small: pd.DataFrame) -> None:
    page = to_html(small, pd.DataFrame(columns=STEP_COLUMNS), now=NOW, deadlines=Deadlines())

    images = decoded_images(page)
    assert len(images) == 3
    for data in images:
        assert_png(data)
    assert page.index("<img") < page.index("<h2>Requests</h2>")
    assert "http://" not in page and "https://" not in page  # self-contained


def test_charts_are_deterministic(small: pd.DataFrame) -> None:
    first = [png for _, png in report_charts(small, NOW)]
    second = [png for _, png in report_charts(small, NOW)]
    assert first == second


def test_empty_report_renders_no_data_charts() -> None:
    empty = frame([])
    page = to_html(empty, pd.DataFrame(columns=STEP_COLUMNS), now=NOW)

    images = decoded_images(page)
    assert len(images) == 3
    for data in images:
        assert_png(data)
    assert open_by_days_left(empty, NOW).empty
    assert ontime_by_week(empty).empty
    assert median_days_by_type(empty).empty


def test_only_closed_requests_still_render(small: pd.DataFrame) -> None:
    closed = small[small["deadline_state"].str.startswith("completed")]
    assert open_by_days_left(closed, NOW).empty
    assert len(decoded_images(to_html(closed, pd.DataFrame(columns=STEP_COLUMNS),
                                      now=NOW))) == 3


def test_chart_text_is_escaped_in_alt_text_and_page(small: pd.DataFrame) -> None:
    hostile = small.copy()
    hostile.loc[0, "type"] = "<script>alert(1)</script>"
    page = to_html(hostile, pd.DataFrame(columns=STEP_COLUMNS), "<b>t</b>", now=NOW)
    assert "<script>alert" not in page and "<b>t</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert len(decoded_images(page)) == 3


# -- the numbers ----------------------------------------------------------------------------
def test_ontime_rate_by_week(small: pd.DataFrame) -> None:
    table = ontime_by_week(small)

    assert list(table.index) == [date(2026, 11, 2), date(2026, 11, 9)]
    assert table["on_time"].tolist() == [2, 0]
    assert table["late"].tolist() == [1, 1]
    assert table["rate"].tolist() == pytest.approx([2 / 3, 0.0])


def test_median_days_by_type(small: pd.DataFrame) -> None:
    table = median_days_by_type(small)

    assert list(table.index) == ["access", "erasure"]
    assert table["requests"].tolist() == [1, 3]
    # erasure: 2, 9.5 and 19.83 days -> 9.5; business days 2, 6, 14 -> 6.
    assert table.loc["erasure", "median_days"] == pytest.approx(9.5)
    assert table.loc["erasure", "median_business_days"] == 6
    assert table.loc["access", "median_days"] == pytest.approx(32.0)
    assert table.loc["access", "median_business_days"] == 22


def test_median_of_an_even_count_is_the_mean_of_the_middle_two() -> None:
    table = median_days_by_type(frame([
        row(1, "completed_on_time", received="2026-11-01T00:00:00+00:00",
            completed="2026-11-02T00:00:00+00:00", used=1),
        row(2, "completed_late", received="2026-11-01T00:00:00+00:00",
            completed="2026-11-05T00:00:00+00:00", used=4),
    ]))
    assert table.loc["erasure", "median_days"] == pytest.approx(2.5)
    assert table.loc["erasure", "median_business_days"] == pytest.approx(2.5)


def test_business_days_left_weekdays_without_a_calendar(small: pd.DataFrame) -> None:
    left = business_days_left(small, NOW)
    # From Friday 20 Nov: due Fri 4 Dec -> 10; Tue 24 Nov -> 2; Wed 18 Nov -> -2 (Thu, Fri).
    assert left.tolist()[4:9] == [10, 2, -2, 2, pd.NA]


def test_business_days_left_on_the_regime_calendar() -> None:
    # PIPL over the National Day holidays: from Tuesday 29 September 2026 to Friday 9
    # October the Chinese calendar has fewer working days than Monday to Friday.
    rows = frame([row(1, "on_time", due="2026-10-09T15:59:59+00:00")])
    now = datetime(2026, 9, 29, 4, 0, tzinfo=UTC)
    weekdays = business_days_left(rows, now).tolist()[0]
    chinese = business_days_left(rows, now, Deadlines()).tolist()[0]
    assert weekdays == 8
    assert chinese < weekdays


def test_open_by_days_left_buckets_and_states(small: pd.DataFrame) -> None:
    table = open_by_days_left(small, NOW)

    assert list(table.columns) == [
        "on_time", "extended", "at_risk", "overdue", "awaiting_verification", "unknown"]
    assert list(table.index) == ["<0", "2", "10", "n/a"]
    assert list(table.loc["<0"]) == [0, 0, 0, 1, 0, 0]
    assert list(table.loc["2"]) == [0, 0, 1, 0, 1, 0]
    assert list(table.loc["10"]) == [1, 0, 0, 0, 0, 0]
    assert list(table.loc["n/a"]) == [0, 0, 0, 0, 0, 1]
    assert int(table.to_numpy().sum()) == 5  # completed and rejected rows are left out


# -- the days-left chart: extensions, legend, ticks -----------------------------------------
def test_days_left_count_to_the_extended_due_date() -> None:
    rows = frame([
        # Due Tue 24 Nov, extended to Fri 4 Dec: ten working days from Friday 20 Nov.
        row(1, "extended", due="2026-11-24T15:59:59+00:00",
            extended="2026-12-04T15:59:59+00:00"),
        row(2, "at_risk", due="2026-11-24T15:59:59+00:00"),
    ])
    assert business_days_left(rows, NOW).tolist() == [10, 2]
    assert business_days_left(rows, NOW, Deadlines()).tolist() == [10, 2]
    table = open_by_days_left(rows, NOW)
    assert table.loc["10", "extended"] == 1
    assert table.loc["2", "at_risk"] == 1


def test_a_frame_without_the_extension_column_counts_to_due_at() -> None:
    rows = frame([row(1, "on_time", due="2026-12-04T15:59:59+00:00")]).drop(
        columns="extended_due_at")
    assert business_days_left(rows, NOW).tolist() == [10]


def drawn(figure: Figure) -> tuple[Axes, Legend]:
    figure.canvas.draw()
    [axes] = figure.axes
    legend = axes.get_legend()
    assert legend is not None
    return axes, legend


def swatches(legend: Legend) -> dict[str, str]:
    return {
        text.get_text(): to_hex(handle.get_facecolor())  # type: ignore[attr-defined]
        for text, handle in zip(legend.get_texts(), legend.legend_handles, strict=True)
        if handle is not None and handle.get_visible() and handle.get_alpha() != 0
    }


@pytest.mark.parametrize("state", ["on_time", "extended", "at_risk", "overdue"])
def test_one_state_with_one_bar_keeps_its_legend_swatch(state: str) -> None:
    """One bar fills the plot; a frameless legend drawn over it hid the swatch of the same
    colour. The legend now sits beside the plot, its swatches drawn on nothing."""
    rows = frame([row(1, state, due="2026-12-04T15:59:59+00:00")])
    axes, legend = drawn(figure_open_by_days_left(rows, NOW))

    assert swatches(legend) == {state: STATE_COLOURS[state]}
    renderer = axes.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    box = legend.get_window_extent(renderer)
    bars = [p for p in axes.patches if p.get_height() > 0]  # type: ignore[attr-defined]
    assert bars
    for bar in bars:
        assert not box.overlaps(bar.get_window_extent(renderer))


def test_every_state_with_requests_has_its_own_swatch(small: pd.DataFrame) -> None:
    with_extended = pd.concat([small, frame([
        row(11, "extended", due="2026-11-24T15:59:59+00:00",
            extended="2026-12-11T15:59:59+00:00")])], ignore_index=True)
    _, legend = drawn(figure_open_by_days_left(with_extended, NOW))
    assert swatches(legend) == {
        state: STATE_COLOURS[state]
        for state in ("on_time", "extended", "at_risk", "overdue", "awaiting_verification",
                      "unknown")
    }
    assert len(set(STATE_COLOURS.values())) == len(STATE_COLOURS)  # told apart by colour


def test_the_type_chart_legend_stays_off_its_bars(small: pd.DataFrame) -> None:
    axes, legend = drawn(figure_median_days_by_type(small))
    assert set(swatches(legend)) == {"calendar days", "business days"}
    renderer = axes.figure.canvas.get_renderer()  # type: ignore[attr-defined]
    box = legend.get_window_extent(renderer)
    for bar in axes.patches:
        assert not box.overlaps(bar.get_window_extent(renderer))


@pytest.mark.parametrize("requests", [1, 2, 3, 5])
def test_request_counts_are_whole_numbers_on_the_axis(requests: int) -> None:
    rows = frame([row(n, "on_time", due="2026-12-04T15:59:59+00:00")
                  for n in range(requests)])
    axes, _ = drawn(figure_open_by_days_left(rows, NOW))
    ticks = [t for t in axes.get_yticks() if axes.get_ylim()[0] <= t <= axes.get_ylim()[1]]
    assert len(ticks) >= 2
    assert all(float(t).is_integer() for t in ticks), ticks
