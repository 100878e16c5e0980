"""The host end of the board link: framed messages over a serial port (pyserial).

The framing is the firmware's own definition (:mod:`twinstack.proto.linkframe`). A port is
anything pyserial opens: ``/dev/ttyACM1``, the simulated board's pty, ``socket://host:port``
or ``loop://``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import struct
import time
from collections import deque

import serial

from .proto import linkframe as lf

log = logging.getLogger(__name__)


def format_settings(settings: dict[str, object]) -> str:
    """The board's settings text ("name=value ...") for :meth:`Link.configure` and
    :meth:`twinstack.osm.Board.configure`: ``indirection`` may be a list of cores, ``mask``
    bytes, ``rule`` a (key, core) tuple."""
    items = []
    for name, value in settings.items():
        if name == "indirection" and not isinstance(value, str):
            value = ",".join(str(int(c)) for c in value)  # type: ignore[attr-defined]
        elif name == "mask" and isinstance(value, (bytes, bytearray)):
            value = bytes(value).hex()
        elif name == "rule" and isinstance(value, tuple):
            key, core = value
            key = bytes(key).hex() if isinstance(key, (bytes, bytearray)) else key
            value = f"{key}:{int(core)}"
        items.append(f"{name}={value}")
    return " ".join(items)


def parse_counters(text: str) -> dict[str, int]:
    """The board's counters text ("name=value ...") as a dict; non-numeric items skipped."""
    out: dict[str, int] = {}
    for item in text.split():
        name, _, value = item.partition("=")
        if value.lstrip("-").isdigit():
            out[name] = int(value)
    return out


def parse_flows(text: str) -> list[dict[str, int | str]]:
    """The board's flow-table text, one flow per line, as one dict per flow (numbers as
    int)."""
    out: list[dict[str, int | str]] = []
    for line in text.splitlines():
        flow: dict[str, int | str] = {}
        for item in line.split():
            name, _, value = item.partition("=")
            flow[name] = int(value) if value.lstrip("-").isdigit() else value
        if flow:
            out.append(flow)
    return out


class LinkTimeout(TimeoutError):
    """No frame arrived in time."""


class Link:
    """Send and receive whole link frames; garbage on the line is counted and skipped."""

    def __init__(self, url: str, *, baudrate: int = 115200) -> None:
        self.port = serial.serial_for_url(url, baudrate=baudrate, timeout=0.05)
        # What an earlier session left unread (the rest of a reply its reader gave up on)
        # must not be taken for an answer to this one.
        self.port.reset_input_buffer()
        self._frames: deque[tuple[int, bytes]] = deque()
        self._deframer = lf.Deframer(self._on_frame)
        self._out = bytearray(lf.encoded_size(lf.MAX_PAYLOAD))
        self._bytes_out = 0

    def _on_frame(self, buf: bytearray, n: int) -> None:
        self._frames.append((buf[0], bytes(buf[1:n])))

    @property
    def errors(self) -> int:
        """Bad frames seen from the board (CRC, COBS or length errors)."""
        return self._deframer.errors

    def send(self, kind: int, body: bytes = b"") -> None:
        payload = bytes([kind]) + body
        n = lf.encode_into(payload, len(payload), self._out)
        self.send_raw(lf.with_usb_fill(self._bytes_out, self._out[:n]))

    def send_raw(self, data: bytes | bytearray) -> None:
        """Write bytes as they are (tests use this to send garbage)."""
        self.port.write(data)
        self.port.flush()
        self._bytes_out += len(data)

    def recv(self, timeout: float = 2.0) -> tuple[int, bytes]:
        """The next frame as (kind, body); raises LinkTimeout."""
        deadline = time.monotonic() + timeout
        while not self._frames:
            if time.monotonic() > deadline:
                raise LinkTimeout(f"no frame from the board within {timeout} s")
            # Block (up to the port timeout) for one byte only, then take what is waiting.
            data = self.port.read(max(1, self.port.in_waiting))
            if data:
                self._deframer.feed(data, len(data))
        return self._frames.popleft()

    def echo(self, body: bytes | None = None, timeout: float = 2.0) -> float:
        """Round trip a link echo; returns the time it took in seconds."""
        body = os.urandom(16) if body is None else body
        start = time.monotonic()
        self.send(lf.KIND_ECHO_REQUEST, body)
        while True:
            kind, got = self.recv(max(0.01, timeout - (time.monotonic() - start)))
            if kind == lf.KIND_ECHO_REPLY and got == body:
                return time.monotonic() - start
            log.debug("skipping frame of kind 0x%02x while waiting for an echo", kind)

    def _request(self, kind: int, body: bytes, reply_kind: int, timeout: float) -> bytes:
        self.send(kind, body)
        deadline = time.monotonic() + timeout
        while True:
            got_kind, got = self.recv(max(0.01, deadline - time.monotonic()))
            if got_kind == reply_kind:
                return got
            log.debug("skipping frame of kind 0x%02x while waiting for 0x%02x",
                      got_kind, reply_kind)

    def stats(self, timeout: float = 2.0) -> dict[str, int]:
        """The board's counters (every layer of every kernel, heap, link, NIC)."""
        return parse_counters(self._paged_text(lf.KIND_STATS_REQUEST, lf.KIND_STATS_REPLY,
                                               timeout))

    def _paged_text(self, kind: int, reply_kind: int, timeout: float) -> str:
        """A reply sent in pieces (more-flag byte + text), within one overall deadline;
        frames of other kinds in between are skipped."""
        deadline = time.monotonic() + timeout
        piece = self._request(kind, b"", reply_kind, timeout)
        text = piece[1:]
        more = piece[:1] == b"\x01"
        while more:
            got_kind, got = self.recv(max(0.01, deadline - time.monotonic()))
            if got_kind == reply_kind:
                text += got[1:]
                more = got[:1] == b"\x01"
        return text.decode()

    def flows(self, timeout: float = 2.0) -> list[dict[str, int | str]]:
        """The dispatcher's flow table: one dict per flow with ``n``, ``key``
        (``src:sport>dst:dport/proto``), ``owner``, ``pkts``, ``bytes`` and ``k0``, ``k1``, ...
        (frames of the flow each kernel processed)."""
        return parse_flows(self._paged_text(lf.KIND_FLOWS_REQUEST, lf.KIND_FLOWS_REPLY,
                                            timeout))

    def configure(self, timeout: float = 2.0, **settings: object) -> str:
        """Change the board at run time: the dispatcher (``hash="fold"|"toeplitz"``,
        ``indirection=[0, 1, ...]`` (or "0,1,..."), ``balance="flows"|"hash"`` (how new
        TCP connections are placed), ``mask=bytes | hex str`` (13 bytes),
        ``rule=(key bytes | hex str, core)``), the address (``ip="10.0.0.2/24"``,
        ``gateway="10.0.0.1"``, ``mac="02:..."``) and the built-in services
        (``services="on"|"off"``); each kernel applies them on its own core. Returns the
        board's text; raises OSError (errno, text) if the board refused a setting."""
        reply = self._request(lf.KIND_CONFIG, format_settings(settings).encode(),
                              lf.KIND_CONFIG_REPLY, timeout)
        status, text = reply[0], reply[1:].decode(errors="replace")
        if status:
            raise OSError(status, text)
        return text

    def tcp_test(self, ip: str, port: int, nbytes: int,
                 timeout: float = 120.0) -> tuple[int, int, int, int]:
        """Have the board's test client connect to ip:port (an echo server), send nbytes of
        a test pattern, verify the echo and close: (errno or 0, sent, verified, ms)."""
        body = ipaddress.IPv4Address(ip).packed + struct.pack(">HI", port, nbytes)
        reply = self._request(lf.KIND_TCP_TEST, body, lf.KIND_TCP_TEST_REPLY, timeout)
        status, sent, verified, ms = struct.unpack(">BIII", reply[:13])
        return status, sent, verified, ms

    def wire_tx(self, frame: bytes) -> None:
        """Ask the board to transmit an Ethernet frame as it is (diagnostics, tests)."""
        self.send(lf.KIND_WIRE_TX, frame)

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
