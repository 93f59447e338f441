"""Service mode's HTTP/1.1 server: h11 driven on trio's listeners, bounded against slow or hostile clients.

h11 does the protocol (parsing, framing, keep-alive, ``Connection: close``);
this module does the I/O and the limits (`HttpLimits`): the number of
connections, the time a client may take to send a request or read a
response, the size of a request head. Only ``GET`` and ``HEAD`` without a body
are served. The server runs in the agents' trio run and the handler computes
each response synchronously on the trio thread, between two checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import NoReturn
from wsgiref.handlers import format_date_time

import attrs
import h11
import trio

from ._options import HttpLimits

__all__ = ["HttpServer", "Response"]

logger = logging.getLogger("hybrid.service.http")

MAX_RECEIVE = 64 * 1024
"""The most bytes read from a connection at once."""
LINGER = 2.0
"""Seconds at most spent reading (and discarding) what a client still sends after we closed our side."""
ALLOWED = "GET, HEAD"


@attrs.frozen
class Response:
    """What a route answers: a status, a body, its content type and extra headers."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


App = Callable[[str], Response]
"""A route table: the path of a GET (or HEAD) request -> its response; runs on the trio thread."""


class _PeerGone(Exception):
    """The client closed or reset the connection, or would not read the response in time."""


class HttpServer:
    """Serves `app` on the given listeners, one task per connection, within `limits`."""

    def __init__(self, listeners: list[trio.SocketListener], app: App, limits: HttpLimits) -> None:
        self.listeners = listeners
        self.app = app
        self.limits = limits
        self.connections = 0
        """Connections being served now; written by the connection tasks (trio thread)."""
        self.at_limit = False
        """The limit was reached and logged; cleared when a connection ends (it is below the limit again)."""

    @classmethod
    async def open(cls, host: str | None, port: int, app: App, limits: HttpLimits) -> HttpServer:
        """Bind the listening sockets now (so that a port in use is known before anything starts).

        `host` None listens on every interface.

        Raises:
            OSError: the address cannot be bound (in use, unknown host, ...).
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        return cls(listeners, app, limits)

    @property
    def port(self) -> int:
        """The bound port (the one the system chose, for port 0)."""
        port: int = self.listeners[0].socket.getsockname()[1]
        return port

    async def serve(self) -> NoReturn:
        """Accept and serve connections until cancelled."""
        await trio.serve_listeners(self.handle, self.listeners)

    async def aclose(self) -> None:
        """Close the listening sockets."""
        for listener in self.listeners:
            await trio.aclose_forcefully(listener)

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one connection, or close it at once beyond the connection limit."""
        if self.connections >= self.limits.max_connections:
            if not self.at_limit:
                self.at_limit = True
                logger.warning(
                    "%d connections open, the limit: closing new connections until some end",
                    self.connections,
                )
            await trio.aclose_forcefully(stream)
            return
        self.connections += 1
        try:
            await _Connection(stream, self.app, self.limits).serve()
        except Exception:  # a bug here must cost one connection, never the server or the agents
            logger.exception("an HTTP connection failed")
        finally:
            self.connections -= 1
            self.at_limit = False
            await trio.aclose_forcefully(stream)


class _Connection:
    """One client connection: requests read and answered in turn (keep-alive) until either side closes."""

    def __init__(self, stream: trio.SocketStream, app: App, limits: HttpLimits) -> None:
        self.stream = stream
        self.app = app
        self.limits = limits
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)

    async def serve(self) -> None:
        try:
            while True:
                request = await self.receive_request()
                if request is None:
                    break
                await self.respond(request)
                if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                    break  # Connection: close (theirs or ours), HTTP/1.0, or a refused body
                self.conn.start_next_cycle()
            await self.shut_down()
        except _PeerGone:
            pass

    async def receive(self) -> bytes:
        try:
            return await self.stream.receive_some(MAX_RECEIVE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""  # reset: as good as closed

    async def receive_request(self) -> h11.Request | None:
        """The next request's head, or None when the connection is to be closed (after an error reply if due)."""
        limits = self.limits
        first_byte = True
        with trio.move_on_after(limits.idle_timeout) as scope:
            while True:
                try:
                    event = self.conn.next_event()
                except h11.RemoteProtocolError as error:
                    # A malformed request, or a head over max_header_bytes (431).
                    await self.send_error(error.error_status_hint, f"{error}\n")
                    return None
                if event is h11.NEED_DATA:
                    data = await self.receive()
                    if data and first_byte:
                        first_byte = False
                        scope.deadline = trio.current_time() + limits.request_timeout
                    self.conn.receive_data(data)
                    continue
                if isinstance(event, h11.Request):
                    return event
                return None  # ConnectionClosed: the client is done
        # Timed out: a silent idle connection is just closed; a started request is told why.
        if not first_byte:
            await self.send_error(408, "request timeout: the request was not complete in time\n")
        return None

    async def respond(self, request: h11.Request) -> None:
        method = request.method.decode("ascii")  # h11 checked it is a token
        target = request.target.decode("latin-1")
        has_body = any(
            name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
            for name, value in request.headers
        )
        if not has_body:
            event = self.conn.next_event()  # no body: the end of the message is already there
            assert isinstance(event, h11.EndOfMessage), event
        if method not in ("GET", "HEAD"):
            response = Response(405, b"method not allowed: GET or HEAD only\n", headers=(("Allow", ALLOWED),))
        elif has_body:
            response = Response(413, b"request bodies are not accepted\n")
        else:
            try:
                response = self.app(target.split("?", 1)[0])
            except Exception:
                logger.exception("GET %s failed", target)
                response = Response(500, b"internal error (see the service's log)\n")
        logger.debug("%s %s %d", method, target, response.status)
        # A body we did not read leaves the connection unusable: say so, then close it.
        await self.send_response(response, head=method == "HEAD", close=has_body)

    async def send_error(self, status: int, message: str) -> None:
        # Called while waiting for a request: nothing of ours is under way, so h11 lets us answer.
        assert self.conn.our_state is h11.IDLE, self.conn.our_state
        await self.send_response(Response(status, message.encode()), head=False, close=True)

    async def send_response(self, response: Response, *, head: bool, close: bool) -> None:
        headers = [
            ("Date", format_date_time(None)),
            ("Server", "hybrid"),
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *response.headers,
        ]
        if close:
            headers.append(("Connection", "close"))
        with trio.move_on_after(self.limits.request_timeout):
            reason = HTTPStatus(response.status).phrase.encode()
            await self.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
            if not head:
                await self.send(h11.Data(data=response.body))
            await self.send(h11.EndOfMessage())
            return
        raise _PeerGone  # it would not read the response in time

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        assert data is not None  # None only for ConnectionClosed, which is never sent here
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.conn.send_failed()
            raise _PeerGone from None

    async def shut_down(self) -> None:
        """Close our side, then read what the client still sends for a moment, so that it gets our last response.

        Closing a socket with unread data makes the kernel send a reset, which
        can destroy a response the client has not read yet (h11's trio example
        does the same).
        """
        if self.conn.their_state is h11.CLOSED or self.conn.our_state is h11.IDLE:
            return  # they closed first, or nothing of ours is in flight (an idle connection)
        try:
            await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):  # pragma: no cover - a reset in between: racy
            return
        with trio.move_on_after(min(LINGER, self.limits.idle_timeout)):
            while await self.receive():
                pass
