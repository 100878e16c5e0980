# The TCP layer: RST for closed ports, listeners and their backlog, the connection limit,
# RFC 6528 ISNs, ephemeral ports, counters.
from fwtest import raises
from netkernel import tcp as T
from tcp_harness import (
    ACK,
    FIN,
    PEER_IP,
    PSH,
    RST,
    SYN,
    FakeStack,
    Peer,
    build,
    server,
    server_established,
)


def test_rst_for_non_ack_segment_to_closed_port():
    st = FakeStack()
    p = Peer(st, our_port=81, isn=5000)
    p.send(SYN, b"abc", now=1000)
    r = p.one()
    assert r.is_(RST | ACK) and r.seq == 0 and r.ack == 5000 + 3 + 1
    assert r.sport == 81 and r.dport == 40000 and r.dst == PEER_IP
    p.send(FIN, now=1001, seq=6000)
    r = p.one()
    assert r.is_(RST | ACK) and r.ack == 6001
    assert st.tcp.drop_no_socket == 2 and st.tcp.rst_sent == 2


def test_rst_for_ack_segment_to_closed_port_uses_its_ack():
    st = FakeStack()
    p = Peer(st, our_port=81)
    p.send(ACK | PSH, b"data", now=1000, ack=0xFFFFFFF0)
    r = p.one()
    assert r.is_(RST) and r.seq == 0xFFFFFFF0 and r.ack == 0


def test_never_rst_a_rst():
    st = FakeStack()
    p = Peer(st, our_port=81)
    p.send(RST, now=1000)
    p.send(RST | ACK, now=1000, ack=5)
    p.none()


def test_listen_twice_is_address_in_use():
    st = FakeStack()
    st.tcp.listen(80)
    e = raises(OSError, st.tcp.listen, 80)
    assert e.errno == 98


def test_syn_backlog_bound_drops_without_allocating_a_socket():
    st = FakeStack()
    lsn = st.tcp.listen(80, backlog=2)
    peers = [Peer(st, port=41000 + i) for i in range(3)]
    for q in peers:
        q.send(SYN, now=1000)
    assert len(peers[0].take()) == 1 and len(peers[1].take()) == 1
    peers[2].none()
    assert st.tcp.drop_backlog_full == 1 and st.tcp.connection_count() == 2
    # Completed but unaccepted connections still count; accept() makes room.
    peers[0].send(ACK, now=1001)
    peers[2].send(SYN, now=1002, seq=peers[2].seq - 1)
    peers[2].none()
    assert lsn.accept() is not None
    peers[2].send(SYN, now=1003, seq=peers[2].seq - 1)
    assert peers[2].one().is_(SYN | ACK)


def test_max_connections_refuses_syn_and_connect():
    st = FakeStack(tcp_max_connections=2)
    st.tcp.listen(80)
    for i in range(3):
        Peer(st, port=41000 + i).send(SYN, now=1000)
    assert st.tcp.connection_count() == 2 and st.tcp.drop_max_connections == 1
    e = raises(OSError, st.tcp.connect, PEER_IP, 0, 80, 1000)
    assert e.errno == 12


def test_listener_close_resets_pending_connections():
    st, lsn, p = server()
    p.send(SYN, now=1000)
    p.take()
    q = Peer(st, port=42000)
    q.send(SYN, now=1000)
    q.take()
    q.send(ACK, now=1001)
    lsn.close()
    assert p.one().flags & RST and q.one().flags & RST
    assert st.tcp.connection_count() == 0
    p.send(SYN, now=1002, seq=9)
    assert p.one().is_(RST | ACK)                     # the port is closed now


def test_ephemeral_ports_are_in_range_and_distinct():
    st = FakeStack()
    a = st.tcp.connect(PEER_IP, 0, 80, 1000)
    b = st.tcp.connect(PEER_IP, 0, 80, 1000)
    assert 49152 <= a.local_port <= 65535 and 49152 <= b.local_port <= 65535
    assert a.local_port != b.local_port
    st.tcp.connect(PEER_IP, 0, 80, 1000, local_port=50000)
    e = raises(OSError, st.tcp.connect, PEER_IP, 0, 80, 1000, 50000)
    assert e.errno == 98


def _iss(st, port, now, lport=50000):
    s = st.tcp.connect(PEER_IP, 0, port, now, local_port=lport)
    syn = st.iface.sent[-1]
    s.abort()
    return syn.seq


def test_isn_is_clock_plus_keyed_hash_of_the_tuple():
    st = FakeStack()
    a = _iss(st, 80, 1000)
    b = _iss(st, 80, 2000)
    assert (b - a) & 0xFFFFFFFF == 250000              # 4 µs clock: 250 ticks per ms
    c = _iss(st, 81, 1000)
    assert c != a                                      # another tuple, another offset
    other = FakeStack()                                # another stack, another secret
    assert _iss(other, 80, 1000) != a


def test_isn_fallback_mix_without_hashlib():
    saved = T.hashlib
    T.hashlib = None
    try:
        st = FakeStack()
        a = _iss(st, 80, 1000)
        b = _iss(st, 80, 1004)
        c = _iss(st, 81, 1000)
        assert (b - a) & 0xFFFFFFFF == 1000 and c != a
    finally:
        T.hashlib = saved


def test_counters_and_connection_count():
    st, lsn, p = server()
    p.send(SYN, now=1000)
    c = st.tcp.counters()
    for k in ("drop_bad_options", "drop_out_of_window", "drop_no_socket", "drop_backlog_full",
              "challenge_acks", "retransmits", "fast_retransmits", "rto_timeouts",
              "zero_window_probes", "segs_in", "segs_out"):
        assert k in c, k
    assert c["passive_opens"] == 1 and c["connections"] == 1 and c["segs_in"] == 1
    assert st.tcp.connection_count() == 1


def test_the_report_gives_every_counter_once_by_name_without_a_dict():
    st, lsn, p = server()
    p.send(SYN, now=1000)
    pairs = list(st.tcp.report())
    names = [name for name, _ in pairs]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert dict(pairs) == st.tcp.counters()
    assert dict(pairs)["rx_chunks"] == st.tcp.rx_pool.size


def test_malformed_headers_are_dropped_and_counted():
    st, lsn, p = server()
    p.send(SYN, now=1000, hlen=16)                     # data offset below 20
    buf, ip, t, n = build(PEER_IP, st.iface.ip, 40000, 80, 1, 0, SYN, options=b"\x01" * 20)
    st.tcp.input(buf, ip, t, n - 4, 1000)               # data offset beyond the segment
    p.none()
    assert st.tcp.drop_malformed == 2
    st.tcp.input(bytearray(40), 0, 20, 12, 1000)       # shorter than a header
    assert st.tcp.drop_malformed == 3


def test_full_table_recycles_the_oldest_time_wait_connection_for_a_new_one():
    st, lsn, s, p = server_established(tcp_max_connections=2)
    s.close()
    s.release()
    st.tcp.poll(1010)
    p.take()
    p.send(FIN | ACK, now=1020)            # the peer's FIN after ours: we are in TIME-WAIT
    p.take()
    assert s.state == T.TIME_WAIT and st.tcp.connection_count() == 1
    Peer(st, port=41001).send(SYN, now=1030)        # fills the table
    Peer(st, port=41002).send(SYN, now=1031)        # would not fit: TIME-WAIT makes room
    assert st.tcp.time_wait_recycled == 1 and st.tcp.drop_max_connections == 0
    assert st.tcp.connection_count() == 2
    # released by its application, the TIME-WAIT socket now carries the new connection
    assert s.remote_port == 41002 and s.state == T.SYN_RCVD
    Peer(st, port=41003).send(SYN, now=1032)        # no TIME-WAIT left: refused
    assert st.tcp.drop_max_connections == 1


def test_every_socket_is_made_at_boot_and_comes_back_once_released_and_closed():
    st, lsn, p = server(tcp_max_connections=2)
    assert len(st.tcp._free) == 2
    a = Peer(st, port=41001)
    a.send(SYN, now=1000)
    a.take()
    a.send(ACK, now=1001)
    s = lsn.accept()
    Peer(st, port=41002).send(SYN, now=1002)
    Peer(st, port=41003).send(SYN, now=1003)          # both sockets in use: dropped
    assert st.tcp.drop_max_connections == 1 and len(st.tcp._free) == 0
    s.abort()                                         # closed, but its application has it
    Peer(st, port=41004).send(SYN, now=1004)
    assert st.tcp.drop_no_memory == 1                 # (counted apart from the limit)
    assert s.state == T.CLOSED and s.remote_port == 41001
    s.release()
    assert len(st.tcp._free) == 1
    Peer(st, port=41005).send(SYN, now=1005)
    assert s.remote_port == 41005 and s.state == T.SYN_RCVD
    assert st.tcp.connection_count() == 2


def test_unread_data_of_a_released_socket_goes_back_to_the_pool():
    st, lsn, s, p = server_established()
    p.send(ACK | PSH, b"x" * 1000, now=1100)
    pool = st.tcp.rx_pool
    assert pool.nfree < pool.size
    s.abort()                                         # closed with data never read...
    assert s.state == T.CLOSED and s.recv_available() == 1000   # ...still readable
    assert pool.nfree < pool.size
    s.release()
    assert pool.nfree == pool.size
