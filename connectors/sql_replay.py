"""Finding erased subjects again in a SQL database restored from a backup.

The ledger keeps no raw identity of an erased subject, only keyed tokens. The restored
database holds the values again: each identity column is read (distinct values), each
value normalized as a ticket's would be and tokenized, and the values whose tokens a
tombstone names are the subject's identities once more. A full read of the identity
columns: a restore is rare, and the tokens cannot be reversed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping

from pydantic import ValidationError
from sqlalchemy import select

from connectors.sql import SqlConnector
from dsrflow.identities import Identity


def find_identities(
    connector: SqlConnector, token_of: Callable[[Identity], str],
    wanted: Mapping[str, set[str]],
) -> dict[str, set[Identity]]:
    """Token -> the identities in the system whose keyed token is `wanted` (per type)."""
    found: dict[str, set[Identity]] = defaultdict(set)
    region = connector.system.phone_region
    with connector.engine.connect() as conn:
        for name, mapped in connector.system.tables.items():
            table = connector.tables[name]
            for spec in mapped.identities:
                tokens = wanted.get(spec.type.value)
                if not tokens:
                    continue
                columns = [table.c[spec.column]]
                if spec.provider_column:
                    columns.append(table.c[spec.provider_column])
                rows = conn.execute(
                    select(*columns).where(columns[0].is_not(None)).distinct())
                for row in rows:
                    text = str(row[0]) if len(row) == 1 else f"{row[1]}:{row[0]}"
                    try:
                        identity = Identity.read(spec.type, text, region)
                    except ValidationError:
                        continue  # not an identity dsrflow could have tokenized
                    token = token_of(identity)
                    if token in tokens:
                        found[token].add(identity)
    return found
