"""A fake TwinStack board for host tests: the messaging unit and a socket ISM per IOP.

It speaks the real link frames (decoded and encoded with the firmware's own
:mod:`linkframe` code, so the host's faster codec is checked against it) over a local TCP
connection: the host opens ``fake.url`` (``socket://127.0.0.1:<port>``) like a board.

It is strict about the messaging-unit rules of :mod:`i2o`: every breach by the host is
appended to ``fake.violations`` (tests assert it stays empty) and answered as the board
would (a FAIL reply):

- a POST before INIT, to an IOP that does not exist, with an MFA out of range or one that
  the host does not hold (in use: posted and not yet freed);
- a message larger than the negotiated frame;
- a FLUSH of an outbound frame the host does not hold.

The socket ISM implements TCP between its own handles in memory (connect to a port some
host socket listens on, on the IOP the connection "hashes" to: local port % IOPs), an echo
service on port 7 (TCP and UDP), UDP between bound handles, receive credit (EV_DATA only
within ``credit - (delivered - consumed)``), FIN, close, abort, quiesce and adapter reset,
PARAMS_GET (a text long enough for several frames), PARAMS_SET and STATUS_GET.

Test hooks: ``pause(iop)`` / ``resume(iop)`` (hold the IOP's messages: no replies, no MFAs
back), ``fail_next[function] = reason`` (answer the next such message with a FAIL reply),
``drop_link()``, ``send_ready(epoch)``.
"""

from __future__ import annotations

import queue
import socket
import struct
import threading
from collections import Counter, deque

from twinstack.proto import i2o
from twinstack.proto import linkframe as lf

BOARD_IP = bytes((10, 0, 0, 2))
ECHO_PORT = 7
EPIPE, ECONNRESET, ECONNABORTED, EADDRINUSE, ECONNREFUSED, EINVAL = 32, 104, 103, 98, 111, 22


class FSock:
    """A socket of the fake ISM."""

    def __init__(self, kind: str, iop: int, handle: int, ctx: bytes, credit: int) -> None:
        self.kind = kind            # "listen", "tcp", "udp", "echo"
        self.iop = iop
        self.handle = handle
        self.ctx = ctx              # the OSM handle (w2) events carry
        self.credit = credit
        self.port = 0
        self.peer: FSock | None = None
        self.pending = bytearray()  # data on its way to the host
        self.delivered = 0
        self.consumed = 0
        self.fin_pending = False    # the peer sent FIN: deliver it after the data
        self.fin_sent = False
        self.shut_wr = False
        self.alive = True
        self.dropped = 0


class FakeBoard:
    def __init__(self, *, iops: int = 2, depth: int = 4, version: int = i2o.PROTOCOL_VERSION,
                 epoch: int = 1, frame_bytes: int = i2o.MAX_FRAME_BYTES,
                 params_text_bytes: int = 5000) -> None:
        self.iops = iops
        self.depth = depth
        self.version = version
        self.epoch = epoch
        self.max_frame_bytes = frame_bytes
        self.params_text_bytes = params_text_bytes
        self.lock = threading.RLock()
        self.violations: list[str] = []
        self.received: Counter[int] = Counter()       # messages by function
        self.consumed_log: list[tuple[int, int, int]] = []
        self.config: dict[str, str] = {}
        self.fail_next: dict[int, int] = {}
        self.paused: set[int] = set()
        self.held: dict[int, list[tuple[int, bytes]]] = {k: [] for k in range(iops)}
        self.inits = 0
        self.max_in_use = [0] * iops
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(4)
        self.url = f"socket://127.0.0.1:{self._srv.getsockname()[1]}"
        self._conn: socket.socket | None = None
        self._out: queue.Queue[bytes | None] | None = None
        self._closing = False
        self._reset_state()
        self.up = False
        threading.Thread(target=self._serve, daemon=True, name="fakeboard-accept").start()

    # -- life ---------------------------------------------------------------------------------

    def close(self) -> None:
        self._closing = True
        self.drop_link()
        self._srv.close()

    def drop_link(self) -> None:
        """Close the board's end of the link (the host sees end of file)."""
        with self.lock:
            conn, self._conn = self._conn, None
            out, self._out = self._out, None
        if out is not None:
            out.put(None)
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _serve(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.drop_link()
            out: queue.Queue[bytes | None] = queue.Queue()
            with self.lock:
                self._conn = conn
                self._out = out
            threading.Thread(target=self._writer, args=(conn, out), daemon=True).start()
            threading.Thread(target=self._reader, args=(conn,), daemon=True).start()

    def _writer(self, conn: socket.socket, out: queue.Queue[bytes | None]) -> None:
        while True:
            data = out.get()
            if data is None:
                return
            try:
                conn.sendall(data)
            except OSError:
                return

    def _reader(self, conn: socket.socket) -> None:
        deframer = lf.Deframer(self._on_frame)
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                if conn is not self._conn:
                    return
                deframer.feed(data, len(data))
                self._send_frees()

    def _send(self, kind: int, body: bytes) -> None:
        payload = bytes((kind,)) + body
        out = bytearray(lf.encoded_size(len(payload)))
        n = lf.encode_into(payload, len(payload), out)
        if self._out is not None:
            self._out.put(bytes(out[:n]))

    def send_ready(self, epoch: int) -> None:
        with self.lock:
            self.epoch = epoch
            self._send(lf.KIND_I2O_READY, struct.pack("<I", epoch))

    def _reset_state(self) -> None:
        self.in_use: list[set[int]] = [set() for _ in range(self.iops)]
        self.to_free: list[list[int]] = [[] for _ in range(self.iops)]
        self.out_free: deque[int] = deque()
        self.out_sent: set[int] = set()
        self.backlog: deque[bytes] = deque()
        self.slots: list[list[FSock | None]] = [[None] * 256 for _ in range(self.iops)]
        self.gens = [[0] * 256 for _ in range(self.iops)]
        self.listeners: dict[tuple[int, int], FSock] = {}
        self.udp: dict[tuple[int, int], FSock] = {}
        self.next_port = 40000
        self.frame_bytes = self.max_frame_bytes
        for k in range(self.iops):
            self.held[k] = []

    # -- the messaging unit -----------------------------------------------------------------

    def violation(self, text: str) -> None:
        self.violations.append(text)

    def _on_frame(self, buf: bytearray, n: int) -> None:
        kind = buf[0]
        body = bytes(buf[1:n])
        if kind == lf.KIND_I2O_INIT:
            self._init(body)
        elif kind == lf.KIND_I2O_POST:
            self._post(body)
        elif kind == lf.KIND_I2O_FLUSH:
            count = body[0]
            for (mfa,) in struct.iter_unpack("<H", body[1:1 + 2 * count]):
                if mfa not in self.out_sent:
                    self.violation(f"FLUSH of outbound frame {mfa} the host does not hold")
                    continue
                self.out_sent.discard(mfa)
                self.out_free.append(mfa)
            while self.backlog and self.out_free:
                self._emit(self.backlog.popleft())

    def _init(self, body: bytes) -> None:
        version, frames, frame_bytes, credit = struct.unpack_from(i2o.INIT_FMT, body)
        self.inits += 1
        if version != self.version:
            self._send(lf.KIND_I2O_INIT_REPLY, struct.pack(
                i2o.INIT_REPLY_FMT, i2o.INIT_BAD_VERSION, self.version, i2o.VERSION, 0, 0, 0,
                0, 0, self.epoch))
            return
        self._reset_state()
        self.frame_bytes = min(frame_bytes, self.max_frame_bytes)
        self.out_free = deque(range(frames))
        self.up = True
        self._send(lf.KIND_I2O_INIT_REPLY, struct.pack(
            i2o.INIT_REPLY_FMT, i2o.INIT_OK, self.version, i2o.VERSION, self.iops, 16,
            self.depth, self.frame_bytes, frames, self.epoch))

    def _post(self, body: bytes) -> None:
        iop, mfa = struct.unpack_from("<BH", body)
        msg = body[3:]
        if not self.up:
            self.violation("POST before INIT")
            return self._fail(iop, mfa, msg, i2o.FAIL_NOT_READY)
        if iop >= self.iops:
            self.violation(f"POST to IOP {iop}")
            return self._fail(iop, mfa, msg, i2o.FAIL_BAD_IOP)
        if mfa >= self.depth:
            self.violation(f"POST with MFA {mfa} out of range")
            return self._fail(iop, mfa, msg, i2o.FAIL_BAD_MFA)
        if mfa in self.in_use[iop]:
            self.violation(f"POST to IOP {iop} with MFA {mfa}, which is in use")
            return self._fail(iop, mfa, msg, i2o.FAIL_MFA_IN_USE, free=False)
        self.in_use[iop].add(mfa)
        self.max_in_use[iop] = max(self.max_in_use[iop], len(self.in_use[iop]))
        if len(msg) > self.frame_bytes:
            self.violation(f"message of {len(msg)} bytes in {self.frame_bytes}-byte frames")
            return self._fail(iop, mfa, msg, i2o.FAIL_FRAME_TOO_LARGE)
        if iop in self.paused:
            self.held[iop].append((mfa, msg))
            return
        self._process(iop, mfa, msg)

    def _free(self, iop: int, mfa: int) -> None:
        self.in_use[iop].discard(mfa)
        self.to_free[iop].append(mfa)

    def _send_frees(self) -> None:
        for k, mfas in enumerate(self.to_free):
            while mfas:
                part, mfas[:] = mfas[:255], mfas[255:]
                self._send(lf.KIND_I2O_FREE, bytes((k, len(part))) +
                           struct.pack(f"<{len(part)}H", *part))

    def pause(self, iop: int) -> None:
        with self.lock:
            self.paused.add(iop)

    def resume(self, iop: int) -> None:
        with self.lock:
            self.paused.discard(iop)
            held, self.held[iop] = self.held[iop], []
            for mfa, msg in held:
                self._process(iop, mfa, msg)
            self._send_frees()

    def _emit(self, msg: bytes) -> None:
        """Send a message in a free outbound frame (or wait for one)."""
        if not self.out_free:
            self.backlog.append(msg)
            return
        mfa = self.out_free.popleft()
        self.out_sent.add(mfa)
        self._send(lf.KIND_I2O_REPLY, struct.pack("<H", mfa) + msg)

    def _reply(self, req: bytes, payload: bytes = b"", *, req_status: int = i2o.RS_SUCCESS,
               detail: int = 0, flags: int = i2o.FLAG_REPLY) -> None:
        n = i2o.REPLY_BYTES + len(payload)
        buf = bytearray(i2o.words(n) * 4)
        i2o.put_header(buf, 0, flags, i2o.words(n), i2o.TID_HOST, i2o.target(req, 0),
                       i2o.function(req, 0))
        i2o.copy_contexts(buf, 0, req, 0)
        i2o.put_status(buf, 0, req_status, detail)
        buf[i2o.REPLY_PAYLOAD:n] = payload
        self._emit(bytes(buf))

    def _error(self, req: bytes, err: int) -> None:
        self._reply(req, req_status=i2o.RS_ERROR_NO_DATA, detail=i2o.errno_status(err))

    def _event(self, fn: int, ctx: bytes, payload: bytes) -> None:
        # As the contract says (i2o.EV_PAYLOAD): a reply with w3 = 0 and a success status.
        n = i2o.EV_PAYLOAD + len(payload)
        buf = bytearray(i2o.words(n) * 4)
        i2o.put_header(buf, 0, i2o.FLAG_REPLY, i2o.words(n), i2o.TID_HOST, i2o.TID_SOCKET, fn)
        buf[8:12] = ctx
        i2o.put_status(buf, 0, i2o.RS_SUCCESS, 0)
        buf[i2o.EV_PAYLOAD:n] = payload
        self._emit(bytes(buf))

    def _fail(self, iop: int, mfa: int, msg: bytes, reason: int, free: bool = True) -> None:
        copy = bytes(msg[:i2o.FAIL_COPY_WORDS * 4]).ljust(i2o.FAIL_COPY_WORDS * 4, b"\0")
        n = i2o.REPLY_BYTES + 4 + len(copy)
        buf = bytearray(n)
        i2o.put_header(buf, 0, i2o.FLAG_REPLY | i2o.FLAG_FAIL, i2o.words(n), i2o.TID_HOST,
                       i2o.TID_EXEC, i2o.function(copy, 0))
        if len(msg) >= 16:
            i2o.copy_contexts(buf, 0, msg, 0)
        i2o.put_status(buf, 0, i2o.RS_ERROR_NO_DATA, reason)
        struct.pack_into("<I", buf, i2o.REPLY_BYTES, (iop << 16) | mfa)
        buf[i2o.REPLY_BYTES + 4:] = copy
        self._emit(bytes(buf))
        if free and iop < self.iops and mfa < self.depth and self.up:
            self._free(iop, mfa)

    # -- the socket ISM ---------------------------------------------------------------------

    def _alloc(self, kind: str, iop: int, ctx: bytes, credit: int) -> FSock:
        slots = self.slots[iop]
        slot = slots.index(None)
        self.gens[iop][slot] = (self.gens[iop][slot] + 1) & 0xFF
        s = FSock(kind, iop, slot | (self.gens[iop][slot] << 8), ctx, credit)
        slots[slot] = s
        return s

    def _lookup(self, iop: int, handle: int) -> FSock | None:
        s = self.slots[iop][handle & 0xFF]
        return s if s is not None and s.handle == handle and s.alive else None

    def _kill(self, s: FSock) -> None:
        s.alive = False
        if self.slots[s.iop][s.handle & 0xFF] is s:
            self.slots[s.iop][s.handle & 0xFF] = None

    def sockets(self, iop: int) -> list[FSock]:
        return [s for s in self.slots[iop] if s is not None]

    def _data_room(self) -> int:
        return (self.frame_bytes & ~3) - i2o.HEADER_BYTES - 6

    def _deliver(self, s: FSock) -> None:
        """Send what the host has credit for; then a FIN; then EV_CLOSED if both are
        done."""
        if not s.alive or s.kind != "tcp":
            return
        while s.pending:
            window = s.credit - (s.delivered - s.consumed)
            n = min(len(s.pending), window, self._data_room())
            if n <= 0:
                return
            data = bytes(s.pending[:n])
            del s.pending[:n]
            s.delivered += n
            self._event(i2o.F_EV_DATA, s.ctx,
                        struct.pack(i2o.EV_DATA_FMT, s.handle, s.iop, 0, n) + data)
        if s.fin_pending and not s.fin_sent:
            s.fin_sent = True
            self._event(i2o.F_EV_DATA, s.ctx,
                        struct.pack(i2o.EV_DATA_FMT, s.handle, s.iop, i2o.EV_FIN, 0))
        if s.fin_sent and s.shut_wr:
            self._event(i2o.F_EV_CLOSED, s.ctx,
                        struct.pack(i2o.EV_CLOSED_FMT, s.handle, s.iop, 0, 0))
            self._kill(s)

    def _to_peer(self, s: FSock, data: bytes) -> None:
        peer = s.peer
        if peer is None:
            return
        if peer.kind == "echo":
            s.pending += data
            self._deliver(s)
        elif peer.alive:
            peer.pending += data
            self._deliver(peer)

    def _fin_to_peer(self, s: FSock) -> None:
        peer = s.peer
        if peer is None:
            return
        if peer.kind == "echo":
            s.fin_pending = True
            self._deliver(s)
        elif peer.alive:
            peer.fin_pending = True
            self._deliver(peer)

    def _abort(self, s: FSock, err: int, tell_host: bool) -> None:
        if not s.alive:
            return
        self._kill(s)
        if tell_host and s.kind == "tcp":
            self._event(i2o.F_EV_CLOSED, s.ctx,
                        struct.pack(i2o.EV_CLOSED_FMT, s.handle, s.iop, 0, err))
        peer = s.peer
        if s.kind == "tcp" and peer is not None and peer.kind == "tcp" and peer.alive:
            self._abort(peer, ECONNRESET, True)
        if s.kind == "listen":
            self.listeners.pop((s.iop, s.port), None)
        if s.kind == "udp":
            self.udp.pop((s.iop, s.port), None)

    def _process(self, iop: int, mfa: int, msg: bytes) -> None:
        try:
            self._process_one(iop, mfa, msg)
        finally:
            if mfa in self.in_use[iop]:
                self._free(iop, mfa)

    def _process_one(self, iop: int, mfa: int, msg: bytes) -> None:
        if (len(msg) < i2o.HEADER_BYTES or i2o.version(msg, 0) != i2o.VERSION
                or i2o.size_words(msg, 0) * 4 != len(msg)):
            self.violation(f"bad header {msg[:16].hex()}")
            return self._fail(iop, mfa, msg, i2o.FAIL_BAD_HEADER, free=False)
        fn = i2o.function(msg, 0)
        self.received[fn] += 1
        if fn in self.fail_next:
            return self._fail(iop, mfa, msg, self.fail_next.pop(fn), free=False)
        ctx = bytes(msg[8:12])
        p = i2o.PAYLOAD
        if fn == i2o.F_UTIL_NOP:
            return
        if fn == i2o.F_SOCK_LISTEN:
            port, _backlog, credit = struct.unpack_from(i2o.LISTEN_FMT, msg, p)
            if (iop, port) in self.listeners:
                return self._error(msg, EADDRINUSE)
            s = self._alloc("listen", iop, ctx, credit)
            s.port = port
            self.listeners[(iop, port)] = s
            return self._reply(msg, struct.pack(i2o.LISTEN_REPLY_FMT, s.handle))
        if fn == i2o.F_SOCK_CONNECT:
            _ip, port, lport, credit = struct.unpack_from(i2o.CONNECT_FMT, msg, p)
            if not lport:
                self.next_port += 1
                lport = self.next_port
            at = lport % self.iops
            listener = self.listeners.get((at, port))
            if listener is None and port != ECHO_PORT:
                return self._error(msg, ECONNREFUSED)
            c = self._alloc("tcp", iop, ctx, credit)
            c.port = lport
            if listener is None:
                c.peer = FSock("echo", at, 0, b"\0" * 4, 0)
                return self._reply(msg, struct.pack(i2o.CONNECT_REPLY_FMT, c.handle, lport))
            srv = self._alloc("tcp", at, listener.ctx, listener.credit)
            srv.port = port
            c.peer, srv.peer = srv, c
            self._reply(msg, struct.pack(i2o.CONNECT_REPLY_FMT, c.handle, lport))
            return self._event(i2o.F_EV_ACCEPTED, listener.ctx, struct.pack(
                i2o.EV_ACCEPTED_FMT, srv.handle, at, 0, BOARD_IP, lport, port))
        if fn in (i2o.F_SOCK_SEND, i2o.F_SOCK_CLOSE, i2o.F_SOCK_SHUTDOWN, i2o.F_SOCK_ABORT,
                  i2o.F_UDP_SENDTO, i2o.F_UDP_CLOSE):
            handle, arg = struct.unpack_from("<HH", msg, p)
            s = self._lookup(iop, handle)
            if s is None:
                return self._reply(msg, req_status=i2o.RS_ERROR_NO_DATA,
                                   detail=i2o.DS_BAD_HANDLE)
            if fn == i2o.F_SOCK_SEND:
                data = msg[p + 4:p + 4 + arg]
                if len(data) != arg:
                    return self._reply(msg, req_status=i2o.RS_ERROR_NO_DATA,
                                       detail=i2o.DS_BAD_LENGTH)
                if s.kind != "tcp" or s.shut_wr:
                    return self._error(msg, EPIPE)
                self._reply(msg, struct.pack(i2o.SEND_REPLY_FMT, handle, arg))
                return self._to_peer(s, data)
            if fn == i2o.F_SOCK_CLOSE:
                if s.kind == "listen":
                    self._abort(s, 0, False)
                    return self._reply(msg)
                self._reply(msg)
                if not s.shut_wr:
                    s.shut_wr = True
                    self._fin_to_peer(s)
                self._kill(s)
                return None
            if fn == i2o.F_SOCK_SHUTDOWN:
                self._reply(msg)
                if arg != i2o.SHUT_RD and not s.shut_wr:
                    s.shut_wr = True
                    self._fin_to_peer(s)
                    self._deliver(s)
                return None
            if fn == i2o.F_SOCK_ABORT:
                self._reply(msg)
                return self._abort(s, ECONNRESET, False)
            if fn == i2o.F_UDP_CLOSE:
                self._abort(s, 0, False)
                return self._reply(msg)
            # F_UDP_SENDTO: no reply unless refused
            _, _, ip, port, count = struct.unpack_from(i2o.SENDTO_FMT, msg, p)
            data = msg[p + 12:p + 12 + count]
            dest = self.udp.get((port % self.iops, port))
            if port == ECHO_PORT and dest is None:
                dest, src_port = s, ECHO_PORT
            else:
                src_port = s.port
            if dest is None:
                return None    # nobody listens: UDP drops it
            if dest.credit - (dest.delivered - dest.consumed) < len(data):
                dest.dropped += 1
                return None
            dest.delivered += len(data)
            return self._event(i2o.F_EV_DATAGRAM, dest.ctx, struct.pack(
                i2o.EV_DATAGRAM_FMT, dest.handle, dest.iop, 0, BOARD_IP, src_port,
                len(data)) + data)
        if fn == i2o.F_SOCK_CONSUMED:
            handle, _, n = struct.unpack_from(i2o.CONSUMED_FMT, msg, p)
            self.consumed_log.append((iop, handle, n))
            s = self._lookup(iop, handle)
            if s is not None:
                s.consumed += n
                if s.consumed > s.delivered:
                    self.violation(f"CONSUMED {s.consumed} > delivered {s.delivered}")
                self._deliver(s)
            return None
        if fn == i2o.F_UDP_BIND:
            port, _, credit = struct.unpack_from(i2o.UDP_BIND_FMT, msg, p)
            if not port:
                self.next_port += 1
                port = self.next_port
            if (iop, port) in self.udp:
                return self._error(msg, EADDRINUSE)
            s = self._alloc("udp", iop, ctx, credit)
            s.port = port
            self.udp[(iop, port)] = s
            return self._reply(msg, struct.pack(i2o.UDP_BIND_REPLY_FMT, s.handle, port))
        if fn == i2o.F_PARAMS_GET:
            return self._params_get(msg)
        if fn == i2o.F_PARAMS_SET:
            text = bytes(msg[p:]).rstrip(b"\0").decode()
            for item in text.split():
                name, _, value = item.partition("=")
                if name == "hash" and value not in ("fold", "toeplitz"):
                    return self._reply(msg, f"bad hash {value}".encode(),
                                       req_status=i2o.RS_ERROR_NO_DATA,
                                       detail=i2o.errno_status(EINVAL))
                self.config[name] = value
            return self._reply(msg, b"ok " + text.encode())
        if fn == i2o.F_EXEC_STATUS_GET:
            open_ = len(self.sockets(iop))
            return self._reply(msg, struct.pack(i2o.STATUS_FMT, iop, 2, open_, 255,
                                                self.depth - len(self.in_use[iop])))
        if fn in (i2o.F_EXEC_SYS_QUIESCE, i2o.F_EXEC_ADAPTER_RESET):
            targets = [iop] if fn == i2o.F_EXEC_SYS_QUIESCE else range(self.iops)
            for k in targets:
                for s in self.sockets(k):
                    self._abort(s, ECONNABORTED, True)
            return self._reply(msg)
        return self._reply(msg, req_status=i2o.RS_ERROR_NO_DATA,
                           detail=i2o.DS_UNKNOWN_FUNCTION)

    def params_text(self) -> str:
        items = []
        i = 0
        while sum(len(x) + 1 for x in items) < self.params_text_bytes:
            items.append(f"k{i % 2}.counter{i}={i * 7}")
            i += 1
        return " ".join(items)

    def _params_get(self, req: bytes) -> None:
        data = self.params_text().encode()
        room = (self.frame_bytes & ~3) - i2o.REPLY_BYTES
        pieces = [data[i:i + room] for i in range(0, len(data), room)] or [b""]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            flags = i2o.FLAG_REPLY | i2o.FLAG_MULTIPLE | (i2o.FLAG_LAST if last else 0)
            self._reply(req, piece, flags=flags)
