"""An erasure's counts are facts that add up over its attempts.

A rerun after a crash, a failed verification or a second run finds less than the first
attempt did: what the first deleted is gone. Its report must not replace the first one's
(a certificate saying `deleted 0` for a subject whose 1,290 rows were deleted). So what was
changed (deleted, anonymized) is summed; what was there to find is what earlier attempts
changed plus what this one found, or the earlier figure if that was larger (rows an earlier
attempt anonymized in place can be found again); what is kept (retained) and what is left
(remaining) are the latest attempt's, since they describe the data as it is now. The same
rule applies to each part (table, bucket, log source) in the step's details.

An attempt killed between making its erasure durable and recording it leaves only what it
*prepared* (`PREPARED_KEY`: the outcome a connector reports just before it commits). The
rerun then finds nothing of it left, or everything (the commit never happened). Either way
every row the interrupted attempt meant to change is gone once the rerun is done (its
verification proves it), and without new data arriving in between the rerun changes only
rows the interrupted attempt meant to: so the two attempts together changed the larger of
the two counts (`at_least`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dsrflow.model import COUNTED_KEY

ADDED = ("deleted", "anonymized")
LATEST = ("retained", "remaining")


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def add_up(before: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """One set of counts (`found`, `deleted`, `anonymized`, `retained`, `remaining`) after
    an attempt reporting `now`, over the totals `before`."""
    total = dict(now)
    for name in ADDED:
        total[name] = _int(before.get(name)) + _int(now.get(name))
    changed_before = sum(_int(before.get(name)) for name in ADDED)
    total["found"] = max(_int(before.get("found")), changed_before + _int(now.get("found")))
    for name in LATEST:
        total[name] = now.get(name)
    return total


def add_up_parts(
    before: Mapping[str, Any] | None, now: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """Step details after an attempt: each part's counts added up (a part only an earlier
    attempt touched keeps what it changed, with nothing retained or remaining now); the
    statement hashes of every attempt; the pieces counted as they went (`COUNTED_KEY`) of
    every attempt; other reserved keys (`_run`, `_searched`) the latest's."""
    if now is None:
        return dict(before) if before else None
    merged: dict[str, Any] = dict(now)
    if counted := sorted({*(before or {}).get(COUNTED_KEY, []), *now.get(COUNTED_KEY, [])}):
        merged[COUNTED_KEY] = counted
    for name, old in (before or {}).items():
        if name.startswith("_") or not isinstance(old, Mapping):
            continue
        new = now.get(name)
        if not isinstance(new, Mapping):
            new = {"found": 0, "retained": 0, "remaining": 0, "retain_reasons": [],
                   "statements": []}
        part = add_up(old, new)
        part["statements"] = sorted({*old.get("statements", []), *new.get("statements", [])})
        merged[name] = part
    return merged


def at_least(prepared: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """An interrupted attempt's prepared counts and its rerun's, as one attempt: the larger
    of what each found and changed; what is retained and left now."""
    merged = dict(now)
    for name in ("found", *ADDED):
        merged[name] = max(_int(prepared.get(name)), _int(now.get(name)))
    return merged


def at_least_parts(
    prepared: Mapping[str, Any], now: Mapping[str, Any] | None
) -> dict[str, Any]:
    """`at_least`, part by part (statement hashes of both)."""
    merged: dict[str, Any] = dict(now or {})
    for name, old in prepared.items():
        if not isinstance(old, Mapping):
            continue
        new = merged.get(name)
        if not isinstance(new, Mapping):
            new = {"retained": 0, "remaining": 0, "retain_reasons": [], "statements": []}
        part = at_least(old, new)
        part["statements"] = sorted({*old.get("statements", []), *new.get("statements", [])})
        merged[name] = part
    return merged
