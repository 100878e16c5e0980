# Delayed ACK (config.tcp_delayed_ack_ms, every second full segment at once) and keepalive
# (off by default; probes after keepalive_ms of silence, then every interval, then give up).
from netkernel import tcp as T
from tcp_harness import ACK, PSH, RST, server_established

ETIMEDOUT = 110


def test_single_segment_ack_is_delayed():
    st, lsn, s, p = server_established()
    p.send(ACK | PSH, bytes(500), now=2000)
    p.none()
    assert st.tcp.poll_at(2000) == 40
    st.tcp.poll(2039)
    p.none()
    st.tcp.poll(2040)
    a = p.one()
    assert a.is_(ACK) and a.ack == p.seq
    assert st.tcp.poll_at(2041) == -1


def test_every_second_full_segment_is_acked_at_once():
    st, lsn, s, p = server_established()
    p.send(ACK, bytes(1460), now=2000)
    p.none()
    p.send(ACK, bytes(1460), now=2001)
    a = p.one()
    assert a.ack == p.seq
    p.send(ACK, bytes(1000), now=2002)                   # the count starts again
    p.none()


def test_small_segments_wait_for_the_timer():
    st, lsn, s, p = server_established()
    p.send(ACK, bytes(100), now=2000)
    p.send(ACK, bytes(100), now=2010)
    p.none()
    st.tcp.poll(2040)                                    # 40 ms after the first
    assert p.one().ack == p.seq


def test_delayed_ack_rides_on_data():
    st, lsn, s, p = server_established()
    p.send(ACK, b"request", now=2000)
    s.send(b"response", 0, 8)
    st.tcp.poll(2005)
    d = p.one()
    assert d.payload == b"response" and d.ack == p.seq
    st.tcp.poll(2100)
    p.none()


def test_delayed_ack_off():
    st, lsn, s, p = server_established(tcp_delayed_ack_ms=0)
    p.send(ACK, bytes(10), now=2000)
    assert p.one().ack == p.seq


def test_keepalive_is_off_by_default():
    st, lsn, s, p = server_established()
    assert s.keepalive_ms == 0
    assert st.tcp.poll_at(2000) == -1
    st.tcp.poll(2000 + 3600 * 1000)
    p.none()


def test_keepalive_probes_after_idle_and_resets_on_answer():
    st, lsn, s, p = server_established()
    s.keepalive_ms = 5000                                 # last heard from at 1001
    assert st.tcp.poll_at(2000) == 4001
    st.tcp.poll(6000)
    p.none()
    st.tcp.poll(6001)
    probe = p.one()
    assert probe.is_(ACK) and not probe.payload
    assert probe.seq == (p.ack - 1) & 0xFFFFFFFF
    p.send(ACK, now=6010)                                 # the peer is alive
    assert st.tcp.poll_at(6010) == 5000
    st.tcp.poll(11010)
    assert p.one().is_(ACK) and st.tcp.keepalive_probes == 2


def test_keepalive_gives_up_after_unanswered_probes():
    st, lsn, s, p = server_established(tcp_keepalive_ms=5000)
    assert s.keepalive_ms == 5000
    now = 1001 + 5000
    probes = 0
    while s.state != T.CLOSED:
        st.tcp.poll(now)
        segs = p.take()
        assert not [x for x in segs if x.flags & RST]
        probes += len(segs)
        now += 1000
        assert now < 30000
    assert probes == 9 and s.error == ETIMEDOUT
    assert st.tcp.keepalive_timeouts == 1 and st.tcp.connection_count() == 0


def test_keepalive_waits_while_data_is_in_flight():
    st, lsn, s, p = server_established()
    s.keepalive_ms = 1000
    s.send(b"x", 0, 1)
    st.tcp.poll(1500)
    p.take()
    st.tcp.poll(2500)                                     # idle, but the RTO is in charge
    assert st.tcp.keepalive_probes == 0
