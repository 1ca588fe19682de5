"""A callback receiver on loopback for tests and the demo: it records every callback as
received (raw body and headers, for `verify_callback`) and answers `status_code`, or what
`handler` returns. dsrflow's own callback endpoint (`dsrflow serve`) is the production
counterpart."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from examples.partner.loopback import Exchange, LoopbackServer

CALLBACK_PATH = "/opendsr/callbacks"


@dataclass(frozen=True)
class ReceivedCallback:
    path: str
    headers: list[tuple[str, str]]
    body: bytes


class CallbackSink:
    def __init__(
        self,
        status_code: int = 202,
        handler: Callable[[ReceivedCallback], int] | None = None,
    ) -> None:
        self.status_code = status_code
        self.handler = handler
        self.received: list[ReceivedCallback] = []
        self._changed = threading.Condition()
        self._server = LoopbackServer(self._route)

    def __enter__(self) -> CallbackSink:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    @property
    def url(self) -> str:
        return self._server.url

    def callback_url(self, path: str = CALLBACK_PATH) -> str:
        return self.url + path

    def wait(self, count: int, timeout: float = 5.0) -> list[ReceivedCallback]:
        """The callbacks received once there are at least `count` (or when `timeout`
        passes: check the length)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.received) >= count, timeout)
            return list(self.received)

    def _route(self, ex: Exchange) -> None:
        callback = ReceivedCallback(ex.path, ex.headers, ex.body)
        code = self.handler(callback) if self.handler else self.status_code
        with self._changed:
            self.received.append(callback)
            self._changed.notify_all()
        ex.reply(code, b"", {})
