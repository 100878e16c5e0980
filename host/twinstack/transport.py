"""The byte-stream transport under the OSM: link frames over a pyserial port.

A :class:`Transport` opens anything :func:`serial.serial_for_url` opens (``/dev/ttyACM1``,
the simulated board's pty, ``socket://host:port``, ``loop://``), runs one reader thread that
cuts the stream into checked link frames (:mod:`twinstack.proto.linkframe` framing: COBS +
CRC-16) and hands each one to a callback, and writes frames under a lock from any thread.

A lost link (a read or write error, end of file) is reported once through ``on_lost``; the
transport is dead after that and a new one must be opened.

The framing code is the firmware's own file (on CPython it works with slices and
:func:`binascii.crc_hqx`).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from collections.abc import Callable

import serial

from .proto import linkframe as lf

log = logging.getLogger(__name__)

_READ_TIMEOUT_S = 0.05
_READ_CHUNK = 65536


class Transport:
    """A framed link over a pyserial port with a reader thread.

    ``on_frame(kind, body)`` runs in the reader thread for every good frame;
    ``on_batch()`` after each chunk of input has been decoded (the OSM flushes there);
    ``on_lost(transport, exc)`` once, when the link fails (not after :meth:`close`).
    """

    def __init__(self, url: str, on_frame: Callable[[int, bytes], None],
                 on_lost: Callable[[Transport, BaseException], None],
                 on_batch: Callable[[], None] | None = None, *, baudrate: int = 115200) -> None:
        self.url = url
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._on_batch = on_batch
        self.port = serial.serial_for_url(url, baudrate=baudrate, timeout=_READ_TIMEOUT_S)
        sock = getattr(self.port, "_socket", None)
        if sock is not None:
            # Small messages wait for replies: Nagle + delayed ACK would add 40 ms to each.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._deframer = lf.Deframer(self._frame)
        self._wlock = threading.Lock()
        self._closing = False
        self._lost = False
        self._thread = threading.Thread(target=self._run, name=f"twinstack-reader {url}",
                                        daemon=True)
        self.frames_out = 0
        self.bytes_out = 0

    @property
    def errors(self) -> int:
        """Bad frames seen from the board (CRC, COBS or length errors)."""
        return self._deframer.errors

    @property
    def alive(self) -> bool:
        return not (self._closing or self._lost)

    def start(self) -> None:
        self._thread.start()

    def _frame(self, buf: bytes, n: int) -> None:
        try:
            self._on_frame(buf[0], buf[1:n])
        except Exception:  # a bug in a handler must not kill the link
            log.exception("handling a link frame of kind 0x%02x failed", buf[0])

    def _read(self) -> bytes:
        sock = getattr(self.port, "_socket", None)
        if sock is not None:
            # socket:// : pyserial's in_waiting is 0 or 1 there, so read the socket directly.
            ready, _, _ = select.select([sock], [], [], _READ_TIMEOUT_S)
            if not ready:
                return b""
            data = sock.recv(_READ_CHUNK)
            if not data:
                raise EOFError("the board closed the link")
            return data
        data = self.port.read(1)
        if data:
            waiting = self.port.in_waiting
            if waiting:
                data += self.port.read(waiting)
        return data

    def _run(self) -> None:
        while not self._closing:
            try:
                data = self._read()
            except (OSError, EOFError, ValueError, TypeError, AttributeError) as e:
                # ValueError/TypeError/AttributeError: pyserial after a close from another
                # thread (the file descriptor is gone).
                self._fail(e)
                return
            if data:
                self._deframer.feed(data)
                if self._on_batch is not None:
                    try:
                        self._on_batch()
                    except Exception:
                        log.exception("link batch handler failed")

    def _fail(self, exc: BaseException) -> None:
        if self._closing or self._lost:
            return
        self._lost = True
        log.info("link %s lost: %s", self.url, exc)
        try:
            self.port.close()
        except Exception:  # already broken
            pass
        self._on_lost(self, exc)

    def send(self, kind: int, *parts: bytes | bytearray | memoryview) -> None:
        """Frame kind + parts and write it; raises ConnectionResetError if the link is lost."""
        frame = lf.encode(bytes((kind,)) + b"".join(parts))
        self.write(frame, fill=True)

    def write(self, data: bytes, *, fill: bool = False) -> None:
        """Write bytes as they are (whole frames, or garbage in tests); ``fill``: end them
        off a USB packet boundary (:func:`~twinstack.proto.linkframe.usb_fill`)."""
        if not self.alive:
            raise ConnectionResetError("the link to the board is closed")
        try:
            with self._wlock:
                if fill:
                    data = lf.with_usb_fill(self.bytes_out, data)
                self.port.write(data)
                self.bytes_out += len(data)
                self.frames_out += 1
        except (OSError, ValueError, TypeError, AttributeError) as e:
            self._fail(e)
            raise ConnectionResetError(f"writing to the board failed: {e}") from e

    def close(self) -> None:
        """Stop the reader and close the port (no ``on_lost`` call)."""
        self._closing = True
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(1.0)
        try:
            self.port.close()
        except Exception:  # closing a broken port
            pass

    def __repr__(self) -> str:
        return f"<Transport {self.url} {'up' if self.alive else 'down'}>"
