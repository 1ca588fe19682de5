"""Partners that answer later.

- `check_partners`: the scheduled look at what is still waiting (a callback can be lost):
  polled, applied, and requests with nothing outstanding are closed.
- `confirm_partner`: a person confirms in the Prefect UI that a manual partner carried out
  a request — the run pauses with a form (who confirmed, the partner's reference, when)
  and resumes when it is submitted. The same as `dsrflow partner confirm`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from dsrflow.errors import raises_safely
from tasks.requests import check_partners as check
from tasks.requests import confirm_partner as confirm
from tasks.requests import partner_instructions


class PartnerConfirmation(RunInput):
    confirmed_by: str
    reference: str
    confirmed_at: datetime | None = None


@flow(name="check-partners", persist_result=False)
@raises_safely
def check_partners() -> dict[str, str]:
    return check()


@flow(
    name="confirm-partner",
    flow_run_name="confirm-{partner}-{request_id}",
    persist_result=False,
)
@raises_safely
def confirm_partner(
    request_id: str, partner: str, wait_days: int = 14, poll_seconds: int = 10
) -> str:
    """Pause until a person confirms, in the Prefect UI, that `partner` did its part."""
    form = PartnerConfirmation.with_initial_data(
        description=partner_instructions(request_id, partner), confirmed_by="", reference=""
    )
    answer = pause_flow_run(
        wait_for_input=form, timeout=wait_days * 24 * 3600, poll_interval=poll_seconds
    )
    return confirm(
        request_id, partner, answer.confirmed_by, answer.reference,
        answer.confirmed_at or datetime.now(UTC),
    )
