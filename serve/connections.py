"""The listening side of the server: aiohttp's HTTP/1.1 protocol with the limits a public
server needs and aiohttp leaves out.

- a header timeout (from a request's first byte to its last header line) besides aiohttp's
  keep-alive timeout, so a client that trickles headers is cut off;
- a connection cap below the descriptor limit: a connection over it gets a 503 and is closed,
  so the server keeps serving the connections it has;
- parser errors (bad Content-Length, bad chunking, a header too long) as the JSON error every
  other refusal is;
- a drain on SIGINT/SIGTERM, of the HTTP and the gRPC server together, that reports how many
  requests it had to drop.

Refusals are logged once per `LOG_EVERY_S` with a count, never one traceback per connection.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import resource
import signal
import socket
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web

if TYPE_CHECKING:
    import grpc

    from serve.dataplane import Dataplane

LOG = logging.getLogger("serve")
LOG_EVERY_S = 10.0
# descriptors kept free for what the process opens besides connections (models, logs, pipes)
RESERVED_FDS = 64


class RateLimitedLog:
    """A warning logged at most once per `every` seconds, with how often it happened since."""

    def __init__(self, every: float = LOG_EVERY_S) -> None:
        self.every = every
        self.last = -float("inf")
        self.suppressed = 0

    def __call__(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            self.suppressed += 1
            return
        more = f" (and {self.suppressed} more since the last report)" if self.suppressed else ""
        LOG.warning(message + more, *args)
        self.last, self.suppressed = now, 0


def raw_error(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for where no aiohttp response
    can be made (before a request was parsed)."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def connection_cap(wanted: int) -> int:
    """`wanted`, lowered to what the descriptor limit (`ulimit -n`) leaves room for."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or wanted <= soft - RESERVED_FDS:
        return wanted
    cap = max(1, soft - RESERVED_FDS)
    LOG.warning(
        "--max-connections %d lowered to %d: the descriptor limit is %d (ulimit -n)",
        wanted,
        cap,
        soft,
    )
    return cap


@dataclass
class Unanswered:
    """How many of the server's connections have sent a byte since their last answer: a
    request under way (or arriving) on each."""

    count: int = 0


class Connection(web.RequestHandler):
    """aiohttp's request handler with a header timeout and JSON parser errors; it keeps the
    server's count of connections with a request under way."""

    def __init__(
        self,
        manager: web.Server,
        *,
        header_timeout: float,
        cap: int,
        unanswered: Unanswered,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self.manager = manager
        self.header_timeout = header_timeout
        self.cap = cap
        self.header_timer: asyncio.TimerHandle | None = None
        self.busy = False  # between a request's last header line and its response's end
        self.unanswered = unanswered
        self.pending = False  # counted in `unanswered`

    def _pending(self, pending: bool) -> None:
        if pending != self.pending:
            self.pending = pending
            self.unanswered.count += 1 if pending else -1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # counted here, not when the protocol is made: asyncio makes a burst of them first
        if len(self.manager.connections) >= self.cap:
            over_cap("refused a connection over the limit of %d (--max-connections)", self.cap)
            transport = cast(asyncio.Transport, transport)  # uvloop's is one, unregistered
            message = f"the server holds its limit of {self.cap} connections (--max-connections)"
            transport.write(raw_error(503, f"{message}; retry later"))
            transport.close()
            return
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._pending(True)
        if data and not self.busy and self.header_timer is None:
            loop = asyncio.get_running_loop()
            self.header_timer = loop.call_later(self.header_timeout, self._headers_late)
        super().data_received(data)

    def request_started(self) -> None:
        """The middleware's call: the headers are in, the header timeout is over."""
        self.busy = True
        self._stop_header_timer()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            sent = await super().finish_response(request, resp, start_time)
        finally:
            self.busy = False
            self._pending(False)
        if resp.status == 408:  # no lingering for the rest of a body that is late already
            self.force_close()
        return sent

    def connection_lost(self, exc: BaseException | None) -> None:
        self._pending(False)
        self._stop_header_timer()
        super().connection_lost(exc)

    def _stop_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_late(self) -> None:
        self.header_timer = None
        if self.busy or self.transport is None:
            return
        late_headers(
            "closed a connection whose headers took over %g s (--header-timeout)",
            self.header_timeout,
        )
        self.transport.write(
            raw_error(
                408,
                f"the request headers did not arrive within {self.header_timeout:g} s "
                "(--header-timeout)",
            )
        )
        self.transport.close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """What aiohttp answers when it cannot parse a request (or a handler escaped the
        middleware): the JSON error shape, one log line, the connection closed."""
        self._stop_header_timer()
        if isinstance(exc, ConnectionError):  # the client left: no one to answer
            raise exc
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already started; the connection is broken")
        reason = message or (str(exc) if exc else "") or HTTPStatus(status).phrase
        if status >= 500:
            LOG.error("error handling a request from %s: %s", request.remote, reason)
            text = f"internal error: {reason}"
        else:
            malformed(request.remote, reason)
            text = f"malformed HTTP request: {reason}"
        response = web.json_response({"error": text}, status=status)
        response.force_close()
        return response


def alone(request: web.BaseRequest) -> bool:
    """Whether `request` is the only one the server has: no other connection has sent a byte
    since its last answer, however many are open. HTTP/1.1 carries one request at a time per
    connection; what this cannot see (a pipelined request behind one answered, a connection not
    read yet) waits for one quick compute at most."""
    this = request.protocol
    return isinstance(this, Connection) and this.pending and this.unanswered.count == 1


over_cap = RateLimitedLog()
late_headers = RateLimitedLog()
_malformed = RateLimitedLog()
_out_of_fds = RateLimitedLog()


def malformed(remote: str | None, reason: str) -> None:
    _malformed("refused a malformed HTTP request from %s: %s", remote, reason)


def _loop_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Out of descriptors, asyncio logs a traceback per accept it retries: one line instead."""
    exc = context.get("exception")
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        _out_of_fds(
            "cannot accept connections: %s (raise ulimit -n or lower --max-connections)", exc
        )
        return
    loop.default_exception_handler(context)


async def serve(
    app: web.Application,
    sock: socket.socket,
    plane: Dataplane,
    grpc_server: grpc.aio.Server | None = None,
) -> None:
    """Serve `app` on `sock` (and `grpc_server` beside it) until SIGINT/SIGTERM, then drain:
    readiness fails, in-flight requests of both have `shutdown_timeout` seconds to finish."""
    cfg = plane.cfg
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_loop_errors)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    plane.start()
    runner = web.AppRunner(app, shutdown_timeout=cfg.shutdown_timeout, access_log=None)
    await runner.setup()
    manager = runner.server
    assert manager is not None
    cap = connection_cap(cfg.max_connections)
    unanswered = Unanswered()

    def protocol() -> Connection:
        return Connection(
            manager,
            loop=loop,
            cap=cap,
            unanswered=unanswered,
            header_timeout=cfg.header_timeout,
            keepalive_timeout=cfg.keepalive_timeout,
            access_log=None,
        )

    listener = await loop.create_server(protocol, sock=sock, backlog=min(cap, 1024))
    if grpc_server is not None:
        await grpc_server.start()
    try:
        await stop.wait()
    finally:
        listener.close()
        plane.draining = True
        draining = [runner.cleanup()]
        if grpc_server is not None:  # refuses new calls, cancels those left at the timeout
            draining.append(grpc_server.stop(cfg.shutdown_timeout))
        await asyncio.gather(*draining)
        await plane.close()  # the batchers outlive every request that queued in them
