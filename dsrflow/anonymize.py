"""What each erasure action does to one value.

Every transform is idempotent (f(f(v)) == f(v)): that is what makes a retried erasure
change nothing more, and what lets `verify` prove a value is erased (f(v) == v) without
knowing the original.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from dsrflow.crypto import Pseudonymizer
from dsrflow.datamap import Action, Column, Generalization

Transform = Callable[[Any], Any]


def transform(column: Column, pseudonymize: Pseudonymizer | None) -> Transform:
    match column.action:
        case Action.NULL:
            return lambda _value: None
        case Action.REDACT:
            marker = column.redact_with
            return lambda value: None if value is None else marker
        case Action.PSEUDONYMIZE:
            if pseudonymize is None:
                return _already_pseudonymized
            return pseudonymize
        case Action.GENERALIZE:
            assert column.generalize is not None
            return GENERALIZERS[column.generalize]
    raise ValueError(f"action {column.action} does not transform values")


def _already_pseudonymized(value: Any) -> Any:
    """Verification has no key: it only needs to know a value is already a pseudonym."""
    from dsrflow.crypto import is_pseudonym

    return value if value is None or is_pseudonym(value) else object()


def _to_year(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    if isinstance(value, date):
        return value.replace(month=1, day=1)
    return f"{str(value)[:4]}-01-01"


def _to_month(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if isinstance(value, date):
        return value.replace(day=1)
    return f"{str(value)[:7]}-01"


def _grid(digits: int) -> Transform:
    def round_to(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, Decimal):
            return round(value, digits)
        return round(float(value), digits)

    return round_to


def _ipv4_24(value: Any) -> Any:
    if value is None:
        return None
    try:
        network = ipaddress.ip_network(f"{value}/24", strict=False)
    except ValueError:
        return "0.0.0.0"  # not an IPv4 address: keep nothing of it
    return str(network.network_address)


GENERALIZERS: dict[Generalization, Transform] = {
    Generalization.YEAR: _to_year,
    Generalization.MONTH: _to_month,
    Generalization.GRID_1: _grid(1),
    Generalization.GRID_2: _grid(2),
    Generalization.IPV4_24: _ipv4_24,
}


def is_erased(column: Column, value: Any) -> bool:
    return bool(transform(column, None)(value) == value)
