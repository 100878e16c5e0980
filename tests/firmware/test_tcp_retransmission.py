# Retransmission timer (RFC 6298): initial RTO, estimator, exponential backoff, Karn's rule,
# giving up, go-back-N from the TX ring, and an interface that cannot send yet.
from netkernel import tcp as T
from tcp_harness import (
    ACK,
    PEER_IP,
    RST,
    SYN,
    FakeStack,
    Peer,
    client_established,
    mss_option,
    server_established,
)

ETIMEDOUT = 110


def run_timers(st, p, now, until):
    """Poll at each deadline until until(now) holds; returns (now, segments sent)."""
    segs = []
    for _ in range(200):
        if until(now):
            break
        d = st.tcp.poll_at(now)
        assert d >= 0
        now += d
        st.tcp.poll(now)
        segs.extend(p.take())
    return now, segs


def test_syn_initial_rto_one_second_then_doubling():
    st = FakeStack()
    p = Peer(st, port=80, our_port=50000)
    s = st.tcp.connect(PEER_IP, 0, 80, 1000, local_port=50000)
    syn = p.one()
    assert st.tcp.poll_at(1000) == 1000
    st.tcp.poll(1999)
    p.none()
    st.tcp.poll(2000)
    again = p.one()
    assert again.is_(SYN) and again.seq == syn.seq
    assert st.tcp.poll_at(2000) == 2000
    st.tcp.poll(4000)
    assert p.one().is_(SYN)
    assert s.rto == 4000


def test_syn_gives_up_with_etimedout_and_no_rst():
    st = FakeStack()
    p = Peer(st, port=80, our_port=50000)
    s = st.tcp.connect(PEER_IP, 0, 80, 1000, local_port=50000)
    p.take()
    now, segs = run_timers(st, p, 1000, lambda now: s.state == T.CLOSED)
    assert len(segs) == 6 and all(x.is_(SYN) for x in segs)
    assert s.error == ETIMEDOUT and st.tcp.connection_count() == 0
    assert st.tcp.conn_timeouts == 1


def test_rtt_estimator_follows_rfc6298():
    st = FakeStack()
    p = Peer(st, port=80, our_port=50000, isn=100)
    s = st.tcp.connect(PEER_IP, 0, 80, 1000, local_port=50000)
    p.take()
    p.send(SYN | ACK, now=1100, options=mss_option(1460))    # R = 100 ms
    p.take()
    assert s.srtt8 == 800 and s.rttvar4 == 200 and s.rto == 300   # SRTT 100, RTTVAR 50
    s.send(b"x" * 100, 0, 100)
    st.tcp.poll(1200)
    p.take()
    p.send(ACK, now=1400)                                          # R = 200 ms
    # SRTT = 100 + 100/8 = 112.5, RTTVAR = 3/4 * 50 + 100/4 = 62.5, RTO = SRTT + 4 RTTVAR
    assert s.srtt8 == 900 and s.rttvar4 == 250 and s.rto == 362


def test_rto_minimum_is_200_ms():
    st, lsn, s, p = server_established()          # handshake RTT of 1 ms
    assert s.rto == 200


def test_data_retransmission_backoff_and_karn():
    st, lsn, s, p = server_established()
    s.send(b"hello", 0, 5)
    st.tcp.poll(2000)
    first = p.one()
    st.tcp.poll(2199)
    p.none()
    st.tcp.poll(2200)
    r1 = p.one()
    assert r1.seq == first.seq and r1.payload == b"hello"
    assert s.rto == 400
    st.tcp.poll(2599)
    p.none()
    st.tcp.poll(2600)
    assert p.one().seq == first.seq
    assert s.rto == 800 and st.tcp.rto_timeouts == 2 and st.tcp.retransmits == 2
    srtt = s.srtt8
    p.send(ACK, now=2650)                 # ambiguous: which transmission does it ack?
    assert s.srtt8 == srtt and s.rto == 800  # Karn: no sample, backed-off RTO kept
    assert st.tcp.poll_at(2650) == -1        # nothing outstanding: timer stopped
    s.send(b"again", 0, 5)
    st.tcp.poll(2700)
    p.take()
    p.send(ACK, now=2710)                 # a clean sample ends the backoff
    assert s.rto == 200


def test_gives_up_after_12_retransmissions_without_rst():
    st, lsn, s, p = server_established()
    s.send(b"data", 0, 4)
    st.tcp.poll(2000)
    p.take()
    now, segs = run_timers(st, p, 2000, lambda now: s.state == T.CLOSED)
    assert len(segs) == 12
    assert not [x for x in segs if x.flags & RST]
    assert s.error == ETIMEDOUT and st.tcp.connection_count() == 0
    assert s.rto == 60000                  # capped at 60 s on the way


def test_rto_collapses_cwnd_and_goes_back_to_snd_una():
    st, lsn, s, p = server_established(tcp_tx_buffer=8192)
    data = bytes(4380)
    assert s.send(data, 0, 4380) == 4380
    st.tcp.poll(2000)
    out = p.take()
    assert [len(x.payload) for x in out] == [1460, 1460, 1460]    # IW 4380
    st.tcp.poll(2200)
    r = p.one()
    assert r.seq == out[0].seq and len(r.payload) == 1460
    assert s.cwnd == 1460 and s.ssthresh == 2920
    p.send(ACK, now=2210, ack=out[1].seq)
    resent = p.take()                                   # slow start: two more
    assert [x.seq for x in resent] == [out[1].seq, out[2].seq]
    assert s.cwnd == 2920


def test_interface_refusal_keeps_data_and_retries_soon():
    st = FakeStack()
    st.iface.accept = False                     # next hop not resolved yet
    p = Peer(st, port=80, our_port=50000)
    s = st.tcp.connect(PEER_IP, 0, 80, 1000, local_port=50000)
    assert st.tcp.tx_blocked == 1 and s.state == T.SYN_SENT
    assert st.tcp.poll_at(1000) == 20
    st.iface.accept = True
    st.tcp.poll(1019)
    p.none()
    st.tcp.poll(1020)
    syn = p.one()
    assert syn.is_(SYN)
    p.send(SYN | ACK, now=1030)
    p.take()
    st.iface.accept = False
    s.send(b"queued", 0, 6)
    st.tcp.poll(1040)
    assert s.tx.used == 6
    st.iface.accept = True
    st.tcp.poll(1060)
    assert p.one().payload == b"queued"


def test_client_data_retransmitted_on_rto():
    st, s, p = client_established()
    s.send(b"req", 0, 3)
    st.tcp.poll(1100)
    d = p.one()
    st.tcp.poll(1100 + s.rto)
    assert p.one().seq == d.seq
    p.send(ACK, now=1400)
    assert s.tx.used == 0 and st.tcp.poll_at(1400) == -1
    assert p.received == b"req"


def test_pure_ack_after_rto_carries_the_highest_sequence_sent():
    st, lsn, s, p = server_established(tcp_tx_buffer=8192)
    s.send(bytes(4380), 0, 4380)
    st.tcp.poll(2000)
    out = p.take()
    st.tcp.poll(2200)                                   # RTO: SND.NXT back to SND.UNA
    p.take()
    p.send(ACK, b"x", now=2210, seq=p.seq, ack=out[0].seq)   # acks nothing new
    st.tcp.poll(2260)
    a = [x for x in p.take() if not x.payload][-1]
    # SND.MAX, not the pulled-back SND.NXT: an old SEQ would make the peer ACK back.
    assert a.seq == out[2].seq + 1460
