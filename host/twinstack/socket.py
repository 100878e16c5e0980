"""Sockets whose TCP/IP runs on the board, close to the standard :mod:`socket` module.

Make one with :meth:`twinstack.osm.Board.socket` (``AF_INET`` with ``SOCK_STREAM`` or
``SOCK_DGRAM``). Blocking, timeout and non-blocking modes behave as in the standard module:
a timeout raises :class:`TimeoutError` (``socket.timeout``), a non-blocking operation that
would wait raises :class:`BlockingIOError`. Errors are ``OSError`` with the board's errno
(``ConnectionRefusedError``, ``ConnectionResetError``, ``BrokenPipeError``, EADDRINUSE, ...)
and EBADF after :meth:`Socket.close`.

These sockets have no file descriptor: wait for several of them with
:class:`twinstack.selectors.TwinSelector`, or use :mod:`twinstack.aio`.

A listening socket (and a bound UDP socket) exists on every IOP of the board, so a
connection is accepted on whichever core its flow hashes to; :attr:`Socket.iop` tells which
core a connection lives on.
"""

from __future__ import annotations

import errno
import io
import os
import socket as _socket
from typing import TYPE_CHECKING

from .osm import CONNECTED, Endpoint

if TYPE_CHECKING:
    from .osm import Board

AF_INET = _socket.AF_INET
SOCK_STREAM = _socket.SOCK_STREAM
SOCK_DGRAM = _socket.SOCK_DGRAM
SHUT_RD = _socket.SHUT_RD
SHUT_WR = _socket.SHUT_WR
SHUT_RDWR = _socket.SHUT_RDWR
SOL_SOCKET = _socket.SOL_SOCKET
SO_ERROR = _socket.SO_ERROR
timeout = TimeoutError
error = OSError

__all__ = ["AF_INET", "SHUT_RD", "SHUT_RDWR", "SHUT_WR", "SOCK_DGRAM", "SOCK_STREAM",
           "Socket", "error", "timeout"]

_SHUT = {SHUT_RD: 0, SHUT_WR: 1, SHUT_RDWR: 2}   # host constants -> i2o.SHUT_*


def _address(address: tuple[str, int]) -> tuple[str, int]:
    if not isinstance(address, tuple) or len(address) != 2:
        raise TypeError("AF_INET address must be a tuple (host, port)")
    host, port = address
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise OverflowError("port must be 0-65535.")
    return str(host), port


class Socket:
    """A TCP or UDP socket on the board (see the module documentation)."""

    def __init__(self, board: Board, family: int = AF_INET, type: int = SOCK_STREAM,
                 *, _endpoint: Endpoint | None = None) -> None:
        if family != AF_INET:
            raise OSError(errno.EAFNOSUPPORT, "the board speaks IPv4 only (AF_INET)")
        if type not in (SOCK_STREAM, SOCK_DGRAM):
            raise OSError(errno.ESOCKTNOSUPPORT, "SOCK_STREAM or SOCK_DGRAM only")
        self.board = board
        self.family = family
        self.type = type
        self._ep = _endpoint if _endpoint is not None else board._endpoint(type == SOCK_STREAM)
        self._timeout: float | None = _socket.getdefaulttimeout()
        self._port = 0

    def __repr__(self) -> str:
        kind = "stream" if self.type == SOCK_STREAM else "dgram"
        return f"<twinstack.socket.Socket {kind} {self._ep!r}>"

    @property
    def iop(self) -> int | None:
        """The IOP (board core) a connection lives on; None for listeners, UDP and
        unconnected sockets."""
        return self._ep.iop

    @property
    def endpoint(self) -> Endpoint:
        """The OSM's state of this socket (for selectors and the asyncio transports)."""
        return self._ep

    @property
    def closed(self) -> bool:
        return self._ep.closed

    def fileno(self) -> int:
        raise io.UnsupportedOperation("a board socket has no file descriptor; use "
                                      "twinstack.selectors.TwinSelector")

    # -- modes -------------------------------------------------------------------------------

    def settimeout(self, value: float | None) -> None:
        if value is not None:
            value = float(value)
            if value < 0:
                raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    # -- addresses ---------------------------------------------------------------------------

    def bind(self, address: tuple[str, int]) -> None:
        host, port = _address(address)
        b = self.board
        with b._lock:
            self._ep._check()
            if self._port or self._ep.state != 0:
                raise OSError(errno.EINVAL, "the socket is already bound")
        if self.type == SOCK_DGRAM:
            self._ep.bind_udp(port)
            self._port = self._ep.local[1]
        else:
            self._port = port
            self._ep.local = (host or "0.0.0.0", port)

    def getsockname(self) -> tuple[str, int]:
        with self.board._lock:
            self._ep._check()
            return self._ep.local

    def getpeername(self) -> tuple[str, int]:
        with self.board._lock:
            self._ep._check()
            if self._ep.state != CONNECTED or self._ep.peer is None:
                raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
            return self._ep.peer

    def getsockopt(self, level: int, option: int, buflen: int = 0) -> int:
        """SO_ERROR (the pending error, cleared) is the one option the board has."""
        if level == SOL_SOCKET and option == SO_ERROR:
            with self.board._lock:
                ep = self._ep
                err = ep._connect_error or ep.error
                ep._connect_error = None
                return err.errno if err is not None and err.errno else 0
        raise OSError(errno.ENOPROTOOPT, os.strerror(errno.ENOPROTOOPT))

    def setsockopt(self, level: int, option: int, value: object) -> None:
        """Accepted and ignored (SO_REUSEADDR, TCP_NODELAY, ...): the board decides."""

    # -- TCP ---------------------------------------------------------------------------------

    def listen(self, backlog: int = 128) -> None:
        if self.type != SOCK_STREAM:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        self._ep.listen(self._port, backlog)

    def accept(self) -> tuple[Socket, tuple[str, int]]:
        ep = self._ep.accept(self._timeout)
        conn = Socket(self.board, AF_INET, SOCK_STREAM, _endpoint=ep)
        conn._port = ep.local[1]
        return conn, ep.peer  # type: ignore[return-value]

    def connect(self, address: tuple[str, int]) -> None:
        host, port = _address(address)
        self._ep.connect(host, port, self._port, self._timeout)

    def connect_ex(self, address: tuple[str, int]) -> int:
        try:
            self.connect(address)
        except TimeoutError:
            return errno.EAGAIN
        except OSError as e:
            if e.errno is None:
                raise
            return e.errno
        return 0

    def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        return self._ep.send(data, self._timeout)

    def sendall(self, data: bytes | bytearray | memoryview, flags: int = 0) -> None:
        self._ep.send(data, self._timeout, sendall=True)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        return self._ep.recv(bufsize, self._timeout)

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        n = nbytes or len(view)
        data = self._ep.recv(min(n, len(view)), self._timeout)
        view[:len(data)] = data
        return len(data)

    def shutdown(self, how: int) -> None:
        if how not in _SHUT:
            raise ValueError("how must be SHUT_RD, SHUT_WR or SHUT_RDWR")
        self._ep.shutdown(_SHUT[how])

    # -- UDP ---------------------------------------------------------------------------------

    def sendto(self, data: bytes | bytearray | memoryview, flags_or_address: object,
               address: tuple[str, int] | None = None) -> int:
        if address is None:
            address = flags_or_address  # type: ignore[assignment]
        if self.type != SOCK_DGRAM:
            raise OSError(errno.EISCONN, "sendto() on a stream socket")
        host, port = _address(address)  # type: ignore[arg-type]
        n = self._ep.sendto(data, host, port, self._timeout)
        if not self._port:
            self._port = self._ep.local[1]
        return n

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, tuple[str, int]]:
        if self.type != SOCK_DGRAM:
            data = self.recv(bufsize)
            return data, self.getpeername()
        return self._ep.recvfrom(bufsize, self._timeout)

    def makefile(self, mode: str = "r", buffering: int | None = None, *,
                 encoding: str | None = None, errors: str | None = None,
                 newline: str | None = None) -> io.IOBase:
        """A file object over the connection, as :meth:`socket.socket.makefile`: modes
        "r", "w", "rw" with an optional "b"; buffered unless ``buffering`` is 0 (binary).
        Closing the file does not close the socket."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b)")
        reading, writing, binary = "r" in mode, "w" in mode, "b" in mode
        raw = _SocketIO(self, reading, writing)
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if not binary:
                raise ValueError("unbuffered streams must be binary")
            return raw
        buffer: io.BufferedIOBase
        if reading and writing:
            buffer = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
        if binary:
            return buffer
        text = io.TextIOWrapper(buffer, encoding, errors, newline)
        text.mode = mode  # type: ignore[misc]
        return text

    # -- life --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close: a connection gracefully (FIN after the data already sent), a listener on
        every IOP; connections not yet accepted are reset."""
        self._ep.close()

    def abort(self) -> None:
        """Close a connection with RST (what SO_LINGER 0 does)."""
        self._ep.close(abort=True)

    def __del__(self) -> None:
        # A forgotten socket must not keep its connection open on the board.
        ep = getattr(self, "_ep", None)
        if ep is not None and not ep.closed:
            try:
                ep.close()
            except Exception:  # interpreter shutdown, a dead link
                pass

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Readiness, for selectors (lock taken here).
    def _readiness(self) -> tuple[bool, bool]:
        with self.board._lock:
            return self._ep.readable, self._ep.writable


class _SocketIO(io.RawIOBase):
    """The raw stream under :meth:`Socket.makefile`."""

    def __init__(self, sock: Socket, reading: bool, writing: bool) -> None:
        super().__init__()
        self._sock = sock
        self._reading = reading
        self._writing = writing

    def readable(self) -> bool:
        return self._reading

    def writable(self) -> bool:
        return self._writing

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        self._checkClosed()
        return self._sock.recv_into(b)

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._checkClosed()
        return self._sock.send(b)
