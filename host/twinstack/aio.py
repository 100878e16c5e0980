"""asyncio on board sockets: :func:`open_connection` and :func:`start_server`.

Both give the standard :class:`asyncio.StreamReader` / :class:`asyncio.StreamWriter` pair,
driven by a real :class:`asyncio.Transport` (:class:`BoardTransport`) whose events come from
the OSM's reader thread through ``loop.call_soon_threadsafe``::

    board = twinstack.connect("/dev/ttyACM1")

    async def handle(reader, writer):
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    server = await twinstack.aio.start_server(handle, board, "0.0.0.0", 8000)
    reader, writer = await twinstack.aio.open_connection(board, "10.0.0.9", 80)

Flow control works both ways: while the protocol has paused reading (a full StreamReader)
the transport leaves received data with the OSM, so no CONSUMED is reported and the board's
TCP window closes; writes are buffered and posted as SEND credits allow, with
``pause_writing``/``resume_writing`` (``drain()``) at the write buffer limits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .osm import CONNECTED, CONNECTING, Board, Endpoint
from .socket import Socket

log = logging.getLogger(__name__)

__all__ = ["BoardTransport", "Server", "open_connection", "start_server"]

_STREAM_LIMIT = 2 ** 16
_READ_PIECE = 8192


class BoardTransport(asyncio.Transport):
    """An asyncio transport over a connected board socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: Socket,
                 protocol: asyncio.BaseProtocol, server: Server | None = None) -> None:
        super().__init__({"socket": sock, "peername": sock.endpoint.peer,
                          "sockname": sock.endpoint.local, "iop": sock.iop})
        self._loop = loop
        self._sock = sock
        self._ep: Endpoint = sock.endpoint
        self._board = sock.board
        self._protocol = protocol
        self._server = server
        self._wbuf = bytearray()
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._writing_paused = False      # we paused the protocol's writing
        self._reading_paused = False      # the protocol paused our reading
        self._closing = False
        self._lost = False
        self._eof_wanted = False
        self._eof_sent = False
        self._eof_delivered = False
        self._scheduled = False
        if server is not None:
            server._attach(self)
        with self._board._lock:
            self._ep.watchers.append(self._wake)
        protocol.connection_made(self)
        self._schedule()

    # -- from the OSM thread -----------------------------------------------------------------

    def _wake(self) -> None:
        """The endpoint changed (OSM thread, board lock held): run _on_event in the loop."""
        if self._scheduled or self._lost:
            return
        self._schedule()

    def _schedule(self) -> None:
        self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._on_event)
        except RuntimeError:        # the loop is closed
            self._scheduled = False

    def _on_event(self) -> None:
        self._scheduled = False
        if self._lost:
            return
        self._pump_write()
        if not self._lost:
            self._pump_read()

    # -- reading -----------------------------------------------------------------------------

    def _pump_read(self) -> None:
        if self._reading_paused or self._eof_delivered or self._closing:
            return
        ep = self._ep
        while True:
            with self._board._lock:
                reset = ep.reset
                # In pieces, so a protocol that pauses takes (and reports) little more.
                data = ep.take(_READ_PIECE) if ep.rx and not reset else b""
                more = bool(ep.rx)
                eof = not ep.rx and (ep.eof or ep.dead)
                error = ep.error if not ep.rx else None
            self._board._drain()
            if data:
                self._protocol.data_received(data)  # type: ignore[attr-defined]
            if not more or self._reading_paused or self._lost or self._closing:
                break
        if self._lost:
            return
        if reset:
            self._fatal(ConnectionResetError(reset))
        elif error is not None:
            self._fatal(error)
        elif eof and not more:
            self._eof_delivered = True
            if not self._protocol.eof_received():  # type: ignore[attr-defined]
                self.close()

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            self._schedule()

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    # -- writing -----------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_wanted:
            raise RuntimeError("cannot write after write_eof()")
        if self._lost or self._closing:
            return
        if data:
            self._wbuf += data
            self._pump_write()
            self._maybe_pause_protocol()

    def _pump_write(self) -> None:
        budget = 4 * self._board.max_send
        while self._wbuf:
            chunk = bytes(self._wbuf[:budget])
            try:
                n = self._ep.send(chunk, 0)
            except BlockingIOError:
                break
            except OSError as e:
                self._fatal(e)
                return
            del self._wbuf[:n]
        self._maybe_resume_protocol()
        if not self._wbuf:
            if self._eof_wanted and not self._eof_sent and not self._closing:
                self._eof_sent = True
                try:
                    self._ep.shutdown(1)
                except OSError as e:
                    self._fatal(e)
                    return
            if self._closing and not self._lost:
                self._finish(None, abort=False)

    def _maybe_pause_protocol(self) -> None:
        if not self._writing_paused and len(self._wbuf) > self._high:
            self._writing_paused = True
            try:
                self._protocol.pause_writing()
            except Exception:
                log.exception("protocol.pause_writing() failed")

    def _maybe_resume_protocol(self) -> None:
        if self._writing_paused and len(self._wbuf) <= self._low:
            self._writing_paused = False
            try:
                self._protocol.resume_writing()
            except Exception:
                log.exception("protocol.resume_writing() failed")

    def get_write_buffer_size(self) -> int:
        return len(self._wbuf)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def write_eof(self) -> None:
        if self._eof_wanted:
            return
        self._eof_wanted = True
        self._pump_write()

    def can_write_eof(self) -> bool:
        return True

    # -- life --------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Flush the write buffer, then close the connection gracefully."""
        if self._closing or self._lost:
            return
        self._closing = True
        if not self._wbuf:
            self._finish(None, abort=False)

    def abort(self) -> None:
        self._finish(None, abort=True)

    def _fatal(self, exc: BaseException) -> None:
        self._finish(exc, abort=True)

    def _finish(self, exc: BaseException | None, *, abort: bool) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._wbuf.clear()
        with self._board._lock:
            try:
                self._ep.watchers.remove(self._wake)
            except ValueError:
                pass
        self._ep.close(abort=abort)
        if self._server is not None:
            self._server._detach(self)
        self._loop.call_soon(self._protocol.connection_lost, exc)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


async def _until(sock: Socket, pred: Callable[[], bool], timeout: float | None) -> None:
    """Wait in the loop until pred() (checked under the board's lock) is true."""
    loop = asyncio.get_running_loop()
    ep, board = sock.endpoint, sock.board
    event = asyncio.Event()

    def wake() -> None:
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # the loop is closed
            pass

    async def wait() -> None:
        while True:
            event.clear()
            with board._lock:
                if pred():
                    return
            await event.wait()

    with board._lock:
        ep.watchers.append(wake)
    try:
        await asyncio.wait_for(wait(), timeout)
    finally:
        with board._lock:
            ep.watchers.remove(wake)


async def open_connection(board: Board, host: str, port: int, *,
                          limit: int = _STREAM_LIMIT, timeout: float | None = None,
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to host:port from the board: ``(StreamReader, StreamWriter)``."""
    loop = asyncio.get_running_loop()
    sock = board.socket()
    sock.setblocking(False)
    ep = sock.endpoint
    try:
        try:
            sock.connect((host, port))
        except BlockingIOError:
            await _until(sock, lambda: ep.state != CONNECTING or bool(ep.reset), timeout)
            if ep.state != CONNECTED:
                sock.connect((host, port))      # raises what the board said
    except BaseException:
        sock.close()
        raise
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport = BoardTransport(loop, sock, protocol)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


class Server(asyncio.AbstractServer):
    """A listening board socket serving connections with a protocol factory."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listener: Socket,
                 protocol_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self._loop = loop
        self._listener: Socket | None = listener
        self._factory = protocol_factory
        self._transports: set[BoardTransport] = set()
        self._closed = loop.create_future()
        self._scheduled = False
        listener.setblocking(False)
        with listener.board._lock:
            listener.endpoint.watchers.append(self._wake)
        self._schedule()

    def _attach(self, transport: BoardTransport) -> None:
        self._transports.add(transport)

    def _detach(self, transport: BoardTransport) -> None:
        self._transports.discard(transport)

    def _wake(self) -> None:
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._accept)
        except RuntimeError:
            self._scheduled = False

    def _accept(self) -> None:
        self._scheduled = False
        while self._listener is not None:
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as e:
                log.warning("accept on %r failed: %s", self._listener, e)
                return
            try:
                BoardTransport(self._loop, conn, self._factory(), server=self)
            except Exception:
                log.exception("setting up a connection failed")
                conn.abort()

    @property
    def sockets(self) -> tuple[Socket, ...]:
        return () if self._listener is None else (self._listener,)

    def close(self) -> None:
        """Stop listening (connections already accepted go on)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with listener.board._lock:
                try:
                    listener.endpoint.watchers.remove(self._wake)
                except ValueError:
                    pass
            listener.close()
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._listener is not None

    async def start_serving(self) -> None:
        """Serving starts at once; nothing to do."""

    async def serve_forever(self) -> None:
        try:
            await asyncio.shield(self._closed)
        except asyncio.CancelledError:
            self.close()
            raise

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def start_server(client_connected_cb: Callable[[asyncio.StreamReader,
                                                      asyncio.StreamWriter],
                                                     Awaitable[Any] | None],
                       board: Board, host: str = "0.0.0.0", port: int = 0, *,
                       limit: int = _STREAM_LIMIT, backlog: int = 100) -> Server:
    """Listen on port (on every IOP of the board); ``client_connected_cb(reader, writer)``
    runs for each connection (a coroutine becomes a task), as with
    :func:`asyncio.start_server`."""
    loop = asyncio.get_running_loop()
    listener = board.socket()
    try:
        listener.bind((host, port))
        await loop.run_in_executor(None, listener.listen, backlog)
    except BaseException:
        listener.close()
        raise

    def factory() -> asyncio.BaseProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return Server(loop, listener, factory)
