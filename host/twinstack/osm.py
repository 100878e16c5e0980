"""The OSM: the host half of the I2O messaging unit (DESIGN.md "The I2O queues over USB").

:func:`twinstack.connect` returns a :class:`Board`. It brings the board up
(``KIND_I2O_INIT``), keeps the credits of both directions, matches replies to requests and
turns the socket ISMs' unsolicited messages into the state of host sockets
(:class:`Endpoint`, wrapped by :class:`twinstack.socket.Socket` and the asyncio transports).
The message layouts and the rules both sides keep are in :mod:`twinstack.proto.i2o`.

Credits:

- inbound (host -> IOP k): a message goes to IOP k only in a free MFA of IOP k (INIT_REPLY
  gives 0..depth-1 of each IOP, ``KIND_I2O_FREE`` gives them back). A poster blocks, up to its
  timeout, until one is free; messages that must not block (CONSUMED, CLOSE from ``close()``,
  ABORT from the reader thread) wait in a per-IOP queue and take the next MFA that comes back.
- outbound (board -> host): the board replies only in host frames 0..out_frames-1; the reader
  returns them with ``KIND_I2O_FLUSH`` after dispatching, after every chunk of input it
  decoded and whenever half of the grant is out.

Reply matching: w2 (initiator context) is the endpoint's OSM handle (< 2**30), w3
(transaction context) a request number with bit 30 set. A FAIL reply carries the first words
of the refused frame, so it resolves the request it preserves.

Threads: one reader thread (the transport's) dispatches everything under the board's lock;
application threads wait on one condition variable. Selectors and asyncio transports
register watchers on endpoints: callables run (under the lock, in whatever thread changed the
endpoint) whenever the endpoint's readiness may have changed; they must only wake someone.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import logging
import os
import socket as _socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import VersionMismatch, fail_error, host_errno, oserror, status_error
from .link import format_settings, parse_counters, parse_flows
from .proto import i2o
from .proto import linkframe as lf
from .transport import Transport

if TYPE_CHECKING:
    from .socket import Socket

log = logging.getLogger(__name__)

MAX_SENDS_IN_FLIGHT = 8         # SEND messages of one connection waiting for their reply
_HANDLE_LIMIT = 1 << 30         # OSM handles stay small ints on the board too
_TCTX_BIT = 1 << 30
_TCTX_MASK = _TCTX_BIT - 1
_FLUSH_MAX = 255                # MFAs in one KIND_I2O_FLUSH (count is one byte)
_EVENTS = (i2o.F_EV_ACCEPTED, i2o.F_EV_DATA, i2o.F_EV_CLOSED, i2o.F_EV_DATAGRAM)

# Endpoint states
NEW, CONNECTING, CONNECTED, LISTENING, BOUND = range(5)
_STATE_NAMES = ("new", "connecting", "connected", "listening", "bound")


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def ip_bytes(host: str) -> bytes:
    """The 4 bytes of an IPv4 address literal ('' is 0.0.0.0); the board resolves no names."""
    if host in ("", "0.0.0.0"):
        return bytes(4)
    try:
        return ipaddress.IPv4Address(host).packed
    except ValueError:
        raise _socket.gaierror(_socket.EAI_NONAME,
                               f"{host!r} is not an IPv4 address (the board resolves "
                               "no names)") from None


class _Request:
    __slots__ = ("tctx", "iop", "function", "on_reply", "parts", "req_status", "detail",
                 "done", "error", "what")

    def __init__(self, tctx: int, iop: int, function: int,
                 on_reply: Callable[[_Request], None] | None, what: str) -> None:
        self.tctx = tctx
        self.iop = iop
        self.function = function
        self.on_reply = on_reply
        self.parts: list[bytes] = []
        self.req_status = 0
        self.detail = 0
        self.done = False
        self.error: OSError | None = None
        self.what = what

    @property
    def payload(self) -> bytes:
        """The reply payload (after the status word); the frames of a multi-frame reply
        joined."""
        return b"".join(self.parts)


class Board:
    """A TwinStack board driven through its I2O messaging unit (the OSM).

    Open it with :func:`twinstack.connect`. ``iops`` is the number of IOPs (net kernels),
    ``inbound_depth`` the inbound frames of each, ``frame_bytes`` the largest message,
    ``epoch`` the board's boot number.
    """

    def __init__(self, url: str, *, timeout: float = 5.0, out_frames: int = 32,
                 frame_bytes: int = i2o.MAX_FRAME_BYTES, rx_credit: int = 16384,
                 baudrate: int = 115200) -> None:
        if not 1 <= out_frames <= 0xFFFF:
            raise ValueError("out_frames must be 1..65535")
        if not 64 <= frame_bytes <= i2o.MAX_FRAME_BYTES:
            raise ValueError(f"frame_bytes must be 64..{i2o.MAX_FRAME_BYTES}")
        if not 0 <= rx_credit <= 0xFFFFFFFF:
            raise ValueError("rx_credit must fit 32 bits")
        self.url = url
        self.timeout = timeout
        self.rx_credit = rx_credit
        self.address = "0.0.0.0"     # the board's IP as seen by sockets (not told by INIT)
        self._want_frames = out_frames
        self._want_bytes = frame_bytes
        self._baudrate = baudrate
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._transport: Transport | None = None
        self._up = False
        self._closed = False
        self._down_reason = "not connected"
        self._session = 0
        self._init_reply: bytes | None = None
        self._next_handle = 1
        self._next_tctx = 0
        self._rr = 0
        # Brought-up parameters
        self.iops = 0
        self.inbound_depth = 0
        self.frame_bytes = 0
        self.out_frames = 0
        self.handle_bits = 0
        self.epoch = 0
        self.board_version = 0
        # Credits and tables (reset at every bring-up)
        self._free: list[deque[int]] = []
        self._deferred: list[deque[bytes]] = []
        self._outbox: list[tuple[Transport, int, int, bytes]] = []
        self._out_held: set[int] = set()
        self._to_flush: list[int] = []
        self._pending: dict[int, _Request] = {}
        self._eps: dict[int, Endpoint] = {}
        self._conns: dict[tuple[int, int], Endpoint] = {}
        # Counters
        self.protocol_errors = 0
        self.late_replies = 0
        self.posts = 0
        self.replies = 0
        self._bring_up()

    # -- bring-up, loss, reconnect -----------------------------------------------------------

    def _bring_up(self) -> None:
        transport = Transport(self.url, self._on_frame, self._on_lost, self._on_batch,
                              baudrate=self._baudrate)
        with self._lock:
            self._session += 1
            self._init_reply = None
            self._transport = transport
        transport.start()
        try:
            transport.send(lf.KIND_I2O_INIT,
                           struct.pack(i2o.INIT_FMT, i2o.PROTOCOL_VERSION, self._want_frames,
                                       self._want_bytes, min(self.rx_credit, 0xFFFF)))
            with self._cond:
                deadline = _deadline(self.timeout)
                while self._init_reply is None:
                    left = _left(deadline)
                    if not transport.alive:
                        raise ConnectionResetError(f"the link to {self.url} was lost during "
                                                   "bring-up")
                    if left == 0:
                        raise TimeoutError(f"no INIT reply from the board at {self.url} "
                                           f"within {self.timeout} s")
                    self._cond.wait(left)
                self._accept_init(self._init_reply)
        except BaseException:
            with self._lock:
                self._transport = None
            transport.close()
            raise
        log.info("board %s up: %d IOPs, %d inbound frames each, %d-byte frames, "
                 "%d outbound frames, epoch %d", self.url, self.iops, self.inbound_depth,
                 self.frame_bytes, self.out_frames, self.epoch)

    def _accept_init(self, body: bytes) -> None:
        """Check an INIT_REPLY and take its parameters (lock held)."""
        size = struct.calcsize(i2o.INIT_REPLY_FMT)
        if len(body) < size:
            raise ConnectionError(f"short INIT reply ({len(body)} bytes)")
        (status, proto, version, iops, handle_bits, depth, frame_bytes, frames,
         epoch) = struct.unpack_from(i2o.INIT_REPLY_FMT, body)
        if (status == i2o.INIT_BAD_VERSION or proto != i2o.PROTOCOL_VERSION
                or version != i2o.VERSION):
            raise VersionMismatch(
                f"the board speaks TwinStack protocol {proto} (I2O version 0x{version:02x}), "
                f"this host {i2o.PROTOCOL_VERSION} (0x{i2o.VERSION:02x})")
        if status == i2o.INIT_BAD_GRANT:
            raise ConnectionError(f"the board refused the grant of {self._want_frames} "
                                  f"frames of {self._want_bytes} bytes")
        if status != i2o.INIT_OK:
            raise ConnectionError(f"the board refused bring-up (status {status})")
        if (iops < 1 or depth < 1 or frame_bytes < i2o.REPLY_BYTES + 8
                or frame_bytes > self._want_bytes or frames > self._want_frames):
            raise ConnectionError(f"bad INIT reply: {iops} IOPs, depth {depth}, "
                                  f"{frame_bytes} bytes, {frames} frames")
        self.iops = iops
        self.handle_bits = handle_bits
        self.inbound_depth = depth
        self.frame_bytes = frame_bytes
        self.out_frames = frames          # what the board uses of the grant (frames 0..M-1)
        self.epoch = epoch
        self.board_version = proto
        self._free = [deque(range(depth)) for _ in range(iops)]
        self._deferred = [deque() for _ in range(iops)]
        self._outbox = []
        self._out_held = set(range(frames))
        self._to_flush = []
        self._pending = {}
        self._eps = {}
        self._conns = {}
        self._up = True
        self._down_reason = ""

    @property
    def connected(self) -> bool:
        """True while the board is brought up and the link works."""
        return self._up

    @property
    def max_send(self) -> int:
        """Data bytes in one SEND message."""
        return (self.frame_bytes & ~3) - i2o.HEADER_BYTES - struct.calcsize(i2o.SEND_FMT)

    def _on_lost(self, transport: Transport, exc: BaseException) -> None:
        with self._lock:
            if transport is not self._transport:
                return
            self._reset_all(f"the link to the board was lost ({exc})", down=True)

    def _reset_all(self, reason: str, *, down: bool, level: int = logging.WARNING) -> None:
        """Every endpoint raises ConnectionResetError from now on; pending requests fail
        (lock held). ``down``: the board needs a new bring-up."""
        if self._eps or level < logging.WARNING:
            log.log(level, "%s: every open socket is reset", reason)
        else:
            log.info("%s", reason)
        if down:
            self._up = False
            self._down_reason = reason
            for q in self._free:
                q.clear()
            for q in self._deferred:
                q.clear()
            self._outbox = []
            for req in self._pending.values():
                req.error = ConnectionResetError(errno.ECONNRESET, reason)
                req.done = True
            self._pending.clear()
        eps = list(self._eps.values())
        self._eps.clear()
        self._conns.clear()
        for ep in eps:
            ep.reset = reason
            for other in ep.accept_q:
                other.reset = reason
            self._changed(ep)
        self._cond.notify_all()

    def reconnect(self) -> None:
        """Bring the board up again (a new link; sockets of the old session stay reset)."""
        with self._lock:
            if self._closed:
                raise OSError(errno.EBADF, "the board is closed")
            old = self._transport
            self._transport = None
            if self._up or self._eps:
                self._reset_all("reconnecting", down=True, level=logging.INFO)
        if old is not None:
            old.close()
        self._bring_up()

    def close(self) -> None:
        """Close the link; every socket of this board is reset."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            transport = self._transport
            self._transport = None
            self._reset_all("the board was closed", down=True, level=logging.INFO)
        if transport is not None:
            transport.close()

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "up" if self._up else f"down ({self._down_reason})"
        return f"<twinstack.Board {self.url} {state} iops={self.iops} epoch={self.epoch}>"

    def _check_up(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "the board is closed")
        if not self._up:
            raise ConnectionResetError(errno.ECONNRESET,
                                       f"the board is not up: {self._down_reason}; "
                                       "call reconnect()")

    # -- waiting -----------------------------------------------------------------------------

    def _wait(self, pred: Callable[[], Any], timeout: float | None, what: str = "") -> None:
        """Wait (lock held) until pred() is true. timeout 0: BlockingIOError; else
        TimeoutError when it runs out; None: forever."""
        if pred():
            return
        if timeout == 0:
            raise BlockingIOError(errno.EAGAIN, f"{what} would block" if what else
                                  "operation would block")
        deadline = _deadline(timeout)
        while not pred():
            left = _left(deadline)
            if left == 0:
                raise TimeoutError(errno.ETIMEDOUT, f"{what}: timed out" if what else
                                   "timed out")
            self._cond.wait(left if left is not None else 1.0)

    def _changed(self, ep: Endpoint) -> None:
        """ep's readiness may have changed (lock held): wake waiters and watchers."""
        self._cond.notify_all()
        for watcher in list(ep.watchers):
            try:
                watcher()
            except Exception:  # a watcher must never break the reader
                log.exception("socket watcher failed")

    # -- posting -----------------------------------------------------------------------------

    def _message(self, function: int, ictx: int, tctx: int, payload: bytes,
                 target: int) -> bytes:
        n = i2o.HEADER_BYTES + len(payload)
        size = i2o.words(n)
        if size * 4 > self.frame_bytes:
            raise OSError(errno.EMSGSIZE, f"message of {n} bytes exceeds the board's "
                                          f"{self.frame_bytes}-byte frames")
        buf = bytearray(size * 4)
        i2o.put_header(buf, 0, 0, size, target, i2o.TID_HOST, function)
        i2o.put_contexts(buf, 0, ictx, tctx)
        buf[i2o.PAYLOAD:n] = payload
        return bytes(buf)

    def _new_tctx(self) -> int:
        while True:
            self._next_tctx = (self._next_tctx + 1) & _TCTX_MASK
            tctx = _TCTX_BIT | self._next_tctx
            if tctx not in self._pending:
                return tctx

    def _new_handle(self) -> int:
        while True:
            h = self._next_handle
            self._next_handle = h + 1 if h + 1 < _HANDLE_LIMIT else 1
            if h not in self._eps:
                return h

    def _take_mfa(self, iop: int, timeout: float | None) -> tuple[int, Transport]:
        """A free MFA of IOP iop (lock held); blocks up to timeout."""
        self._check_up()
        if not 0 <= iop < self.iops:
            raise ValueError(f"no IOP {iop} (the board has {self.iops})")
        session = self._session
        free = self._free[iop]
        self._wait(lambda: free or not self._up or self._session != session, timeout,
                   f"waiting for a message frame of IOP {iop}")
        if self._session != session:
            raise ConnectionResetError(errno.ECONNRESET, "the board was reset")
        self._check_up()
        assert self._transport is not None
        return free.popleft(), self._transport

    def _write_post(self, transport: Transport, iop: int, mfa: int, msg: bytes) -> None:
        self.posts += 1
        transport.send(lf.KIND_I2O_POST, struct.pack("<BH", iop, mfa), msg)

    def _post(self, iop: int, function: int, payload: bytes, *, ictx: int = 0,
              timeout: float | None, target: int = i2o.TID_SOCKET) -> None:
        """A message that has no reply (CONSUMED, SENDTO)."""
        msg = self._message(function, ictx, 0, payload, target)
        with self._lock:
            mfa, transport = self._take_mfa(iop, timeout)
        self._write_post(transport, iop, mfa, msg)

    def _request(self, iop: int, function: int, payload: bytes, *, ictx: int = 0,
                 timeout: float | None, target: int = i2o.TID_SOCKET,
                 on_reply: Callable[[_Request], None] | None = None, wait: bool = True,
                 what: str = "", raise_status: bool = True) -> _Request:
        """Post a request and (``wait``) wait for its whole reply within timeout.
        ``on_reply(req)`` runs in the reader thread (lock held) when the reply is complete."""
        deadline = _deadline(timeout)
        with self._lock:
            self._check_up()
            tctx = self._new_tctx()
            msg = self._message(function, ictx, tctx, payload, target)
            req = _Request(tctx, iop, function, on_reply, what or f"function 0x{function:02x}")
            self._pending[tctx] = req
            try:
                mfa, transport = self._take_mfa(iop, _left(deadline))
            except BaseException:
                self._pending.pop(tctx, None)
                raise
        try:
            self._write_post(transport, iop, mfa, msg)
        except BaseException:
            with self._lock:
                self._pending.pop(tctx, None)
            raise
        if not wait:
            return req
        with self._cond:
            try:
                self._wait(lambda: req.done, _left(deadline), req.what)
            except TimeoutError:
                # A late reply is dropped (with a debug log) by the reader.
                self._pending.pop(tctx, None)
                raise TimeoutError(errno.ETIMEDOUT, f"{req.what}: no reply from the board "
                                                    f"within {timeout} s") from None
        if req.error is not None and (raise_status or req.req_status == 0xFF):
            raise req.error
        return req

    def _post_nowait(self, iop: int, function: int, payload: bytes, *, ictx: int = 0,
                     reply: bool = False, on_reply: Callable[[_Request], None] | None = None,
                     target: int = i2o.TID_SOCKET) -> None:
        """Queue a message that must not block (lock held): it goes out in the next free MFA
        of the IOP; call :meth:`_drain` after releasing the lock."""
        if not self._up or not 0 <= iop < self.iops:
            return
        tctx = 0
        if reply:
            tctx = self._new_tctx()
            self._pending[tctx] = _Request(tctx, iop, function, on_reply,
                                           f"function 0x{function:02x}")
        msg = self._message(function, ictx, tctx, payload, target)
        if self._free[iop] and not self._deferred[iop]:
            assert self._transport is not None
            self._outbox.append((self._transport, iop, self._free[iop].popleft(), msg))
        else:
            self._deferred[iop].append(msg)

    def _drain(self) -> None:
        """Write the queued messages (lock NOT held)."""
        while True:
            with self._lock:
                if not self._outbox:
                    return
                items, self._outbox = self._outbox, []
            for transport, iop, mfa, msg in items:
                try:
                    self._write_post(transport, iop, mfa, msg)
                except ConnectionResetError:
                    return       # the link is gone; the loss resets everything

    def _pick_iop(self) -> int:
        """The IOP for a new connection: the one with the fewest, round robin among equals
        (lock held)."""
        count = [0] * self.iops
        for ep in self._eps.values():
            if ep.state in (CONNECTING, CONNECTED) and ep.iop is not None:
                count[ep.iop] += 1
        n = self.iops
        start = self._rr
        self._rr = (self._rr + 1) % n
        return min(range(n), key=lambda k: (count[k], (k - start) % n))

    # -- the reader --------------------------------------------------------------------------

    def _on_frame(self, kind: int, body: bytes) -> None:
        if kind == lf.KIND_I2O_REPLY:
            flush = False
            with self._lock:
                if len(body) < 2 + i2o.HEADER_BYTES:
                    self._bad("short KIND_I2O_REPLY")
                    return
                mfa = body[0] | (body[1] << 8)
                if mfa in self._out_held:
                    self._out_held.discard(mfa)
                    self._to_flush.append(mfa)
                    flush = len(self._to_flush) >= max(1, self.out_frames // 2)
                else:
                    self._bad(f"a reply in outbound frame {mfa}, which the board does not hold")
                self.replies += 1
                self._dispatch(body[2:])
            if flush:
                self._flush()
            self._drain()
        elif kind == lf.KIND_I2O_FREE:
            with self._lock:
                self._on_free(body)
            self._drain()
        elif kind == lf.KIND_I2O_INIT_REPLY:
            with self._lock:
                self._init_reply = body
                self._cond.notify_all()
        elif kind == lf.KIND_I2O_READY:
            epoch = struct.unpack_from("<I", body)[0] if len(body) >= 4 else -1
            with self._lock:
                if self._up and epoch != self.epoch:
                    self._reset_all(f"the board reset (epoch {self.epoch} -> {epoch})",
                                    down=True)
                else:
                    log.info("board ready (epoch %d)", epoch)
        else:
            log.debug("ignoring link frame of kind 0x%02x", kind)

    def _on_batch(self) -> None:
        self._flush()

    def _flush(self) -> None:
        """Return the consumed outbound frames to the board."""
        with self._lock:
            if not self._to_flush or not self._up:
                return
            mfas, self._to_flush = self._to_flush, []
            transport = self._transport
            for mfa in mfas:
                self._out_held.add(mfa)
        if transport is None:
            return
        try:
            for i in range(0, len(mfas), _FLUSH_MAX):
                part = mfas[i:i + _FLUSH_MAX]
                transport.send(lf.KIND_I2O_FLUSH, bytes((len(part),)),
                               struct.pack(f"<{len(part)}H", *part))
        except ConnectionResetError:
            pass

    def _bad(self, what: str) -> None:
        self.protocol_errors += 1
        log.warning("protocol error from the board: %s", what)

    def _on_free(self, body: bytes) -> None:
        if len(body) < 2 or len(body) < 2 + 2 * body[1]:
            self._bad("short KIND_I2O_FREE")
            return
        iop, count = body[0], body[1]
        if not self._up:
            log.debug("KIND_I2O_FREE while not up (a late batch): ignored")
            return
        if iop >= self.iops:
            self._bad(f"KIND_I2O_FREE for IOP {iop}")
            return
        free = self._free[iop]
        deferred = self._deferred[iop]
        for (mfa,) in struct.iter_unpack("<H", body[2:2 + 2 * count]):
            if mfa >= self.inbound_depth or mfa in free:
                self._bad(f"IOP {iop} freed MFA {mfa}, which the host did not hold")
                continue
            if deferred:
                assert self._transport is not None
                self._outbox.append((self._transport, iop, mfa, deferred.popleft()))
            else:
                free.append(mfa)
        self._cond.notify_all()
        # Writers waiting for a frame of this IOP may go on.
        for ep in self._eps.values():
            if ep.watchers and (ep.iop == iop or ep.state == BOUND):
                self._changed(ep)

    def _dispatch(self, msg: bytes) -> None:
        """One message from the board (lock held)."""
        if len(msg) < i2o.HEADER_BYTES:
            self._bad("short message")
            return
        size = i2o.size_words(msg, 0) * 4
        if size < i2o.HEADER_BYTES or size > len(msg):
            self._bad(f"message size {size} in a frame of {len(msg)} bytes")
            size = len(msg)
        msg = msg[:size]
        fl = i2o.flags(msg, 0)
        fn = i2o.function(msg, 0)
        ictx, tctx = struct.unpack_from("<II", msg, 8)
        if fl & i2o.FLAG_FAIL:
            self._on_fail(msg)
            return
        if tctx == 0 and fn in _EVENTS:
            self._on_event(fn, ictx, msg)
            return
        req = self._pending.get(tctx) if tctx else None
        if req is None:
            if tctx == 0 and len(msg) >= i2o.REPLY_BYTES:
                # A refused no-reply message (SENDTO): the error goes to the socket.
                ep = self._eps.get(ictx)
                err = status_error(i2o.req_status(msg, 0), i2o.detail(msg, 0),
                                   f"function 0x{fn:02x}")
                if fn == i2o.F_SOCK_CONSUMED:
                    # It crossed the connection's end on the line: not the socket's error.
                    log.debug("a CONSUMED for a connection that is gone was refused")
                    return
                if ep is not None and err is not None and ep.error is None:
                    ep.error = err
                    self._changed(ep)
                    return
            self.late_replies += 1
            log.debug("dropping a late or unknown reply (function 0x%02x, context 0x%08x)",
                      fn, tctx)
            return
        if len(msg) < i2o.REPLY_BYTES:
            self._bad("reply without a status word")
            req.req_status, req.detail = 0xFF, 0
        else:
            req.req_status, req.detail = i2o.req_status(msg, 0), i2o.detail(msg, 0)
            req.parts.append(msg[i2o.REPLY_PAYLOAD:])
        if fl & i2o.FLAG_MULTIPLE and not fl & i2o.FLAG_LAST:
            return
        del self._pending[tctx]
        if req.req_status == 0xFF:
            req.error = oserror(errno.EIO, f"{req.what}: malformed reply")
        else:
            req.error = status_error(req.req_status, req.detail, req.what)
        self._complete(req)

    def _complete(self, req: _Request) -> None:
        req.done = True
        if req.on_reply is not None:
            try:
                req.on_reply(req)
            except Exception:
                log.exception("reply handler failed")
        self._cond.notify_all()

    def _on_fail(self, msg: bytes) -> None:
        reason = i2o.detail(msg, 0) if len(msg) >= i2o.REPLY_BYTES else 0
        copied = i2o.REPLY_BYTES + 4        # after the status word and the preserved MFA
        if len(msg) < copied + i2o.HEADER_BYTES:
            self._bad(f"FAIL reply (reason 0x{reason:02x}) without the refused frame")
            return
        ictx, tctx = struct.unpack_from("<II", msg, copied + 8)
        fn = i2o.function(msg, copied)
        req = self._pending.pop(tctx, None) if tctx else None
        log.warning("the board refused function 0x%02x (reason 0x%02x, context 0x%08x)",
                    fn, reason, tctx)
        if req is None:
            ep = self._eps.get(ictx)
            if ep is not None and fn == i2o.F_UDP_SENDTO:
                ep.error = fail_error(reason, "sendto")
                self._changed(ep)
            return
        req.req_status, req.detail = i2o.RS_ERROR_NO_DATA, reason
        req.error = fail_error(reason, req.what)
        self._complete(req)

    def _on_event(self, fn: int, ictx: int, msg: bytes) -> None:
        p = i2o.EV_PAYLOAD      # events are replies with w3 = 0: their payload follows w4
        if fn == i2o.F_EV_DATA:
            if len(msg) < p + 6:
                self._bad("short EV_DATA")
                return
            handle, iop, fl, count = struct.unpack_from(i2o.EV_DATA_FMT, msg, p)
            data = msg[p + 6:p + 6 + count]
            if len(data) != count:
                self._bad("EV_DATA shorter than its byte count")
            ep = self._conns.get((iop, handle))
            if ep is None or ep.state != CONNECTED:
                log.debug("dropping %d bytes for unknown connection %d/%d", count, iop, handle)
                return
            ep.rx += data
            if fl & i2o.EV_FIN:
                ep.eof = True
            self._changed(ep)
        elif fn == i2o.F_EV_ACCEPTED:
            if len(msg) < p + 12:
                self._bad("short EV_ACCEPTED")
                return
            handle, iop, _, ip, pport, lport = struct.unpack_from(i2o.EV_ACCEPTED_FMT, msg, p)
            listener = self._eps.get(ictx)
            if listener is None or listener.state != LISTENING or listener.closed:
                log.debug("connection %d/%d for a listener that is gone: abort", iop, handle)
                self._post_nowait(iop, i2o.F_SOCK_ABORT,
                                  struct.pack(i2o.HANDLE_FMT, handle, 0), reply=True)
                return
            ep = Endpoint(self, stream=True)
            ep.state = CONNECTED
            ep.iop = iop
            ep.ism = handle
            ep.credit = listener.credit
            ep.peer = (str(ipaddress.IPv4Address(ip)), pport)
            ep.local = (self.address, lport)
            self._conns[(iop, handle)] = ep
            listener.accept_q.append(ep)
            self._changed(listener)
        elif fn == i2o.F_EV_CLOSED:
            if len(msg) < p + 6:
                self._bad("short EV_CLOSED")
                return
            handle, iop, _, err = struct.unpack_from(i2o.EV_CLOSED_FMT, msg, p)
            ep = self._conns.pop((iop, handle), None)
            if ep is None:
                log.debug("EV_CLOSED for unknown handle %d/%d", iop, handle)
                return
            if err:
                err = host_errno(err)
                ep.error = oserror(err)
            if ep.state == CONNECTED:
                ep.dead = True
                if not err:
                    ep.eof = True
            else:
                ep.handles.pop(iop, None)
            self._changed(ep)
        elif fn == i2o.F_EV_DATAGRAM:
            if len(msg) < p + 12:
                self._bad("short EV_DATAGRAM")
                return
            handle, iop, _, ip, port, count = struct.unpack_from(i2o.EV_DATAGRAM_FMT, msg, p)
            ep = self._conns.get((iop, handle))
            if ep is None or ep.state != BOUND:
                log.debug("dropping a datagram for unknown handle %d/%d", iop, handle)
                return
            ep.dgrams.append((msg[p + 12:p + 12 + count],
                              (str(ipaddress.IPv4Address(ip)), port), iop))
            self._changed(ep)

    # -- sockets and operations --------------------------------------------------------------

    def socket(self, family: int = _socket.AF_INET,
               type: int = _socket.SOCK_STREAM) -> Socket:
        """A new socket whose TCP/IP runs on the board (:class:`twinstack.socket.Socket`)."""
        from .socket import Socket

        return Socket(self, family, type)

    def _endpoint(self, stream: bool) -> Endpoint:
        with self._lock:
            self._check_up()
            return Endpoint(self, stream=stream)

    def stats(self, timeout: float | None = None) -> dict[str, int]:
        """The board's counters (PARAMS_GET to IOP 0; a multi-frame text reply)."""
        req = self._request(0, i2o.F_PARAMS_GET, b"", target=i2o.TID_EXEC,
                            timeout=self.timeout if timeout is None else timeout,
                            what="stats")
        return parse_counters(req.payload.rstrip(b"\0").decode(errors="replace"))

    def flows(self, timeout: float | None = None) -> list[dict[str, int | str]]:
        """The dispatcher's flow table (PARAMS_GET "flows" to IOP 0): one dict per flow with
        ``n``, ``key`` (``src:sport>dst:dport/proto``), ``owner``, ``pkts``, ``bytes`` and
        ``k0``, ``k1``, ... (the frames of the flow each kernel processed)."""
        req = self._request(0, i2o.F_PARAMS_GET, b"flows", target=i2o.TID_EXEC,
                            timeout=self.timeout if timeout is None else timeout,
                            what="flows")
        return parse_flows(req.payload.rstrip(b"\0").decode(errors="replace"))

    def configure(self, timeout: float | None = None, **settings: object) -> str:
        """Change the board at run time (PARAMS_SET to IOP 0); the settings of
        :meth:`twinstack.link.Link.configure`. Returns the board's text; raises OSError
        (errno, text) if the board refused a setting."""
        text = format_settings(settings).encode()
        req = self._request(0, i2o.F_PARAMS_SET, text, target=i2o.TID_EXEC,
                            timeout=self.timeout if timeout is None else timeout,
                            what="configure", raise_status=False)
        reply = req.payload.rstrip(b"\0").decode(errors="replace")
        if req.error is not None:
            err = req.error.errno or errno.EINVAL
            raise OSError(err, reply or req.error.strerror)
        return reply

    def status(self, timeout: float | None = None) -> dict[str, Any]:
        """The board's and the OSM's state: EXEC_STATUS_GET of every IOP, credits, sockets."""
        t = self.timeout if timeout is None else timeout
        iops = []
        for k in range(self.iops):
            req = self._request(k, i2o.F_EXEC_STATUS_GET, b"", target=i2o.TID_EXEC,
                                timeout=t, what=f"status of IOP {k}")
            data = req.payload
            need = struct.calcsize(i2o.STATUS_FMT)
            if len(data) < need:
                raise oserror(errno.EIO, f"short status reply from IOP {k}")
            iop, state, open_, max_, free = struct.unpack_from(i2o.STATUS_FMT, data)
            iops.append({"iop": iop, "state": state, "sockets": open_, "max_sockets": max_,
                         "free_mfas": free})
        with self._lock:
            return {"url": self.url, "epoch": self.epoch, "iops": iops,
                    "inbound_depth": self.inbound_depth, "frame_bytes": self.frame_bytes,
                    "out_frames": self.out_frames,
                    "host_free_mfas": [len(q) for q in self._free],
                    "sockets": len(self._eps), "pending": len(self._pending),
                    "protocol_errors": self.protocol_errors,
                    "link_errors": self._transport.errors if self._transport else 0}

    def quiesce(self, iop: int | None = None, timeout: float | None = None) -> None:
        """EXEC_SYS_QUIESCE: the IOP (or every IOP) aborts all its sockets; the host
        sockets on it are reset."""
        targets = range(self.iops) if iop is None else [iop]
        for k in targets:
            self._request(k, i2o.F_EXEC_SYS_QUIESCE, b"", target=i2o.TID_EXEC,
                          timeout=self.timeout if timeout is None else timeout,
                          what=f"quiesce IOP {k}")
        with self._lock:
            for ep in list(self._eps.values()):
                on = ep.iop in targets if ep.state in (CONNECTING, CONNECTED) \
                    else any(k in targets for k in ep.handles)
                if on:
                    ep.reset = "the board's IOP was quiesced"
                    # A listener or UDP socket also lives on the IOPs not quiesced: close it
                    # there, or its port stays taken and its connections keep coming.
                    for k, h in list(ep.handles.items()):
                        if k not in targets:
                            self._conns.pop((k, h), None)
                            func = i2o.F_SOCK_CLOSE if ep.stream else i2o.F_UDP_CLOSE
                            self._post_nowait(k, func, struct.pack(i2o.HANDLE_FMT, h, 0),
                                              reply=True)
                    self._forget(ep)
                    self._changed(ep)

    def reset(self, timeout: float | None = None) -> None:
        """EXEC_ADAPTER_RESET: every IOP aborts all its sockets; every host socket is
        reset. The board stays brought up."""
        self._request(0, i2o.F_EXEC_ADAPTER_RESET, b"", target=i2o.TID_EXEC,
                      timeout=self.timeout if timeout is None else timeout, what="reset")
        with self._lock:
            self._reset_all("the board was reset (ADAPTER_RESET)", down=False)

    def _forget(self, ep: Endpoint) -> None:
        """Drop ep from the tables (lock held)."""
        self._eps.pop(ep.handle, None)
        if ep.ism is not None:
            self._conns.pop((ep.iop, ep.ism), None)  # type: ignore[arg-type]
        for k, h in ep.handles.items():
            self._conns.pop((k, h), None)


class Endpoint:
    """The OSM's state of one socket (internal: applications use
    :class:`twinstack.socket.Socket` or the asyncio API). Fields change under the board's
    lock; ``timeout`` arguments: None blocks, 0 raises BlockingIOError, else TimeoutError."""

    def __init__(self, board: Board, *, stream: bool) -> None:
        self.board = board
        self.stream = stream
        self.handle = board._new_handle()
        board._eps[self.handle] = self
        self.state = NEW
        self.iop: int | None = None
        self.ism: int | None = None              # the connection's ISM handle
        self.handles: dict[int, int] = {}         # listeners and UDP: IOP -> ISM handle
        self.credit = board.rx_credit
        self.local: tuple[str, int] = ("0.0.0.0", 0)
        self.peer: tuple[str, int] | None = None
        self.rx = bytearray()
        self.dgrams: deque[tuple[bytes, tuple[str, int], int]] = deque()
        self.accept_q: deque[Endpoint] = deque()
        self.eof = False
        self.dead = False             # the board's handle is gone (EV_CLOSED)
        self.rd_shut = False
        self.wr_shut = False
        self.closed = False
        self.reset: str | None = None
        self.error: OSError | None = None
        self.unreported = 0
        self.unreported_udp: dict[int, int] = {}
        self.in_flight = 0
        self.consumed_reports = 0
        self.watchers: list[Callable[[], None]] = []
        self._connect_gen = 0
        self._connect_error: OSError | None = None

    def __repr__(self) -> str:
        return (f"<Endpoint {self.handle} {_STATE_NAMES[self.state]} iop={self.iop} "
                f"ism={self.ism} rx={len(self.rx)}{' reset' if self.reset else ''}>")

    # -- checks (lock held) ------------------------------------------------------------------

    def _check(self) -> None:
        if self.closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        if self.reset:
            raise ConnectionResetError(errno.ECONNRESET, self.reset)

    def _broken(self) -> bool:
        return bool(self.closed or self.reset)

    @property
    def readable(self) -> bool:
        """recv/accept/recvfrom would not block (lock held)."""
        if self._broken() or self.error is not None:
            return True
        if self.state == CONNECTED:
            return bool(self.rx) or self.eof or self.rd_shut or self.dead
        if self.state == LISTENING:
            return bool(self.accept_q)
        if self.state == BOUND:
            return bool(self.dgrams)
        return self.state == NEW and self._connect_error is not None

    @property
    def writable(self) -> bool:
        """send/sendto would not block (lock held)."""
        if self._broken() or self.error is not None:
            return True
        b = self.board
        if self.state == CONNECTED:
            if self.dead or self.wr_shut:
                return True
            return self.in_flight < MAX_SENDS_IN_FLIGHT and bool(b._free[self.iop])  # type: ignore[index]
        if self.state == BOUND:
            return bool(b._free[min(self.handles)]) if self.handles else False
        return self.state == NEW and self._connect_error is not None

    # -- TCP ---------------------------------------------------------------------------------

    def connect(self, host: str, port: int, local_port: int, timeout: float | None) -> None:
        b = self.board
        ip = ip_bytes(host)
        with b._lock:
            self._check()
            if self.state == CONNECTED:
                raise OSError(errno.EISCONN, os.strerror(errno.EISCONN))
            if self.state == NEW and self._connect_error is not None:
                err, self._connect_error = self._connect_error, None
                raise err
            start = self.state == NEW
            if start:
                if not self.stream:
                    raise OSError(errno.EOPNOTSUPP, "connect() on a datagram socket")
                self.iop = b._pick_iop()
                self.state = CONNECTING
                self.peer = (host, port)
            elif self.state != CONNECTING:
                raise OSError(errno.EINVAL, "the socket cannot connect in this state")
            elif timeout == 0:
                raise BlockingIOError(errno.EALREADY, os.strerror(errno.EALREADY))
        if start:
            payload = struct.pack(i2o.CONNECT_FMT, ip, port, local_port, self.credit)
            with b._lock:
                self._connect_gen += 1
                gen = self._connect_gen
                if timeout == 0:
                    # Non-blocking: the CONNECT waits for a free MFA in the OSM, not here.
                    b._post_nowait(self.iop, i2o.F_SOCK_CONNECT, payload,  # type: ignore[arg-type]
                                   ictx=self.handle, reply=True,
                                   on_reply=functools.partial(self._connect_done, gen=gen))
            if timeout == 0:
                b._drain()
                raise BlockingIOError(errno.EINPROGRESS, os.strerror(errno.EINPROGRESS))
            try:
                b._request(self.iop, i2o.F_SOCK_CONNECT, payload,  # type: ignore[arg-type]
                           ictx=self.handle, timeout=timeout, wait=False,
                           on_reply=functools.partial(self._connect_done, gen=gen),
                           what=f"connect to {host}:{port}")
            except BaseException:
                with b._lock:
                    self.state = NEW
                raise
        with b._cond:
            try:
                b._wait(lambda: self.state != CONNECTING or self._broken(), timeout,
                        f"connect to {host}:{port}")
            except TimeoutError:
                # The board may still finish: _connect_done aborts what it opens then.
                self._connect_gen += 1
                self.state = NEW
                raise
            self._check()
            if self.state != CONNECTED:
                err, self._connect_error = self._connect_error, None
                raise err or oserror(errno.ECONNREFUSED)

    def _connect_done(self, req: _Request, *, gen: int) -> None:
        b = self.board
        data = req.payload
        handle = struct.unpack_from("<H", data)[0] if len(data) >= 2 else None
        if gen != self._connect_gen or self.state != CONNECTING or self.closed or self.reset:
            # A connect the application gave up on: do not leave it open on the board.
            if req.error is None and handle is not None:
                b._post_nowait(req.iop, i2o.F_SOCK_ABORT,
                               struct.pack(i2o.HANDLE_FMT, handle, 0), reply=True)
            return
        if req.error is None and len(data) >= 4:
            handle, lport = struct.unpack_from(i2o.CONNECT_REPLY_FMT, data)
            self.ism = handle
            self.local = (b.address, lport)
            b._conns[(req.iop, handle)] = self
            self.state = CONNECTED
        else:
            self.state = NEW
            self._connect_error = req.error or oserror(errno.EIO, "short CONNECT reply")
        b._changed(self)

    def listen(self, port: int, backlog: int) -> None:
        b = self.board
        with b._lock:
            self._check()
            if self.state == LISTENING:
                return
            if self.state != NEW or not self.stream:
                raise OSError(errno.EINVAL, "listen() needs an unconnected stream socket")
            self.state = LISTENING
            self.local = (self.local[0], port)
        payload = struct.pack(i2o.LISTEN_FMT, port, max(0, min(backlog, 0xFFFF)), self.credit)
        try:
            for k in range(b.iops):
                b._request(k, i2o.F_SOCK_LISTEN, payload, ictx=self.handle,
                           timeout=b.timeout, on_reply=self._listen_done,
                           what=f"listen on port {port}")
        except BaseException:
            with b._lock:
                self._close_handles(i2o.F_SOCK_CLOSE)
                self.state = NEW
            b._drain()
            raise

    def _listen_done(self, req: _Request) -> None:
        data = req.payload
        if req.error is None and len(data) >= 2:
            handle = struct.unpack_from(i2o.LISTEN_REPLY_FMT, data)[0]
            if self.closed or self.reset or self.state != LISTENING:
                self.board._post_nowait(req.iop, i2o.F_SOCK_CLOSE,
                                        struct.pack(i2o.HANDLE_FMT, handle, 0), reply=True)
                return
            self.handles[req.iop] = handle
            self.board._conns[(req.iop, handle)] = self
        elif req.error is None:
            req.error = oserror(errno.EIO, "short LISTEN reply")

    def _close_handles(self, function: int) -> None:
        """CLOSE (or UDP_CLOSE) every per-IOP handle (lock held)."""
        b = self.board
        for k, h in self.handles.items():
            b._conns.pop((k, h), None)
            b._post_nowait(k, function, struct.pack(i2o.HANDLE_FMT, h, 0), reply=True)
        self.handles = {}

    def accept(self, timeout: float | None) -> Endpoint:
        b = self.board
        with b._cond:
            self._check()
            if self.state != LISTENING:
                raise OSError(errno.EINVAL, "accept() on a socket that is not listening")
            b._wait(lambda: self.accept_q or self._broken() or self.error is not None,
                    timeout, "accept")
            self._check()
            if self.accept_q:
                ep = self.accept_q.popleft()
                if ep.reset:
                    raise ConnectionResetError(errno.ECONNRESET, ep.reset)
                return ep
            err, self.error = self.error, None
            raise err  # type: ignore[misc]

    def _check_send(self) -> None:
        self._check()
        if self.error is not None:
            raise self.error
        if self.state != CONNECTED:
            raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
        if self.wr_shut or self.dead:
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    def send(self, data: bytes | bytearray | memoryview, timeout: float | None,
             sendall: bool = False) -> int:
        """Send data in SEND messages of at most ``max_send`` bytes, at most
        MAX_SENDS_IN_FLIGHT unanswered. send(): as much as goes without waiting after the
        first message; sendall(): everything, within the timeout."""
        b = self.board
        view = memoryview(data).cast("B")
        if not view:
            with b._lock:
                self._check_send()
            return 0
        deadline = _deadline(timeout)
        total = 0
        chunk_max = b.max_send
        while total < len(view):
            wait = _left(deadline) if (sendall or not total) else 0
            try:
                with b._cond:
                    self._check_send()
                    b._wait(lambda: self.in_flight < MAX_SENDS_IN_FLIGHT or self._broken()
                            or self.error is not None or self.dead, wait, "send")
                    self._check_send()
                    self.in_flight += 1
                chunk = bytes(view[total:total + chunk_max])
                payload = struct.pack(i2o.SEND_FMT, self.ism, len(chunk)) + chunk
                try:
                    b._request(self.iop, i2o.F_SOCK_SEND, payload,  # type: ignore[arg-type]
                               ictx=self.handle, timeout=wait, wait=False, what="send",
                               on_reply=functools.partial(self._send_done, count=len(chunk)))
                except BaseException:
                    with b._lock:
                        self.in_flight -= 1
                    raise
            except (BlockingIOError, TimeoutError):
                if total and not sendall:
                    break
                raise
            total += len(chunk)
        return total

    def _send_done(self, req: _Request, *, count: int) -> None:
        self.in_flight -= 1
        data = req.payload
        if req.error is not None:
            if self.error is None and not self.dead:
                self.error = req.error
        elif len(data) >= 4:
            accepted = struct.unpack_from(i2o.SEND_REPLY_FMT, data)[1]
            if accepted < count and self.error is None and not self.dead:
                # The board takes a SEND whole or fails it; a short count means the
                # connection broke under it, and the stream is no longer intact.
                self.error = oserror(errno.EPIPE, f"the board accepted {accepted} of "
                                                  f"{count} bytes")
        self.board._changed(self)

    def _consumed(self, n: int) -> None:
        """The application read n bytes: report them in batches of a quarter of the
        credit, so the board reopens its TCP window (lock held)."""
        if self.dead or self.ism is None or not n:
            return
        self.unreported += n
        if self.unreported >= max(1, self.credit // 4):
            self.board._post_nowait(self.iop, i2o.F_SOCK_CONSUMED,  # type: ignore[arg-type]
                                    struct.pack(i2o.CONSUMED_FMT, self.ism, 0,
                                                self.unreported), ictx=self.handle)
            self.unreported = 0
            self.consumed_reports += 1

    def take(self, n: int) -> bytes:
        """Up to n received bytes now (lock held; b"" if none); counts them as consumed."""
        data = bytes(self.rx[:n])
        del self.rx[:len(data)]
        self._consumed(len(data))
        return data

    def recv(self, n: int, timeout: float | None) -> bytes:
        b = self.board
        if n < 0:
            raise ValueError("negative buffersize in recv")
        with b._cond:
            self._check()
            if self.state != CONNECTED:
                raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
            if self.rd_shut:
                return b""
            b._wait(lambda: self.rx or self.eof or self.dead or self.error is not None
                    or self._broken() or self.rd_shut, timeout, "recv")
            self._check()
            if self.rx and n:
                data = self.take(n)
            elif self.error is not None and not self.rx:
                raise self.error
            else:
                data = b""
        b._drain()
        return data

    def shutdown(self, how: int) -> None:
        b = self.board
        with b._lock:
            self._check()
            if self.state != CONNECTED:
                raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
            if how not in (i2o.SHUT_RD, i2o.SHUT_WR, i2o.SHUT_RDWR):
                raise ValueError("how must be SHUT_RD, SHUT_WR or SHUT_RDWR")
            if how != i2o.SHUT_WR:
                self.rd_shut = True
            if how != i2o.SHUT_RD:
                self.wr_shut = True
            if not self.dead:
                b._post_nowait(self.iop, i2o.F_SOCK_SHUTDOWN,  # type: ignore[arg-type]
                               struct.pack(i2o.HANDLE_FMT, self.ism, how), ictx=self.handle,
                               reply=True)
            b._changed(self)
        b._drain()

    def close(self, abort: bool = False) -> None:
        """Close gracefully (CLOSE: FIN after the queued data) or ``abort`` (RST)."""
        b = self.board
        with b._lock:
            if self.closed:
                return
            self.closed = True
            if b._eps.get(self.handle) is self:
                b._forget(self)
                if self.state == CONNECTED and not self.dead and self.ism is not None:
                    fn = i2o.F_SOCK_ABORT if abort else i2o.F_SOCK_CLOSE
                    b._post_nowait(self.iop, fn,  # type: ignore[arg-type]
                                   struct.pack(i2o.HANDLE_FMT, self.ism, 0),
                                   ictx=self.handle, reply=True)
                elif self.state == LISTENING:
                    self._close_handles(i2o.F_SOCK_CLOSE)
                    while self.accept_q:
                        self.accept_q.popleft().close(abort=True)
                elif self.state == BOUND:
                    self._close_handles(i2o.F_UDP_CLOSE)
            self.rx.clear()
            self.dgrams.clear()
            b._changed(self)
        b._drain()

    # -- UDP ---------------------------------------------------------------------------------

    def bind_udp(self, port: int) -> None:
        b = self.board
        with b._lock:
            self._check()
            if self.state != NEW or self.stream:
                raise OSError(errno.EINVAL, "the socket is already bound")
            self.state = BOUND
        try:
            for k in range(b.iops):
                payload = struct.pack(i2o.UDP_BIND_FMT, port, 0, self.credit)
                req = b._request(k, i2o.F_UDP_BIND, payload, ictx=self.handle,
                                 timeout=b.timeout, what=f"bind UDP port {port}")
                data = req.payload
                if len(data) < 2:
                    raise oserror(errno.EIO, "short UDP_BIND reply")
                handle = struct.unpack_from("<H", data)[0]
                with b._lock:
                    self.handles[k] = handle
                    b._conns[(k, handle)] = self
                if port == 0 and len(data) >= struct.calcsize(i2o.UDP_BIND_REPLY_FMT):
                    # The first IOP picked the port; the others bind the same one.
                    port = struct.unpack_from(i2o.UDP_BIND_REPLY_FMT, data)[1]
            self.local = (self.local[0], port)
        except BaseException:
            with b._lock:
                self._close_handles(i2o.F_UDP_CLOSE)
                self.state = NEW
            b._drain()
            raise

    def sendto(self, data: bytes | bytearray | memoryview, host: str, port: int,
               timeout: float | None) -> int:
        b = self.board
        ip = ip_bytes(host)
        with b._lock:
            self._check()
            bound = self.state == BOUND
        if not bound:
            self.bind_udp(0)
        with b._lock:
            self._check()
            if self.error is not None:
                err, self.error = self.error, None
                raise err
            iop = min(self.handles)
            handle = self.handles[iop]
        data = bytes(data)
        head = struct.pack(i2o.SENDTO_FMT, handle, 0, ip, port, len(data))
        if i2o.words(i2o.HEADER_BYTES + len(head) + len(data)) * 4 > b.frame_bytes:
            raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
        b._post(iop, i2o.F_UDP_SENDTO, head + data, ictx=self.handle, timeout=timeout)
        return len(data)

    def recvfrom(self, n: int, timeout: float | None) -> tuple[bytes, tuple[str, int]]:
        b = self.board
        with b._cond:
            self._check()
            if self.state != BOUND:
                raise OSError(errno.EINVAL, "recvfrom() on a socket that is not bound")
            b._wait(lambda: self.dgrams or self.error is not None or self._broken(),
                    timeout, "recvfrom")
            self._check()
            if not self.dgrams:
                err, self.error = self.error, None
                raise err  # type: ignore[misc]
            data, addr, iop = self.dgrams.popleft()
            got = self.unreported_udp.get(iop, 0) + len(data)
            if got >= max(1, self.credit // 4) and iop in self.handles:
                b._post_nowait(iop, i2o.F_SOCK_CONSUMED,
                               struct.pack(i2o.CONSUMED_FMT, self.handles[iop], 0, got),
                               ictx=self.handle)
                got = 0
            self.unreported_udp[iop] = got
        b._drain()
        return data[:n], addr


def connect(url: str, *, timeout: float = 5.0, out_frames: int = 32,
            frame_bytes: int = i2o.MAX_FRAME_BYTES, rx_credit: int = 16384) -> Board:
    """Open the board at ``url`` (a serial device, a pty, ``socket://host:port``) and bring
    up its messaging unit. Raises :class:`twinstack.VersionMismatch` if the board speaks
    another protocol version, TimeoutError if it does not answer."""
    return Board(url, timeout=timeout, out_frames=out_frames, frame_bytes=frame_bytes,
                 rx_credit=rx_credit)
