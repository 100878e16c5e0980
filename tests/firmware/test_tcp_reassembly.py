# Out-of-order segments within the window are kept (in the RX ring's free space) and
# reassembled; holes are bounded; duplicates and overlaps are harmless.
from netkernel import tcp as T
from tcp_harness import ACK, FIN, drain, server_established

DATA = bytes((i * 7 + 3) & 0xFF for i in range(4000))


def send_piece(p, base, a, b, now, flags=ACK):
    p.send(flags, DATA[a:b], now=now, seq=base + a)


def test_out_of_order_segments_are_reassembled_byte_exact():
    st, lsn, s, p = server_established()
    base = p.seq
    send_piece(p, base, 1000, 2000, 2000)
    send_piece(p, base, 2000, 3000, 2001)
    acks = p.take()
    assert [a.ack for a in acks] == [base, base]          # immediate duplicate ACKs
    assert s.recv_available() == 0 and s.asm.count == 1
    send_piece(p, base, 0, 1000, 2002)                    # fills the hole
    a = p.one()
    assert a.ack == base + 3000                           # acked at once, all of it
    assert drain(s) == DATA[:3000]
    assert st.tcp.ooo_segments == 2


def test_reassembly_across_the_ring_wrap():
    st, lsn, s, p = server_established()
    base = p.seq
    send_piece(p, base, 0, 3000, 2000)
    assert drain(s) == DATA[:3000]                        # ring head now at 3000 of 4096
    send_piece(p, base, 3500, 4000, 2001)
    send_piece(p, base, 3000, 3500, 2002)
    assert drain(s) == DATA[3000:4000]


def test_holes_are_bounded():
    st, lsn, s, p = server_established()
    base = p.seq
    for k in range(4):
        send_piece(p, base, 200 + 400 * k, 300 + 400 * k, 2000)
    send_piece(p, base, 3000, 3100, 2000)                 # a fifth hole: refused
    assert s.asm.count == 4 and st.tcp.drop_ooo_full == 1
    send_piece(p, base, 0, 3000, 2001)
    send_piece(p, base, 3000, 3100, 2002)
    assert drain(s) == DATA[:3100]


def test_overlapping_and_duplicate_segments():
    st, lsn, s, p = server_established()
    base = p.seq
    send_piece(p, base, 500, 1500, 2000)
    send_piece(p, base, 500, 1500, 2000)                  # duplicate
    send_piece(p, base, 1200, 2000, 2000)                 # overlaps the end
    send_piece(p, base, 0, 700, 2000)                     # overlaps the start
    assert drain(s) == DATA[:2000]
    send_piece(p, base, 1990, 2100, 2001)                 # partly old, partly new
    assert drain(s) == DATA[2000:2100]


def test_fin_out_of_order_is_kept_until_the_hole_fills():
    st, lsn, s, p = server_established()
    base = p.seq
    send_piece(p, base, 1000, 1500, 2000, ACK | FIN)
    assert s.state == T.ESTABLISHED and not s.fin_received
    send_piece(p, base, 0, 1000, 2001)
    assert s.state == T.CLOSE_WAIT
    a = p.take()[-1]
    assert a.ack == base + 1501
    assert drain(s) == DATA[:1500] and s.at_eof()


def test_out_of_order_beyond_window_is_trimmed():
    st, lsn, s, p = server_established()
    base = p.seq
    send_piece(p, base, 3500, 4000, 2000)
    p.send(ACK, bytes(600), now=2000, seq=base + 4000)    # 96 bytes fit in the window
    assert s.asm.count == 1 and s.asm.held() == 596
    p.send(ACK, bytes(10), now=2000, seq=base + 4096)     # at the right edge: outside
    assert s.asm.held() == 596 and st.tcp.drop_out_of_window == 1


def test_nothing_after_an_out_of_order_fin_is_data():
    st, lsn, s, p = server_established()
    base = p.seq
    p.send(ACK | FIN, b"", now=2000, seq=base + 10)            # FIN at +10, early
    p.send(ACK, b"X" * 10, now=2001, seq=base + 10)            # bytes past the FIN
    p.send(ACK, b"A" * 10, now=2002, seq=base)                 # fills the hole
    assert drain(s) == b"A" * 10
    assert s.at_eof()
