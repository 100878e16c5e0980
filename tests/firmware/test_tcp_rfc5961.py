# RFC 5961: blind RST, SYN and data injection defences, with rate-limited challenge ACKs.
from netkernel import tcp as T
from tcp_harness import ACK, FIN, RST, SYN, drain, server_established


def is_challenge(seg, p):
    return seg.is_(ACK) and seg.ack == p.seq and seg.seq == p.ack and not seg.payload


def test_in_window_rst_not_at_rcv_nxt_gets_challenge_ack():
    st, lsn, s, p = server_established()
    p.send(RST, now=2000, seq=p.seq + 100)
    assert is_challenge(p.one(), p)
    assert s.state == T.ESTABLISHED and st.tcp.challenge_acks == 1


def test_out_of_window_rst_is_silently_dropped():
    st, lsn, s, p = server_established()
    p.send(RST, now=2000, seq=p.seq + 100000)
    p.send(RST, now=2000, seq=p.seq - 1)
    p.none()
    assert s.state == T.ESTABLISHED


def test_syn_on_established_connection_gets_challenge_ack():
    st, lsn, s, p = server_established()
    p.send(SYN, now=2000, seq=p.seq)                    # in window
    assert is_challenge(p.one(), p)
    p.send(SYN, now=2001, seq=p.seq + 1000000)          # anywhere
    assert is_challenge(p.one(), p)
    p.send(SYN | ACK, now=2002, seq=p.seq - 5)
    assert is_challenge(p.one(), p)
    assert s.state == T.ESTABLISHED and st.tcp.challenge_acks == 3


def test_ack_of_unsent_data_gets_challenge_ack_and_is_dropped():
    st, lsn, s, p = server_established()
    p.send(ACK, b"injected", now=2000, ack=p.ack + 10, seq=p.seq)   # (p.seq not advanced)
    assert is_challenge(p.one(), p)
    assert s.recv_available() == 0 and st.tcp.drop_bad_ack == 1


def test_ack_older_than_the_max_window_is_dropped_with_challenge():
    st, lsn, s, p = server_established(peer_wnd=1000)
    s.nagle = False
    s.send(bytes(3000), 0, 3000)
    for t in range(3):
        st.tcp.poll(2000 + t)
        p.take()
        p.send(ACK, now=2000 + t, wnd=1000)
    assert s.tx.used == 0
    p.send(ACK, b"old-ack", now=2010, ack=p.ack - 2000, wnd=1000)
    c = p.one()
    assert c.is_(ACK) and s.recv_available() == 0 and st.tcp.drop_bad_ack == 1
    p.send(ACK, b"ok-ack", now=2011, ack=p.ack - 500, wnd=1000, seq=p.seq - 7)
    assert drain(s) == b"ok-ack"                         # within MAX.SND.WND: accepted


def test_challenge_acks_are_rate_limited():
    st, lsn, s, p = server_established()
    for _ in range(15):
        p.send(RST, now=2000, seq=p.seq + 10)
    assert len(p.take()) == 10
    assert st.tcp.challenge_acks == 10 and st.tcp.challenge_acks_suppressed == 5
    p.send(RST, now=3001, seq=p.seq + 10)
    assert len(p.take()) == 1


def test_syn_in_time_wait_below_rcv_nxt_gets_challenge_ack():
    st, lsn, s, p = server_established()
    s.close()
    st.tcp.poll(2000)
    p.take()
    p.send(FIN | ACK, now=2001)
    p.take()
    assert s.state == T.TIME_WAIT
    p.send(SYN, now=2002, seq=p.seq - 10)
    assert is_challenge(p.one(), p)
    assert s.state == T.TIME_WAIT
