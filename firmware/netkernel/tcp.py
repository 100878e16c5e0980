# TCP (RFC 9293): the layer (listeners, connection table, demux, RST for closed ports, ISNs,
# counters) and the sockets with their state machine, timers and congestion control.
#
# Shape (smoltcp's TCP socket, PyTCP's one-method-per-event FSM, without their costs):
# - Sequence numbers never become Python ints (above 2**30 they would be heap objects on the
#   RP2040). Each socket keeps SND.UNA, RCV.NXT, ISS, IRS, WL1 and WL2 as 4-byte big-endian
#   fields of one bytearray; everything else on the send side is a small int offset from
#   SND.UNA (snd_nxt_off, snd_max_off, recover_off, rtt_off) that shrinks as ACKs arrive, and
#   wire.seq_delta() turns incoming seq/ack fields into small signed deltas.
# - The TX ring is the retransmit queue (bytes stay until acked; see tcpbuf.py). The RX ring's
#   free space is the receive window, and out-of-order data waits inside it.
# - The segment being processed is described by one preallocated _Segment record per Tcp
#   object (the "Repr" of the design notes): no per-packet objects, no module globals.
# - Time is passed in (`now`, ticks_ms) and compared with ticks_diff. Each socket has one
#   timer slot for retransmit / persist / TIME-WAIT (smoltcp), plus the delayed-ACK and
#   keepalive deadlines.
# - Nothing on the established data path allocates: in-order data in, recv_into, send, ACK
#   processing, output and polls whose timers do not fire (tests/firmware/test_tcp_alloc.py).
#   Connection setup and teardown may allocate (socket objects, rings, accept queue).
# - Nor does the VM for it: MicroPython takes a bytecode frame (locals + value stack) larger
#   than 11 words from the heap on every call (py/objfun.c, VM_MAX_STATE_ON_STACK), which
#   cost more than the call itself on the RP2040. So the methods on that path keep within
#   11 words: few arguments (`now` from tcp.now where the caller has none), no locals for
#   what is read once or twice, and rare branches in methods of their own ("apart" in their
#   docstrings). _emit still takes 17 (once per segment sent): the interface's send_l4
#   takes five arguments, and a call with them needs 7 words of stack.
#
# Choices worth knowing:
# - RTO minimum 200 ms (as Linux; RFC 6298 says 1 s, but this is a LAN engine and a 1 s floor
#   would stall every loss), maximum 60 s, initial 1 s, Karn's rule, exponential backoff.
#   After 12 retransmissions of the same data (6 for a SYN, 5 for a SYN-ACK) the connection
#   is closed without a RST and `error` becomes ETIMEDOUT.
# - Congestion control: RFC 5681 (IW per RFC 3390, byte-counted slow start, congestion
#   avoidance), fast retransmit/recovery with NewReno partial ACKs (RFC 6582), and RFC 5827
#   early retransmit because with the default 4 KB buffers there are rarely 4 segments in
#   flight. After an RTO the sender goes back to SND.UNA (go-back-N from the TX ring).
# - SACK (RFC 2018), receiver side: SACK-permitted is offered and, when the peer offers it
#   too, every ACK sent while out-of-order data is held carries up to 4 SACK blocks (the
#   block with the latest segment first). A sender such as Linux then repairs a loss
#   with fast retransmit instead of waiting for its RTO: with small windows it seldom
#   sees three duplicate ACKs. As a sender we ignore incoming SACK blocks (allowed).
# - No window scaling or timestamps, so the largest window is 65535. Data carried on a SYN
#   is not accepted (the peer sends it again).
# - Zero-window probes and keepalives are ACKs with SEQ = SND.UNA - 1 (as Linux), which make
#   the peer answer with its current window without sending it any data.
# - A SYN for a TIME-WAIT connection with a higher sequence number reopens it (RFC 6191
#   style), so a client that reuses its port does not wait for 2 MSL.
# - When ACKs leave: input() answers at once only what must be at once (dup ACKs for
#   out-of-order data and hole fills, ACKs for unacceptable segments, challenge ACKs,
#   SYN-ACKs, RSTs). Everything else owed (every second full segment, FIN, window updates,
#   data the new ACK allows) goes out from the next poll(), which the kernel runs at the end
#   of the same turn: an application that has read and written by then gets its reopened
#   window and its data onto that one segment. Otherwise ACKs are delayed by
#   config.tcp_delayed_ack_ms.
# - Buffers: a passive socket gets its rings only when the handshake completes (a SYN
#   flood costs socket objects, bounded by the backlog); TX is released when our FIN is
#   acknowledged, RX when the peer's FIN is in and the reader has drained it, so TIME-WAIT
#   sockets hold no rings.
import os
from time import ticks_add, ticks_diff

from micropython import const

from netkernel.iface import L4_OFF
from netkernel.rcvcredit import RcvCredit
from netkernel.tcpbuf import CHUNK, Assembler, ChunkPool, ChunkRing
from netkernel.wire import copy, earliest, equal, fill, get16, put16, seq_add, seq_delta, seq_put

try:
    import hashlib
except ImportError:
    hashlib = None

# Connection states, ordered as in lwIP so "closing or after" is a comparison.
CLOSED = const(0)
LISTEN = const(1)
SYN_SENT = const(2)
SYN_RCVD = const(3)
ESTABLISHED = const(4)
FIN_WAIT_1 = const(5)
FIN_WAIT_2 = const(6)
CLOSE_WAIT = const(7)
CLOSING = const(8)
LAST_ACK = const(9)
TIME_WAIT = const(10)
STATE_NAMES = ("CLOSED", "LISTEN", "SYN-SENT", "SYN-RECEIVED", "ESTABLISHED", "FIN-WAIT-1",
               "FIN-WAIT-2", "CLOSE-WAIT", "CLOSING", "LAST-ACK", "TIME-WAIT")

# errno values (MicroPython's own numbering, equal to Linux's; EPIPE is missing from the
# errno module of some ports, so all of them are spelled out here).
_EAGAIN = const(11)
_ENOMEM = const(12)
_EPIPE = const(32)
_EADDRINUSE = const(98)
_ECONNRESET = const(104)
_ENOTCONN = const(107)
_ETIMEDOUT = const(110)
_ECONNREFUSED = const(111)

# Packet layout: copies of wire's (const() inlines only within a module).
_MTU = const(1500)
_IP_SRC = const(12)
_IP_HLEN = const(20)     # without options
_PROTO_TCP = const(6)
_TCP_DPORT = const(2)
_TCP_SEQ = const(4)
_TCP_ACK = const(8)
_TCP_OFF = const(12)     # data offset in the high nibble
_TCP_FLAGS = const(13)
_TCP_WIN = const(14)
_TCP_CSUM = const(16)
_TCP_HLEN = const(20)
_TCP_FIN = const(0x01)
_TCP_SYN = const(0x02)
_TCP_RST = const(0x04)
_TCP_PSH = const(0x08)
_TCP_ACK_FLAG = const(0x10)
_TCP_FLAGS_MASK = const(0x3F)   # the six flags above
_TCPOPT_END = const(0)
_TCPOPT_NOP = const(1)
_TCPOPT_MSS = const(2)
_TCPOPT_SACK_PERM = const(4)
_TCPOPT_SACK = const(5)
_TCPOPT_MSS_LEN = const(4)
_TCPOPT_SACK_PERM_LEN = const(2)
_TCPOPT_SACK_BLOCK = const(8)   # one left/right edge pair

# Per-socket sequence fields: 4-byte big-endian slots of TcpSocket.seq.
_SND_UNA = const(0)
_RCV_NXT = const(4)
_ISS = const(8)
_IRS = const(12)
_WL1 = const(16)     # SEG.SEQ of the segment that last updated the send window
_WL2 = const(20)     # its SEG.ACK (right after WL1, as ACK after SEQ: one copy sets both)
_SACK_LAST = const(24)  # SEG.SEQ of the latest out-of-order segment (first SACK block)
_SEQ_LEN = const(28)

# Sizes and limits.
_OUR_MSS = const(_MTU - _IP_HLEN - _TCP_HLEN)
_DEFAULT_MSS = const(536)      # peer's MSS when its SYN carries none (RFC 9293)
_MIN_MSS = const(64)
_MAX_WINDOW = const(65535)     # no window scaling
_MAX_SACK_BLOCKS = const(4)    # 2 NOPs + 2 + 4 * 8 = 36 option bytes (no timestamps)
_OOO_RANGES = const(4)         # holes the reassembler tracks
_MAX_BURST = const(8)          # segments one output call may send
_CWND_MAX = const(0x40000)     # keeps cwnd a small int; far above any usable window
_SSTHRESH_INIT = const(65535)
_DUPACK_THRESHOLD = const(3)
_RECOVER_NONE = const(-1)      # recover_off clamp: SND.UNA is past recover (RFC 6582)

# Timers (ms).
_RTO_INIT = const(1000)
_RTO_MIN = const(200)
_RTO_MAX = const(60000)
_RTO_AFTER_SYN_LOSS = const(3000)   # RFC 6298 5.7
_MAX_RETRIES = const(12)
_SYN_RETRIES = const(6)
_SYNACK_RETRIES = const(5)
_OOO_RESERVE = const(4)        # chunks of a full-size segment (1,460 bytes over 512-byte chunks)
_TX_RETRY_MS = const(20)       # the interface could not send (ARP pending, no TX room)
_KA_INTERVAL_MS = const(1000)
_KA_PROBES = const(9)
_CHALLENGE_ACKS_PER_S = const(10)

# The socket's single timer slot.
_T_NONE = const(0)
_T_RTX = const(1)
_T_PERSIST = const(2)
_T_TIMEWAIT = const(3)

# Where a passively opened socket is with its listener.
_LS_NONE = const(0)
_LS_EMBRYONIC = const(1)   # SYN-RECEIVED, counts against the backlog
_LS_QUEUED = const(2)      # established, waiting for accept()

_EPHEMERAL_LO = const(49152)
_EPHEMERAL_SPAN = const(16384)
_COUNTER_MASK = const(0x3FFFFFFF)   # hot counters wrap instead of becoming big ints

_COUNTER_NAMES = (
    "segs_in", "segs_out", "active_opens", "passive_opens", "established",
    "drop_malformed", "drop_bad_options", "drop_no_socket", "drop_out_of_window",
    "drop_bad_ack", "drop_no_ack", "drop_backlog_full", "drop_max_connections",
    "drop_no_memory", "drop_no_buffer", "drop_ooo_full", "drop_syn_in_syn_rcvd",
    "ooo_segments", "rst_sent", "rst_received", "resets", "challenge_acks",
    "challenge_acks_suppressed", "retransmits", "fast_retransmits", "rto_timeouts",
    "conn_timeouts", "zero_window_probes", "keepalive_probes", "keepalive_timeouts",
    "time_wait_reuse", "time_wait_recycled", "tx_blocked",
)
# What the report says of the pools and the receive credit besides the counters above:
# (name, part of the Tcp, its attribute; None: the part's length). A literal of constants,
# so a frozen image keeps it in flash.
_STATE = (
    ("connections", "conns", None),
    ("max_connections", "config", "tcp_max_connections"),
    ("rx_chunks", "rx_pool", "size"),
    ("rx_chunks_free", "rx_pool", "nfree"),
    ("rx_chunks_low", "rx_pool", "low"),
    ("tx_chunks", "tx_pool", "size"),
    ("tx_chunks_free", "tx_pool", "nfree"),
    ("tx_chunks_low", "tx_pool", "low"),
    ("rcv_credit_free", "credit", "free"),
    ("rcv_credit_waits", "credit", "waits"),
    ("rcv_credit_overcommits", "credit", "overcommits"),
)
_REPORT_NAMES = tuple(sorted(_COUNTER_NAMES + tuple(entry[0] for entry in _STATE)))


class _Segment:
    """The incoming segment being processed: one per Tcp, overwritten for every segment."""

    def __init__(self):
        self.buf = None
        self.ip_off = 0
        self.off = 0         # TCP header
        self.flags = 0
        self.data_off = 0
        self.data_len = 0
        self.wnd = 0
        self.mss = 0         # MSS option value, 0 when absent
        self.sack_ok = False  # SACK-permitted option present
        self.sport = 0
        self.dport = 0
        self.rel = 0         # SEG.SEQ - RCV.NXT after trimming to the window


def _parse_options(g):
    """Walk segment g's options; False when a length is 0, 1 or runs past the header (drop
    it)."""
    buf = g.buf
    i = g.off + _TCP_HLEN
    end = g.data_off
    while i < end:
        kind = buf[i]
        if kind == _TCPOPT_END:
            return True
        if kind == _TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= end:
            return False
        n = buf[i + 1]
        if n < 2 or i + n > end:
            return False
        if kind == _TCPOPT_MSS:
            if n != _TCPOPT_MSS_LEN:
                return False
            g.mss = (buf[i + 2] << 8) | buf[i + 3]
        elif kind == _TCPOPT_SACK_PERM:
            if n != _TCPOPT_SACK_PERM_LEN:
                return False
            g.sack_ok = True
        i += n
    return True


def _sooner(best, d):
    """Fold one deadline (ms from now, negative = overdue) into the soonest so far."""
    return earliest(best, d if d > 0 else 0)


def _add_high16(buf, off, v):
    """Add v (< 2**16) to the upper 16 bits of the 32-bit number at buf[off]."""
    t = ((buf[off] << 8) | buf[off + 1]) + v
    buf[off] = (t >> 8) & 0xFF
    buf[off + 1] = t & 0xFF


def _keyed_mix(key, data, out, off):
    """Keyed 32-bit mix for ports without hashlib: two 16-bit lanes, products < 2**30."""
    a = 0x9E37
    b = 0x79B9
    for src in (key, data, key):
        for x in src:
            a = ((a ^ x) * 0x3C6F + b + 1) & 0xFFFF
            b = ((b ^ a) * 0x2C1B + (a >> 7)) & 0xFFFF
    out[off] = a >> 8
    out[off + 1] = a & 0xFF
    out[off + 2] = b >> 8
    out[off + 3] = b & 0xFF


class TcpListener:
    """A passive open on one port, with a bounded backlog of half-open + unaccepted sockets."""

    def __init__(self, tcp, port, backlog):
        self.tcp = tcp
        self.port = port
        self.backlog = backlog
        self.queue = []        # established, not yet accepted
        self.embryonic = 0     # SYN-RECEIVED sockets of this listener

    def pending(self):
        return len(self.queue)

    def accept(self):
        """The next established connection, now the caller's (release() it when done)."""
        if not self.queue:
            return None
        s = self.queue.pop(0)
        s.listener = None
        s.listen_state = _LS_NONE
        s.held = True
        return s

    def close(self):
        tcp = self.tcp
        if self in tcp.listeners:
            tcp.listeners.remove(self)
        # Connections nobody accepted (or that are still handshaking) are reset.
        for s in list(tcp.conns):
            if s.listener is self:
                s.abort()


class TcpSocket:
    """One connection. Every socket a stack will ever use is made at boot (Tcp keeps them in
    a pool, tcp_max_connections of them) with everything it needs, its rings and assembler
    included: opening a connection allocates nothing, so the heap stays as the boot left it
    (a heap of 30 KB free in blocks of at most 432 bytes refused a new socket's attribute
    table of 584 bytes, measured on the RP2040 with 29 connections allocated one by one).
    A socket handed to an application (accept(), connect()) goes back to the pool once the
    application has released it and the connection is closed, whichever comes last."""

    def __init__(self, tcp):
        cfg = tcp.config
        self.tcp = tcp
        self.seq = bytearray(_SEQ_LEN)
        self.remote_ip = bytearray(4)
        self._rxr = ChunkRing(tcp.rx_pool, cfg.tcp_rx_buffer)
        self._txr = ChunkRing(tcp.tx_pool, cfg.tcp_tx_buffer)
        self._asm = Assembler(_OOO_RANGES)
        self.held = False          # an application has it (until release())
        self.reset(0, 0, self.remote_ip, 0)

    def reset(self, local_port, remote_port, ip, ip_off):
        """Make this socket a new connection's, to ip[ip_off:ip_off+4]:remote_port."""
        tcp = self.tcp
        cfg = tcp.config
        self.iface = tcp.iface
        self.state = CLOSED
        self.local_port = local_port
        self.remote_port = remote_port
        copy(self.remote_ip, 0, ip, ip_off, 4)
        self.error = 0
        self.listener = None
        self.listen_state = _LS_NONE
        fill(self.seq, 0, _SEQ_LEN, 0)
        # Send side, as offsets from SND.UNA.
        self.syn_off = 0           # 1 while our SYN is unacknowledged (it precedes the data)
        self.snd_nxt_off = 0
        self.snd_max_off = 0       # highest sequence sent (snd_nxt_off falls back on RTO)
        self.snd_wnd = 0
        self.max_snd_wnd = 0
        self.mss = _DEFAULT_MSS    # effective send MSS
        self.sack = False          # peer said SACK-permitted: our ACKs carry SACK blocks
        self.rcv_mss = _DEFAULT_MSS  # largest segment received (delayed-ACK rule)
        # Congestion control (RFC 5681 / 6582).
        self.cwnd = _OUR_MSS
        self.ssthresh = _SSTHRESH_INIT
        self.dupacks = 0
        self.in_recovery = False
        self.recover_off = _RECOVER_NONE
        # Retransmission timer (RFC 6298); srtt in ms * 8, rttvar in ms * 4 (BSD scaling).
        self.rto = _RTO_INIT
        self.srtt8 = 0
        self.rttvar4 = 0
        self.rtt_active = False
        self.rtt_off = 0           # ACK of this offset completes the timed segment
        self.rtt_start = 0
        self.retries = 0
        self.syn_retransmitted = False
        self.timer = _T_NONE
        self.timer_at = 0
        self.persist_ms = 0
        self.persist_probes = 0
        # ACK generation.
        self.ack_now = False       # an ACK is owed: sent by the next poll (end of the turn)
        self.ack_urgent = False    # ...or at once, from input() (out of order: dup ACKs)
        self.ack_armed = False     # delayed ACK pending
        self.ack_at = 0
        self.unacked_bytes = 0
        self.rcv_adv_rel = 0       # right edge we last advertised, relative to RCV.NXT
        # Under a receive budget: the right edge the kernel's credit pool allows us, relative
        # to RCV.NXT (>= rcv_adv_rel); whether we wait in its queue, and since when.
        self.rcv_allow = 0
        self.rcv_queued = False
        self.rcv_wait_since = 0
        self.need_output = False
        self.blocked = False       # the interface refused a segment; retry at retry_at
        self.retry_at = 0
        # Closing.
        self.fin_queued = False    # close() called: FIN goes after the queued data
        self.fin_received = False
        self.rx_fin_pending = False  # a FIN arrived out of order at rx_fin_off
        self.rx_fin_off = 0
        # Buffers (passive sockets get them when the handshake completes).
        self.rx = None
        self.tx = None
        self.asm = None
        # Application knobs.
        self.nagle = cfg.tcp_nagle
        self.keepalive_ms = cfg.tcp_keepalive_ms
        self.keepalive_interval_ms = _KA_INTERVAL_MS
        self.keepalive_probes = _KA_PROBES
        self.ka_probes = 0
        self.ka_at = 0
        self.last_rx = 0

    # ---- application interface -------------------------------------------------------

    def release(self):
        """The application is done with this socket (after close() or abort(), or once it
        saw the connection end): the stack reuses it once the connection is closed."""
        if self.held:
            self.held = False
            if self.state == CLOSED:
                self.tcp._recycle(self)

    def send(self, buf, off, n):
        """Queue up to n bytes of buf[off:]; returns how many fit (0 when the ring is full)."""
        if self.state <= LISTEN:
            raise OSError(_ENOTCONN)
        if self.fin_queued:
            raise OSError(_EPIPE)
        if self.tx is None:
            return 0
        n = self.tx.write(buf, off, n)
        if n:
            self.need_output = True
        return n

    def recv_into(self, buf, off, n):
        """Copy up to n received bytes into buf[off:] (None: drop them unread, as a
        discard service does); 0 when nothing is waiting."""
        rx = self.rx
        if rx is None:
            return 0
        if n > rx.used:
            n = rx.used
        if n <= 0:
            return 0
        if buf is not None:
            rx.peek_into(buf, off, 0, n)
        if self.asm.count:
            rx.discard(n, True)           # out-of-order data is parked in the free space
        else:
            rx.consume(n)                 # none: every chunk past the data goes back
        if self.fin_received:
            self._release_buffers()
        else:
            self._window_opened()
        return n

    def recv_available(self):
        rx = self.rx
        return 0 if rx is None else rx.used

    def send_space(self):
        """Bytes send() would take now (the ring's free space, as far as the kernel's pool
        has chunks for it)."""
        tx = self.tx
        if tx is None or self.fin_queued:
            return 0
        return tx.writable()

    def at_eof(self):
        """The peer sent FIN (or the connection is gone) and every byte has been read."""
        if not self.fin_received and self.state != CLOSED:
            return False
        rx = self.rx
        return rx is None or rx.used == 0

    def close(self):
        """Graceful close: a FIN follows the queued data. Receiving goes on (half-close)."""
        st = self.state
        if st == CLOSED or self.fin_queued:
            return
        if st == SYN_SENT:
            self._finish(0)
            return
        self.fin_queued = True
        if st == ESTABLISHED:
            self.state = FIN_WAIT_1
        elif st == CLOSE_WAIT:
            self.state = LAST_ACK
        # SYN-RECEIVED moves on to FIN-WAIT-1 when the handshake completes.
        self.need_output = True

    def abort(self):
        """Reset the connection now (RST to the peer in the states that have one)."""
        st = self.state
        if st == CLOSED:
            return
        if SYN_RCVD <= st <= CLOSE_WAIT:
            self._emit_rst(self.tcp.now)
        self._finish(0)

    # ---- segment arrival -------------------------------------------------------------

    def _input(self, g, now):
        st = self.state
        if st == SYN_SENT:
            self._input_syn_sent(g, now)
            return
        flags = g.flags
        if flags & _TCP_SYN and not flags & _TCP_RST:
            if st == SYN_RCVD and seq_delta(g.buf, g.off + _TCP_SEQ, self.seq, _IRS) == 0:
                self._input_syn_again(g, now)
            else:
                self._input_syn_synchronized(g, now)
            return
        if st == TIME_WAIT and flags & _TCP_FIN:
            self._arm_time_wait(now)
        if not self._check_sequence(g):
            self.tcp.drop_out_of_window += 1
            if not flags & _TCP_RST:
                self.ack_now = True       # tell the peer where we are (RFC 9293 3.10.7.4)
                self.ack_urgent = True
            return
        # Only acceptable segments prove the peer alive (garbage must not keep it so).
        self.last_rx = now
        self.ka_probes = 0
        if flags & _TCP_RST:
            self._input_rst(g, now)
            return
        if not flags & _TCP_ACK_FLAG:
            self.tcp.drop_no_ack += 1
            return
        if st == SYN_RCVD and not self._input_ack_syn_rcvd(g, now):
            return
        if not self._process_ack(g, now):
            return
        if g.data_len or g.flags & _TCP_FIN:
            self._receive(g, now)

    def _input_syn_sent(self, g, now):
        """RFC 9293 3.10.7.3: our SYN is out; expect SYN-ACK (or SYN: simultaneous open)."""
        tcp = self.tcp
        flags = g.flags
        buf = g.buf
        o = g.off
        if flags & _TCP_ACK_FLAG:
            d = seq_delta(buf, o + _TCP_ACK, self.seq, _SND_UNA)
            if d <= 0 or d > self.snd_max_off:
                tcp.drop_bad_ack += 1
                tcp._reply_rst(g, now)
                return
        if flags & _TCP_RST:
            if flags & _TCP_ACK_FLAG:
                tcp.rst_received += 1
                self._finish(_ECONNREFUSED)
            return
        if not flags & _TCP_SYN:
            return
        copy(self.seq, _IRS, buf, o + _TCP_SEQ, 4)
        seq_put(self.seq, _RCV_NXT, buf, o + _TCP_SEQ, 1)
        copy(self.seq, _WL1, buf, o + _TCP_SEQ, 4)
        copy(self.seq, _WL2, buf, o + _TCP_ACK, 4)
        self._set_peer_mss(g.mss)
        self.sack = g.sack_ok
        self.snd_wnd = g.wnd
        self.max_snd_wnd = g.wnd
        self.last_rx = now
        self.ack_now = True
        if flags & _TCP_ACK_FLAG:
            if not self._establish(now):
                return
            self._ack_new(d, now)
        else:
            # Simultaneous open: answer with SYN-ACK (our SYN again, now with an ACK).
            self.state = SYN_RCVD
            self.snd_nxt_off = 0
            self.need_output = True

    def _input_syn_again(self, g, now):
        """SYN-RECEIVED and the peer's SYN once more: it lost our SYN-ACK, or (simultaneous
        open) this is its SYN-ACK, which carries the ACK of our SYN."""
        if not g.flags & _TCP_ACK_FLAG:
            self.snd_nxt_off = 0        # send the SYN-ACK again
            self.need_output = True
            return
        d = seq_delta(g.buf, g.off + _TCP_ACK, self.seq, _SND_UNA)
        if d <= 0 or d > self.snd_max_off:
            self.tcp.drop_bad_ack += 1
            self.tcp._reply_rst(g, now)
            return
        if not self._establish(now):
            return
        g.data_len = 0
        g.flags &= ~_TCP_FIN
        self._process_ack(g, now)
        self.ack_now = True

    def _input_syn_synchronized(self, g, now):
        """A SYN in a synchronized state (RFC 5961 4.2): challenge ACK; a half-open passive
        connection whose SYN falls in the window goes back to LISTEN instead (RFC 9293): a
        stale or blind SYN elsewhere must not kill it."""
        d = seq_delta(g.buf, g.off + _TCP_SEQ, self.seq, _RCV_NXT)
        if self.state == SYN_RCVD and self.listener is not None and 0 <= d <= self._rcv_space():
            self.tcp.drop_syn_in_syn_rcvd += 1
            self._finish(0)
            return
        self._challenge_ack(now)

    def _input_rst(self, g, now):
        """RFC 5961 3.2: only a RST exactly at RCV.NXT resets; others in window get a
        challenge ACK (out-of-window ones were already dropped)."""
        tcp = self.tcp
        if g.rel != 0:
            self._challenge_ack(now)
            return
        tcp.rst_received += 1
        st = self.state
        if st == SYN_RCVD:
            self._finish(0 if self.listener is not None else _ECONNREFUSED)
            return
        if ESTABLISHED <= st <= CLOSE_WAIT:
            tcp.resets += 1
            self._finish(_ECONNRESET)
            return
        self._finish(0)    # CLOSING, LAST-ACK, TIME-WAIT: just go away

    def _input_ack_syn_rcvd(self, g, now):
        """The handshake's last ACK: acceptable if it acknowledges our SYN."""
        d = seq_delta(g.buf, g.off + _TCP_ACK, self.seq, _SND_UNA)
        if d <= 0 or d > self.snd_max_off:
            self.tcp.drop_bad_ack += 1
            self.tcp._reply_rst(g, now)
            return False
        return self._establish(now)

    def _check_sequence(self, g):
        """RFC 9293 segment acceptability, then trim the segment to the receive window.

        Leaves g.rel = SEG.SEQ - RCV.NXT (>= 0 for data after trimming; exact for RST).
        A zero window still accepts a segment at exactly RCV.NXT so its ACK, RST or FIN is
        seen (its data is dropped), as RFC 9293 asks.
        """
        d = seq_delta(g.buf, g.off + _TCP_SEQ, self.seq, _RCV_NXT)
        g.rel = d
        rx = self.rx
        w = rx.size - rx.used if rx is not None else self.tcp.config.tcp_rx_buffer
        slen = g.data_len + (1 if g.flags & _TCP_FIN else 0)
        if slen == 0 or g.flags & _TCP_RST:
            return d == 0 or 0 <= d < w
        if d != 0 and (d >= w or d + slen <= 0):
            return False
        if d < 0 or d + g.data_len > w:
            self._trim(g, w)
        return True

    def _trim(self, g, w):
        """Cut what an acceptable segment has outside the window w: a retransmission's front,
        or more than the window (apart: keeps _check_sequence's frame within 11 words)."""
        d = g.rel
        n = g.data_len
        if d < 0:
            g.data_off -= d          # already received: trim the front
            n += d
            g.data_len = n
            d = 0
            g.rel = 0
        if d + n > w:
            # Beyond the window: keep what fits; the FIN (after the data) goes too. What was
            # cut must still be answered (a zero-window probe carrying a byte, RFC 9293
            # 3.10.7.4), or a peer that probes that way never learns the window reopened.
            self.ack_now = True
            self.ack_urgent = True
            n = w - d
            if n < 0:
                n = 0
            g.data_len = n
            g.flags &= ~_TCP_FIN

    def _process_ack(self, g, now):
        """RFC 9293 "fifth, check the ACK field" with the RFC 5961 5.2 range check.

        Returns False when the segment must be dropped (or the connection ended).
        """
        tcp = self.tcp
        d = seq_delta(g.buf, g.off + _TCP_ACK, self.seq, _SND_UNA)
        if d > self.snd_max_off:
            tcp.drop_bad_ack += 1      # acknowledges something never sent
            self._challenge_ack(now)
            return False
        if d < 0:
            if -d > self.max_snd_wnd:
                tcp.drop_bad_ack += 1
                self._challenge_ack(now)
                return False
            return True                # an old ACK: ignore it, keep the data
        self.persist_probes = 0
        dup = (d == 0 and g.data_len == 0 and not g.flags & (_TCP_SYN | _TCP_FIN)
               and g.wnd == self.snd_wnd and self.snd_max_off > 0)
        if d > 0:
            self._ack_new(d, now)
            if self.state == CLOSED:
                return False
        self._update_window(g)
        if dup:
            self._dup_ack(now)
        return True

    def _ack_new(self, d, now):
        """SND.UNA advances by d: free acked bytes, time RTT, grow cwnd, move timers."""
        acked = d - self.syn_off       # our SYN, while unacknowledged, comes first
        self.syn_off = 0
        fin_acked = False
        if acked > 0:
            if acked > self.tx.used:
                fin_acked = True
                acked = self.tx.used
            if acked:
                self.tx.consume(acked)
        seq_add(self.seq, _SND_UNA, d)
        self.snd_nxt_off -= d
        if self.snd_nxt_off < 0:
            self.snd_nxt_off = 0
        self.snd_max_off -= d
        full = d >= self.recover_off
        self.recover_off -= d
        if self.recover_off < _RECOVER_NONE:
            self.recover_off = _RECOVER_NONE
        if self.rtt_active:
            if d >= self.rtt_off:
                self.rtt_active = False
                self._rtt_sample(ticks_diff(now, self.rtt_start))
            else:
                self.rtt_off -= d
        self.retries = 0
        if not self.in_recovery:
            self.dupacks = 0
        if acked > 0:
            self._cc_ack(acked, full, now)
        if self.snd_max_off == 0:
            if self.timer == _T_RTX:
                self.timer = _T_NONE
        else:
            self._arm_rtx(now)
        self.need_output = True
        if fin_acked:
            self._our_fin_acked(now)

    def _cc_ack(self, acked, full, now):
        """RFC 5681 growth; in fast recovery, RFC 6582 full/partial ACK handling."""
        mss = self.mss
        if self.in_recovery:
            if full:
                # Leave fast recovery: cwnd = min(ssthresh, max(FlightSize, SMSS) + SMSS).
                self.in_recovery = False
                self.dupacks = 0
                flight = self.snd_max_off
                c = (flight if flight > mss else mss) + mss
                self.cwnd = self.ssthresh if self.ssthresh < c else c
            else:
                # Partial ACK: the next hole is lost too. Resend it, deflate by what was
                # acked, add back one SMSS.
                self._retransmit_first(now)
                c = self.cwnd - acked + mss
                self.cwnd = c if c > mss else mss
            return
        c = self.cwnd
        if c < self.ssthresh:
            c += acked if acked < mss else mss       # slow start
        else:
            inc = (mss * mss) // c                   # congestion avoidance
            c += inc if inc > 0 else 1
        self.cwnd = c if c < _CWND_MAX else _CWND_MAX

    def _dup_ack(self, now):
        """RFC 5681 duplicate ACK: fast retransmit at the threshold, inflate in recovery."""
        mss = self.mss
        self.dupacks += 1
        if self.in_recovery:
            self.cwnd += mss
            if self.cwnd > _CWND_MAX:
                self.cwnd = _CWND_MAX
            self.need_output = True
            return
        threshold = _DUPACK_THRESHOLD
        # RFC 5827 early retransmit: with fewer than 4 segments out and nothing new that
        # may be sent, that many duplicates can never arrive; use segments - 1.
        flight = self.snd_max_off
        segs = (flight + mss - 1) // mss
        if 2 <= segs < 4:
            unsent = self.tx.used - self.snd_nxt_off
            win = self.snd_wnd if self.snd_wnd < self.cwnd else self.cwnd
            if unsent <= 0 or win <= self.snd_nxt_off:
                threshold = segs - 1
        if self.dupacks != threshold:
            return
        if self.recover_off != _RECOVER_NONE:
            return     # RFC 6582: these duplicates are from before the last recovery
        ss = flight >> 1
        if ss < 2 * mss:
            ss = 2 * mss
        self.ssthresh = ss
        self.recover_off = flight
        self.in_recovery = True
        self.tcp.fast_retransmits += 1
        self._retransmit_first(now)
        self.cwnd = ss + self.dupacks * mss
        self.need_output = True

    def _update_window(self, g):
        """Take SEG.WND if this segment is newer than the last window update (WL1/WL2)."""
        d = seq_delta(g.buf, g.off + _TCP_SEQ, self.seq, _WL1)
        if d < 0 or (d == 0 and seq_delta(g.buf, g.off + _TCP_ACK, self.seq, _WL2) < 0):
            return
        # WL1, WL2 := SEG.SEQ, SEG.ACK: one copy, as both pairs lie side by side.
        copy(self.seq, _WL1, g.buf, g.off + _TCP_SEQ, 8)
        w = g.wnd
        d = w - self.snd_wnd           # how far the window opened
        self.snd_wnd = w
        if w > self.max_snd_wnd:
            self.max_snd_wnd = w
        if d > 0:
            if self.timer == _T_PERSIST:
                self.timer = _T_NONE
            self.need_output = True

    def _receive(self, g, now):
        """Segment text and FIN (RFC 9293 seventh and eighth steps)."""
        if not ESTABLISHED <= self.state <= FIN_WAIT_2:
            return     # FIN already received: nothing more to take
        n = g.data_len
        if n > self.rcv_mss:
            self.rcv_mss = n if n < _OUR_MSS else _OUR_MSS
        if g.rel or self.asm.count or self.rx_fin_pending:
            self._receive_out_of_order(g, now)
            return
        # The common case: in order, no holes.
        fin = g.flags & _TCP_FIN
        if n:
            k = self.rx.write(g.buf, g.data_off, n)
            if k < n:
                # The kernel's pool is out of chunks: the rest is not acknowledged,
                # and the peer sends it again.
                self.tcp.drop_no_buffer += 1
                self.ack_now = True
                if k == 0:
                    return
                n = k
                fin = 0
            self._advance_rcv(n)
        if fin:
            self._receive_fin(now)
        else:
            self._note_data(n, now)

    def _receive_out_of_order(self, g, now):
        """Out of order, or filling a hole (apart: keeps _receive's frame within 11 words):
        ACK at once (RFC 5681 4.2), one per segment so the sender can count duplicates."""
        self.ack_now = True
        self.ack_urgent = True
        n = g.data_len
        if n and self.rx_fin_pending and g.rel + n > self.rx_fin_off:
            n = self.rx_fin_off - g.rel    # nothing after the peer's FIN is data
            if n < 0:
                n = 0
        if n:
            # Stored first: bytes parked where the assembler does not record them are only
            # overwritten later, a range recorded without its bytes would be wrong data.
            # Data past a hole leaves the kernel's pool a segment's chunks for in-order data:
            # else connections that each parked some could hold every chunk, and none could
            # take the segment that fills its hole.
            if not self.rx.write_at(g.rel, g.buf, g.data_off, n,
                                    _OOO_RESERVE if g.rel else 0):
                self.tcp.drop_no_buffer += 1
                return
            if not self.asm.add(g.rel, g.rel + n):
                self.tcp.drop_ooo_full += 1
                return
            if g.rel > 0:
                self.tcp.ooo_segments += 1
                seq_put(self.seq, _SACK_LAST, self.seq, _RCV_NXT, g.rel)
        if g.flags & _TCP_FIN and not self.rx_fin_pending:
            self.rx_fin_pending = True
            self.rx_fin_off = g.rel + n
            self.asm.truncate(g.rel + n)   # data parked beyond the FIN is not data either
        n = self.asm.take_front()
        if n:
            self.rx.commit(n)
            self._advance_rcv(n)
            # The credit of what arrived went back: ask again, as for in-order data, or the
            # window closes and nothing reopens it (the sender's probes fall out of window).
            self._rcv_ask(now)
        if self.rx_fin_pending and self.rx_fin_off <= 0:
            self.asm.clear()    # anything stored beyond the FIN is not data
            self._receive_fin(now)

    def _advance_rcv(self, k):
        seq_add(self.seq, _RCV_NXT, k)
        self.rcv_adv_rel -= k
        a = self.rcv_allow
        if a > 0:
            # What arrived leaves the chip and the rings: its credit is free again.
            r = k if k < a else a
            self.rcv_allow = a - r
            credit = self.tcp.credit
            if credit is not None:
                credit.give(r, self.tcp.now)
        if self.rx_fin_pending:
            self.rx_fin_off -= k

    def _note_data(self, n, now):
        """In-order data: delay the ACK, but ACK every second full-sized segment."""
        if n == 0:
            return
        self.unacked_bytes += n
        self._rcv_ask(now)
        delay = self.tcp.config.tcp_delayed_ack_ms
        # Under a receive budget a connection's window may be one segment: with less than
        # one left the sender can send nothing more, so ACK now rather than after the delay.
        # A connection waiting for credit is ACKed when it gets it, window and all, even
        # after two segments: an ACK now would close the window and another open it again
        # (the delayed ACK still bounds the wait).
        queued = self.rcv_queued
        if ((self.unacked_bytes >= 2 * self.rcv_mss and not queued) or delay <= 0
                or (self.rcv_adv_rel < self.rcv_mss and self.tcp.rcv_share < _MAX_WINDOW
                    and not queued)):
            self.ack_now = True
        elif not self.ack_armed:
            self.ack_armed = True
            self.ack_at = ticks_add(now, delay)

    def _receive_fin(self, now):
        self.rx_fin_pending = False
        seq_add(self.seq, _RCV_NXT, 1)
        self.rcv_adv_rel -= 1
        self._rcv_release()        # nothing follows a FIN
        self.fin_received = True
        self.ack_now = True
        st = self.state
        if st == ESTABLISHED:
            self.state = CLOSE_WAIT
        elif st == FIN_WAIT_1:
            self.state = CLOSING       # simultaneous close: our FIN is not acked yet
        elif st == FIN_WAIT_2:
            self._enter_time_wait(now)

    def _our_fin_acked(self, now):
        st = self.state
        if st == FIN_WAIT_1:
            self.state = FIN_WAIT_2
        elif st == CLOSING:
            self._enter_time_wait(now)
        elif st == LAST_ACK:
            self._finish(0)
        self._release_buffers()

    def _release_buffers(self):
        """Give the rings' chunks back once no byte can pass through them again: TX when
        our FIN is acknowledged, RX when the peer's FIN is in and the reader has drained it.
        (A TIME-WAIT socket would otherwise hold both for 2 MSL.)"""
        st = self.state
        tx = self.tx
        if tx is not None and self.fin_queued and (st == FIN_WAIT_2 or st == TIME_WAIT or
                                                   st == CLOSED):
            tx.clear()
            self.tx = None
        rx = self.rx
        if rx is not None and rx.used == 0 and (self.fin_received or st == CLOSED):
            rx.clear()
            self.rx = None
            self.asm = None

    # ---- state changes -----------------------------------------------------------------

    def _open_passive(self, g, now):
        """A SYN reached our listener: SYN-RECEIVED, SYN-ACK goes out on _output."""
        buf = g.buf
        o = g.off
        copy(self.seq, _IRS, buf, o + _TCP_SEQ, 4)
        seq_put(self.seq, _RCV_NXT, buf, o + _TCP_SEQ, 1)
        copy(self.seq, _WL1, buf, o + _TCP_SEQ, 4)
        self.tcp._make_isn(self, now)
        copy(self.seq, _SND_UNA, self.seq, _ISS, 4)
        copy(self.seq, _WL2, self.seq, _ISS, 4)
        self._set_peer_mss(g.mss)
        self.sack = g.sack_ok
        self.snd_wnd = g.wnd
        self.max_snd_wnd = g.wnd
        self.syn_off = 1
        self.state = SYN_RCVD
        self.last_rx = now
        self.need_output = True

    def _open_active(self, now):
        credit = self.tcp.credit
        if credit is not None:
            # Our SYN offers two segments (see _rcv_cap) and cannot wait for credit: taken
            # even if the pool is short, as board-opened connections are few.
            self.rcv_allow = 2 * _OUR_MSS
            credit.free -= self.rcv_allow
        self._attach_buffers()
        self.tcp._make_isn(self, now)
        copy(self.seq, _SND_UNA, self.seq, _ISS, 4)
        self.syn_off = 1
        self.state = SYN_SENT
        self.last_rx = now
        self.need_output = True

    def _attach_buffers(self):
        """The rings: their bytes come from the kernel's chunk pools as data arrives."""
        self._asm.clear()
        self.rx = self._rxr
        self.tx = self._txr
        self.asm = self._asm

    def _establish(self, now):
        """The handshake completed (our SYN is acked on the caller's _ack_new)."""
        tcp = self.tcp
        if self.rx is None:
            self._attach_buffers()
        mss = self.mss
        # RFC 3390 initial window; one segment if the SYN or SYN-ACK was lost (RFC 5681).
        iw = 4380 if 4380 > 2 * mss else 2 * mss
        if iw > 4 * mss:
            iw = 4 * mss
        if self.syn_retransmitted:
            iw = mss
            if self.rto < _RTO_AFTER_SYN_LOSS:
                self.rto = _RTO_AFTER_SYN_LOSS
        self.cwnd = iw
        self.state = FIN_WAIT_1 if self.fin_queued else ESTABLISHED
        tcp.established += 1
        lsn = self.listener
        if lsn is not None and self.listen_state == _LS_EMBRYONIC:
            lsn.embryonic -= 1
            lsn.queue.append(self)
            self.listen_state = _LS_QUEUED
        return True

    def _enter_time_wait(self, now):
        self.state = TIME_WAIT
        self.ack_armed = False
        self._arm_time_wait(now)
        self._release_buffers()

    def _arm_time_wait(self, now):
        self.timer = _T_TIMEWAIT
        self.timer_at = ticks_add(now, self.tcp.config.tcp_time_wait_ms)

    def _finish(self, err):
        """Enter CLOSED and leave the connection table (and the listener's books)."""
        if err:
            self.error = err
            if self.rx is not None:
                self.rx.clear()    # a reset connection's data is void (RFC 9293)
        self.state = CLOSED
        self._rcv_release()
        self.rcv_queued = False   # its place in the credit queue is dropped when reached
        self.timer = _T_NONE
        self.ack_armed = False
        self.ack_now = False
        self.ack_urgent = False
        self.need_output = False
        self.blocked = False
        lsn = self.listener
        if lsn is not None:
            if self.listen_state == _LS_QUEUED:
                if self in lsn.queue:
                    lsn.queue.remove(self)
            elif self.listen_state == _LS_EMBRYONIC:
                lsn.embryonic -= 1
            self.listener = None
            self.listen_state = _LS_NONE
        self.tcp._remove(self)
        rx = self.rx
        if rx is not None and rx.used == 0:
            rx.clear()
            self.rx = None
            self.asm = None
        elif rx is not None:
            rx.drop_unused()      # what the reader has not read yet stays readable
        if self.tx is not None:
            self.tx.clear()
            self.tx = None

    def _set_peer_mss(self, m):
        if m == 0:
            m = _DEFAULT_MSS
        if m > _OUR_MSS:
            m = _OUR_MSS
        if m < _MIN_MSS:
            m = _MIN_MSS
        self.mss = m

    # ---- timers ------------------------------------------------------------------------

    def _poll(self, now):
        if self.timer != _T_NONE and ticks_diff(now, self.timer_at) >= 0:
            self._on_timer(now)
            if self.state == CLOSED:
                return
        if self.ack_armed and ticks_diff(now, self.ack_at) >= 0:
            self.ack_armed = False
            self.ack_now = True
        if self.keepalive_ms > 0:
            self._keepalive(now)
            if self.state == CLOSED:
                return
        if self.need_output or self.ack_now:
            self._output(now)

    def _due_in(self, now):
        """Milliseconds until this socket needs a poll; -1 = nothing pending."""
        best = -1
        if self.blocked:
            best = _sooner(best, ticks_diff(self.retry_at, now))
        elif self.need_output or self.ack_now:
            return 0
        if self.timer != _T_NONE:
            best = _sooner(best, ticks_diff(self.timer_at, now))
        if self.ack_armed:
            best = _sooner(best, ticks_diff(self.ack_at, now))
        if self.keepalive_ms > 0 and self._keepalive_applies():
            if self.ka_probes:
                at = self.ka_at
            else:
                at = ticks_add(self.last_rx, self.keepalive_ms)
            best = _sooner(best, ticks_diff(at, now))
        return best

    def _on_timer(self, now):
        t = self.timer
        self.timer = _T_NONE
        if t == _T_RTX:
            self._on_rto(now)
        elif t == _T_PERSIST:
            self._on_persist(now)
        elif t == _T_TIMEWAIT:
            self._finish(0)

    def _arm_rtx(self, now):
        self.timer = _T_RTX
        self.timer_at = ticks_add(now, self.rto)

    def _on_rto(self, now):
        """RFC 6298 5.4-5.6 and RFC 5681 (4): back off, collapse cwnd, go back to SND.UNA."""
        tcp = self.tcp
        st = self.state
        self.retries += 1
        if st == SYN_SENT or st == SYN_RCVD:
            limit = _SYN_RETRIES if st == SYN_SENT else _SYNACK_RETRIES
            if self.retries > limit:
                tcp.conn_timeouts += 1
                self._finish(0 if self.listener is not None else _ETIMEDOUT)
                return
            self.syn_retransmitted = True
        else:
            if self.retries > _MAX_RETRIES:
                tcp.conn_timeouts += 1
                self._finish(_ETIMEDOUT)
                return
            mss = self.mss
            ss = self.snd_max_off >> 1
            if ss < 2 * mss:
                ss = 2 * mss
            self.ssthresh = ss
            self.cwnd = mss
            self.in_recovery = False
            self.dupacks = 0
            self.recover_off = self.snd_max_off
        tcp.rto_timeouts += 1
        self.rtt_active = False
        rto = self.rto * 2
        self.rto = rto if rto < _RTO_MAX else _RTO_MAX
        self.snd_nxt_off = 0
        self._output(now)

    def _on_persist(self, now):
        """Zero-window probe: an ACK from just below SND.UNA makes the peer state its window."""
        tcp = self.tcp
        if self.snd_wnd != 0 or self.tx is None or self.tx.used <= self.snd_nxt_off:
            self.need_output = True
            return
        self.persist_probes += 1
        if self.persist_probes > _MAX_RETRIES:
            tcp.conn_timeouts += 1
            self._finish(_ETIMEDOUT)
            return
        self._emit(-1, 0, _TCP_ACK_FLAG)
        tcp.zero_window_probes += 1
        p = self.persist_ms * 2
        self.persist_ms = p if p < _RTO_MAX else _RTO_MAX
        self.timer = _T_PERSIST
        self.timer_at = ticks_add(now, self.persist_ms)

    def _keepalive_applies(self):
        st = self.state
        return ((st == ESTABLISHED or st == CLOSE_WAIT or st == FIN_WAIT_2)
                and self.snd_max_off == 0)

    def _keepalive(self, now):
        """RFC 1122 keepalive: after keepalive_ms of silence, probe every interval."""
        if not self._keepalive_applies():
            return
        if self.ka_probes == 0:
            if ticks_diff(now, self.last_rx) < self.keepalive_ms:
                return
        elif ticks_diff(now, self.ka_at) < 0:
            return
        tcp = self.tcp
        if self.ka_probes >= self.keepalive_probes:
            tcp.keepalive_timeouts += 1
            self._finish(_ETIMEDOUT)
            return
        self.ka_probes += 1
        self.ka_at = ticks_add(now, self.keepalive_interval_ms)
        tcp.keepalive_probes += 1
        self._emit(-1, 0, _TCP_ACK_FLAG)

    def _rtt_sample(self, r):
        """RFC 6298 2.2/2.3 with alpha 1/8, beta 1/4, K 4; G is 1 ms."""
        if r < 1:
            r = 1
        elif r > _RTO_MAX:
            r = _RTO_MAX
        if self.srtt8 == 0:
            self.srtt8 = r << 3
            self.rttvar4 = r << 1
        else:
            delta = r - (self.srtt8 >> 3)
            self.srtt8 += delta
            if delta < 0:
                delta = -delta
            self.rttvar4 += delta - (self.rttvar4 >> 2)
        var = self.rttvar4 if self.rttvar4 > 0 else 1
        rto = (self.srtt8 >> 3) + var
        if rto < _RTO_MIN:
            rto = _RTO_MIN
        elif rto > _RTO_MAX:
            rto = _RTO_MAX
        self.rto = rto

    # ---- segment departure -------------------------------------------------------------

    def _output(self, now):
        """Send what the state, windows and Nagle allow, and any ACK that is owed."""
        if self.blocked:
            if ticks_diff(now, self.retry_at) < 0:
                return
            self.blocked = False
        self.need_output = False
        st = self.state
        if st == CLOSED:
            return
        if st == SYN_SENT or st == SYN_RCVD:
            self._output_syn(now)
            return
        # (In FIN-WAIT-2 and TIME-WAIT our FIN is acked.) With nothing unsent and no FIN
        # queued there is nothing for _output_data to do: most calls (every ACK) skip it.
        if (st != FIN_WAIT_2 and st != TIME_WAIT
                and (self.tx.used != self.snd_nxt_off or self.fin_queued)):
            self._output_data(now)
        if self.ack_now and not self.blocked:
            # A pure ACK carries SND.MAX, not SND.NXT (BSD): after an RTO pulled SND.NXT
            # back, that sequence is old to the peer, which would answer with an ACK of its
            # own, and two such peers would ACK each other forever.
            if not self._emit(self.snd_max_off, 0, _TCP_ACK_FLAG):
                self._blocked(now, False)

    def _output_syn(self, now):
        st = self.state
        if self.snd_nxt_off == 0:
            if st == SYN_RCVD and self.tcp.credit is not None and \
                    self.rcv_allow < 2 * _OUR_MSS:
                # The SYN-ACK opens a window of two segments: it waits for their credit
                # (Tcp.poll sends it when the pool has it).
                self._rcv_ask(now)
                if self.rcv_allow < 2 * _OUR_MSS:
                    return
            flags = _TCP_SYN if st == SYN_SENT else _TCP_SYN | _TCP_ACK_FLAG
            if self.snd_max_off:
                self.tcp.retransmits += 1
            if not self._emit(0, 0, flags):
                self._blocked(now, True)
                return
            self.snd_nxt_off = 1
            if self.snd_max_off == 0:
                self.snd_max_off = 1
                self.rtt_active = True
                self.rtt_off = 1
                self.rtt_start = now
            if self.timer != _T_RTX:
                self._arm_rtx(now)
        elif self.ack_now and st == SYN_RCVD:
            self._emit(self.snd_max_off, 0, _TCP_ACK_FLAG)
        else:
            self.ack_now = False

    def _output_data(self, now):
        """Segments from SND.NXT: min(peer window, cwnd) bounds the flight, segments are at
        most one MSS, small ones wait while data is in flight (Nagle, sender SWS)."""
        burst = _MAX_BURST
        while burst > 0:
            rel = self.snd_nxt_off
            if rel > self.tx.used:
                break                         # the FIN is out too
            n = (self.snd_wnd if self.snd_wnd < self.cwnd else self.cwnd) - rel
            if n > self.tx.used - rel:
                n = self.tx.used - rel        # what is unsent
            if n > self.mss:
                n = self.mss
            if n < 0:
                n = 0
            flags = _TCP_FIN if self.fin_queued and rel + n == self.tx.used else 0
            if n == 0 and not flags:
                break
            if n < self.mss and not flags and rel > 0:
                if n < self.tx.used - rel:
                    if n < (self.max_snd_wnd >> 1):
                        break                 # sender SWS avoidance: wait for more window
                elif self.nagle:
                    break                     # Nagle: one small segment in flight at most
            flags |= _TCP_ACK_FLAG
            if rel + n == self.tx.used:
                flags |= _TCP_PSH
            if not self._emit(rel, n, flags):
                self._blocked(now, True)
                break
            n += rel                          # from here on, the segment's end
            if flags & _TCP_FIN:
                n += 1
            if rel < self.snd_max_off:
                self.tcp.retransmits += 1
            elif not self.rtt_active:
                self.rtt_active = True
                self.rtt_off = n
                self.rtt_start = now
            if n > self.snd_max_off:
                self.snd_max_off = n
            self.snd_nxt_off = n
            if self.timer != _T_RTX:
                self._arm_rtx(now)
            burst -= 1
        if burst == 0:
            self.need_output = True           # more may go on the next poll
        if (burst == _MAX_BURST and self.snd_wnd == 0 and self.timer == _T_NONE
                and self.tx.used > self.snd_nxt_off):
            # Nothing went out (burst untouched) and the window is shut: probe it later.
            self.persist_ms = self.rto
            self.timer = _T_PERSIST
            self.timer_at = ticks_add(now, self.persist_ms)

    def _retransmit_first(self, now):
        """Resend the segment at SND.UNA (fast retransmit, partial ACK); SND.NXT stays."""
        data_end = self.tx.used
        n = data_end
        if n > self.mss:
            n = self.mss
        if n > self.snd_max_off:
            n = self.snd_max_off
        fin = self.fin_queued and n == data_end and self.snd_max_off > data_end
        if n <= 0 and not fin:
            return
        flags = _TCP_ACK_FLAG
        if n == data_end:
            flags |= _TCP_PSH
        if fin:
            flags |= _TCP_FIN
        self.tcp.retransmits += 1
        self.rtt_active = False           # Karn: no sample from a retransmitted range
        if self._emit(0, n, flags):
            end = n + (1 if fin else 0)
            if self.snd_nxt_off < end:
                self.snd_nxt_off = end
        if self.timer != _T_RTX:
            self._arm_rtx(now)

    def _blocked(self, now, has_data):
        """The interface could not send: retry shortly. Data also arms the retransmit timer
        so a neighbour that never resolves ends in ETIMEDOUT."""
        self.blocked = True
        self.need_output = True
        self.retry_at = ticks_add(now, _TX_RETRY_MS)
        self.tcp.tx_blocked += 1
        if has_data and self.timer == _T_NONE:
            self._arm_rtx(now)

    def _rcv_space(self):
        rx = self.rx
        if rx is None:
            return self.tcp.config.tcp_rx_buffer
        return rx.size - rx.used

    def _rcv_cap(self):
        """This connection's share of the receive budget in whole segments of the size we
        asked the peer for (its segments to us), at least two. With a window of one segment
        each segment closes it and must be ACKed on its own, the credit that reopens it
        arriving with the ACK; with two, one ACK covers two segments (RFC 1122's every
        second segment): measured on 16 connections sharing 5 segments, 0.6 frames sent
        per frame received instead of 1.0. The credit pool still bounds the sum."""
        if self.state < ESTABLISHED:
            # Linux sends segments of at most half the largest window it has seen: two
            # segments keep them full-sized, and a first flight of two (not a whole ring)
            # from many connections opening at once still fits in the chip.
            return 2 * _OUR_MSS if self.tcp.config.tcp_rx_budget > 0 else _MAX_WINDOW
        cap = self.tcp.rcv_share
        if cap >= _MAX_WINDOW:
            return _MAX_WINDOW
        if cap < 2 * _OUR_MSS:
            return 2 * _OUR_MSS
        return cap - cap % _OUR_MSS

    def _rcv_release(self):
        """Give back the credit of a window that no more data will use."""
        a = self.rcv_allow
        if a > 0:
            self.rcv_allow = 0
            credit = self.tcp.credit
            if credit is not None:
                credit.give(a, self.tcp.now)

    def _rcv_need(self):
        """Under a receive budget, the least credit worth taking: up to the next whole
        segment of window (a rest of an old window would make the sender send a runt);
        the handshake's two segments."""
        if self.state == SYN_RCVD:
            return 2 * _OUR_MSS - self.rcv_allow
        return _OUR_MSS - self.rcv_allow % _OUR_MSS

    def _rcv_want(self, read=False):
        """Under a receive budget, the most credit this connection can use beyond what it
        holds: up to its share of the budget and its free ring space (<= 0: none), or with
        ``read`` its whole ring, as if the application had read what is waiting."""
        st = self.state
        if st == SYN_RCVD:
            return 2 * _OUR_MSS - self.rcv_allow
        if not (st == ESTABLISHED or st == FIN_WAIT_1 or st == FIN_WAIT_2) or \
                self.fin_received:
            return 0
        rx = self.rx
        if rx is None:
            w = self.tcp.config.tcp_rx_buffer
        else:
            w = rx.size if read else rx.size - rx.used
        cap = self._rcv_cap()
        if w > cap:
            w = cap
        return w - self.rcv_allow

    def _rcv_ask(self, now):
        """Under a receive budget: take credit for at least one more segment of window if
        this connection has room for one, or wait in the pool's queue when the pool is
        short and this connection cannot take a whole segment any more."""
        credit = self.tcp.credit
        if credit is None or self.rcv_queued:
            return
        need = self._rcv_need()
        want = self._rcv_want()
        if want < need:
            # Short of ring space until the application reads, which the kernel lets it do
            # before this turn's ACKs leave: wait in the queue (served after the read), or
            # the ACK would close the window and another one open it again.
            if self.rcv_allow < _OUR_MSS and self._rcv_want(True) >= need:
                self._rcv_wait(credit, need, now)
            return
        g = credit.take(need, want)
        if g:
            self.rcv_allow += g
        elif self.rcv_allow < _OUR_MSS or self.state == SYN_RCVD:
            self._rcv_wait(credit, need, now)

    def _rcv_wait(self, credit, need, now):
        """Join the queue for ``need`` of credit (served first come, first served)."""
        if credit.queue(self, now):
            self.rcv_queued = True
            self.rcv_wait_since = now
        else:                       # more waiters than connections: cannot happen
            self.rcv_allow += need
            credit.free -= need

    def _rcv_window(self):
        """The window to advertise: the free receive space, within this connection's share
        of the kernel's receive budget (tcp_rx_budget: what the chip and the frame slots
        hold, so the sum of all windows cannot overflow them and turn a burst into losses
        and retransmission timeouts), never below one segment (a sender keeps full-size
        segments and never waits on a window smaller than one) and never left of what was
        already advertised (RFC 9293 3.8.6: the window must not shrink). The handshake
        offers two segments (see _rcv_cap). With a budget, the right edge moves only as far
        as the credit this connection took from the kernel's pool (rcv_allow)."""
        w = self._rcv_space()
        if self.tcp.credit is not None:
            cap = self.rcv_allow
        else:
            cap = self._rcv_cap()
        if w > cap:
            w = cap
        if w < self.rcv_adv_rel:
            w = self.rcv_adv_rel
        if w > _MAX_WINDOW:
            w = _MAX_WINDOW
        return w

    def _window_opened(self):
        """The application read: announce the window if it grew by an MSS or half the ring."""
        st = self.state
        if not (st == ESTABLISHED or st == FIN_WAIT_1 or st == FIN_WAIT_2):
            return
        self._rcv_ask(self.tcp.now)
        w = self._rcv_window()
        # RFC 1122 receiver SWS avoidance, min(buffer / 2, MSS), where the buffer is what
        # this connection may use: its ring, or its budget share if that is smaller.
        threshold = self.rx.size
        cap = self._rcv_cap()
        if cap < threshold:
            threshold = cap
        threshold >>= 1
        if self.mss < threshold:
            threshold = self.mss
        if w - self.rcv_adv_rel >= threshold:
            self.ack_now = True
            self.need_output = True

    def _challenge_ack(self, now):
        tcp = self.tcp
        if tcp._challenge_allowed(now):
            tcp.challenge_acks += 1
            self._emit(self.snd_max_off, 0, _TCP_ACK_FLAG)
        else:
            tcp.challenge_acks_suppressed += 1

    def _emit(self, rel, n, flags):
        """Build one segment in the interface's TX frame and send it.

        SEQ = SND.UNA + rel; n payload bytes come from the TX ring at the same offset; a
        SYN carries our MSS. Returns False if the interface could not send it.
        """
        tcp = self.tcp
        iface = self.iface
        tx = iface.tx
        o = L4_OFF
        put16(tx, o, self.local_port)
        put16(tx, o + _TCP_DPORT, self.remote_port)
        seq_put(tx, o + _TCP_SEQ, self.seq, _SND_UNA, rel)
        if flags & _TCP_ACK_FLAG:
            copy(tx, o + _TCP_ACK, self.seq, _RCV_NXT, 4)
        else:
            fill(tx, o + _TCP_ACK, 4, 0)
        hlen = _TCP_HLEN
        if flags & _TCP_SYN:
            tx[o + _TCP_HLEN] = _TCPOPT_MSS
            tx[o + (_TCP_HLEN + 1)] = _TCPOPT_MSS_LEN
            put16(tx, o + (_TCP_HLEN + 2), _OUR_MSS)
            hlen = _TCP_HLEN + _TCPOPT_MSS_LEN
            # offer SACK on our SYN; echo it on a SYN-ACK
            if self.sack or not flags & _TCP_ACK_FLAG:
                tx[o + (_TCP_HLEN + 4)] = _TCPOPT_NOP
                tx[o + (_TCP_HLEN + 5)] = _TCPOPT_NOP
                tx[o + (_TCP_HLEN + 6)] = _TCPOPT_SACK_PERM
                tx[o + (_TCP_HLEN + 7)] = _TCPOPT_SACK_PERM_LEN
                hlen = _TCP_HLEN + _TCPOPT_MSS_LEN + 2 + _TCPOPT_SACK_PERM_LEN
        elif flags & _TCP_ACK_FLAG and self.sack and self.asm is not None and self.asm.count:
            hlen = _TCP_HLEN + self._sack_blocks(tx, o + _TCP_HLEN, n)
        tx[o + _TCP_OFF] = hlen << 2
        tx[o + _TCP_FLAGS] = flags
        w = self._rcv_window()
        put16(tx, o + _TCP_WIN, w)
        fill(tx, o + _TCP_CSUM, _TCP_HLEN - _TCP_CSUM, 0)   # checksum (the interface's), urgent
        if n > 0:
            self.tx.peek_into(tx, o + hlen, rel - self.syn_off, n)
        if not iface.send_l4(_PROTO_TCP, self.remote_ip, 0, hlen + n, tcp.now):
            return False
        tcp.segs_out = (tcp.segs_out + 1) & _COUNTER_MASK
        if flags & _TCP_ACK_FLAG:
            self.rcv_adv_rel = w
            self.ack_now = False
            self.ack_urgent = False
            self.ack_armed = False
            self.unacked_bytes = 0
        return True

    def _sack_blocks(self, tx, p, n):
        """Write NOP NOP + a SACK option for the out-of-order ranges at tx[p]; its length.

        The block holding the latest out-of-order segment goes first (RFC 2018 section 4).
        Only the blocks that fit beside ``n`` payload bytes in one frame: a full-size
        segment carries none (the MSS leaves no room for options, RFC 6691), its ACKs do.
        """
        asm = self.asm
        count = asm.count
        if count > _MAX_SACK_BLOCKS:
            count = _MAX_SACK_BLOCKS
        room = (_MTU - _IP_HLEN - _TCP_HLEN - 4 - n) // _TCPOPT_SACK_BLOCK
        if count > room:
            count = room
        if count <= 0:
            return 0
        latest = seq_delta(self.seq, _SACK_LAST, self.seq, _RCV_NXT)
        first = 0
        i = 0
        while i < asm.count:
            if asm.starts[i] <= latest < asm.ends[i]:
                first = i
                break
            i += 1
        tx[p] = _TCPOPT_NOP
        tx[p + 1] = _TCPOPT_NOP
        tx[p + 2] = _TCPOPT_SACK
        tx[p + 3] = 2 + _TCPOPT_SACK_BLOCK * count
        q = p + 4
        self._sack_block(tx, q, first)
        i = 0
        written = 1
        while written < count:
            if i != first:
                q += _TCPOPT_SACK_BLOCK
                self._sack_block(tx, q, i)
                written += 1
            i += 1
        return 4 + _TCPOPT_SACK_BLOCK * count

    def _sack_block(self, tx, q, i):
        seq_put(tx, q, self.seq, _RCV_NXT, self.asm.starts[i])
        seq_put(tx, q + 4, self.seq, _RCV_NXT, self.asm.ends[i])

    def _emit_rst(self, now):
        """RST for abort(): SEQ = SND.NXT (the highest sent), with the ACK Linux also sends."""
        self.tcp.rst_sent += 1
        self._emit(self.snd_max_off, 0, _TCP_RST | _TCP_ACK_FLAG)


_PORT_TRIES = const(256)   # free ports port_ok may turn down before connect gives up


class Tcp:
    """The TCP layer of one Stack: listeners, connections, demux, RSTs, ISNs, counters."""

    def __init__(self, stack):
        self.stack = stack
        self.config = stack.config
        self.iface = stack.iface
        self.conns = []
        self.listeners = []
        self.seg = _Segment()
        self.last = None               # demux cache: the socket of the previous segment
        self.secret = os.urandom(16)   # RFC 6528 key, per stack
        self._isn_in = bytearray(12)   # the 4-tuple F() hashes
        r = os.urandom(2)
        self.next_port = _EPHEMERAL_LO + ((r[0] << 8) | r[1]) % _EPHEMERAL_SPAN
        self.now = 0
        self.ca_start = 0              # challenge-ACK rate limit window
        self.ca_count = 0
        # Multi-kernel hooks: port_ok(remote_ip, remote_port, local_port) -> bool vets an
        # ephemeral port (its return flow must reach this core); on_remove(sock) is told of
        # every connection that goes away.
        self.port_ok = None
        self.on_remove = None
        self.rcv_share = _MAX_WINDOW   # per connection, from tcp_rx_budget (set by poll)
        budget = self.config.tcp_rx_budget
        self.credit = RcvCredit(budget, _OUR_MSS, self.config.tcp_max_connections + 8) \
            if budget > 0 else None
        # The bytes of every connection's rings, made at boot (tcpbuf.py says why), and
        # every socket (TcpSocket says why): the free ones are a stack.
        self.rx_pool = ChunkPool(self.config.tcp_rx_pool // CHUNK)
        self.tx_pool = ChunkPool(self.config.tcp_tx_pool // CHUNK)
        self._free = [TcpSocket(self) for _ in range(self.config.tcp_max_connections)]
        for name in _COUNTER_NAMES:
            setattr(self, name, 0)

    # ---- application interface -------------------------------------------------------

    def listen(self, port, backlog=None):
        if self._find_listener(port) is not None:
            raise OSError(_EADDRINUSE)
        if backlog is None:
            backlog = self.config.tcp_syn_backlog
        lsn = TcpListener(self, port, backlog)
        self.listeners.append(lsn)
        return lsn

    def connect(self, dst, dst_off, dst_port, now, local_port=0):
        """Active open to dst[dst_off:dst_off+4]:dst_port; the SYN leaves at once."""
        self.now = now
        if not self._free and not self._recycle_time_wait():
            raise OSError(_ENOMEM)
        rip = bytes(dst[dst_off:dst_off + 4])
        if local_port == 0:
            local_port = self._ephemeral_port(rip, dst_port)
        elif self._connected(rip, dst_port, local_port):
            raise OSError(_EADDRINUSE)
        s = self._take(local_port, dst_port, rip, 0)
        if s is None:               # the one TIME-WAIT socket freed went to its application
            raise OSError(_ENOMEM)
        s.held = True
        s._open_active(now)
        self.conns.append(s)
        self.active_opens += 1
        s._output(now)
        return s

    def connection_count(self):
        return len(self.conns)

    def counters(self):
        """The counters and the pools' state, as a dict (tests, tools)."""
        return dict(self.report())

    def report(self):
        """The same as (name, value) pairs, by name, one at a time: a stats report builds
        no dict of them (on a busy board's heap that dict was the largest piece of memory a
        stats request asked for, and did not always find)."""
        for name in _REPORT_NAMES:
            owner = self
            attr = name
            for entry in _STATE:
                if entry[0] == name:
                    owner = getattr(self, entry[1])
                    attr = entry[2]
                    break
            if owner is not None:          # (no credit without a receive budget)
                yield name, len(owner) if attr is None else getattr(owner, attr)

    # ---- segments in -------------------------------------------------------------------

    def input(self, buf, ip_off, tcp_off, tcp_len, now):
        """One TCP segment for us (checksum already verified by the interface)."""
        self.now = now
        self.segs_in = (self.segs_in + 1) & _COUNTER_MASK
        if tcp_len < _TCP_HLEN:
            self.drop_malformed += 1
            return
        g = self.seg
        g.buf = buf
        g.ip_off = ip_off
        g.off = tcp_off
        g.data_off = tcp_off + ((buf[tcp_off + _TCP_OFF] >> 4) << 2)
        g.data_len = tcp_off + tcp_len - g.data_off
        # (The header's length has no local of its own: 11 words, see the top of the file.)
        if g.data_len < 0 or g.data_off < tcp_off + _TCP_HLEN:
            self.drop_malformed += 1
            return
        g.mss = 0
        g.sack_ok = False
        if g.data_off > tcp_off + _TCP_HLEN and not _parse_options(g):
            self.drop_bad_options += 1
            return
        g.sport = get16(buf, tcp_off)
        g.dport = get16(buf, tcp_off + _TCP_DPORT)
        if g.sport == 0 or g.dport == 0:
            self.drop_malformed += 1
            return
        g.flags = buf[tcp_off + _TCP_FLAGS] & _TCP_FLAGS_MASK
        g.wnd = get16(buf, tcp_off + _TCP_WIN)
        self._demux(g)

    def _demux(self, g):
        """Hand segment g to its connection (the previous segment's is tried first: segments
        come in runs), else to a listener; else answer it with a RST."""
        s = self.last
        i = 0
        while (s is None or s.remote_port != g.sport or s.local_port != g.dport
               or not equal(g.buf, g.ip_off + _IP_SRC, s.remote_ip, 0, 4)):
            if i == len(self.conns):
                self._unmatched(g)
                return
            s = self.conns[i]
            i += 1
        self.last = s
        if s.state == TIME_WAIT and self._time_wait_reopens(s, g):
            self._unmatched(g)
            return
        s._input(g, self.now)
        # Most replies wait for this turn's poll(): by then the application has read
        # (the ACK then opens the window) and may have written (the ACK rides on data).
        if s.ack_urgent and s.state != CLOSED:
            s._output(self.now)

    def _unmatched(self, g):
        """A segment no connection takes: a listener's, or answered with a RST."""
        lsn = self._find_listener(g.dport)
        if lsn is not None:
            self._listen_input(lsn, g, self.now)
            return
        self.drop_no_socket += 1
        self._reply_rst(g, self.now)

    def _connected(self, ip, remote_port, local_port):
        """A connection with this 4-tuple exists (ip: 4 bytes)."""
        for s in self.conns:
            if (s.remote_port == remote_port and s.local_port == local_port
                    and s.remote_ip == ip):
                return True
        return False

    def _find_listener(self, port):
        ls = self.listeners
        i = 0
        while i < len(ls):
            if ls[i].port == port:
                return ls[i]
            i += 1
        return None

    def _time_wait_reopens(self, s, g):
        """A new SYN (seq above the old connection's) may end TIME-WAIT early."""
        if g.flags & (_TCP_SYN | _TCP_ACK_FLAG | _TCP_RST) != _TCP_SYN:
            return False
        if self._find_listener(g.dport) is None:
            return False
        if seq_delta(g.buf, g.off + _TCP_SEQ, s.seq, _RCV_NXT) <= 0:
            return False
        self.time_wait_reuse += 1
        s._finish(0)
        return True

    def _listen_input(self, lsn, g, now):
        """RFC 9293 3.10.7.2 LISTEN: RST ignored, ACK answered with RST, SYN opens."""
        flags = g.flags
        if flags & _TCP_RST:
            return
        if flags & _TCP_ACK_FLAG:
            self.drop_no_socket += 1
            self._reply_rst(g, now)
            return
        if not flags & _TCP_SYN:
            self.drop_no_socket += 1
            return
        if flags & _TCP_FIN:
            self.drop_malformed += 1     # SYN+FIN: a scan, not a connection
            return
        if lsn.embryonic + len(lsn.queue) >= lsn.backlog:
            self.drop_backlog_full += 1
            return
        if not self._free:
            self._recycle_time_wait()
        s = self._take(g.dport, g.sport, g.buf, g.ip_off + _IP_SRC)
        if s is None:
            # Every socket is in use: by a connection (the limit), or by an application
            # that has not released a closed one yet. The peer's SYN retransmission tries
            # again.
            if len(self.conns) >= self.config.tcp_max_connections:
                self.drop_max_connections += 1
            else:
                self.drop_no_memory += 1
            return
        s.listener = lsn
        s.listen_state = _LS_EMBRYONIC
        lsn.embryonic += 1
        s._open_passive(g, now)
        self.conns.append(s)
        self.passive_opens += 1
        s._output(now)

    # ---- segments out (no socket) -------------------------------------------------------

    def _reply_rst(self, g, now):
        """RST answering segment g (RFC 9293 3.10.7.1); never answers a RST."""
        if g.flags & _TCP_RST:
            return
        buf = g.buf
        t = g.off
        tx = self.iface.tx
        o = L4_OFF
        put16(tx, o, g.dport)
        put16(tx, o + _TCP_DPORT, g.sport)
        if g.flags & _TCP_ACK_FLAG:
            copy(tx, o + _TCP_SEQ, buf, t + _TCP_ACK, 4)   # <SEQ=SEG.ACK><CTL=RST>
            fill(tx, o + _TCP_ACK, 4, 0)
            flags = _TCP_RST
        else:
            fill(tx, o + _TCP_SEQ, 4, 0)            # <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
            slen = g.data_len + (1 if g.flags & _TCP_SYN else 0) + (1 if g.flags & _TCP_FIN else 0)
            seq_put(tx, o + _TCP_ACK, buf, t + _TCP_SEQ, slen)
            flags = _TCP_RST | _TCP_ACK_FLAG
        tx[o + _TCP_OFF] = _TCP_HLEN << 2
        tx[o + _TCP_FLAGS] = flags
        fill(tx, o + _TCP_WIN, _TCP_HLEN - _TCP_WIN, 0)
        if self.iface.send_l4(_PROTO_TCP, buf, g.ip_off + _IP_SRC, _TCP_HLEN, now):
            self.rst_sent += 1
            self.segs_out = (self.segs_out + 1) & _COUNTER_MASK

    def _challenge_allowed(self, now):
        """RFC 5961 7: at most _CHALLENGE_ACKS_PER_S challenge ACKs per second per stack."""
        if ticks_diff(now, self.ca_start) >= 1000 or ticks_diff(now, self.ca_start) < 0:
            self.ca_start = now
            self.ca_count = 0
        if self.ca_count >= _CHALLENGE_ACKS_PER_S:
            return False
        self.ca_count += 1
        return True

    # ---- timers --------------------------------------------------------------------------

    def poll(self, now):
        self.now = now
        if self.conns:
            allowed = self._poll_conns(now)
        else:
            allowed = 0
            self.rcv_share = _MAX_WINDOW
        credit = self.credit
        if credit is not None:
            credit.recount(self.config.tcp_rx_budget - allowed, now)
            if credit.waiting():
                self._serve_credit(now)

    def _poll_conns(self, now):
        """Every connection's timers and output; the receive budget's share per receiving
        connection for the next turn (see _rcv_window). Returns the receive windows they
        were allowed."""
        conns = self.conns
        receivers = 0
        allowed = 0
        i = len(conns) - 1
        while i >= 0:
            if i < len(conns):
                c = conns[i]
                c._poll(now)
                # Established ones only: a flood of SYNs must not shrink real connections'
                # windows (a handshake gets two segments, whatever the share).
                if ESTABLISHED <= c.state <= FIN_WAIT_2:
                    receivers += 1
                allowed += c.rcv_allow
            i -= 1
        budget = self.config.tcp_rx_budget
        self.rcv_share = budget // receivers if budget > 0 and receivers > 0 else _MAX_WINDOW
        return allowed

    def _serve_credit(self, now):
        """Credit to the connections waiting for it, first come first served; each one
        served announces its window (or sends its SYN-ACK) at once."""
        credit = self.credit
        while credit.waiting():
            c = credit.head()
            if c.state == CLOSED or not c.rcv_queued:
                c.rcv_queued = False
                credit.pop()
                continue
            need = c._rcv_need()
            want = c._rcv_want()
            if want < need:
                # It cannot use a segment (its application did not read): the ACK it
                # held back for the credit goes now, window closed.
                c.rcv_queued = False
                credit.pop()
                if c.unacked_bytes:
                    c.ack_now = True
                    c._output(now)
                continue
            g = credit.serve(need, want, ticks_diff(now, c.rcv_wait_since), now)
            if g == 0:
                return
            credit.pop()
            c.rcv_queued = False
            c.rcv_allow += g
            c.ack_now = True
            c._output(now)

    def credit_waiting(self):
        """True if a connection waits for receive credit (poll() serves it)."""
        credit = self.credit
        return credit is not None and credit.waiting()

    def poll_at(self, now):
        best = -1
        conns = self.conns
        i = 0
        while i < len(conns):
            d = conns[i]._due_in(now)
            if d >= 0 and (best < 0 or d < best):
                best = d
                if best == 0:
                    return 0
            i += 1
        return best

    # ---- connection setup helpers (may allocate) ----------------------------------------

    def _recycle_time_wait(self):
        """A full table: end the TIME-WAIT connection closest to its end, so a new one can
        come in (as Linux does beyond tcp_max_tw_buckets). A server that closes first
        would otherwise take one connection per slot per 2 MSL. True if one was ended."""
        best = None
        for s in self.conns:
            if s.state == TIME_WAIT and (best is None
                                         or ticks_diff(s.timer_at, best.timer_at) < 0):
                best = s
        if best is None:
            return False
        self.time_wait_recycled += 1
        best._finish(0)
        return True

    def _remove(self, s):
        if self.last is s:
            self.last = None
        if s in self.conns:
            self.conns.remove(s)
            if self.on_remove is not None:
                self.on_remove(s)
            if not s.held:
                self._recycle(s)

    def _take(self, local_port, remote_port, ip, ip_off):
        """A free socket made a new connection's, or None."""
        if not self._free:
            return None
        self._free[-1].reset(local_port, remote_port, ip, ip_off)
        return self._free.pop()

    def _recycle(self, s):
        """A closed socket nobody holds goes back to the pool, its chunks to theirs (data a
        reader left unread included)."""
        s._rxr.clear()
        s._txr.clear()
        s.rx = s.tx = s.asm = None
        self._free.append(s)

    def _ephemeral_port(self, rip=None, rport=0):
        span = _EPHEMERAL_SPAN
        port = self.next_port
        ok = self.port_ok
        vetted = 0
        for _ in range(span):
            port += 1
            if port >= _EPHEMERAL_LO + span:
                port = _EPHEMERAL_LO
            if self._port_in_use(port):
                continue
            if ok is not None:
                if vetted >= _PORT_TRIES:
                    break                 # no port of ours maps back here: refuse
                vetted += 1
                if not ok(rip, rport, port):
                    continue
            self.next_port = port
            return port
        raise OSError(_EAGAIN)

    def _port_in_use(self, port):
        for s in self.conns:
            if s.local_port == port:
                return True
        return self._find_listener(port) is not None

    def _make_isn(self, s, now):
        """RFC 6528: ISN = M + F(4-tuple, secret), M a 4 µs clock."""
        t = self._isn_in
        copy(t, 0, self.iface.ip, 0, 4)
        put16(t, 4, s.local_port)
        copy(t, 6, s.remote_ip, 0, 4)
        put16(t, 10, s.remote_port)
        if hashlib is not None and hasattr(hashlib, "sha256"):
            h = hashlib.sha256(self.secret)
            h.update(t)
            copy(s.seq, _ISS, h.digest(), 0, 4)
        else:
            _keyed_mix(self.secret, t, s.seq, _ISS)
        m = now * 250      # ms -> 4 µs ticks (a big int on 32-bit ports: setup only)
        seq_add(s.seq, _ISS, m & 0xFFFF)
        _add_high16(s.seq, _ISS, (m >> 16) & 0xFFFF)
