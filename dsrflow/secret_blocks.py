"""Secrets kept in Prefect `Secret` blocks.

One form everywhere: a secret setting `X` may instead be given as `X_block: <block name>`
(settings: `ledger_url_block`, `token_key_block`, `encryption_key_block`,
`signing_key_block`; data map: a SQL system's `url_block`, a partner's
`credentials_block`). The YAML then holds only the block's name; the value lives in
Prefect (encrypted at rest by the server) and is read when it is first needed.

This is the one module below the task wrappers that imports Prefect, and only inside
`read_secret_block`: `dsrflow --help`, `dsrflow datamap check` and every command that
needs no secret from a block import no Prefect (tests/test_startup.py).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator

# Prefect's own rule for block document names (the UI and the API refuse others): checked
# when the YAML is read, so a typo fails `dsrflow datamap check`, not a run at 3 a.m.
BLOCK_NAME = re.compile(r"[a-z0-9-]+")


class SecretBlockError(ValueError):
    """A Secret block that cannot be read. The message names the setting and the block,
    never a value (the block may be there, holding something else)."""


def check_block_name(value: str | None) -> str | None:
    """For pydantic validators: a block name Prefect accepts, or None."""
    if value is not None and not BLOCK_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a Prefect block name (lowercase letters, digits and dashes)"
        )
    return value


# The type of every `*_block` setting and data-map field.
BlockName = Annotated[str, AfterValidator(check_block_name)]


def read_secret_block(name: str, setting: str) -> str:
    """The value of the Secret block `name`, for the setting `setting` (a dotted path, as
    the YAML names it). Needs a Prefect API: PREFECT_API_URL, or the embedded server."""
    from prefect.blocks.system import Secret

    try:
        # _sync: a plain call even when a caller runs inside an event loop (the callback
        # endpoint); Block.load would otherwise return a coroutine there.
        block: Any = Secret.load(name, _sync=True)  # type: ignore[call-arg]
    except Exception as exc:
        if isinstance(exc, ValueError) and "Unable to find block document" in str(exc):
            raise SecretBlockError(
                f"{setting}: no Prefect Secret block named {name!r} (create it with "
                f"`Secret(value=...).save({name!r})` or in the UI under Blocks)"
            ) from None
        # Connection errors and the like: only the kind of failure is said (a message
        # could quote the API's URL and its credentials).
        raise SecretBlockError(
            f"{setting}: the Prefect Secret block {name!r} could not be read "
            f"({type(exc).__name__}); is PREFECT_API_URL pointing at a running Prefect "
            "server?"
        ) from None
    value = block.get()
    if not isinstance(value, str) or not value.strip():
        raise SecretBlockError(
            f"{setting}: the Prefect Secret block {name!r} must hold a non-empty string"
        )
    return value.strip()
