"""What every `dsrflow` command shares: the Typer that never prints a traceback, the
consoles, failing with a message, and loading the settings and the runtime.

Only typer, click and rich at import: `dsrflow --help` and every command module load this,
and the settings (SQLAlchemy, cryptography, pydantic) are imported by the commands that
read them (issue 16: the help in well under half a second).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from rich.console import Console

if TYPE_CHECKING:
    from dsrflow.settings import Settings


class Typer(typer.Typer):
    """Every command's unexpected error is said as `safe_error` says it (type and a fixed
    hint unless dsrflow wrote the message), with exit code 1: never a traceback, which
    would print the exception's text, its causes' and (typer's default) local variables."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(pretty_exceptions_enable=False, pretty_exceptions_show_locals=False,
                         **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        register = super().command(*args, **kwargs)

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            register(_guarded(fn))
            return fn

        return decorator


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, click.ClickException):
            raise
        except Exception as exc:
            error = fail(f"error: {say(exc)}")
        raise error  # outside the handler: no context to print

    return run


def say(exc: BaseException) -> str:
    """An error for the terminal: `safe_error`, without the type of a message dsrflow
    wrote, and not clipped as a stored error is."""
    from dsrflow.errors import safe_error

    return safe_error(exc, typed=False, limit=2000)


console = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="dsrflow.yaml (default: $DSRFLOW_CONFIG, ./dsrflow.yaml)"),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Say what went wrong on stderr, in red, as plain text (a message quoting a value in
    [brackets] must not be read as markup), and give the exit to raise."""
    err.print(message, style="red", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def load_config(config: Path | None) -> Settings:
    from dsrflow.settings import ConfigError, load_settings

    try:
        return load_settings(config)
    except ConfigError as exc:
        raise fail(f"config error: {say(exc)}", 2) from None


def open_runtime(config: Path | None) -> Any:
    """The runtime, with Prefect's environment prepared first (see dsrflow.prefect_env)."""
    from dsrflow.datamap import DataMapError
    from dsrflow.settings import ConfigError

    settings = load_config(config)
    from dsrflow.prefect_env import prepare

    prepare(settings.path(settings.prefect_home))
    from pipeline.runtime import Runtime, set_runtime

    runtime = Runtime(settings)
    try:
        runtime.datamap  # noqa: B018 - fail now, with the path, not mid-run
        runtime.ledger  # noqa: B018
    except (DataMapError, ConfigError) as exc:
        raise fail(f"error: {say(exc)}", 2) from None
    set_runtime(runtime)
    return runtime
