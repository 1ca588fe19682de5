"""The HTTP endpoint OpenDSR partners call back: `POST /opendsr/callbacks/{partner}`.

The processor domain is checked against the partner's allow-list and the signature against
its certificate before the body is trusted or even parsed; only then is the ledger updated
(idempotently: a finished step is never moved back) and the request closed if nothing else
is outstanding. Each callback is checked on its own; the verified callbacks that arrive
together are recorded and closed together (`GroupCommit`): their requests looked up, their
answers recorded and the finished requests certified and closed once for the group.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from connectors.opendsr import OpenDsrPartner, ProtocolError, Untrusted, answer
from connectors.opendsr import Status as PartnerAnswer
from dsrflow.datamap import PartnerSystem
from dsrflow.errors import safe_error
from pipeline import closing, partners
from pipeline.group_commit import GroupCommit
from pipeline.runtime import Runtime

log = logging.getLogger(__name__)
# How long a verified callback waits for the group that records it before it is answered
# 500 (the partner sends it again).
GROUP_TIMEOUT = 120.0
Callback = tuple[str, PartnerAnswer]  # the partner (system), what it said (verified)
Applier = GroupCommit[Callback, int]


def create_app(rt: Runtime) -> FastAPI:
    grouped: Applier = GroupCommit(lambda group: _apply_group(rt, group), "dsrflow-callbacks")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        grouped.start()
        try:
            yield
        finally:
            await run_in_threadpool(grouped.stop)

    app = FastAPI(title="dsrflow callbacks", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.callbacks = grouped

    @app.post("/opendsr/callbacks/{system}")
    async def opendsr_callback(system: str, request: Request) -> Response:
        spec = rt.datamap.systems.get(system)
        if not isinstance(spec, PartnerSystem) or spec.protocol != "opendsr":
            return _answer(404, "no such partner")
        body = await request.body()
        headers = list(request.headers.items())
        return await run_in_threadpool(_apply_safely, rt, grouped, system, body, headers)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _apply_safely(
    rt: Runtime, grouped: Applier, system: str, body: bytes,
    headers: list[tuple[str, str]],
) -> Response:
    """`_apply`, with anything unexpected answered 500 and logged as `safe_error` says
    (the web server would log the exception's text and traceback)."""
    try:
        return _apply(rt, grouped, system, body, headers)
    except Exception as exc:
        log.error("callback from %s not applied: %s", system, safe_error(exc))
        return _answer(500, "not applied; send it again later")


def _apply(
    rt: Runtime, grouped: Applier, system: str, body: bytes, headers: list[tuple[str, str]],
) -> Response:
    partner = rt.partner(system)
    assert isinstance(partner, OpenDsrPartner)
    try:
        status = partner.verify_callback(
            body, headers, callback_url=partners.callback_url(rt, system)
        )
    except Untrusted as exc:
        rt.ledger.audit("partner.callback_refused", None,
                        {"system": system, "reason": safe_error(exc)})
        return _answer(403, "not trusted")
    except ProtocolError:
        return _answer(400, "malformed callback")
    if grouped.submit((system, status), timeout=GROUP_TIMEOUT) == 404:
        return _answer(404, "unknown request")
    return _answer(202, "accepted")


def _apply_group(rt: Runtime, group: Sequence[Callback]) -> list[int]:
    """Record verified callbacks that arrived together, then close the requests they
    finished: per partner one look-up of the requests and one recording of the answers,
    one close for them all. Returns each callback's HTTP status (404: not a request the
    partner was given)."""
    by_system: dict[str, list[PartnerAnswer]] = defaultdict(list)
    for system, status in group:
        by_system[system].append(status)
    known: dict[tuple[str, str], str] = {}  # (partner, its id) -> request id
    for system, statuses in by_system.items():
        found = rt.ledger.partner_requests_by_id(
            system, [s.subject_request_id for s in statuses])
        known.update({(system, srid): row.request_id for srid, row in found.items()})
        if found:
            partners.apply_statuses(rt, system, {
                found[s.subject_request_id].request_id: answer(s)
                for s in statuses if s.subject_request_id in found},
                rows={row.request_id: row for row in found.values()})
    if known:
        closing.close_finished(rt, list(dict.fromkeys(known.values())))
    return [202 if (system, status.subject_request_id) in known else 404
            for system, status in group]


def _answer(code: int, message: str) -> Response:
    body: dict[str, Any] = {"status": message}
    return Response(json.dumps(body), status_code=code, media_type="application/json")


class _Server(uvicorn.Server):
    """uvicorn that says when it is listening (instead of being polled for it)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


def run_callbacks(app: FastAPI, host: str, port: int) -> None:
    """Run the app in the foreground until the process is stopped (SIGTERM, Ctrl-C: the
    server finishes the callbacks in flight first)."""
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()


@contextmanager
def serving(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run the app on a background thread for the length of the block; yields its URL."""
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    if not server.ready.wait(timeout=30) or not server.started:
        raise RuntimeError(f"the callback endpoint did not start on {host}:{port}")
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
