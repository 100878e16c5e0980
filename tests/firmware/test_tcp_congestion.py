# Congestion control (RFC 5681 + RFC 3390 IW, RFC 6582 NewReno, RFC 5827 early retransmit).
from tcp_harness import ACK, PEER_IP, SYN, FakeStack, Peer, mss_option, server_established

MSS = 1460


def flight_of(n_segments, **cfg):
    """Established, cwnd opened to n segments, n full segments sent: (st, s, p, segs)."""
    st, lsn, s, p = server_established(tcp_tx_buffer=16384, **cfg)
    s.cwnd = n_segments * MSS
    assert s.send(bytes(n_segments * MSS), 0, n_segments * MSS) == n_segments * MSS
    st.tcp.poll(2000)
    segs = p.take()
    assert len(segs) == n_segments
    return st, s, p, segs


def test_initial_window_rfc3390():
    st, lsn, s, p = server_established()
    assert s.cwnd == 4380                     # min(4 MSS, max(2 MSS, 4380)) for MSS 1460
    st, lsn, s, p = server_established(mss=536)
    assert s.cwnd == 4 * 536
    st, lsn, s, p = server_established(mss=2000)
    assert s.cwnd == 4380


def test_initial_window_is_one_segment_after_a_lost_syn():
    st = FakeStack()
    p = Peer(st, port=80, our_port=50000)
    s = st.tcp.connect(PEER_IP, 0, 80, 1000, local_port=50000)
    p.take()
    st.tcp.poll(2000)                         # SYN retransmitted
    p.take()
    p.send(SYN | ACK, now=2100, options=mss_option(1460))
    assert s.cwnd == MSS and s.rto == 3000    # RFC 5681 3.1, RFC 6298 5.7


def test_slow_start_grows_one_mss_per_ack():
    st, lsn, s, p = server_established(tcp_tx_buffer=16384)
    s.send(bytes(16384), 0, 16384)
    st.tcp.poll(2000)
    segs = p.take()
    assert len(segs) == 3
    p.send(ACK, now=2010, ack=segs[1].seq)
    assert s.cwnd == 4380 + MSS
    assert len(p.take()) == 2                 # 2 in flight + 2 new = 4 segments = cwnd


def test_congestion_avoidance_grows_by_mss_squared_over_cwnd():
    st, lsn, s, p = server_established(tcp_tx_buffer=16384)
    s.ssthresh = 2920
    s.send(bytes(16384), 0, 16384)
    st.tcp.poll(2000)
    segs = p.take()
    p.send(ACK, now=2010, ack=segs[1].seq)
    assert s.cwnd == 4380 + MSS * MSS // 4380


def test_fast_retransmit_and_newreno_recovery():
    st, s, p, segs = flight_of(8)
    una = segs[0].seq
    for _ in range(2):
        p.send(ACK, now=2010, ack=una)
    p.none()
    assert s.dupacks == 2 and not s.in_recovery
    p.send(ACK, now=2011, ack=una)                     # third duplicate
    r = p.one()
    assert r.seq == una and len(r.payload) == MSS
    assert s.ssthresh == 8 * MSS // 2 and s.cwnd == 4 * MSS + 3 * MSS
    assert s.in_recovery and st.tcp.fast_retransmits == 1
    p.send(ACK, now=2012, ack=una)                     # fourth: inflate
    assert s.cwnd == 4 * MSS + 4 * MSS
    # Partial ACK (NewReno): the next hole is resent at once, cwnd deflated.
    p.send(ACK, now=2020, ack=segs[3].seq)
    r = p.one()
    assert r.seq == segs[3].seq and s.in_recovery
    assert s.cwnd == 8 * MSS - 3 * MSS + MSS
    # Full ACK: leave recovery with cwnd = min(ssthresh, max(flight, MSS) + MSS).
    p.send(ACK, now=2030, ack=segs[7].seq + MSS)
    assert not s.in_recovery and s.cwnd == 2 * MSS
    assert s.tx.used == 0


def test_duplicates_from_before_recovery_do_not_retrigger():
    st, s, p, segs = flight_of(8)
    una = segs[0].seq
    for _ in range(3):
        p.send(ACK, now=2010, ack=una)
    p.take()
    end = segs[7].seq + MSS
    p.send(ACK, now=2020, ack=end)                     # full ACK
    s.cwnd = 8 * MSS
    s.send(bytes(4 * MSS), 0, 4 * MSS)
    st.tcp.poll(2030)
    p.take()
    for _ in range(3):
        p.send(ACK, now=2040, ack=end)                 # ACK == recover: RFC 6582 says no
    p.none()
    assert st.tcp.fast_retransmits == 1


def test_segments_with_data_or_a_window_change_are_not_duplicates():
    st, s, p, segs = flight_of(8)
    una = segs[0].seq
    for i in range(3):
        p.send(ACK, b"x", now=2010, ack=una)
    for i in range(3):
        p.send(ACK, now=2010, ack=una, wnd=60000 - i)
    assert st.tcp.fast_retransmits == 0


def test_early_retransmit_with_two_segments_in_flight():
    st, lsn, s, p = server_established()
    s.send(bytes(2 * MSS), 0, 2 * MSS)
    st.tcp.poll(2000)
    segs = p.take()
    assert len(segs) == 2
    p.send(ACK, now=2010, ack=segs[0].seq)             # one duplicate is all that can come
    r = p.one()
    assert r.seq == segs[0].seq and st.tcp.fast_retransmits == 1


def test_early_retransmit_with_three_segments_needs_two_duplicates():
    st, lsn, s, p = server_established(tcp_tx_buffer=3 * MSS)
    s.send(bytes(3 * MSS), 0, 3 * MSS)
    st.tcp.poll(2000)
    segs = p.take()
    assert len(segs) == 3
    p.send(ACK, now=2010, ack=segs[0].seq)
    p.none()
    p.send(ACK, now=2011, ack=segs[0].seq)
    assert p.one().seq == segs[0].seq
