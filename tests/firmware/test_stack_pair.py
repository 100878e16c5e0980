# Two whole stacks talking TCP/UDP/ICMP to each other through every layer.
import micropython
from netkernel import tcp, wire
from stack_pair import IP_B, StackPair

TIMEOUT_S = 120


def _connect(pair, port=7):
    sock = pair.a.tcp.connect(IP_B, 0, port, pair.now)
    for _ in range(200):
        pair.run()
        if sock.state == tcp.ESTABLISHED:
            break
    return sock


def _pattern(buf, start, n):
    for i in range(n):
        buf[i] = (start + i) % 251


def test_tcp_echo_through_two_stacks_is_byte_exact():
    pair = StackPair()
    sock = _connect(pair)
    assert not sock.error
    total = 100000
    out = bytearray(1460)
    inb = bytearray(1460)
    sent = got = 0
    for _ in range(20000):
        if sent < total:
            n = min(1460, total - sent)
            _pattern(out, sent, n)
            sent += sock.send(out, 0, n)
        n = sock.recv_into(inb, 0, 1460)
        for i in range(n):
            assert inb[i] == (got + i) % 251, "byte %d" % (got + i)
        got += n
        if got == total:
            break
        pair.run()
    assert got == total
    sock.close()
    pair.run(3000, 1)          # FIN handshake and TIME-WAIT (2 s) run out
    assert pair.a.tcp.connection_count() == 0
    assert pair.b.tcp.connection_count() == 0


def test_established_data_path_does_not_allocate():
    pair = StackPair()
    sock = _connect(pair)
    out = bytearray(1460)
    inb = bytearray(1460)
    _pattern(out, 0, 1460)
    # Warm up: every buffer, view and timer path is touched once.
    for _ in range(50):
        sock.send(out, 0, 1460)
        pair.run()
        while sock.recv_into(inb, 0, 1460):
            pass
    micropython.heap_lock()
    try:
        moved = 0
        for _ in range(100):
            sock.send(out, 0, 1460)
            pair.run()
            while True:
                n = sock.recv_into(inb, 0, 1460)
                if n == 0:
                    break
                moved += n
    finally:
        micropython.heap_unlock()
    assert moved > 50 * 1460


def test_lossy_cable_still_delivers_everything():
    pair = StackPair()
    sock = _connect(pair)
    pair.a_to_b.drop_every = 7
    pair.b_to_a.drop_every = 11
    total = 60000
    out = bytearray(1000)
    inb = bytearray(1460)
    sent = got = 0
    for _ in range(200000):
        if sent < total:
            n = min(1000, total - sent)
            _pattern(out, sent, n)
            sent += sock.send(out, 0, n)
        n = sock.recv_into(inb, 0, 1460)
        for i in range(n):
            assert inb[i] == (got + i) % 251
        got += n
        if got == total:
            break
        pair.run(1, 5)
    assert got == total, got


def test_full_size_segments_sent_while_holding_out_of_order_data_fit_one_frame():
    # Both ends send full-size segments while A's data to B has holes: the SACK blocks B
    # owes must not push its segments past the MTU (they would be refused, and B stall
    # until the holes fill).
    pair = StackPair(services_b=False)
    listener = pair.b.tcp.listen(5000)
    a = pair.a.tcp.connect(IP_B, 0, 5000, pair.now)
    for _ in range(200):
        pair.run()
        if a.state == tcp.ESTABLISHED and listener.pending():
            break
    b = listener.accept()
    pair.a_to_b.drop_every = 5
    buf = bytearray(1460)
    inb = bytearray(4096)
    total = 200000
    a_sent = b_sent = a_got = b_got = 0
    for _ in range(20000):
        if a_sent < total:
            a_sent += a.send(buf, 0, 1460)
        if b_sent < total:
            b_sent += b.send(buf, 0, 1460)
        a_got += a.recv_into(inb, 0, 4096)
        b_got += b.recv_into(inb, 0, 4096)
        if a_got >= total and b_got >= total:
            break
        pair.run(1, 5)
    iface = pair.b.iface
    assert a_got >= total and b_got >= total, (a_got, b_got)
    assert b.sack and iface.ip_tx_too_big == 0 and iface.ip_tx_fragments == 0
    assert pair.b.tcp.tx_blocked == 0


def test_udp_and_ping_between_stacks():
    pair = StackPair()
    replies = []

    def handler(buf, off, n, src, src_off, sport, dport, now):
        replies.append(bytes(buf[off:off + n]))

    pair.a.udp.bind(5000, handler)
    data = bytes(range(200)) * 20      # 4000 bytes: fragmented both ways
    assert not pair.a.udp.sendto(data, 0, len(data), IP_B, 0, 7, 5000, pair.now)  # ARP first
    pair.run(5)
    assert pair.a.udp.sendto(data, 0, len(data), IP_B, 0, 7, 5000, pair.now)
    pair.run(5)
    assert replies == [data]
    assert wire.checksum(data, 0, 4, 0) >= 0


def _tcp_payloads(ring, start):
    """Payload lengths of the TCP segments a FrameRing holds from slot ``start`` on."""
    out = []
    i = start
    while i != ring.head:
        f = ring.slots[i]
        if f[12] == 0x08 and f[13] == 0x00 and f[23] == 6:
            ihl = (f[14] & 0x0F) * 4
            total = (f[16] << 8) | f[17]
            out.append(total - ihl - (f[14 + ihl + 12] >> 4) * 4)
        i = (i + 1) % len(ring.slots)
    return out


def test_the_echo_of_two_segments_carries_their_ack():
    # Two full segments are owed an ACK at once; the stack's poll lets the services read
    # and answer before TCP sends what it owes, so the echoed data carries the ACK. In the
    # other order a bare ACK went ahead of the echo.
    pair = StackPair()
    sock = _connect(pair)
    pair.run(5)
    assert sock.send(bytes(2920), 0, 2920) == 2920
    pair.a.poll(pair.now)
    assert _tcp_payloads(pair.a_to_b, pair.a_to_b.tail) == [1460, 1460]
    start = pair.b_to_a.head
    while pair.a_to_b.deliver_one(pair.b, pair.now):
        pass
    pair.b.poll(pair.now)
    assert _tcp_payloads(pair.b_to_a, start) == [1460, 1460]
