# TCP options: MSS (ours on SYN/SYN-ACK, the peer's or 536), unknown options skipped,
# malformed option lengths dropped and counted.
from tcp_harness import ACK, SYN, client_established, drain, mss_option, server, server_established


def test_mss_defaults_to_536_when_absent():
    st, lsn, s, p = server_established(mss=0)
    assert s.mss == 536
    st, s, p = client_established(mss=0)
    assert s.mss == 536


def test_segments_follow_the_peer_mss():
    st, lsn, s, p = server_established(mss=0)
    data = bytes(range(256)) * 8
    s.nagle = False
    assert s.send(data, 0, 2048) == 2048
    st.tcp.poll(2000)
    sizes = [len(x.payload) for x in p.take()]
    assert sizes and max(sizes) == 536, sizes


def test_peer_mss_is_clamped_to_our_mtu_and_a_floor():
    st, lsn, s, p = server_established(mss=9000)
    assert s.mss == 1460
    st, lsn, s, p = server_established(mss=8)
    assert s.mss == 64


def test_our_mss_is_on_syn_and_syn_ack_only():
    st, lsn, s, p = server_established()
    s.send(b"x", 0, 1)
    st.tcp.poll(2000)
    d = p.one()
    assert d.mss is None and d.hlen == 20


def test_unknown_options_are_skipped():
    st, lsn, p = server()
    opts = (b"\x01\x01\x04\x02"              # NOP NOP SACK-permitted
            + b"\x08\x0a" + b"\x00" * 8      # timestamps
            + b"\x03\x03\x07"                # window scale
            + b"\x1e\x04\xab\xcd"            # an option nobody knows
            + mss_option(1300) + b"\x00\x00\x00")
    p.send(SYN, now=1000, options=opts)
    sa = p.one()
    assert sa.is_(SYN | ACK) and sa.mss == 1460
    assert st.tcp.conns[0].mss == 1300
    # SACK-permitted is echoed; window scale and timestamps are not offered.
    assert sa.options == mss_option(1460) + b"\x01\x01\x04\x02"


def test_end_of_options_stops_parsing():
    st, lsn, p = server()
    p.send(SYN, now=1000, options=b"\x00\xff\xff\xff")
    assert p.one().is_(SYN | ACK)
    assert st.tcp.conns[0].mss == 536


def check_dropped(opts):
    st, lsn, p = server()
    p.send(SYN, now=1000, options=opts)
    p.none()
    assert st.tcp.drop_bad_options == 1, opts
    assert st.tcp.connection_count() == 0


def test_bad_option_lengths_are_dropped_and_counted():
    check_dropped(b"\x1e\x00\x00\x00")            # length 0
    check_dropped(b"\x1e\x01\x00\x00")            # length 1
    check_dropped(b"\x01\x01\x1e\x09")            # runs past the header
    check_dropped(b"\x01\x01\x01\x02")            # kind with no room for its length
    check_dropped(b"\x02\x03\x05\x01")            # MSS with length 3
    check_dropped(b"\x02\x06\x05\xb4\x00\x00")    # MSS with length 6


def test_bad_options_on_an_established_connection_drop_the_segment():
    st, lsn, s, p = server_established()
    p.send(ACK, b"payload", now=2000, options=b"\x08\x0c\x00\x00")
    assert s.recv_available() == 0 and st.tcp.drop_bad_options == 1
    p.send(ACK, b"payload", now=2001, seq=p.seq - 7)
    assert drain(s) == b"payload"
