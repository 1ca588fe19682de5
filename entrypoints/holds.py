"""`dsrflow hold add|list|release`: legal holds (privacy policy 6.6.3) on the command line."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from entrypoints.terminal import ConfigOption, Typer, console, fail, open_runtime, say

hold_app = Typer(help="Legal holds: keep one subject's data for an exemption of the policy "
                 "(6.6.3) while the rest is erased.", no_args_is_help=True)


@hold_app.command("add")
def hold_add(
    reason: Annotated[str, typer.Option(
        "--reason", help="the policy's exemption: legal_obligation, national_security, "
        "public_safety, criminal_investigation, abuse_of_rights, "
        "protecting_life_or_property, harm_to_others, trade_secrets")],
    citation: Annotated[str, typer.Option(help="the order, law or case it rests on (no "
                                          "personal data: it is recorded and reported)")],
    until: Annotated[str, typer.Option(help="its last day, YYYY-MM-DD")],
    approved_by: Annotated[str, typer.Option("--approved-by", help="who approved it")],
    request_id: Annotated[str | None, typer.Option(
        "--request", help="a request of the subject (its id)")] = None,
    ticket_id: Annotated[str | None, typer.Option(
        "--ticket", help="... or its ticket id")] = None,
    category: Annotated[list[str] | None, typer.Option(
        help="a category it keeps (repeat; default: all)")] = None,
    system: Annotated[list[str] | None, typer.Option(
        help="a system it keeps data in (repeat; default: all)")] = None,
    config: ConfigOption = None,
) -> None:
    """Hold a subject's data: any erasure of theirs leaves what the hold covers, counted
    and reported with the exemption and end date, until it is released or ends."""
    from dsrflow.holds import HoldReason
    from dsrflow.ledger import HoldRefused

    rt = open_runtime(config)
    if (request_id is None) == (ticket_id is None):
        raise fail("name the subject by --request or by --ticket (one of them)", 2)
    subject = request_id or rt.ledger.find_by_ticket(ticket_id)
    if subject is None:
        raise fail(f"no request for ticket {ticket_id}", 2)
    try:
        code = HoldReason(reason)
    except ValueError:
        allowed = ", ".join(r.value for r in HoldReason)
        raise fail(f"unknown --reason {reason!r}; the policy's exemptions: {allowed}", 2) from None
    try:
        last_day = date.fromisoformat(until)
    except ValueError:
        raise fail("--until must be a date, YYYY-MM-DD", 2) from None
    known = rt.datamap.all_categories()
    unknown = sorted(set(category or []) - known) + sorted(set(system or [])
                                                           - set(rt.datamap.systems))
    if unknown:
        raise fail(f"not in the data map: {', '.join(unknown)}", 2)
    try:
        hold = rt.ledger.add_hold(subject, code, citation, last_day, approved_by,
                                  categories=category, systems=system)
    except HoldRefused as exc:
        raise fail(say(exc)) from None
    console.print(f"hold {hold.id}: {hold.reason.value} until {hold.until:%Y-%m-%d}, "
                  f"{_scope(hold.categories, hold.systems)}", markup=False, highlight=False)


@hold_app.command("list")
def hold_list(
    every: Annotated[bool, typer.Option("--all", help="released and expired ones too")] = False,
    config: ConfigOption = None,
) -> None:
    """The holds in force (with --all, every hold ever placed)."""
    rt = open_runtime(config)
    now = datetime.now(UTC)
    tickets = {r.id: r.ticket_id for r in rt.ledger.get_many(
        [h.request_id for h in rt.ledger.holds()])}
    kept: dict[str, int] = {}
    for part in rt.ledger.held_parts():
        for hold_id in part["hold_ids"]:
            kept[hold_id] = kept.get(hold_id, 0) + 1
    table = Table("hold", "subject's ticket", "exemption", "until", "scope", "approved by",
                  "state", "parts kept")
    for hold in rt.ledger.holds():
        state = ("in force" if hold.active(now)
                 else "expired" if hold.released_by == "expiry" else "released")
        if state != "in force" and not every:
            continue
        table.add_row(hold.id[:8], tickets.get(hold.request_id) or hold.request_id,
                      hold.reason.value, f"{hold.until:%Y-%m-%d}",
                      _scope(hold.categories, hold.systems), hold.approved_by, state,
                      str(kept.get(hold.id, 0)))
    console.print(table)


@hold_app.command("release")
def hold_release(
    hold_id: str,
    by: Annotated[str, typer.Option(help="who releases it")],
    reason: Annotated[str, typer.Option(help="why (recorded; no personal data)")],
    config: ConfigOption = None,
) -> None:
    """End a hold before its date, and re-queue what it alone kept back: one follow-up
    request per request it held, going to those systems only."""
    from dsrflow.ledger import HoldRefused

    rt = open_runtime(config)
    full = _full_id(rt, hold_id)
    try:
        rt.ledger.release_hold(full, by, reason)
    except HoldRefused as exc:
        raise fail(say(exc)) from None
    for new_id in rt.ledger.requeue_released():
        record = rt.ledger.get(new_id)
        console.print(
            f"re-queued {record.ticket_id} (request {new_id}) for "
            f"{', '.join(sorted(record.systems or []))}: it runs with the next "
            f"resume-requests, or now: dsrflow run {new_id}", markup=False, highlight=False)


def _full_id(rt: Any, prefix: str) -> str:
    """A hold's id from its first characters, as `hold list` shows them."""
    matches = [h.id for h in rt.ledger.holds() if h.id.startswith(prefix)]
    if len(matches) != 1:
        raise fail(f"{'no' if not matches else 'more than one'} hold starts with {prefix}", 2)
    return matches[0]


def _scope(categories: frozenset[str] | None, systems: frozenset[str] | None) -> str:
    what = ", ".join(sorted(categories)) if categories else "every category"
    where = ", ".join(sorted(systems)) if systems else "every system"
    return f"{what} in {where}"
