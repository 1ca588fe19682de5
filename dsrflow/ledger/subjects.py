"""One subject across requests: two requests are the same person's when they share an
account-grade identity token (user id, email, phone, third-party login; never a device id
or an IP address, which are often several people's)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_
from sqlalchemy.orm import aliased

from dsrflow.identities import ACCOUNT_GRADE
from dsrflow.ledger.schema import identity_tokens


def shared_tokens() -> tuple[Any, Any, Any]:
    """(mine, theirs, joined): two views of `identity_tokens`, joined where they hold the
    same account-grade token. Select from `joined`, filter on `mine.c.request_id`, read
    `theirs.c.request_id` (a request meets itself too)."""
    mine = aliased(identity_tokens)
    theirs = aliased(identity_tokens)
    grades = sorted(t.value for t in ACCOUNT_GRADE)
    joined = mine.join(theirs, and_(theirs.c.token == mine.c.token,
                                    theirs.c.type == mine.c.type, mine.c.type.in_(grades)))
    return mine, theirs, joined
