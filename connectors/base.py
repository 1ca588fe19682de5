"""The batch-first connector contract shared by every kind of system.

- `collect(subjects, scope)` -> the subjects' records, per request id.
- `erase(subjects, scope, pseudonymizers)` -> an `Outcome` per request id. Idempotent: a
  second call changes nothing more and reports the same final state.
- `verify(subjects, scope)` -> an `Outcome` per request id whose `remaining` is what a fresh
  look-up still finds (the proof).

`scope` is a set of data categories, or None for everything the data map covers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dsrflow.crypto import Pseudonymizer
from dsrflow.datamap import S3Endpoint
from dsrflow.identities import Subject

Scope = frozenset[str] | None
Records = dict[str, list[dict[str, Any]]]  # part (table, prefix, ...) -> records


@dataclass
class PartOutcome:
    """Counts for one part of a system (a table, a bucket, a log source)."""

    found: int = 0
    deleted: int = 0
    anonymized: int = 0
    retained: int = 0
    remaining: int = 0
    retain_reasons: list[str] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)  # SHA-256 of each statement run

    def as_dict(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "deleted": self.deleted,
            "anonymized": self.anonymized,
            "retained": self.retained,
            "remaining": self.remaining,
            "retain_reasons": sorted(set(self.retain_reasons)),
            "statements": sorted(set(self.statements)),
        }


@dataclass
class Outcome:
    """One request's outcome in one system: per part and in total."""

    parts: dict[str, PartOutcome] = field(default_factory=dict)
    # Set when the work was handed to someone who has not answered yet (a partner, a
    # person): why the step waits.
    pending: str | None = None
    # Set when the work cannot go on without a person: why.
    blocked: str | None = None

    def part(self, name: str) -> PartOutcome:
        return self.parts.setdefault(name, PartOutcome())

    def total(self, attribute: str) -> int:
        return sum(int(getattr(p, attribute)) for p in self.parts.values())

    def details(self) -> dict[str, Any]:
        return {name: part.as_dict() for name, part in sorted(self.parts.items())}


class ConnectorConfigError(ValueError):
    """The data map's system cannot be used as configured (named by its dotted path)."""


def resolve_endpoint(
    name: str, system: S3Endpoint, error: type[ConnectorConfigError] = ConnectorConfigError
) -> str | None:
    """An S3 API endpoint: `endpoint_url`, the variable `endpoint_url_env` names, or None
    (AWS itself)."""
    if system.endpoint_url is not None:
        return system.endpoint_url
    if system.endpoint_url_env is None:
        return None
    url = os.environ.get(system.endpoint_url_env)
    if not url:
        raise error(
            f"systems.{name}.endpoint_url_env: environment variable "
            f"{system.endpoint_url_env} is not set"
        )
    return url


class Connector(Protocol):
    kind: str

    def collect(self, subjects: Sequence[Subject], scope: Scope) -> dict[str, Records]: ...

    def erase(
        self,
        subjects: Sequence[Subject],
        scope: Scope,
        pseudonymizers: Mapping[str, Pseudonymizer],
    ) -> dict[str, Outcome]: ...

    def verify(self, subjects: Sequence[Subject], scope: Scope) -> dict[str, Outcome]: ...
