# TCP state machine (RFC 9293), state by state: the segments that move each state on and
# the ones that must be ignored or answered with RST / ACK.
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
    client_established,
    drain,
    mss_option,
    server,
    server_established,
)

ECONNRESET = 104
ECONNREFUSED = 111


def fin_wait_1(now=1000):
    st, lsn, s, p = server_established(now)
    s.close()
    st.tcp.poll(now + 10)
    fin = p.one()
    assert fin.is_(FIN | ACK), fin
    assert s.state == T.FIN_WAIT_1
    return st, s, p, fin


# ---- LISTEN ---------------------------------------------------------------------------------

def test_listen_syn_answers_syn_ack_with_mss_and_enters_syn_received():
    st, lsn, p = server()
    p.send(SYN, now=1000, options=mss_option(1400))
    sa = p.one()
    assert sa.is_(SYN | ACK) and sa.ack == 1001 and sa.mss == 1460
    assert sa.wnd == 4096 and sa.sport == 80 and sa.dport == 40000 and sa.dst == PEER_IP
    assert st.tcp.connection_count() == 1
    s = st.tcp.conns[0]
    assert s.state == T.SYN_RCVD and s.mss == 1400
    assert lsn.accept() is None                       # not established yet


def test_listen_ack_gets_rst_with_seq_of_its_ack():
    st, lsn, p = server()
    p.send(ACK, now=1000, seq=7, ack=123456)
    r = p.one()
    assert r.is_(RST) and r.seq == 123456
    assert st.tcp.connection_count() == 0


def test_listen_ignores_rst_and_flagless_and_syn_fin():
    st, lsn, p = server()
    p.send(RST, now=1000)
    p.send(0, b"x", now=1000)
    p.send(SYN | FIN, now=1000)
    p.none()
    assert st.tcp.connection_count() == 0


# ---- SYN-SENT -------------------------------------------------------------------------------

def test_connect_sends_syn_with_mss_and_syn_ack_establishes():
    st = FakeStack()
    p = Peer(st, port=80, our_port=50000, isn=9000)
    s = st.tcp.connect(PEER_IP, 0, 80, 1000, local_port=50000)
    syn = p.one()
    assert syn.is_(SYN) and syn.mss == 1460 and syn.ack == 0 and syn.dst == PEER_IP
    assert s.state == T.SYN_SENT and s.remote_ip == PEER_IP and s.local_port == 50000
    p.send(SYN | ACK, now=1005, options=mss_option(1200))
    a = p.one()
    assert a.is_(ACK) and a.seq == syn.seq + 1 and a.ack == 9001
    assert s.state == T.ESTABLISHED and s.mss == 1200


def test_syn_sent_bad_ack_gets_rst_and_keeps_waiting():
    st = FakeStack()
    p = Peer(st, port=80, our_port=50000)
    s = st.tcp.connect(PEER_IP, 0, 80, 1000, local_port=50000)
    syn = p.one()
    p.send(SYN | ACK, now=1001, ack=syn.seq + 5)    # acknowledges something never sent
    r = p.one()
    assert r.is_(RST) and r.seq == syn.seq + 5
    assert s.state == T.SYN_SENT


def test_syn_sent_rst_with_acceptable_ack_is_connection_refused():
    st = FakeStack()
    p = Peer(st, port=80, our_port=50000)
    s = st.tcp.connect(PEER_IP, 0, 80, 1000, local_port=50000)
    syn = p.one()
    p.send(RST, now=1001, ack=syn.seq + 3)          # unacceptable ACK: dropped, no answer
    p.send(RST, now=1001)                           # no ACK: ignored
    p.none()
    assert s.state == T.SYN_SENT
    p.send(RST | ACK, now=1001, ack=syn.seq + 1)
    assert s.state == T.CLOSED and s.error == ECONNREFUSED
    assert st.tcp.connection_count() == 0
    p.none()


def test_syn_sent_ignores_plain_ack_without_syn():
    st = FakeStack()
    p = Peer(st, port=80, our_port=50000)
    s = st.tcp.connect(PEER_IP, 0, 80, 1000, local_port=50000)
    syn = p.one()
    p.send(ACK, now=1001, ack=syn.seq + 1)
    p.none()
    assert s.state == T.SYN_SENT


def test_close_in_syn_sent_goes_away():
    st = FakeStack()
    s = st.tcp.connect(PEER_IP, 0, 80, 1000)
    s.close()
    assert s.state == T.CLOSED and st.tcp.connection_count() == 0


def test_simultaneous_open():
    st = FakeStack()
    p = Peer(st, port=80, our_port=50000, isn=7000)
    s = st.tcp.connect(PEER_IP, 0, 80, 1000, local_port=50000)
    syn = p.one()
    p.send(SYN, now=1001, options=mss_option(1460))   # crossing SYNs
    sa = p.one()
    assert s.state == T.SYN_RCVD
    assert sa.is_(SYN | ACK) and sa.seq == syn.seq and sa.ack == 7001
    # Its SYN-ACK (SEQ = its ISS again, ACK of our SYN) completes the handshake.
    p.send(SYN | ACK, now=1002, seq=7000, ack=syn.seq + 1)
    assert s.state == T.ESTABLISHED
    a = p.one()
    assert a.is_(ACK) and a.ack == 7001 and a.seq == syn.seq + 1


def test_simultaneous_open_completed_by_plain_ack():
    st = FakeStack()
    p = Peer(st, port=80, our_port=50000, isn=7000)
    s = st.tcp.connect(PEER_IP, 0, 80, 1000, local_port=50000)
    syn = p.one()
    p.send(SYN, now=1001)
    p.take()
    p.send(ACK, now=1002, ack=syn.seq + 1)
    assert s.state == T.ESTABLISHED


# ---- SYN-RECEIVED ---------------------------------------------------------------------------

def test_syn_received_ack_establishes_and_queues_for_accept():
    st, lsn, p = server()
    p.send(SYN, now=1000)
    p.take()
    assert lsn.pending() == 0
    p.send(ACK, now=1001)
    assert lsn.pending() == 1
    s = lsn.accept()
    assert s.state == T.ESTABLISHED and s.remote_port == 40000 and s.mss == 536
    assert lsn.pending() == 0


def test_syn_received_ack_with_data_establishes_and_keeps_data():
    st, lsn, p = server()
    p.send(SYN, now=1000)
    p.take()
    p.send(ACK | PSH, b"early", now=1001)
    s = lsn.accept()
    assert s.state == T.ESTABLISHED and drain(s) == b"early"


def test_syn_received_duplicate_syn_resends_syn_ack():
    st, lsn, p = server()
    p.send(SYN, now=1000)
    sa = p.one()
    p.send(SYN, now=1100, seq=1000)
    sa2 = p.one()
    assert sa2.is_(SYN | ACK) and sa2.seq == sa.seq and sa2.ack == 1001
    assert st.tcp.connection_count() == 1


def test_syn_received_bad_ack_gets_rst():
    st, lsn, p = server()
    p.send(SYN, now=1000)
    sa = p.one()
    p.send(ACK, now=1001, ack=sa.seq + 100)
    r = p.one()
    assert r.is_(RST) and r.seq == sa.seq + 100
    assert st.tcp.conns[0].state == T.SYN_RCVD


def test_syn_received_rst_returns_to_listen():
    st, lsn, p = server()
    p.send(SYN, now=1000)
    p.take()
    p.send(RST, now=1001)
    assert st.tcp.connection_count() == 0 and lsn.embryonic == 0
    p.none()


def test_syn_received_new_syn_drops_the_half_open_connection():
    st, lsn, p = server()
    p.send(SYN, now=1000)
    p.take()
    p.send(SYN, now=1001, seq=1000 + 10)
    assert st.tcp.connection_count() == 0 and lsn.embryonic == 0


def test_syn_received_segment_without_ack_is_dropped():
    st, lsn, p = server()
    p.send(SYN, now=1000)
    p.take()
    p.send(PSH, b"data", now=1001)
    p.none()
    assert st.tcp.conns[0].state == T.SYN_RCVD


def test_syn_received_times_out_after_syn_ack_retries():
    st, lsn, p = server()
    p.send(SYN, now=1000)
    p.take()
    now = 1000
    for _ in range(5):
        now += 70000
        st.tcp.poll(now)
        assert p.one().is_(SYN | ACK)
    now += 70000
    st.tcp.poll(now)
    p.none()
    assert st.tcp.connection_count() == 0 and lsn.embryonic == 0


# ---- ESTABLISHED ----------------------------------------------------------------------------

def test_established_data_in_both_directions():
    st, lsn, s, p = server_established()
    p.send(ACK | PSH, b"ping", now=2000)
    assert s.recv_available() == 4 and drain(s) == b"ping"
    assert s.send(b"pong", 0, 4) == 4
    st.tcp.poll(2001)
    d = p.one()
    assert d.payload == b"pong" and d.ack == p.seq and d.flags & PSH
    p.send(ACK, now=2002)
    assert s.tx.used == 0


def test_established_fin_moves_to_close_wait_and_is_acked_at_once():
    st, lsn, s, p = server_established()
    p.send(ACK | FIN, b"bye", now=2000)
    a = p.one()
    assert a.is_(ACK) and a.ack == p.seq
    assert s.state == T.CLOSE_WAIT and drain(s) == b"bye" and s.at_eof()


def test_established_exact_rst_resets():
    st, lsn, s, p = server_established()
    p.send(RST, now=2000)
    assert s.state == T.CLOSED and s.error == ECONNRESET
    assert st.tcp.connection_count() == 0


def test_established_out_of_window_data_is_acked_and_dropped():
    st, lsn, s, p = server_established()
    p.send(ACK, b"far", now=2000, seq=p.seq + 100000)
    a = p.one()
    assert a.is_(ACK) and a.ack == p.seq
    assert s.recv_available() == 0
    p.send(ACK, b"old", now=2001, seq=p.seq - 3)      # retransmission of acked data
    assert p.one().ack == p.seq


def test_established_segment_without_ack_is_dropped():
    st, lsn, s, p = server_established()
    p.send(PSH, b"noack", now=2000)
    assert s.recv_available() == 0


def test_send_errors():
    st, lsn, s, p = server_established()
    s.close()
    try:
        s.send(b"x", 0, 1)
        raise AssertionError("send after close")
    except OSError as e:
        assert e.errno == 32                          # EPIPE
    s.abort()
    try:
        s.send(b"x", 0, 1)
        raise AssertionError("send on closed")
    except OSError as e:
        assert e.errno == 107                         # ENOTCONN


def test_abort_sends_rst_and_closes():
    st, lsn, s, p = server_established()
    s.abort()
    r = p.one()
    assert r.flags & RST and r.seq == p.ack
    assert s.state == T.CLOSED and st.tcp.connection_count() == 0


# ---- FIN-WAIT-1 / FIN-WAIT-2 / CLOSING / TIME-WAIT (active close) --------------------------

def test_close_sends_fin_after_queued_data():
    st, lsn, s, p = server_established()
    s.send(b"last words", 0, 10)
    s.close()
    st.tcp.poll(2000)
    d = p.one()
    assert d.payload == b"last words" and d.flags & FIN
    assert s.state == T.FIN_WAIT_1


def test_fin_wait_1_ack_of_fin_then_fin():
    st, s, p, fin = fin_wait_1()
    p.send(ACK, now=1100)
    assert s.state == T.FIN_WAIT_2
    p.none()
    p.send(ACK, b"more", now=1200)                   # half-close: still receiving
    assert drain(s) == b"more"
    p.send(FIN | ACK, now=1300)
    a = p.one()
    assert a.is_(ACK) and a.ack == p.seq
    assert s.state == T.TIME_WAIT


def test_fin_wait_1_fin_ack_goes_straight_to_time_wait():
    st, s, p, fin = fin_wait_1()
    p.send(FIN | ACK, now=1100)
    assert p.one().ack == p.seq
    assert s.state == T.TIME_WAIT


def test_simultaneous_close_through_closing():
    st, s, p, fin = fin_wait_1()
    p.send(FIN | ACK, now=1100, ack=fin.seq)         # its FIN crosses ours
    a = p.one()
    assert a.is_(ACK) and a.ack == p.seq
    assert s.state == T.CLOSING
    p.send(ACK, now=1101, ack=fin.seq + 1)
    assert s.state == T.TIME_WAIT


def test_fin_is_retransmitted_in_fin_wait_1():
    st, s, p, fin = fin_wait_1()
    st.tcp.poll(1000 + 10 + 1001)
    again = p.one()
    assert again.is_(FIN | ACK) and again.seq == fin.seq


def test_time_wait_reacks_fin_restarts_timer_and_expires():
    st, s, p, fin = fin_wait_1()
    p.send(FIN | ACK, now=1100)
    p.take()
    p.send(FIN | ACK, now=2500, seq=p.seq - 1)        # our ACK was lost: FIN again
    a = p.one()
    assert a.is_(ACK) and a.ack == p.seq
    st.tcp.poll(2500 + 1999)
    assert s.state == T.TIME_WAIT                      # 2 MSL restarted at 2500
    assert st.tcp.poll_at(2500 + 1999) == 1
    st.tcp.poll(2500 + 2000)
    assert s.state == T.CLOSED and st.tcp.connection_count() == 0
    p.none()


def test_time_wait_new_syn_reopens():
    st, s, p, fin = fin_wait_1()
    p.send(FIN | ACK, now=1100)
    p.take()
    p.send(SYN, now=1200, seq=p.seq + 100000)
    sa = p.one()
    assert sa.is_(SYN | ACK) and sa.ack == p.seq + 100000 + 1
    assert st.tcp.time_wait_reuse == 1 and st.tcp.connection_count() == 1


# ---- CLOSE-WAIT / LAST-ACK (passive close) ---------------------------------------------------

def test_close_wait_can_send_then_close_to_last_ack_and_closed():
    st, lsn, s, p = server_established()
    p.send(FIN | ACK, now=2000)
    p.take()
    assert s.state == T.CLOSE_WAIT
    s.send(b"reply", 0, 5)
    s.close()
    assert s.state == T.LAST_ACK
    st.tcp.poll(2001)
    d = p.one()
    assert d.payload == b"reply" and d.flags & FIN
    p.send(ACK, now=2002)
    assert s.state == T.CLOSED and st.tcp.connection_count() == 0 and s.error == 0


def test_last_ack_retransmits_fin():
    st, lsn, s, p = server_established()
    p.send(FIN | ACK, now=2000)
    p.take()
    s.close()
    st.tcp.poll(2001)
    fin = p.one()
    st.tcp.poll(2001 + 1000)
    again = p.one()
    assert again.is_(FIN | ACK) and again.seq == fin.seq
    p.send(ACK, now=3100)
    assert s.state == T.CLOSED


def test_close_wait_ignores_data_after_fin():
    st, lsn, s, p = server_established()
    p.send(FIN | ACK, now=2000)
    p.take()
    p.send(ACK, b"late", now=2001)                     # beyond its own FIN: text ignored
    p.none()
    assert s.recv_available() == 0 and s.at_eof()


def test_rst_in_last_ack_closes_without_error():
    st, lsn, s, p = server_established()
    p.send(FIN | ACK, now=2000)
    p.take()
    s.close()
    st.tcp.poll(2001)
    p.take()
    p.send(RST, now=2002)
    assert s.state == T.CLOSED and s.error == 0


# ---- many connections -----------------------------------------------------------------------

def test_sequential_connections_leave_no_state():
    st, lsn, p0 = server(tcp_time_wait_ms=500)
    now = 1000
    for i in range(30):
        p = Peer(st, port=41000 + i, isn=1000 * i)
        p.send(SYN, now=now)
        p.take()
        p.send(ACK, now=now)
        s = lsn.accept()
        p.send(ACK | PSH, b"hello", now=now)
        s.send(b"hi", 0, 2)
        s.close()                                     # we close first: TIME-WAIT is ours
        s.release()                                   # the application is done with it
        st.tcp.poll(now)
        p.take()
        p.send(FIN | ACK, now=now)
        p.take()
        assert s.state == T.TIME_WAIT
        now += 100
        st.tcp.poll(now)
    st.tcp.poll(now + 500)
    assert st.tcp.connection_count() == 0
    assert st.tcp.poll_at(now + 500) == -1


def test_client_established_and_close_both_ways():
    st, s, p = client_established()
    p.send(ACK | PSH, b"banner", now=1100)
    assert drain(s) == b"banner"
    s.close()
    st.tcp.poll(1101)
    fin = p.one()
    assert fin.flags & FIN and fin.ack == p.seq
    p.send(FIN | ACK, now=1102)
    assert s.state == T.TIME_WAIT and s.at_eof()


def test_rings_are_released_once_no_byte_can_pass():
    st, s, p, fin = fin_wait_1()
    p.send(ACK, now=1100)                              # our FIN acked: TX ring goes
    assert s.state == T.FIN_WAIT_2 and s.tx is None and s.rx is not None
    p.send(FIN | ACK, b"tail", now=1200)               # TIME-WAIT with unread data
    assert p.one().ack == p.seq
    assert s.state == T.TIME_WAIT and s.rx is not None
    assert drain(s) == b"tail" and s.rx is None and s.at_eof()
    assert s.recv_into(bytearray(4), 0, 4) == 0 and s.send_space() == 0
    p.send(FIN | ACK, now=1300, seq=p.seq - 1)         # still answers in TIME-WAIT
    assert p.one().is_(ACK)


def test_a_stray_syn_outside_the_window_does_not_kill_a_half_open_connection():
    st, lsn, p = server()
    p.send(SYN, now=1000, options=mss_option(1460))
    p.one()                                                    # SYN-ACK
    p.send(SYN, now=1001, seq=p.seq + 100000)                  # far outside the window
    assert st.tcp.connection_count() == 1
    p.take()
    p.send(ACK, now=1002)
    assert lsn.accept() is not None
