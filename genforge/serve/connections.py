"""Connections: a deadline for request headers, a cap per client address and a cap in all.

A client that opens connections and sends its request headers slowly (or never finishes them) holds a slot
without making a request, so nothing above the HTTP parser sees it: with uvicorn's own
``limit_concurrency`` alone, 32 half-sent requests locked every other client out for as long as they were
held. As nginx does (``client_header_timeout``, ``limit_conn``), the protocol here closes a connection whose
request headers are not complete within ``header_timeout`` seconds of its opening (or of the end of its
previous response), and refuses a new connection, with a 503, when its address already holds
``per_client`` connections or the server holds ``max_connections`` in all. Every refusal and every deadline
reached is reported to ``on_refused`` (the service counts them in its metrics and its audit log's summary
lines), so a refused client is recorded, not silently dropped.

Clients behind one reverse proxy share its address: raise ``per_client`` there, or cap at the proxy.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Callable

try:  # uvicorn's "auto" choice: httptools when installed, else h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as BaseProtocol
except ImportError:  # pragma: no cover
    from uvicorn.protocols.http.h11_impl import H11Protocol as BaseProtocol

REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
           b"retry-after: 1\r\ncontent-length: %d\r\n\r\n%s")
LATE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s")


def _json_error(template: bytes, status: int, message: str) -> bytes:
    body = b'{"error": {"status": %d, "message": "%s"}}' % (status, message.encode())
    return template % (len(body), body)


class ConnectionGuard:
    """Counts open connections per client address and says which to refuse; builds the guarded protocol."""

    def __init__(self, max_connections: int, per_client: int, header_timeout: float,
                 on_refused: Callable[[str, str], None] = lambda client, reason: None):
        self.max_connections, self.per_client, self.header_timeout = max_connections, per_client, header_timeout
        self.on_refused = on_refused
        self.open: Counter[str] = Counter()  # client address -> connections it holds

    @property
    def total(self) -> int:
        return sum(self.open.values())

    def admit(self, client: str) -> str | None:
        """Take a slot for ``client``: None when admitted, else the reason it is refused."""
        if self.total >= self.max_connections:
            return "connection_limit"
        if self.open[client] >= self.per_client:
            return "client_connection_limit"
        self.open[client] += 1
        return None

    def release(self, client: str) -> None:
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]

    def protocol(self) -> type:
        """A uvicorn HTTP protocol class (``uvicorn.Config(http=...)``) that applies this guard."""
        return _guarded(self)


def _guarded(guard: ConnectionGuard) -> type:
    class GuardedProtocol(BaseProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _admitted = False
        _address = "?"

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._address = str((self.client or ("?",))[0])
            reason = guard.admit(self._address)
            if reason is not None:
                message = ("this server holds its limit of connections: retry shortly"
                           if reason == "connection_limit" else
                           f"this address holds {guard.per_client} connections already: close some first")
                transport.write(_json_error(REFUSED, 503, message))
                transport.close()
                guard.on_refused(self._address, reason)
                return
            self._admitted = True
            self._arm()

        def _arm(self) -> None:
            """Start the header deadline for the next request on this connection."""
            self._disarm()
            self._waiting_cycle, self._received = self.cycle, 0
            self._deadline = self.loop.call_later(guard.header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def data_received(self, data: bytes) -> None:
            if self._deadline is not None:
                self._received += len(data)
            super().data_received(data)
            if self._deadline is not None and self.cycle is not self._waiting_cycle:
                self._disarm()  # the headers are complete: a request is under way

        def on_response_complete(self) -> None:
            super().on_response_complete()
            waiting = self.cycle is None or self.cycle.response_complete  # not a pipelined request under way
            if self._admitted and waiting and not self.transport.is_closing():
                self._arm()

        def _too_slow(self) -> None:
            self._deadline = None
            if self.cycle is not self._waiting_cycle or self.transport.is_closing():
                return
            if self._received:  # a request begun and not finished in time; an idle connection just closes
                self.transport.write(_json_error(LATE, 408, f"request headers not received within "
                                                            f"{guard.header_timeout:g} s"))
                guard.on_refused(self._address, "header_timeout")
            self.transport.close()

        def connection_lost(self, exc) -> None:
            self._disarm()
            if self._admitted:
                self._admitted = False
                guard.release(self._address)
            super().connection_lost(exc)

    return GuardedProtocol


def uvicorn_config(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning", **kwargs):
    """The uvicorn configuration of a genforge app: its connection guard as the HTTP protocol.

    The connection cap is the guard's (``ServeConfig.max_connections``), not uvicorn's ``limit_concurrency``,
    whose refusals bypass the app and so were missing from the audit log.
    """
    import uvicorn  # only a running server needs it; tests build apps without one

    guard = app.state.service.guard
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=guard.protocol(),
                          timeout_keep_alive=5, server_header=False, **kwargs)
