"""Erasure tombstones in the ledger: what completed erasures covered, and the keyed
identity tokens that name their subjects, read for a replay on a restored database."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import select

from dsrflow.ledger.batches import chunks
from dsrflow.ledger.schema import identity_tokens, tombstones
from dsrflow.ledger.times import utc
from dsrflow.model import RequestType

if TYPE_CHECKING:
    from sqlalchemy import Engine


@dataclass(frozen=True)
class Tombstone:
    request_id: str
    type: RequestType
    scope: frozenset[str] | None
    systems: frozenset[str]
    completed_at: datetime
    tokens: dict[str, frozenset[str]]  # identity type -> keyed tokens


class TombstonesMixin:
    engine: Engine

    def tombstones(self, system: str | None = None, since: datetime | None = None
                   ) -> list[Tombstone]:
        """The erasures completed since `since` (default: ever) that covered `system`
        (default: any), oldest first, each with its subject's identity tokens."""
        query = select(tombstones).order_by(tombstones.c.completed_at, tombstones.c.request_id)
        if since is not None:
            query = query.where(tombstones.c.completed_at >= since.astimezone(UTC))
        with self.engine.connect() as conn:
            rows = [r for r in conn.execute(query)
                    if system is None or system in (r.systems or [])]
            tokens: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
            for chunk in chunks([r.request_id for r in rows]):
                for rid, kind, token in conn.execute(
                        select(identity_tokens.c.request_id, identity_tokens.c.type,
                               identity_tokens.c.token)
                        .where(identity_tokens.c.request_id.in_(chunk))):
                    tokens[rid][kind].add(token)
        out = []
        for row in rows:
            completed = utc(row.completed_at)
            assert completed is not None
            out.append(Tombstone(
                row.request_id, RequestType(row.type),
                frozenset(row.scope) if row.scope is not None else None,
                frozenset(row.systems), completed,
                {k: frozenset(v) for k, v in tokens[row.request_id].items()}))
        return out
