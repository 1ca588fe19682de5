"""The ticket queue (SQS or anything that speaks its API): plain Python, no Prefect.

- `receive`, `delete`, `put_ticket`, `dead_letter`: thin boto3 helpers.
- `handle_body`: one message's body → the ledger (`dsrflow.intake.submit`) and, when the
  ticket is invalid or anything goes wrong, the dead-letter queue too (the ledger records it
  as rejected, with the same reason). It never raises.
- `drain`: one long poll; each message is handled, then deleted — a valid ticket only
  after the ledger committed it, an invalid one only after it reached the dead-letter queue.
- `Batcher` and `run_loop`: micro-batching (up to N request ids or T seconds) with an
  injectable clock, so tests never sleep.

A dead-lettered message keeps the original body (truncated to fit, and said so in the
reason) with the reason as the message attribute `reason`, and `ticket_id` when the ticket
id could be read. Reasons never repeat a ticket's values: they name fields only.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import OperationalError

from dsrflow.model import DEFAULT_PHONE_REGIONS, Regime, Status

log = logging.getLogger(__name__)

SQS_MAX_MESSAGE_BYTES = 262_144  # the classic SQS limit; AWS now allows 1 MiB
SQS_MAX_RECEIVE = 10  # ReceiveMessage's MaxNumberOfMessages upper bound
SQS_MAX_WAIT = 20  # WaitTimeSeconds upper bound
_ATTRIBUTE_ROOM = 2_048  # bytes kept free for the attributes of a dead-lettered message
_MAX_REASON = 1_000
_TICKET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
# Characters SQS refuses in a message body or attribute value.
_NOT_SQS_TEXT = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class QueueSettings(BaseModel):
    """Where the tickets come from. Credentials come from boto3's usual chain (the
    environment, a profile, an instance role), never from here."""

    model_config = ConfigDict(extra="forbid")

    queue_url: str
    dead_letter_url: str
    endpoint_url: str | None = Field(
        default=None, description="for an SQS-compatible service (ElasticMQ, LocalStack, moto)"
    )
    region: str | None = None
    batch_size: int = Field(default=500, ge=1, description="N: request ids per process run")
    batch_seconds: float = Field(
        default=5.0, gt=0, description="T: the longest an accepted request waits for its run"
    )
    wait_seconds: int = Field(default=10, ge=0, le=SQS_MAX_WAIT, description="long poll")
    max_message_bytes: int = Field(
        default=SQS_MAX_MESSAGE_BYTES, ge=4_096,
        description="what the queue service accepts (dead-lettered bodies are cut to fit)",
    )
    process_deployment: str | None = Field(
        default=None,
        description="start batches through this deployment (e.g. "
        "'process-requests/process-requests'); unset: run them in the intake process",
    )


def make_client(qs: QueueSettings) -> Any:
    import boto3

    return boto3.client("sqs", endpoint_url=qs.endpoint_url, region_name=qs.region)


# -- SQS helpers ------------------------------------------------------------------------------
def receive(
    client: Any, queue_url: str, max_messages: int, wait_seconds: int
) -> list[dict[str, Any]]:
    """One (long) poll: up to `max_messages` messages (each with Body and ReceiptHandle)."""
    response = client.receive_message(
        QueueUrl=queue_url,
        MaxNumberOfMessages=max(1, min(SQS_MAX_RECEIVE, max_messages)),
        WaitTimeSeconds=max(0, min(SQS_MAX_WAIT, wait_seconds)),
        MessageSystemAttributeNames=["ApproximateReceiveCount"],
    )
    return list(response.get("Messages") or [])


def delete(client: Any, queue_url: str, receipt_handle: str) -> None:
    client.delete_message(QueueUrl=queue_url, ReceiptHandle=receipt_handle)


def put_ticket(client: Any, queue_url: str, ticket: dict[str, Any] | str | bytes) -> str:
    """Put one ticket on the queue (`dsrflow submit --queue`); returns the message id.
    The ticket is sent as given: intake validates it, whatever it is."""
    if isinstance(ticket, dict):
        body = json.dumps(ticket, ensure_ascii=False)
    elif isinstance(ticket, bytes):
        body = ticket.decode("utf-8")
    else:
        body = ticket
    response = client.send_message(QueueUrl=queue_url, MessageBody=body)
    return str(response["MessageId"])


def dead_letter(
    client: Any,
    dlq_url: str,
    body: bytes | str,
    reason: str,
    *,
    ticket_id: str | None = None,
    max_bytes: int = SQS_MAX_MESSAGE_BYTES,
) -> str:
    """Send the original body to the dead-letter queue with the reason as the attribute
    `reason` (and `ticket_id` when it can be read). A body SQS cannot carry as text (not
    UTF-8, forbidden characters) is sent base64-encoded with the attribute
    `encoding=base64`; a body too large is cut to fit and the reason says so."""
    raw, text = _as_text(body)
    found = ticket_id if ticket_id is not None else _ticket_id_of(text)
    budget = max_bytes - _ATTRIBUTE_ROOM
    attributes: dict[str, dict[str, str]] = {}
    if text is not None:
        encoded = text.encode("utf-8")
        if len(encoded) > budget:
            # Cut at a character boundary: the body was valid UTF-8, only the tail may break.
            text = encoded[:budget].decode("utf-8", "ignore")
            reason = f"{reason} (body truncated from {len(encoded)} to {budget} bytes)"
        out = text
    else:
        attributes["encoding"] = {"DataType": "String", "StringValue": "base64"}
        keep = budget // 4 * 3
        if len(raw) > keep:
            reason = f"{reason} (body truncated from {len(raw)} to {keep} bytes)"
            raw = raw[:keep]
        out = base64.b64encode(raw).decode("ascii")
    attributes["reason"] = {"DataType": "String", "StringValue": _clean_reason(reason)}
    if found is not None and _TICKET_ID.fullmatch(found):
        attributes["ticket_id"] = {"DataType": "String", "StringValue": found}
    response = client.send_message(
        QueueUrl=dlq_url, MessageBody=out or " ", MessageAttributes=attributes
    )
    return str(response["MessageId"])


def _as_text(body: bytes | str) -> tuple[bytes, str | None]:
    """The body's bytes, and its text if SQS can carry that text as it is."""
    if isinstance(body, str):
        raw = body.encode("utf-8", "surrogatepass")
        text: str | None = body
    else:
        raw = body
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is not None and (not text or _NOT_SQS_TEXT.search(text)):
        text = None
    return raw, text


def _clean_reason(reason: str) -> str:
    cleaned = _NOT_SQS_TEXT.sub("?", reason).strip() or "rejected"
    return cleaned if len(cleaned) <= _MAX_REASON else cleaned[: _MAX_REASON - 1] + "…"


def _ticket_id_of(text: str | None) -> str | None:
    """The ticket id of a body small enough to parse, if it is a well-formed one."""
    if text is None or len(text) > 64 * 1024:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    value = data.get("ticket_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and _TICKET_ID.fullmatch(value) else None


# -- one message ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What became of one message. `ack`: it may be deleted from the main queue."""

    kind: str  # "accepted" | "duplicate" | "rejected" | "error"
    ack: bool
    request_id: str | None = None
    status: Status | None = None
    reason: str | None = None


def handle_body(
    ledger: Any, datamap: Any, client: Any, qs: QueueSettings, body: bytes | str,
    phone_regions: Mapping[Regime, str] = DEFAULT_PHONE_REGIONS,
) -> Outcome:
    """One ticket into the ledger, or into the dead-letter queue with the reason (and into
    the ledger as rejected). Never raises. `ack` is False only when the message could be
    neither recorded nor dead-lettered, or when the ledger is unreachable: it stays on the
    queue and comes back after its visibility timeout."""
    from dsrflow.intake import internal_error, submit
    from dsrflow.tickets import rejection_of

    try:
        result = submit(ledger, datamap, body, phone_regions=phone_regions)
    except OperationalError as exc:
        return _ledger_unavailable(exc)
    except Exception as exc:  # a bug: recorded if the ledger can, dead-lettered either way
        reason = internal_error(exc)
        log.warning("ticket not recorded (%s): dead-lettering it", type(exc).__name__)
        try:
            request_id: str | None = ledger.reject(rejection_of(body, reason))
        except OperationalError as again:
            return _ledger_unavailable(again)
        except Exception as again:
            log.error("recording the rejection failed too (%s)", type(again).__name__)
            request_id = None
        return _to_dead_letter(client, qs, body, reason, None, "error", request_id)
    if result.status is Status.REJECTED:
        return _to_dead_letter(
            client, qs, body, result.reason or "rejected", result.ticket_id, "rejected",
            result.request_id,
        )
    kind = "accepted" if result.created else "duplicate"
    return Outcome(kind, True, result.request_id, result.status, result.reason)


def _ledger_unavailable(exc: OperationalError) -> Outcome:
    # The ledger is unreachable (an outage, not the ticket's fault): leave the message on
    # the queue; it comes back after its visibility timeout.
    log.warning("ledger unavailable (%s): the message stays on the queue",
                type(exc.orig).__name__ if exc.orig is not None else "OperationalError")
    return Outcome("error", False, None, None, "ledger unavailable")


def _to_dead_letter(
    client: Any, qs: QueueSettings, body: bytes | str, reason: str,
    ticket_id: str | None, kind: str, request_id: str | None,
) -> Outcome:
    try:
        dead_letter(client, qs.dead_letter_url, body, reason, ticket_id=ticket_id,
                    max_bytes=qs.max_message_bytes)
    except Exception as exc:
        log.error("dead-letter queue unreachable (%s): the message stays on the queue",
                  type(exc).__name__)
        return Outcome(kind, False, request_id, Status.REJECTED, reason)
    return Outcome(kind, True, request_id, Status.REJECTED, reason)


# -- one poll ---------------------------------------------------------------------------------
@dataclass
class IntakeCounts:
    """What one poll did: counts and the request ids ready to run (ids, never bodies)."""

    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    errors: int = 0  # dead-lettered with "internal error: ..."
    kept: int = 0  # neither recorded nor dead-lettered: left on the queue
    delete_failed: int = 0
    poll_failed: bool = False
    ready: list[str] = field(default_factory=list)

    def add(self, other: IntakeCounts) -> None:
        for name in ("received", "accepted", "duplicates", "rejected", "errors", "kept",
                     "delete_failed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def drain(
    ledger: Any, datamap: Any, client: Any, qs: QueueSettings, max_messages: int,
    wait_seconds: int, phone_regions: Mapping[Regime, str] = DEFAULT_PHONE_REGIONS,
) -> IntakeCounts:
    """One poll: every message handled, then deleted (after its commit or dead-lettering).
    A failed poll is reported, not raised."""
    counts = IntakeCounts()
    try:
        messages = receive(client, qs.queue_url, max_messages, wait_seconds)
    except Exception as exc:
        log.error("polling the ticket queue failed: %s", type(exc).__name__)
        counts.poll_failed = True
        return counts
    for message in messages:
        counts.received += 1
        outcome = handle_body(ledger, datamap, client, qs, message.get("Body") or "",
                              phone_regions)
        if outcome.kind == "accepted":
            counts.accepted += 1
        elif outcome.kind == "duplicate":
            counts.duplicates += 1
        elif outcome.kind == "rejected":
            counts.rejected += 1
        else:
            counts.errors += 1
        if not outcome.ack:
            counts.kept += 1
            continue
        try:
            delete(client, qs.queue_url, str(message.get("ReceiptHandle")))
        except Exception as exc:
            # Recorded already: a redelivery changes nothing (the ticket id is the key).
            log.warning("deleting a handled message failed: %s", type(exc).__name__)
            counts.delete_failed += 1
        # Only newly accepted, verified requests are started: a redelivered ticket is on
        # record (and was batched when it first came); an unverified one waits.
        if outcome.kind == "accepted" and outcome.status is Status.VERIFIED:
            assert outcome.request_id is not None
            counts.ready.append(outcome.request_id)
    return counts


# -- micro-batching ---------------------------------------------------------------------------
class Batcher:
    """Up to `size` request ids or `seconds` since the first one, whichever comes first."""

    def __init__(self, size: int, seconds: float, clock: Callable[[], float]) -> None:
        self.size, self.seconds, self.clock = size, seconds, clock
        self.pending: list[str] = []
        self._first: float | None = None

    def add(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            if rid not in self.pending:
                if not self.pending:
                    self._first = self.clock()
                self.pending.append(rid)

    def full(self) -> bool:
        return len(self.pending) >= self.size

    def due(self) -> bool:
        return self.full() or (bool(self.pending) and self.time_left() <= 0)

    def time_left(self) -> float:
        """Seconds until the pending batch is due (`seconds` when nothing is pending)."""
        if self._first is None or not self.pending:
            return self.seconds
        return self.seconds - (self.clock() - self._first)

    def take(self) -> list[str]:
        batch, self.pending = self.pending[: self.size], self.pending[self.size :]
        self._first = self.clock() if self.pending else None
        return batch


@dataclass
class LoopSummary:
    counts: IntakeCounts = field(default_factory=IntakeCounts)
    batches: list[list[str]] = field(default_factory=list)
    failed_batches: int = 0


def run_loop(
    drain_once: Callable[[int, int], IntakeCounts],
    dispatch: Callable[[list[str]], None],
    qs: QueueSettings,
    *,
    max_batches: int | None = None,
    max_seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_backoff: float = 5.0,
) -> LoopSummary:
    """Poll, batch, dispatch, until `max_batches` batches were started or `max_seconds`
    passed (forever when both are None). On the way out the pending ids are dispatched, so
    nothing accepted is left without a run. `dispatch` errors are counted, not raised."""
    summary = LoopSummary()
    batcher = Batcher(qs.batch_size, qs.batch_seconds, clock)
    started = clock()

    def send(batch: list[str]) -> None:
        summary.batches.append(batch)
        try:
            dispatch(batch)
        except Exception as exc:
            summary.failed_batches += 1
            log.error("starting a batch of %d failed: %s", len(batch), type(exc).__name__)

    def finished() -> bool:
        if max_batches is not None and len(summary.batches) >= max_batches:
            return True
        return max_seconds is not None and clock() - started >= max_seconds

    while not finished():
        # A long poll never outlasts the pending batch's T (or max_seconds); SQS counts
        # whole seconds, so the last fraction of a second is slept, not polled in a spin.
        left = batcher.time_left() if batcher.pending else float(qs.wait_seconds)
        if max_seconds is not None:
            left = min(left, max_seconds - (clock() - started))
        if 0 < left < 1:
            sleep(left)
            left = 0
        wait = max(0, min(qs.wait_seconds, int(left)))
        if left > 0 or not (batcher.due() or finished()):
            room = qs.batch_size - len(batcher.pending)
            counts = drain_once(max(1, min(SQS_MAX_RECEIVE, room)), wait)
        else:
            counts = IntakeCounts()
        summary.counts.add(counts)
        batcher.add(counts.ready)
        while batcher.due() and not (
            max_batches is not None and len(summary.batches) >= max_batches
        ):
            send(batcher.take())
        if counts.poll_failed:
            sleep(poll_backoff)
    while batcher.pending:  # the way out: no accepted request is left without a run
        send(batcher.take())
    return summary
