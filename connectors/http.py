"""Retrying a partner's HTTP API (tenacity): server errors (5xx), throttling (429, and any
codes the caller adds), timeouts and connection failures are tried again with the caller's
backoff, stretched to a server's `Retry-After` (capped); any other answer goes back to the
caller to judge. Retrying a POST is safe only because each carries its idempotency key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
)

log = logging.getLogger(__name__)
Backoff = Callable[[int], float]  # attempt number (1, 2, ...) -> seconds to wait


class Exhausted(Exception):
    """Every attempt failed; `reason` says how the last one did (no body, no values)."""

    def __init__(self, reason: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts


@dataclass(frozen=True)
class Answer:
    response: httpx.Response
    attempts: int


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return float(value) if value.isdigit() else None


def send_with_retries(
    send: Callable[[], httpx.Response],
    *,
    retries: int,
    backoff: Backoff,
    max_retry_after: float,
    retry_codes: Collection[int] = (429,),
    label: str = "request",
    sleep: Callable[[float], None] = time.sleep,
) -> Answer:
    """`send()` until it gives an answer worth judging, at most `retries + 1` times."""

    def retryable(response: httpx.Response) -> bool:
        return response.status_code >= 500 or response.status_code in retry_codes

    def wait(state: RetryCallState) -> float:
        delay = max(0.0, backoff(state.attempt_number))
        outcome = state.outcome
        if outcome is not None and not outcome.failed:
            asked = retry_after_seconds(outcome.result())
            if asked is not None:
                delay = max(delay, min(asked, max_retry_after))
        return delay

    def before_sleep(state: RetryCallState) -> None:
        wait_for = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s: %s; retry %d of %d in %.2f s", label, _reason(state),
                    state.attempt_number, retries, wait_for)

    retrying = Retrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait,
        retry=retry_if_exception_type(httpx.TransportError) | retry_if_result(retryable),
        before_sleep=before_sleep,
        sleep=sleep,
    )
    try:
        response = retrying(send)
    except RetryError as exc:
        raise Exhausted(_reason(exc.last_attempt), exc.last_attempt.attempt_number) from None
    return Answer(response, retrying.statistics.get("attempt_number", 1))


def _reason(attempt: Any) -> str:
    """How an attempt failed, from a tenacity call state or its future."""
    future = getattr(attempt, "outcome", None) or attempt
    error = future.exception()
    if isinstance(error, httpx.TimeoutException):
        return f"timed out ({type(error).__name__})"
    if error is not None:
        return f"connection failed ({type(error).__name__})"
    return f"HTTP {future.result().status_code}"
