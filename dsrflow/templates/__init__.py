"""The HTML pages dsrflow writes, as Jinja2 templates with autoescaping: every value is
escaped unless it is `Markup` (only `dsrflow.report.pages.html_table`, which escapes each
cell itself, makes any)."""

from __future__ import annotations

from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("dsrflow", "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,  # a misspelt name fails, instead of printing nothing
        keep_trailing_newline=True,
    )


def render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)
