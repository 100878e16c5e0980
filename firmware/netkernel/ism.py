# The socket ISM: one per net kernel, on that kernel's core, called from NetKernel.turn.
#
# It turns the I2O messages the host posted to this IOP (netkernel.msgunit's inbound ring)
# into operations on this kernel's stack, and what the stack has for the host into messages
# in outbound frames (netkernel.proto.i2o has the layouts). No locks except the messaging
# unit's outbound one (take_out / post_out).
#
# - Bounded work per turn: up to _BATCH inbound messages. A message that needs a reply now
#   waits (held in self.cur) until an outbound frame is free, so no reply is ever lost.
# - Handles: a fixed slot table; handle = slot | generation << 8, so a stale handle is
#   refused with DS_BAD_HANDLE instead of reaching another socket.
# - SEND copies into the TCP TX ring; what does not fit waits in a per-socket FIFO of held
#   inbound MFAs (linked through self.nxt), so one full socket blocks no other. The MFA comes
#   back, with the SEND reply, once all its data is in.
# - Data to the host goes out as EV_DATA, read from the RX ring only within the host's
#   credit: a host that does not read closes the TCP window, board memory stays flat.
# - Events (EV_*) are replies too: FLAG_REPLY, status word (success) at w4, w3 = 0, payload
#   from w5 (i2o.EV_PAYLOAD), w2 = the OSM context they concern.
# Steady state (SEND, EV_DATA, CONSUMED) allocates nothing: preallocated tables and buffers,
# no slices.
from array import array

from micropython import const

from netkernel import msgunit as mu_mod
from netkernel.proto import i2o
from netkernel.tcp import CLOSED, ESTABLISHED, TIME_WAIT
from netkernel.wire import copy, equal

_OUT = const(3)               # msgunit.OUT_OFF: where a message starts in a staging buffer
_BATCH = const(8)             # inbound messages per turn
_MAX_OTHER = const(8)         # listener / UDP handles besides the connections
_K_FREE = const(0)
_K_LISTEN = const(1)
_K_CONN = const(2)
_K_UDP = const(3)
_K_CLOSING = const(4)         # the host's handle is gone; the TCP close finishes here
_F_CONNECTING = const(0x01)   # CONNECT reply owed
_F_UP = const(0x02)           # the host knows the connection: data may go
_F_FIN = const(0x04)          # EV_FIN delivered
_F_RD = const(0x08)           # SHUT_RD: deliver nothing more
_F_WR = const(0x10)           # SHUT_WR asked: FIN once the pending SENDs are in
_CREDIT_MAX = const(0x3FFFFFFF)
_RP = const(20)               # reply payload (i2o.REPLY_PAYLOAD)
_EV_DATA_HDR = const(6)       # EV_DATA_FMT
_EV_DGRAM_HDR = const(12)     # EV_DATAGRAM_FMT
_STATE_OPERATIONAL = const(2)
_ECONNABORTED = const(103)
_EPIPE = const(32)
_ENOMEM = const(12)
_SCRATCH = const(512)
_SEND_DATA = const(20)        # where a SEND's data starts (i2o.PAYLOAD + SEND_FMT)
_ZEROS = bytes(8)
_HANDLER_FAILED = "a socket ISM handler raised"   # kernel.last_error (the exception is not
                                                  # kept: see _take_messages)


def _p16(b, o, v):
    b[o] = v & 0xFF
    b[o + 1] = (v >> 8) & 0xFF


def _g16(b, o):
    return b[o] | (b[o + 1] << 8)


def _g32(b, o):
    """A little-endian count, clamped so it stays a small int."""
    hi = b[o + 2] | (b[o + 3] << 8)
    if hi >= 0x4000:
        return _CREDIT_MAX
    return b[o] | (b[o + 1] << 8) | (hi << 16)


class SocketIsm:
    def __init__(self, kernel, mu):
        self.kernel = kernel
        self.stack = kernel.stack
        self.tcp = kernel.stack.tcp
        self.udp = kernel.stack.udp
        self.mu = mu
        self.iop = kernel.core
        n = kernel.stack.config.tcp_max_connections + _MAX_OTHER
        if n > 255:
            n = 255
        self.nslots = n
        self.kind = bytearray(n)
        self._no_slots = bytes(n)         # kind when every slot is free (idle())
        self.gen = bytearray(b"\x01" * n)     # generation 0 never used: handle 0 is invalid
        self.flags = bytearray(n)
        self.obj = [None] * n
        self.ctx = bytearray(8 * n)            # per slot: the OSM's w2, w3
        self.credit = array("i", bytes(4 * n))
        self.initial = array("i", bytes(4 * n))   # listener: the credit of its connections
        self.port = array("H", bytes(2 * n))   # UDP: the bound port
        self.head = array("h", [-1] * n)       # pending SEND FIFO per slot (inbound MFAs)
        self.tail = array("h", [-1] * n)
        self.nxt = array("h", [-1] * mu.depth)
        self.done = array("H", bytes(2 * mu.depth))   # bytes of a held SEND already in TX
        self.cur = -1          # an inbound MFA waiting for an outbound frame
        self.left = 0          # messages this turn may still take (_take_messages)
        self.scratch = bytearray(_SCRATCH)     # data discarded after CLOSE / SHUT_RD
        self.bufs = mu.in_bufs[self.iop]
        self.lens = mu.in_lens[self.iop]
        self.inring = mu.post[self.iop]
        self._in_idx = self.inring.idx        # read without calls: has_messages() runs on
        self._box_seq = mu.ctl[self.iop].seq  # every look of a sleeping core
        self.retring = mu.ret[self.iop]
        # counters (kN.ism.* in the node's stats)
        self.msgs = 0
        self.accepted = 0
        self.accept_refused = 0
        self.listens = 0
        self.connects = 0
        self.connect_failed = 0
        self.sends = 0
        self.send_bytes = 0
        self.send_waits = 0
        self.data_msgs = 0
        self.data_bytes = 0
        self.datagrams = 0
        self.datagrams_dropped = 0
        self.sendtos = 0
        self.sendto_failed = 0
        self.closed_events = 0
        self.bad_handle = 0
        self.bad_length = 0
        self.unknown_function = 0
        self.unknown_target = 0
        self.credit_waits = 0
        self.out_waits = 0
        self.resets = 0
        self.lost_replies = 0
        self.errors = 0

    # -- the turn -------------------------------------------------------------------------

    def turn(self, now):
        mu = self.mu
        box = mu.ctl[self.iop]
        if box.pending():
            self._reset(box.take() == mu_mod.REQ_INIT)
            box.done()
        if not mu.ready:
            return
        idx = self._in_idx
        if self.cur >= 0 or idx[0] != idx[1]:
            self._take_messages(now)
        self._service(now)

    def _take_messages(self, now):
        # Apart from turn(): a handler would put turn()'s frame over 11 words, which costs
        # a heap allocation on every call. The handler is around the batch (_take_batch),
        # not each message, and has no "as e": a handler costs 3 words and 6 of stack
        # (one with "as e" twice that), so this frame can have no other locals.
        self.left = _BATCH
        while True:
            try:
                self._take_batch(now)
                return
            except Exception:       # a bug must not replay this message turn after turn
                self.errors += 1
                self.kernel.last_error = _HANDLER_FAILED
                if self.cur >= 0:
                    self._give(self.cur)
                    self.cur = -1
                self.msgs += 1
                self.left -= 1          # the batch goes on with the next message

    def _take_batch(self, now):
        """Up to self.left inbound messages (what is left of this turn's _BATCH)."""
        while self.left > 0:
            m = self.cur
            if m < 0:
                m = self.inring.pop()
                if m < 0:
                    return
                self.cur = m
            if not self._handle(m, now):
                self.out_waits += 1
                return
            self.cur = -1
            self.msgs += 1
            self.left -= 1

    def idle(self):
        """True when no host socket is open and no message waits: the kernel's core may
        then sleep until its stack's next deadline (a socket's data or credit may move on
        without a frame or a message, so with any open the core looks again soon)."""
        return (self.cur < 0 and not self.has_messages()
                and equal(self.kind, 0, self._no_slots, 0, self.nslots))

    def has_messages(self):
        """A message from the host, or a request of the message unit, waits."""
        idx = self._in_idx
        seq = self._box_seq
        return idx[0] != idx[1] or seq[0] != seq[1]

    def _give(self, m):
        self.retring.push(m)   # cannot be full: it holds every MFA of this IOP

    def _handle(self, m, now):
        """One inbound message; False if it must wait for an outbound frame."""
        b = self.bufs[m]
        if (b[4] | ((b[5] & 0x0F) << 8)) != i2o.TID_SOCKET:
            return self._handle_other(m, b)
        fn = b[7]
        if fn == i2o.F_SOCK_SEND:
            return self._send(m, b, self.lens[m])
        if fn == i2o.F_SOCK_CONSUMED:
            return self._consumed(m, b)
        if fn == i2o.F_UDP_SENDTO:
            return self._sendto(m, b, self.lens[m], now)
        if fn == i2o.F_SOCK_LISTEN:
            return self._listen(m, b, self.lens[m])
        if fn == i2o.F_SOCK_CONNECT:
            return self._connect(m, b, self.lens[m], now)
        if fn == i2o.F_SOCK_CLOSE or fn == i2o.F_SOCK_ABORT or fn == i2o.F_UDP_CLOSE:
            return self._close(m, b, self.lens[m], fn)
        if fn == i2o.F_SOCK_SHUTDOWN:
            return self._shutdown(m, b, self.lens[m])
        if fn == i2o.F_UDP_BIND:
            return self._udp_bind(m, b, self.lens[m])
        self.unknown_function += 1
        return self._error(m, b, i2o.DS_UNKNOWN_FUNCTION)

    def _handle_other(self, m, b):
        # A message to the executive or an unknown target: apart from _handle, which stays
        # within 11 words (a larger frame comes from the heap on every call).
        fn = b[7]
        if (b[4] | ((b[5] & 0x0F) << 8)) == i2o.TID_EXEC:
            if fn == i2o.F_UTIL_NOP:
                self._give(m)
                return True
            if fn == i2o.F_EXEC_STATUS_GET:
                o = self.mu.take_out()
                if o < 0:
                    return False
                r = self._reply(o, b, 0)
                _p16(r, _OUT + _RP, self.iop)
                r[_OUT + _RP + 2] = _STATE_OPERATIONAL
                r[_OUT + _RP + 3] = self.tcp.connection_count() & 0xFF
                _p16(r, _OUT + _RP + 4, self.nslots)
                _p16(r, _OUT + _RP + 6, self.mu.free_in(self.iop))
                self._post(o, 8, m)
                return True
            if fn == i2o.F_EXEC_SYS_QUIESCE:
                o = self.mu.take_out()
                if o < 0:
                    return False
                self._abort_all(False)
                self._reply(o, b, 0)
                self._post(o, 0, m)
                return True
            self.unknown_function += 1
            return self._error(m, b, i2o.DS_UNKNOWN_FUNCTION)
        self.unknown_target += 1
        return self._error(m, b, i2o.DS_UNKNOWN_TARGET)

    # -- replies --------------------------------------------------------------------------

    # The MessageSize of replies and events is written by post_out, once the payload is
    # known: without a length (and a status, for replies) to pass in, their callers' frames
    # and their own stay within 11 words.

    def _reply(self, o, req, detail):
        """Reply header for request req in outbound frame o: success if detail is 0, else
        RS_ERROR_NO_DATA with that DetailedStatus (the ISM's two kinds of answer); returns
        the staging buffer."""
        r = self.mu.out_bufs[o]
        r[_OUT] = i2o.VERSION
        r[_OUT + 1] = i2o.FLAG_REPLY
        # target = the request's initiator (12 bits from req[5] >> 4), initiator = this ISM
        r[_OUT + 4] = (req[5] >> 4) | ((req[6] & 0x0F) << 4)
        r[_OUT + 5] = (req[6] >> 4) | ((i2o.TID_SOCKET & 0x0F) << 4)
        r[_OUT + 6] = (i2o.TID_SOCKET >> 4) & 0xFF
        r[_OUT + 7] = req[7]
        copy(r, _OUT + 8, req, 8, 8)
        _p16(r, _OUT + 16, detail)
        r[_OUT + 18] = 0
        r[_OUT + 19] = i2o.RS_ERROR_NO_DATA if detail else i2o.RS_SUCCESS
        return r

    def _event(self, o, s, fn):
        """An unsolicited message about slot s: w2 = its OSM context, w3 = 0; its payload
        begins with s's handle, the IOP and a 0 (EV_DATA's flags). Returns the buffer."""
        r = self.mu.out_bufs[o]
        r[_OUT] = i2o.VERSION
        r[_OUT + 1] = i2o.FLAG_REPLY
        r[_OUT + 4] = i2o.TID_HOST
        r[_OUT + 5] = (i2o.TID_SOCKET & 0x0F) << 4
        r[_OUT + 6] = (i2o.TID_SOCKET >> 4) & 0xFF
        r[_OUT + 7] = fn
        copy(r, _OUT + 8, self.ctx, 8 * s, 4)
        copy(r, _OUT + 12, _ZEROS, 0, 8)     # w3 = 0, status = success
        _p16(r, _OUT + _RP, self._handle_of(s))
        r[_OUT + _RP + 2] = self.iop
        r[_OUT + _RP + 3] = 0
        return r

    def _post(self, o, paylen, m):
        """Send frame o (a reply of paylen payload bytes); give inbound MFA m back (m >= 0)."""
        self.mu.post_out(o, _RP + paylen)
        if m >= 0:
            self._give(m)

    def _error(self, m, b, detail):
        """Refuse request m with RS_ERROR_NO_DATA / detail; False if no frame yet."""
        o = self.mu.take_out()
        if o < 0:
            return False
        return self._refuse(o, b, m, detail)

    def _refuse(self, o, b, m, detail):
        """Answer request m (in b) in outbound frame o with RS_ERROR_NO_DATA / detail and
        give its MFA back; True (the request is done)."""
        self._reply(o, b, detail)
        self._post(o, 0, m)
        return True

    def _bad_handle(self, m, b):
        if self._error(m, b, i2o.DS_BAD_HANDLE):
            self.bad_handle += 1
            return True
        return False

    def _short(self, m, b):
        if self._error(m, b, i2o.DS_BAD_LENGTH):
            self.bad_length += 1
            return True
        return False

    def _slot(self, h, kind):
        """The slot of handle h if it is live and of that kind, else -1."""
        s = h & 0xFF
        if s >= self.nslots or self.gen[s] != (h >> 8) or self.kind[s] != kind:
            return -1
        return s

    def _handle_of(self, s):
        return s | (self.gen[s] << 8)

    def _new_slot(self):
        for s in range(self.nslots):
            if self.kind[s] == _K_FREE and self.head[s] < 0:
                return s
        return -1

    def _free_slot(self, s):
        k = self.kind[s]
        if k == _K_CONN or k == _K_CLOSING:
            self.obj[s].release()             # the stack reuses it once it is closed
        self.kind[s] = _K_FREE
        self.flags[s] = 0
        self.obj[s] = None
        g = self.gen[s] + 1
        self.gen[s] = g if g < 256 else 1     # the old handle is stale from now on

    def _credit(self, b, off):
        c = _g32(b, off)
        return c if c else self.mu.credit

    # -- requests -------------------------------------------------------------------------

    def _listen(self, m, b, size):
        if size < i2o.PAYLOAD + 8:
            return self._short(m, b)
        o = self.mu.take_out()
        if o < 0:
            return False
        s = self._new_slot()
        if s < 0:
            return self._refuse(o, b, m, i2o.DS_INSUFFICIENT_RESOURCES)
        backlog = _g16(b, i2o.PAYLOAD + 2)
        try:
            lsn = self.tcp.listen(_g16(b, i2o.PAYLOAD), backlog if backlog else None)
        except OSError as e:
            return self._refuse(o, b, m, i2o.errno_status(e.args[0]))
        except MemoryError:
            return self._refuse(o, b, m, i2o.errno_status(_ENOMEM))
        except ValueError:
            return self._refuse(o, b, m, i2o.DS_BAD_KEY)
        self.kind[s] = _K_LISTEN
        self.obj[s] = lsn
        copy(self.ctx, 8 * s, b, 8, 8)
        self.initial[s] = self._credit(b, i2o.PAYLOAD + 4)
        self.listens += 1
        r = self._reply(o, b, 0)
        _p16(r, _OUT + _RP, self._handle_of(s))
        self._post(o, 2, m)
        return True

    def _connect(self, m, b, size, now):
        if size < i2o.PAYLOAD + 12:
            return self._short(m, b)
        o = self.mu.take_out()         # for a refusal now; the reply comes when connected
        if o < 0:
            return False
        s = self._new_slot()
        err = 0
        sock = None
        if s < 0:
            err = _ENOMEM
        else:
            try:
                sock = self.tcp.connect(b, i2o.PAYLOAD, _g16(b, i2o.PAYLOAD + 4), now,
                                        _g16(b, i2o.PAYLOAD + 6))
            except OSError as e:
                err = e.args[0]
            except MemoryError:
                err = _ENOMEM
        if err:
            self.connect_failed += 1
            return self._refuse(o, b, m, i2o.errno_status(err))
        self.mu.untake_out(o)
        self.kind[s] = _K_CONN
        self.flags[s] = _F_CONNECTING
        self.obj[s] = sock
        copy(self.ctx, 8 * s, b, 8, 8)
        self.credit[s] = self._credit(b, i2o.PAYLOAD + 8)
        self.connects += 1
        self._give(m)
        return True

    def _send(self, m, b, size):
        if size < i2o.PAYLOAD + 4 or _SEND_DATA + _g16(b, i2o.PAYLOAD + 2) > size:
            return self._short(m, b)
        s = self._slot(_g16(b, i2o.PAYLOAD), _K_CONN)
        if s < 0:
            return self._bad_handle(m, b)
        sock = self.obj[s]
        if sock.error or sock.state == CLOSED or sock.fin_queued or self.flags[s] & _F_WR:
            return self._send_refused(m, b, sock)
        self.done[m] = 0
        self.nxt[m] = -1
        if self.tail[s] < 0:
            self.head[s] = m
        else:
            self.nxt[self.tail[s]] = m
        self.tail[s] = m
        self.sends += 1
        self._push_sends(s)
        return True

    def _send_refused(self, m, b, sock):
        # Apart from _send, which stays within 11 words (a larger frame comes from the heap).
        return self._error(m, b, i2o.DS_ERRNO + (sock.error or _EPIPE))

    def _push_sends(self, s):
        """Move held SEND data into the TX ring; reply and give back each finished MFA.
        (Each step in a method of its own: a handler costs 3 words and 6 of stack, so this
        frame has no other locals, and theirs stay within 11 words too; a larger frame
        comes from the heap on every call.)"""
        while self.head[s] >= 0:
            try:
                if not self._push_data(s):
                    return
            except OSError:
                return      # the connection died: _service answers the rest
            if not self._send_done(s):
                return
        if self.flags[s] & _F_WR or self.kind[s] == _K_CLOSING:
            self.obj[s].close()        # the FIN goes after everything the host sent

    def _push_data(self, s):
        """What is left of slot s's first held SEND into its TX ring; True once all is in."""
        m = self.head[s]
        b = self.bufs[m]
        n = _g16(b, i2o.PAYLOAD + 2) - self.done[m]      # still to go
        if n <= 0:
            return True
        k = self.obj[s].send(b, self.done[m] + _SEND_DATA, n)
        self.done[m] += k
        self.send_bytes += k
        if k < n:
            self.send_waits += 1
            return False
        return True

    def _send_done(self, s):
        """The reply to slot s's first held SEND, whose data is all in (its handle and
        count: the request's own); its MFA leaves the FIFO and goes back. False while no
        outbound frame is free."""
        o = self.mu.take_out()
        if o < 0:
            self.out_waits += 1
            return False
        m = self.head[s]
        b = self.bufs[m]
        copy(self._reply(o, b, 0), _OUT + _RP, b, i2o.PAYLOAD, 4)
        self.head[s] = self.nxt[m]
        if self.head[s] < 0:
            self.tail[s] = -1
        self._post(o, 4, m)
        return True

    def _fail_sends(self, s, err):
        """The connection is gone: answer each held SEND with an error (as frames allow)."""
        m = self.head[s]
        while m >= 0:
            o = self.mu.take_out()
            if o < 0:
                self.out_waits += 1
                return False
            self._reply(o, self.bufs[m], i2o.DS_ERRNO + err)
            nx = self.nxt[m]
            self.head[s] = nx
            if nx < 0:
                self.tail[s] = -1
            self._post(o, 0, m)
            m = nx
        return True

    def _consumed(self, m, b):
        if self.lens[m] < i2o.PAYLOAD + 8:
            return self._short(m, b)
        h = _g16(b, i2o.PAYLOAD)
        s = self._slot(h, _K_CONN)
        if s < 0:
            s = self._slot(h, _K_UDP)
            if s < 0:
                # No reply: CONSUMED is a no-reply message, and one that crossed our
                # EV_CLOSED on the line is no error of the host's.
                self.bad_handle += 1
                self._give(m)
                return True
        c = self.credit[s] + _g32(b, i2o.PAYLOAD + 4)
        self.credit[s] = c if c < _CREDIT_MAX else _CREDIT_MAX
        self._give(m)
        return True

    def _close(self, m, b, size, fn):
        if size < i2o.PAYLOAD + 4:
            return self._short(m, b)
        h = _g16(b, i2o.PAYLOAD)
        s = h & 0xFF
        if s >= self.nslots or self.gen[s] != (h >> 8):
            return self._bad_handle(m, b)
        kind = self.kind[s]
        if (kind == _K_UDP) != (fn == i2o.F_UDP_CLOSE) or kind == _K_FREE \
                or kind == _K_CLOSING:
            return self._bad_handle(m, b)
        o = self.mu.take_out()
        if o < 0:
            return False
        if kind == _K_LISTEN:
            self.obj[s].close()
            self._free_slot(s)
        elif kind == _K_UDP:
            self.udp.unbind(self.port[s])
            self._free_slot(s)
        else:
            sock = self.obj[s]
            if fn == i2o.F_SOCK_ABORT:
                sock.abort()
            elif self.head[s] < 0:
                sock.close()     # else: after the held SENDs are in (_push_sends)
            self.kind[s] = _K_CLOSING
            self.flags[s] = 0
            g = self.gen[s] + 1
            self.gen[s] = g if g < 256 else 1
        self._reply(o, b, 0)
        self._post(o, 0, m)
        return True

    def _shutdown(self, m, b, size):
        if size < i2o.PAYLOAD + 4:
            return self._short(m, b)
        s = self._slot(_g16(b, i2o.PAYLOAD), _K_CONN)
        if s < 0:
            return self._bad_handle(m, b)
        how = _g16(b, i2o.PAYLOAD + 2)
        if how > i2o.SHUT_RDWR:
            return self._error(m, b, i2o.DS_BAD_KEY)
        o = self.mu.take_out()
        if o < 0:
            return False
        if how != i2o.SHUT_WR:
            self.flags[s] |= _F_RD
        if how != i2o.SHUT_RD:
            self.flags[s] |= _F_WR
            if self.head[s] < 0:
                self.obj[s].close()
        self._reply(o, b, 0)
        self._post(o, 0, m)
        return True

    def _udp_bind(self, m, b, size):
        if size < i2o.PAYLOAD + 8:
            return self._short(m, b)
        o = self.mu.take_out()
        if o < 0:
            return False
        s = self._new_slot()
        port = _g16(b, i2o.PAYLOAD)
        err = 0
        if s < 0:
            err = _ENOMEM
        else:
            try:
                if port == 0:      # any port: the OSM binds the same one on the other IOPs
                    port = self.udp.ephemeral_port()
                self.udp.bind(port, self._on_datagram)
            except OSError as e:
                err = e.args[0]
            except ValueError:
                err = 22
            except MemoryError:
                err = _ENOMEM
        if err:
            return self._refuse(o, b, m, i2o.errno_status(err))
        self.kind[s] = _K_UDP
        self.port[s] = port
        copy(self.ctx, 8 * s, b, 8, 8)
        self.credit[s] = self._credit(b, i2o.PAYLOAD + 4)
        r = self._reply(o, b, 0)      # i2o.UDP_BIND_REPLY_FMT
        _p16(r, _OUT + _RP, self._handle_of(s))
        _p16(r, _OUT + _RP + 2, port)
        self._post(o, 4, m)
        return True

    def _sendto(self, m, b, size, now):
        if size < i2o.PAYLOAD + 12:
            return self._short(m, b)
        count = _g16(b, i2o.PAYLOAD + 10)
        if i2o.PAYLOAD + 12 + count > size:
            return self._short(m, b)
        s = self._slot(_g16(b, i2o.PAYLOAD), _K_UDP)
        if s < 0:
            return self._bad_handle(m, b)
        if self.udp.sendto(b, i2o.PAYLOAD + 12, count, b, i2o.PAYLOAD + 4,
                           _g16(b, i2o.PAYLOAD + 8), self.port[s], now):
            self.sendtos += 1
        else:
            self.sendto_failed += 1   # datagrams may be lost: counted, no reply
        self._give(m)
        return True

    def _on_datagram(self, buf, off, n, src, src_off, src_port, dst_port, now):
        s = 0
        ns = self.nslots
        while s < ns:
            if self.kind[s] == _K_UDP and self.port[s] == dst_port:
                break
            s += 1
        if s == ns:
            return
        if n > self.credit[s] or _RP + _EV_DGRAM_HDR + n > self.mu.fb:
            self.credit_waits += 1
            self.datagrams_dropped += 1
            return
        o = self.mu.take_out()
        if o < 0:
            self.out_waits += 1
            self.datagrams_dropped += 1
            return
        r = self._event(o, s, i2o.F_EV_DATAGRAM)
        copy(r, _OUT + _RP + 4, src, src_off, 4)
        _p16(r, _OUT + _RP + 8, src_port)
        _p16(r, _OUT + _RP + 10, n)
        copy(r, _OUT + _RP + _EV_DGRAM_HDR, buf, off, n)
        self.credit[s] -= n
        self.datagrams += 1
        self.mu.post_out(o, _RP + _EV_DGRAM_HDR + n)

    # -- what the stack has for the host ----------------------------------------------------

    def _service(self, now):
        s = 0
        ns = self.nslots
        while s < ns:
            k = self.kind[s]
            if k == _K_CONN:
                self._serve_conn(s)
            elif k == _K_LISTEN:
                self._serve_listener(s)
            elif k == _K_CLOSING:
                self._serve_closing(s)
            s += 1

    def _serve_listener(self, s):
        lsn = self.obj[s]
        while lsn.pending() > 0:
            if not self._accept(s, lsn):
                return

    def _accept(self, s, lsn):
        """The next connection of listener s: EV_ACCEPTED with a handle of its own (or an
        abort, with no slot free); False while it waits for an outbound frame. (Apart from
        _serve_listener, on every turn: that frame stays within 11 words.)"""
        n = self._new_slot()
        if n < 0:
            sock = lsn.accept()
            sock.abort()          # no handle for it: never leave a connection unserved
            sock.release()
            self.accept_refused += 1
            return True
        o = self.mu.take_out()
        if o < 0:
            self.out_waits += 1    # it waits in the listener's queue
            return False
        sock = lsn.accept()
        self.kind[n] = _K_CONN
        self.flags[n] = _F_UP
        self.obj[n] = sock
        copy(self.ctx, 8 * n, self.ctx, 8 * s, 8)
        self.credit[n] = self.initial[s]
        r = self._event(o, s, i2o.F_EV_ACCEPTED)
        _p16(r, _OUT + _RP, self._handle_of(n))     # the new connection's, not s's
        copy(r, _OUT + _RP + 4, sock.remote_ip, 0, 4)
        _p16(r, _OUT + _RP + 8, sock.remote_port)
        _p16(r, _OUT + _RP + 10, sock.local_port)
        self.mu.post_out(o, _RP + 12)
        self.accepted += 1
        return True

    def _serve_conn(self, s):
        sock = self.obj[s]
        f = self.flags[s]
        if f & _F_CONNECTING:
            if not self._connect_done(s, sock):
                return
            f = _F_UP
        if self.head[s] >= 0:
            self._push_sends(s)
        err = sock.error
        if err:
            if self._fail_sends(s, err):
                self._closed_event(s, err)
            return
        if f & _F_RD:
            self._discard(sock)
        elif not f & _F_FIN:
            self._deliver(s, sock)
            return
        st = sock.state
        if st == CLOSED or st == TIME_WAIT:
            if self._fail_sends(s, _EPIPE):
                self._closed_event(s, 0)

    def _connect_done(self, s, sock):
        """A connecting slot: its CONNECT reply once the connection is up or failed. True
        when it is up (reply sent); False while it waits, or when it failed (the slot is
        free again). (Apart from _serve_conn, on every turn: that frame stays within 11
        words, as this one does with the failure in _connect_failed.)"""
        err = sock.error
        if err == 0 and sock.state == CLOSED:
            err = _ECONNABORTED
        if err == 0 and sock.state < ESTABLISHED:
            return False
        o = self.mu.take_out()
        if o < 0:
            self.out_waits += 1
            return False
        if err:
            self._connect_failed(s, o, err)
            return False
        r = self._reply(o, self.ctx, 0)
        self._fix_reply(o, s)
        _p16(r, _OUT + _RP, (self.gen[s] << 8) | s)       # _handle_of(s)
        _p16(r, _OUT + _RP + 2, sock.local_port)
        self._post(o, 4, -1)
        self.flags[s] = _F_UP
        return True

    def _connect_failed(self, s, o, err):
        self._reply(o, self.ctx, i2o.DS_ERRNO + err)
        self._fix_reply(o, s)
        self._post(o, 0, -1)
        self.connect_failed += 1
        self._free_slot(s)

    def _fix_reply(self, o, s):
        # The CONNECT reply is built from the slot's saved contexts, not a request frame:
        # target the host, function CONNECT.
        r = self.mu.out_bufs[o]
        r[_OUT + 4] = i2o.TID_HOST
        r[_OUT + 5] = (i2o.TID_SOCKET & 0x0F) << 4
        r[_OUT + 6] = (i2o.TID_SOCKET >> 4) & 0xFF
        r[_OUT + 7] = i2o.F_SOCK_CONNECT
        copy(r, _OUT + 8, self.ctx, 8 * s, 8)

    def _deliver(self, s, sock):
        """EV_DATA: as much as is waiting, within the frame and the host's credit."""
        n = sock.recv_available()
        if n == 0:
            if not sock.at_eof():
                return
        elif self.credit[s] <= 0:
            self.credit_waits += 1    # the host is slow: the TCP window closes
            return
        o = self.mu.take_out()
        if o < 0:
            self.out_waits += 1
            return
        if n > self.credit[s]:
            n = self.credit[s]
        if n > self.mu.fb - (_RP + _EV_DATA_HDR):
            n = self.mu.fb - (_RP + _EV_DATA_HDR)
        r = self._event(o, s, i2o.F_EV_DATA)
        if n > 0:
            n = sock.recv_into(r, _OUT + _RP + _EV_DATA_HDR, n)    # n: what it took
        self.credit[s] -= n
        _p16(r, _OUT + _RP + 4, n)
        if sock.recv_available() == 0 and sock.at_eof():
            r[_OUT + _RP + 3] = i2o.EV_FIN
            self.flags[s] |= _F_FIN
        self.mu.post_out(o, _RP + _EV_DATA_HDR + n)
        self.data_msgs += 1
        self.data_bytes += n

    def _discard(self, sock):
        buf = self.scratch
        while sock.recv_into(buf, 0, _SCRATCH) > 0:
            pass

    def _closed_event(self, s, err):
        o = self.mu.take_out()
        if o < 0:
            self.out_waits += 1
            return
        r = self._event(o, s, i2o.F_EV_CLOSED)
        _p16(r, _OUT + _RP + 4, err)
        self.mu.post_out(o, _RP + 6)
        self.closed_events += 1
        self._free_slot(s)

    def _serve_closing(self, s):
        sock = self.obj[s]
        if self.head[s] >= 0:
            if sock.state == CLOSED:
                if not self._fail_sends(s, sock.error or _ECONNABORTED):
                    return
            else:
                self._push_sends(s)
                if self.head[s] >= 0:
                    return
        self._discard(sock)           # the host closed: later data is dropped
        st = sock.state
        if st == CLOSED or st == TIME_WAIT:
            sock.release()
            self.kind[s] = _K_FREE
            self.obj[s] = None

    # -- reset / quiesce ---------------------------------------------------------------------

    def _reset(self, init):
        """INIT (init=True): abort everything, forget queued messages (every MFA comes back
        free with the INIT). ADAPTER_RESET: abort everything, answer held SENDs."""
        self.resets += 1
        if init:
            self.cur = -1
        self._abort_all(init)

    def _abort_all(self, drop):
        for s in range(self.nslots):
            k = self.kind[s]
            if k == _K_FREE and self.head[s] < 0:
                continue
            obj = self.obj[s]
            if k == _K_LISTEN:
                obj.close()
            elif k == _K_UDP:
                self.udp.unbind(self.port[s])
            elif obj is not None:
                obj.abort()
                if not drop and k == _K_CONN and self.flags[s] & _F_CONNECTING:
                    # Its CONNECT is still unanswered: answer it (ECONNABORTED).
                    o = self.mu.take_out()
                    if o >= 0:
                        self._reply(o, self.ctx, i2o.DS_ERRNO + _ECONNABORTED)
                        self._fix_reply(o, s)
                        self._post(o, 0, -1)
                    else:
                        self.lost_replies += 1
            m = self.head[s]
            while m >= 0:
                nx = self.nxt[m]
                if not drop:
                    o = self.mu.take_out()
                    if o >= 0:
                        self._reply(o, self.bufs[m], i2o.DS_ERRNO + _ECONNABORTED)
                        self._post(o, 0, -1)
                    else:
                        self.lost_replies += 1
                    self._give(m)
                m = nx
            self.head[s] = -1
            self.tail[s] = -1
            self._free_slot(s)

    def counters(self):
        return [("msgs", self.msgs), ("accepted", self.accepted),
                ("accept_refused", self.accept_refused), ("listens", self.listens),
                ("connects", self.connects), ("connect_failed", self.connect_failed),
                ("sends", self.sends), ("send_bytes", self.send_bytes),
                ("send_waits", self.send_waits), ("data_msgs", self.data_msgs),
                ("data_bytes", self.data_bytes), ("datagrams", self.datagrams),
                ("datagrams_dropped", self.datagrams_dropped), ("sendtos", self.sendtos),
                ("sendto_failed", self.sendto_failed), ("closed_events", self.closed_events),
                ("bad_handle", self.bad_handle), ("bad_length", self.bad_length),
                ("unknown_function", self.unknown_function),
                ("unknown_target", self.unknown_target), ("credit_waits", self.credit_waits),
                ("out_waits", self.out_waits), ("resets", self.resets),
                ("lost_replies", self.lost_replies), ("errors", self.errors)]
