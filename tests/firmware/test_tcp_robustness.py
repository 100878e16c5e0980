# Random and hostile segments against sockets in every state: nothing may raise, and the
# layer's books (connection table, listener backlog) stay consistent.
from netkernel import tcp as T
from tcp_harness import (
    ACK,
    FIN,
    OUR_IP,
    PEER_IP,
    SYN,
    FakeStack,
    ImpairedLink,
    Peer,
    _Rand,
    build,
    server_established,
)

TIMEOUT_S = 120


def random_segment(r, st, port, our_port, seq_base, ack_base):
    flags = r.below(64)
    near = r.below(4)
    seq = seq_base + (r.below(9000) - 4500 if near else r.below(1 << 30) * 4)
    ack = ack_base + (r.below(9000) - 4500 if r.below(4) else r.below(1 << 30) * 4)
    data = bytes(r.below(256) for _ in range(r.below(3) * r.below(700)))
    options = b""
    if r.below(4) == 0:
        options = bytes(r.below(256) for _ in range(4 * r.below(6)))
    return build(PEER_IP, st.iface.ip, port, our_port, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                 flags, r.below(65536), data, options)


def test_random_segments_never_raise_in_any_state():
    r = _Rand(2024)
    for round_ in range(40):
        st, lsn, s, p = server_established(tcp_time_wait_ms=300)
        # Walk the socket to some state first.
        how = round_ % 5
        if how == 1:
            s.close()
        elif how == 2:
            p.send(FIN | ACK, now=1100)
        elif how == 3:
            s.close()
            st.tcp.poll(1100)
            p.take()
            p.send(FIN | ACK, now=1100)
        elif how == 4:
            s.send(bytes(3000), 0, 3000)
        now = 1200
        for _ in range(60):
            buf, ip, t, n = random_segment(r, st, p.port, p.our_port, p.seq, p.ack)
            st.tcp.input(buf, ip, t, n, now)
            now += r.below(300)
            st.tcp.poll(now)
            st.tcp.poll_at(now)
            if s.state != T.CLOSED and r.below(5) == 0:
                s.recv_into(bytearray(100), 0, 100)
            st.iface.sent = []
        assert st.tcp.connection_count() == len(st.tcp.conns)
        for c in st.tcp.conns:
            assert c.state != T.CLOSED
        assert lsn.embryonic >= 0


def test_syn_flood_stays_within_the_backlog():
    st = FakeStack(tcp_syn_backlog=4)
    lsn = st.tcp.listen(80)
    r = _Rand(77)
    for i in range(200):
        q = Peer(st, port=1024 + i, isn=r.below(1 << 30))
        q.send(SYN, now=1000 + i)
    assert st.tcp.connection_count() == 4 and lsn.embryonic == 4
    assert st.tcp.drop_backlog_full == 196
    now = 1200
    for _ in range(1000):                            # SYN-ACK retries run out
        if not st.tcp.connection_count():
            break
        now += max(1, st.tcp.poll_at(now))
        st.tcp.poll(now)
    assert st.tcp.connection_count() == 0
    assert lsn.embryonic == 0 and lsn.pending() == 0


def test_garbage_on_an_impaired_link_does_not_break_a_transfer():
    link = ImpairedLink(seed=5, loss=30, reorder=50, dup=20)
    lsn = link.b.tcp.listen(80)
    c = link.a.tcp.connect(OUR_IP, 0, 80, 1000)
    now = 1000
    got = 0
    srv = None
    sent = 0
    r = _Rand(9)
    buf = bytearray(1000)
    while got < 50000:
        d = link.next_event(now)
        now += d if d > 0 else 1
        link.step(now)
        if srv is None:
            srv = lsn.accept()
        elif r.below(10) == 0:                      # blind injection at the server
            seg = random_segment(r, link.b, c.local_port, 80, 0, 0)
            link.b.tcp.input(seg[0], seg[1], seg[2], seg[3], now)
        if c.state == T.ESTABLISHED and sent < 50000:
            sent += c.send(bytes(1000), 0, min(1000, 50000 - sent))
        if srv is not None:
            got += srv.recv_into(buf, 0, 1000)
        assert now < 600000
    assert srv.state == T.ESTABLISHED and c.state == T.ESTABLISHED
    assert link.b.tcp.challenge_acks + link.b.tcp.drop_out_of_window > 0
