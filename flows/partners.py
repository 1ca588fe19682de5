"""The scheduled look at partners that have not answered: a callback can be lost, so what
is still waiting is polled, applied, and requests with nothing left outstanding close."""

from __future__ import annotations

from prefect import flow

from tasks.requests import check_partners as check


@flow(name="check-partners", persist_result=False)
def check_partners() -> dict[str, str]:
    return check()
