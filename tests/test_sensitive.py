"""Sensitive personal information (privacy policy 2.1): the data map marks the categories,
access packages show them in a section of their own, and the report counts the requests
and steps that touched them."""

from __future__ import annotations

import io
import json
import random
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from dsrflow.datamap import DataMapError, parse_datamap
from dsrflow.intake import submit
from dsrflow.packages import build_package
from dsrflow.report import steps_frame, to_html
from dsrflow.report.frames import requests_frame
from flows.request import process_requests
from pipeline.runtime import Runtime, set_runtime
from tests import sqlworld
from tests.helpers import make_runtime, ticket
from tests.test_packages import _contents


def test_the_data_map_names_only_categories_it_knows() -> None:
    doc = {**sqlworld.DATAMAP_DOC, "sensitive_categories": ["media", "medical"]}
    with pytest.raises(DataMapError) as caught:
        parse_datamap(doc, "datamap.yaml")
    assert caught.value.path == "sensitive_categories.1"
    assert "unknown category 'medical'" in caught.value.message
    assert parse_datamap({**doc, "sensitive_categories": ["media"]}).sensitive == {"media"}


def test_a_package_shows_the_sensitive_sources_apart() -> None:
    contents = _contents({
        "db": {"users": [{"id": 1, "email": "a@example.com"}]},
        "media": {"bkt": [{"key": "u/1/face.jpg", "size": 3}]},
    }, {"u/1/face.jpg": b"jpg"})
    marked = contents.datamap.model_copy(update={"sensitive_categories": ["media"]})
    package = build_package(type(contents)(**{**contents.__dict__, "datamap": marked}))
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        index = zf.read("index.html").decode()
    by_part = {s["part"]: s["sensitive"] for s in manifest["sources"]}
    assert by_part == {"users": [], "bkt": ["media"]}
    assert {c["category"]: c["sensitive"] for c in manifest["categories"]} == {
        "account": False, "contact": False, "profile": False, "media": True}
    sensitive, rest = index.split('<h2 id="sensitive">', 1)[1].split("Where the rest comes from")
    assert "<td>bkt</td>" in sensitive and "<td>users</td>" not in sensitive
    assert "<td>users</td>" in rest and "<td>bkt</td>" not in rest
    assert "(privacy policy 2.1): media." in sensitive

    plain = build_package(contents)
    with zipfile.ZipFile(io.BytesIO(plain)) as zf:
        assert "We hold no sensitive personal information about you." in zf.read(
            "index.html").decode()


@pytest.fixture
def runtime(
    tmp_path: Path, postgres_url: str, prefect_server: list[Path]
) -> Iterator[tuple[Runtime, sqlworld.World]]:
    engine = sa.create_engine(postgres_url)
    world = sqlworld.generate(random.Random(4), 8)
    sqlworld.load(engine, world)
    engine.dispose()
    doc: dict[str, Any] = {**sqlworld.datamap_doc(postgres_url), "sensitive_categories": ["media"]}
    rt = make_runtime(tmp_path, doc, ledger_url=postgres_url)
    previous = set_runtime(rt)
    yield rt, world
    set_runtime(previous)
    rt.close()


def test_the_report_counts_the_requests_and_steps_that_touched_sensitive_data(
    runtime: tuple[Runtime, sqlworld.World],
) -> None:
    rt, world = runtime
    owners = {next(iter(w)) for w in world.owners.get("albums", {}).values() if len(w) == 1}
    with_albums = min(owners)
    without = min(set(range(1, 9)) - owners)
    ids = [submit(rt.ledger, rt.datamap, ticket(
        f"T-{uid}", kind, [{"type": "user_id", "value": str(uid)}])).request_id
        for uid, kind in ((with_albums, "erasure"), (without, "access"))]
    withdraw = submit(rt.ledger, rt.datamap, ticket(
        "T-W", "consent_withdrawal", [{"type": "user_id", "value": str(with_albums)}],
        scope=["content"])).request_id
    process_requests([*ids, withdraw])

    steps = steps_frame(rt.ledger)
    work = steps[steps["kind"] == "sql"].set_index("request_id")
    assert work.loc[ids[0], "sensitive"] == "media"  # the albums were found and erased
    assert work.loc[[ids[1], withdraw], "sensitive"].isna().all()  # none; out of scope
    page = to_html(requests_frame(rt.ledger, rt.deadlines), steps)
    assert "touched by 1 requests in 1 steps" in page
