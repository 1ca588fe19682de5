"""A threaded HTTP server on 127.0.0.1 with an OS-chosen port (or a given one), started
and stopped in process (`with server: ...`). Stopping does not wait for handlers still
running (a request told to hang beyond the client's timeout): their threads are daemons
and give up quietly when the client has gone."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[["Exchange"], None]


class Exchange:
    """One HTTP request as the application sees it, and the way to answer it."""

    def __init__(self, handler: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        self._handler = handler
        self.method = method
        self.path = handler.path.split("?", 1)[0]
        self.headers: list[tuple[str, str]] = list(handler.headers.items())
        self.body = body
        self.answered = False

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def reply(
        self, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        self.answered = True
        try:
            self._handler.send_response(status)
            for key, value in (headers or {}).items():
                self._handler.send_header(key, value)
            self._handler.send_header("Content-Length", str(len(body)))
            self._handler.end_headers()
            self._handler.wfile.write(body)
            self._handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._handler.close_connection = True  # the client gave up (a timeout)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The headers and the body go out as two writes: with Nagle's algorithm the body waits
    # for the client's delayed ACK of the headers, 40 ms on Linux loopback, every request.
    disable_nagle_algorithm = True
    server: _Server

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        exchange = Exchange(self, self.command, body)
        try:
            self.server.route(exchange)
        except Exception:  # a bug in the example must not kill the server thread silently
            if not exchange.answered:
                exchange.reply(500, b'{"error":{"code":500,"message":"internal error"}}',
                               {"Content-Type": "application/json"})
            raise

    do_GET = do_POST = do_DELETE = do_PUT = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: request lines are not interesting on loopback


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, route: Route, host: str, port: int) -> None:
        super().__init__((host, port), _Handler)
        self.route = route


class LoopbackServer:
    def __init__(self, route: Route, host: str = "127.0.0.1", port: int = 0) -> None:
        self._route = route
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the server is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = _Server(self._route, self._host, self._port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"loopback-{self._server.server_address[1]}",
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None
