# A fake stack for the TCP unit tests (runs inside MicroPython).
#
# FakeIface stands in for the interface layer: it has the TX frame and records every segment
# TCP hands to send_ipv4() as a Seg (flags, seq, ack, window, options, payload). Peer plays
# the remote end: it builds IPv4+TCP segments (no checksums: tcp.input trusts its caller),
# feeds them to tcp.input, and keeps its own SND.NXT/RCV.NXT so tests read like the
# conversation they check.
from netkernel.tcp import Tcp

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10

L4 = 34
OUR_IP = b"\x0a\x00\x00\x02"
PEER_IP = b"\x0a\x00\x00\x01"
M32 = 0xFFFFFFFF


class Config:
    """StackConfig's TCP tunables with its defaults (stack.py imports the whole stack)."""

    def __init__(self, **overrides):
        self.tcp_rx_buffer = 4096
        self.tcp_tx_buffer = 4096
        self.tcp_rx_budget = 0
        self.tcp_max_connections = 24
        self.tcp_rx_pool = 32768
        self.tcp_tx_pool = 32768
        self.tcp_syn_backlog = 8
        self.tcp_nagle = True
        self.tcp_keepalive_ms = 0
        self.tcp_delayed_ack_ms = 40
        self.tcp_time_wait_ms = 2000
        for k in overrides:
            if not hasattr(self, k):
                raise ValueError(k)
            setattr(self, k, overrides[k])


def _u32(b, o):
    return (b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]


def flag_names(f):
    out = []
    for bit, name in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, ".")):
        if f & bit:
            out.append(name)
    return "".join(out) or "-"


class Seg:
    """One segment TCP sent, parsed."""

    def __init__(self, dst, raw, now):
        self.dst = bytes(dst)
        self.now = now
        self.sport = (raw[0] << 8) | raw[1]
        self.dport = (raw[2] << 8) | raw[3]
        self.seq = _u32(raw, 4)
        self.ack = _u32(raw, 8)
        hlen = (raw[12] >> 4) * 4
        self.hlen = hlen
        self.flags = raw[13]
        self.wnd = (raw[14] << 8) | raw[15]
        self.csum = (raw[16] << 8) | raw[17]
        self.options = bytes(raw[20:hlen])
        self.payload = bytes(raw[hlen:])
        self.mss = None
        o = self.options
        i = 0
        while i < len(o):
            if o[i] == 0:
                break
            if o[i] == 1:
                i += 1
                continue
            if o[i] == 2:
                self.mss = (o[i + 2] << 8) | o[i + 3]
            i += o[i + 1]

    def seglen(self):
        return len(self.payload) + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)

    def is_(self, flags):
        """Exactly these of SYN/FIN/RST/ACK are set (PSH is ignored)."""
        return self.flags & (SYN | FIN | RST | ACK) == flags

    def __repr__(self):
        return "<%s seq=%d ack=%d wnd=%d len=%d>" % (
            flag_names(self.flags), self.seq, self.ack, self.wnd, len(self.payload))


class FakeIface:
    def __init__(self, ip=OUR_IP):
        self.tx = bytearray(1536)
        self.ip = ip
        self.sent = []
        self.record = True     # False: only count (no allocation, for heap_lock tests)
        self.accept = True     # False: behave as if the next hop were unresolved
        self.count = 0

    def send_ipv4(self, proto, dst, dst_off, hdr, hdr_off, hdr_len, data, data_off, data_len,
                  now):
        assert proto == 6
        if not self.accept:
            return False
        self.count += 1
        if self.record:
            raw = bytearray(hdr[hdr_off:hdr_off + hdr_len])
            if data_len:
                raw.extend(data[data_off:data_off + data_len])
            self.sent.append(Seg(dst[dst_off:dst_off + 4], raw, now))
        return True

    def send_l4(self, proto, dst, dst_off, l4_len, now):
        # The segment TCP built in tx at the interface's transport offset: one frame, as
        # the interface's send_l4 takes no more.
        assert l4_len <= 1480, l4_len
        return self.send_ipv4(proto, dst, dst_off, self.tx, L4, l4_len, None, 0, 0, now)


class FakeStack:
    def __init__(self, **cfg):
        self.config = Config(**cfg)
        self.iface = FakeIface()
        self.tcp = Tcp(self)


def mss_option(v):
    return bytes([2, 4, v >> 8, v & 0xFF])


def build(src, dst, sport, dport, seq, ack, flags, wnd=65535, data=b"", options=b"",
          hlen=None):
    """Ethernet + IPv4 + TCP bytes; returns (buf, ip_off, tcp_off, tcp_len)."""
    if hlen is None:
        hlen = 20 + len(options)
    tcp_len = hlen + len(data)
    buf = bytearray(14 + 20 + tcp_len)
    ip = 14
    buf[ip] = 0x45
    n = 20 + tcp_len
    buf[ip + 2] = n >> 8
    buf[ip + 3] = n & 0xFF
    buf[ip + 8] = 64
    buf[ip + 9] = 6
    buf[ip + 12:ip + 16] = src
    buf[ip + 16:ip + 20] = dst
    t = ip + 20
    buf[t] = sport >> 8
    buf[t + 1] = sport & 0xFF
    buf[t + 2] = dport >> 8
    buf[t + 3] = dport & 0xFF
    for i in range(4):
        buf[t + 4 + i] = (seq >> (24 - 8 * i)) & 0xFF
        buf[t + 8 + i] = (ack >> (24 - 8 * i)) & 0xFF
    buf[t + 12] = (hlen // 4) << 4
    buf[t + 13] = flags
    buf[t + 14] = wnd >> 8
    buf[t + 15] = wnd & 0xFF
    buf[t + 20:t + 20 + len(options)] = options
    buf[t + hlen:t + hlen + len(data)] = data
    return buf, ip, t, tcp_len


class Peer:
    """The remote TCP. seq = its SND.NXT, ack = its RCV.NXT (advanced by take())."""

    def __init__(self, stack, port=40000, our_port=80, isn=1000, ip=PEER_IP):
        self.stack = stack
        self.ip = ip
        self.port = port
        self.our_port = our_port
        self.seq = isn
        self.ack = 0
        self.wnd = 65535
        self.received = bytearray()

    def send(self, flags, data=b"", now=0, seq=None, ack=None, wnd=None, options=b"",
             hlen=None, poll=True):
        """Deliver one segment, then poll the stack as the kernel does after each batch."""
        if seq is None:
            seq = self.seq
            self.seq = (self.seq + len(data) + (1 if flags & SYN else 0)
                        + (1 if flags & FIN else 0)) & M32
        if ack is None:
            ack = self.ack if flags & ACK else 0
        if wnd is None:
            wnd = self.wnd
        buf, ip, t, n = build(self.ip, self.stack.iface.ip, self.port, self.our_port, seq & M32,
                              ack & M32, flags, wnd, data, options, hlen)
        self.stack.tcp.input(buf, ip, t, n, now)
        if poll:
            self.stack.tcp.poll(now)

    def take(self):
        """Segments TCP sent to this peer since the last take(); in-order ones advance our
        RCV.NXT. Segments for other peers stay queued for them."""
        segs = []
        others = []
        for s in self.stack.iface.sent:
            (segs if s.dport == self.port else others).append(s)
        self.stack.iface.sent = others
        for s in segs:
            if s.flags & RST:
                continue
            if s.flags & SYN:
                self.ack = (s.seq + 1 + len(s.payload)) & M32
                continue
            if s.seq == self.ack:
                self.received.extend(s.payload)
                self.ack = (self.ack + s.seglen()) & M32
        return segs

    def one(self):
        """Exactly one segment was sent: return it."""
        segs = self.take()
        assert len(segs) == 1, segs
        return segs[0]

    def none(self):
        segs = self.take()
        assert not segs, segs


def server(now=1000, mss=1460, listen_port=80, **cfg):
    """A listening stack and a peer that has not connected yet."""
    st = FakeStack(**cfg)
    listener = st.tcp.listen(listen_port)
    peer = Peer(st, our_port=listen_port)
    return st, listener, peer


def server_established(now=1000, mss=1460, peer_wnd=65535, **cfg):
    """Passive open completed and accepted: (stack, listener, socket, peer)."""
    st, listener, peer = server(now, **cfg)
    peer.wnd = peer_wnd
    peer.send(SYN, now=now, options=mss_option(mss) if mss else b"")
    synack = peer.one()
    assert synack.is_(SYN | ACK), synack
    peer.send(ACK, now=now + 1)
    sock = listener.accept()
    assert sock is not None
    peer.none()
    return st, listener, sock, peer


def client_established(now=1000, mss=1460, peer_wnd=65535, **cfg):
    """Active open completed: (stack, socket, peer)."""
    st = FakeStack(**cfg)
    peer = Peer(st, port=80, our_port=0, isn=5000)
    sock = st.tcp.connect(PEER_IP, 0, 80, now, local_port=50000)
    peer.our_port = 50000
    syn = peer.one()
    assert syn.is_(SYN), syn
    peer.wnd = peer_wnd
    peer.send(SYN | ACK, now=now + 1, options=mss_option(mss) if mss else b"")
    ack = peer.one()
    assert ack.is_(ACK), ack
    return st, sock, peer


def drain(sock, n=65536):
    buf = bytearray(n)
    k = sock.recv_into(buf, 0, n)
    return bytes(buf[:k])


class _Rand:
    """A small deterministic PRNG (xorshift on 30-bit ints)."""

    def __init__(self, seed):
        self.x = seed or 1

    def below(self, n):
        x = self.x
        x ^= (x << 13) & 0x3FFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0x3FFFFFFF
        self.x = x
        return x % n


class LinkIface(FakeIface):
    """An interface whose segments travel to another stack across an impaired link."""

    def __init__(self, ip, link):
        super().__init__(ip)
        self.link = link
        self.record = False

    def send_ipv4(self, proto, dst, dst_off, hdr, hdr_off, hdr_len, data, data_off, data_len,
                  now):
        raw = bytearray(hdr[hdr_off:hdr_off + hdr_len])
        if data_len:
            raw.extend(data[data_off:data_off + data_len])
        self.count += 1
        self.link.carry(self, bytes(dst[dst_off:dst_off + 4]), raw, now)
        return True


class ImpairedLink:
    """Two TCP layers joined by a link with loss, reordering and duplication (per mille)."""

    def __init__(self, loss=50, reorder=100, dup=10, delay=1, seed=12345, **cfg):
        self.rand = _Rand(seed)
        self.loss = loss
        self.reorder = reorder
        self.dup = dup
        self.delay = delay
        self.queue = []          # [deliver_at, order, stack, frame bytes]
        self.order = 0
        self.delivered = 0
        self.a = FakeStack(**cfg)
        self.b = FakeStack(**cfg)
        self.a.iface = LinkIface(PEER_IP, self)
        self.b.iface = LinkIface(OUR_IP, self)
        self.a.tcp.iface = self.a.iface
        self.b.tcp.iface = self.b.iface

    def carry(self, iface, dst, raw, now):
        to = self.b if iface is self.a.iface else self.a
        assert dst == to.iface.ip
        r = self.rand
        if r.below(1000) < self.loss:
            return
        copies = 2 if r.below(1000) < self.dup else 1
        for _ in range(copies):
            at = now + self.delay
            if r.below(1000) < self.reorder:
                at += 1 + r.below(5)             # held back: later segments overtake it
            self.order += 1
            frame, ip, t, n = self._frame(iface.ip, to.iface.ip, raw)
            self.queue.append([at, self.order, to, frame, ip, t, n])

    def _frame(self, src, dst, raw):
        buf = bytearray(34 + len(raw))
        buf[14] = 0x45
        buf[23] = 6
        buf[26:30] = src
        buf[30:34] = dst
        buf[34:] = raw
        return buf, 14, 34, len(raw)

    def next_event(self, now):
        best = -1
        for st in (self.a, self.b):
            d = st.tcp.poll_at(now)
            if d >= 0 and (best < 0 or d < best):
                best = d
        for q in self.queue:
            d = q[0] - now
            if d < 0:
                d = 0
            if best < 0 or d < best:
                best = d
        return best

    def step(self, now):
        """Deliver everything due at now (in arrival order), then poll both stacks."""
        due = [q for q in self.queue if q[0] <= now]
        if due:
            due.sort(key=lambda q: (q[0], q[1]))
            self.queue = [q for q in self.queue if q[0] > now]
            for q in due:
                self.delivered += 1
                q[2].tcp.input(q[3], q[4], q[5], q[6], now)
        self.a.tcp.poll(now)
        self.b.tcp.poll(now)
