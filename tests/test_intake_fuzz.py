"""Generated hostile tickets (tests/hostile.py) through every intake path: in process
(`dsrflow.intake.submit`), the command line (`dsrflow submit`) and the ticket queue (moto's
SQS). On each: no crash, every input recorded in the ledger (a request, once per ticket id,
or a rejection), every rejection with a field and a reason, no input value in any reason,
and every valid ticket accepted.

`make test` sends a few hundred per path; the full run sends 10,000 per path:

    DSRFLOW_FUZZ_TICKETS=10000 .venv/bin/pytest tests/test_intake_fuzz.py -q -s

(`-s` prints each path's figures.)
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from dsrflow import queue
from dsrflow.intake import submit
from dsrflow.ledger import Ledger
from dsrflow.model import Status
from dsrflow.queue import QueueSettings
from pipeline.runtime import Runtime, get_runtime
from tests.helpers import cli_config, invoke, make_runtime, wishe_datamap
from tests.hostile import FUZZ_ENV, Case, Tally, cases, leaked, names_a_field

pytestmark = pytest.mark.slow  # thousands of tickets, through the command line too

COUNT = int(os.environ.get(FUZZ_ENV, "500"))
SEED = 20261203
CLI_CHUNK = 250  # files per `dsrflow submit`


@pytest.fixture
def datamap_doc(tmp_path: Path) -> dict[str, Any]:
    return wishe_datamap(f"sqlite:///{tmp_path / 'wishe.db'}")  # never connected to


@pytest.fixture
def rt(tmp_path: Path, datamap_doc: dict[str, Any]) -> Iterator[Runtime]:
    runtime = make_runtime(tmp_path, datamap_doc)
    yield runtime
    runtime.close()


def _check_ledger(ledger: Ledger, tally: Tally) -> None:
    """Every input is on record: the requests are the accepted ones, the rejections are the
    rejected ones, and a redelivery added nothing."""
    records = ledger.all()
    requests = [r for r in records if r.status is not Status.REJECTED]
    rejections = [r for r in records if r.status is Status.REJECTED]
    assert tally.accepted + tally.duplicates + tally.rejected == tally.sent
    assert len(requests) == tally.accepted
    assert len(rejections) == tally.rejected
    for record in rejections:
        assert record.reason and names_a_field(record.reason), record.reason
        assert leaked(record.reason) == []
    assert ledger.verify_audit_chain() is None


def _report(path: str, tally: Tally, seconds: float) -> None:
    print(f"\n{path}: {tally.summary()} in {seconds:.1f} s")
    assert tally.crashes == [], tally.crashes[:5]
    assert tally.unnamed == [], tally.unnamed[:5]
    assert tally.leaks == [], tally.leaks[:5]


# -- in process -----------------------------------------------------------------------------
def test_hostile_tickets_in_process(rt: Runtime) -> None:
    tally = Tally()
    refused_valid: list[str] = []
    started = time.monotonic()
    for case in cases(SEED, COUNT, allow_dicts=True):
        tally.sent += 1
        try:
            result = submit(rt.ledger, rt.datamap, case.body)
        except Exception as exc:  # a crash: the test fails below, with the count
            tally.crashes.append(type(exc).__name__)
            continue
        if result.status is Status.REJECTED:
            tally.reason(result.reason)
            if case.kind in ("valid", "redelivery"):
                refused_valid.append(result.reason or "")
        elif result.created:
            tally.accepted += 1
        else:
            tally.duplicates += 1
    _report("in process", tally, time.monotonic() - started)
    assert refused_valid == []
    _check_ledger(rt.ledger, tally)


# -- the command line -----------------------------------------------------------------------
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_LINE = re.compile(
    rf"ticket \S+?: (?:(?P<new>accepted) as request {_UUID} \(.*\)"
    rf"|(?P<again>already on record) as request {_UUID} \(.*\)"
    rf"|rejected: (?P<reason>.*); recorded as {_UUID})"
)


def _write(folder: Path, number: int, case: Case) -> Path:
    path = folder / f"{number:05d}.json"
    body = case.body
    assert not isinstance(body, dict)
    path.write_bytes(body.encode("utf-8") if isinstance(body, str) else body)
    return path


@pytest.mark.usefixtures("cli_runtime")
def test_hostile_tickets_through_the_command_line(
    tmp_path: Path, datamap_doc: dict[str, Any]
) -> None:
    config = cli_config(tmp_path, datamap_doc)
    folder = tmp_path / "tickets"
    folder.mkdir()
    kinds: dict[str, str] = {}
    paths = []
    for number, case in enumerate(cases(SEED, COUNT)):
        path = _write(folder, number, case)
        kinds[str(path)] = case.kind
        paths.append(path)
    tally = Tally()
    refused_valid: list[str] = []
    started = time.monotonic()
    for start in range(0, len(paths), CLI_CHUNK):
        chunk = paths[start : start + CLI_CHUNK]
        result = invoke("submit", "--config", config, *chunk)
        # Exit 0: every file recorded (a crash would be a traceback, exit 1).
        assert result.exit_code == 0, (result.exception, result.output[-2000:])
        lines = result.stdout.splitlines()
        assert len(lines) == len(chunk) + 1  # a line per file, then the counts
        for path, line in zip(chunk, lines, strict=False):
            tally.sent += 1
            prefix = f"{path}: "
            assert line.startswith(prefix), line
            match = _LINE.fullmatch(line[len(prefix):])
            assert match is not None, line
            if match["reason"] is not None:
                tally.reason(match["reason"])
                if kinds[str(path)] in ("valid", "redelivery"):
                    refused_valid.append(match["reason"])
            elif match["new"]:
                tally.accepted += 1
            else:
                tally.duplicates += 1
    _report("command line", tally, time.monotonic() - started)
    assert refused_valid == []
    _check_ledger(get_runtime().ledger, tally)


# -- the ticket queue -----------------------------------------------------------------------
@pytest.fixture
def sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, QueueSettings]]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("sqs", region_name="us-east-1")
        main = client.create_queue(QueueName="tickets")["QueueUrl"]
        dlq = client.create_queue(QueueName="tickets-dlq")["QueueUrl"]
        yield client, QueueSettings(queue_url=main, dead_letter_url=dlq, region="us-east-1",
                                    wait_seconds=0)


def _take_dead_letters(client: Any, url: str) -> list[str]:
    """The reasons of the dead letters so far, emptying the queue (moto slows as it grows)."""
    reasons: list[str] = []
    while True:
        got = client.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                     MessageAttributeNames=["All"], WaitTimeSeconds=0,
                                     VisibilityTimeout=600).get("Messages", [])
        if not got:
            return reasons
        for message in got:
            reasons.append(message["MessageAttributes"]["reason"]["StringValue"])
            client.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_hostile_tickets_through_the_queue(
    rt: Runtime, sqs: tuple[Any, QueueSettings]
) -> None:
    client, qs = sqs
    tally = Tally()
    counts = queue.IntakeCounts()
    started = time.monotonic()
    pending = 0
    batch = list(cases(SEED, COUNT, sqs_safe=True))
    for number, case in enumerate(batch, 1):
        assert isinstance(case.body, str)
        queue.put_ticket(client, qs.queue_url, case.body)
        tally.sent += 1
        pending += 1
        if pending < queue.SQS_MAX_RECEIVE and number < len(batch):
            continue
        for _ in range(100):  # moto may hand out fewer messages than are waiting
            got = queue.drain(rt.ledger, rt.datamap, client, qs, queue.SQS_MAX_RECEIVE, 0)
            counts.add(got)
            pending -= got.received
            if pending == 0:
                break
        assert pending == 0
        for reason in _take_dead_letters(client, qs.dead_letter_url):
            tally.reason(reason)
    tally.accepted, tally.duplicates = counts.accepted, counts.duplicates
    _report("queue", tally, time.monotonic() - started)
    assert counts.received == tally.sent
    assert (counts.errors, counts.kept, counts.delete_failed) == (0, 0, 0)
    assert counts.rejected == tally.rejected  # each rejection dead-lettered once
    _check_ledger(rt.ledger, tally)
