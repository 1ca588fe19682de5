"""Retention rules of every kind are checked at load, and a bad one fails with the dotted
path of the field and what is wrong (the Wishe map, with one rule broken at a time)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from dsrflow.datamap import DataMapError, parse_datamap

WISHE = yaml.safe_load(
    (Path(__file__).parents[1] / "examples" / "wishe" / "datamap.yaml").read_text())


def _with(system: str, key: str, rule: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(WISHE)
    doc["systems"][system][key] = [rule]
    return doc


def test_the_wishe_map_has_a_rule_of_every_kind() -> None:
    datamap = parse_datamap(copy.deepcopy(WISHE))
    assert [r.name for r in datamap.sql("userdb").retention] == ["location-90d", "orders-3y"]
    assert [r.name for r in datamap.sql("userdb").account_retention] == ["cancelled-30d"]
    assert [r.name for r in datamap.systems["media"].retention] == [  # type: ignore[union-attr]
        "orphan-uploads-30d"]
    assert [r.name for r in datamap.systems["applogs"].retention] == [  # type: ignore[union-attr]
        "app-180d", "access-180d"]


OBJECT = {"name": "uploads-30d", "bucket": "wishe-uploads", "after_days": 30}
LOG = {"name": "access-180d", "source": "access", "after_days": 180,
       "counts_from": "line_timestamp"}


@pytest.mark.parametrize(("system", "key", "rule", "path", "message"), [
    ("media", "retention", {**OBJECT, "bucket": "wishe-nowhere"}, "systems.media",
     "retention.0.bucket: no bucket 'wishe-nowhere' in this system"),
    ("media", "retention", {**OBJECT, "counts_from": "created"},
     "systems.media.retention.0.counts_from", None),
    ("media", "retention", {**OBJECT, "orphans_of": {"system": "userdb", "table": "users",
                                                    "column": "uid"}},
     # Checked across systems: the path is in the message.
     "", "systems.media.retention.0.orphans_of: userdb.users.uid is not a mapped SQL "
     "column"),
    ("media", "retention", {**OBJECT, "after_days": 0}, "systems.media.retention.0.after_days",
     None),
    ("applogs", "retention", {**LOG, "source": "security"}, "systems.applogs",
     "retention.0.source: no source 'security' in this system"),
    ("applogs", "retention", {**LOG, "source": "app"}, "systems.applogs",
     "retention.0.timestamp_field: a jsonl source's line_timestamp rule names the field of "
     "each line's time"),
    ("applogs", "retention", {**LOG, "timestamp_field": "ts"}, "systems.applogs",
     "retention.0.timestamp_field: only for line_timestamp rules of jsonl sources"),
    ("applogs", "retention", {**LOG, "counts_from": "file_name"},
     "systems.applogs.retention.0.counts_from", None),
    ("userdb", "account_retention", {"name": "x", "table": "orders",
                                     "counts_from": "created_at", "after_days": 30,
                                     "reason": "r"}, "systems.userdb",
     "account_retention.0.table: orders has no user_id identity column: its rows do not "
     "name accounts"),
])
def test_a_bad_rule_fails_at_load_with_its_path(
    system: str, key: str, rule: dict[str, Any], path: str, message: str | None,
) -> None:
    with pytest.raises(DataMapError) as caught:
        parse_datamap(_with(system, key, rule), "datamap.yaml")
    assert caught.value.path == path
    if message is not None:
        assert caught.value.message == message


def test_two_rules_of_one_system_may_not_share_a_name() -> None:
    doc = copy.deepcopy(WISHE)
    doc["systems"]["userdb"]["account_retention"][0]["name"] = "location-90d"
    with pytest.raises(DataMapError) as caught:
        parse_datamap(doc, "datamap.yaml")
    assert caught.value.message == ("retention rule 'location-90d': two rules of this system "
                                    "have that name")


def test_an_object_rule_needs_to_know_whose_objects_are() -> None:
    doc = _with("media", "retention", OBJECT)
    doc["systems"]["media"]["buckets"]["wishe-uploads"]["ownership"] = [
        {"keys_from": {"system": "userdb", "table": "uploads", "column": "s3_key"}}]
    with pytest.raises(DataMapError) as caught:
        parse_datamap(doc, "datamap.yaml")
    assert caught.value.message.startswith("retention.0.bucket: nothing tells whose "
                                           "wishe-uploads's objects are")
