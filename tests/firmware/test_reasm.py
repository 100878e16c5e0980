# IPv4 reassembly: order, overlap and duplicate policy (first copy wins), timeouts and caps.
import micropython
from iface_harness import OUR_IP, PEER_IP, UDP, csum, field16, fragment, ipv4
from netkernel.reasm import Reassembler


def datagram(n, ident=0x100, proto=UDP, seed=0, src=PEER_IP):
    payload = bytes((i * 7 + seed) & 0xFF for i in range(n))
    return ipv4(payload, src=src, dst=OUR_IP, proto=proto, ident=ident), payload


def offer(r, frag, now=0):
    """Feed one fragment (an IPv4 packet) from a frame-sized buffer; the completed slot or -1."""
    buf = bytearray(1536)
    buf[14:14 + len(frag)] = frag
    ihl = (frag[0] & 0x0F) * 4
    return r.input(buf, 14, ihl, len(frag), now)


def delivered(r, slot):
    """(header, payload) of a completed datagram, and release it."""
    b = r.base[slot]
    total = field16(r.pool, b + 2)
    out = bytes(r.pool[b:b + total])
    r.release(slot)
    return out[:20], out[20:]


def check_header(hdr, packet):
    assert csum(hdr) == 0
    assert hdr[0] == 0x45 and field16(hdr, 2) == len(packet)
    assert field16(hdr, 6) == 0                          # whole: no MF, offset 0
    assert hdr[9] == packet[9] and hdr[12:20] == packet[12:20] and hdr[4:6] == packet[4:6]


def test_in_order():
    r = Reassembler(4, 16384, 15000)
    pkt, payload = datagram(3000)
    frags = fragment(pkt, 1480)
    assert offer(r, frags[0]) < 0 and offer(r, frags[1]) < 0
    slot = offer(r, frags[2])
    assert slot >= 0
    hdr, data = delivered(r, slot)
    assert data == payload
    check_header(hdr, pkt)
    assert r.used_bytes() == 0 and r.in_progress() == 0 and r.reassembled == 1


def test_out_of_order_and_last_first():
    r = Reassembler(4, 16384, 15000)
    pkt, payload = datagram(5000)
    frags = fragment(pkt, 1000)
    order = [4, 0, 3, 1, 2]
    slot = -1
    for k in order:
        slot = offer(r, frags[k])
    assert slot >= 0
    assert delivered(r, slot)[1] == payload


def test_duplicates_are_ignored():
    r = Reassembler(4, 16384, 15000)
    pkt, payload = datagram(2000)
    a, b = fragment(pkt, 1480)
    assert offer(r, a) < 0 and offer(r, a) < 0
    slot = offer(r, b)
    assert delivered(r, slot)[1] == payload
    assert offer(r, b) < 0                   # a late duplicate starts a datagram that times out
    assert r.overlaps == 1 and r.in_progress() == 1


def test_overlap_keeps_the_first_copy():
    r = Reassembler(4, 16384, 15000)
    payload = bytes(range(1, 49))
    # [0,24) first, then a forged [16,40) with different bytes, then [40,48) last.
    first = ipv4(payload[:24], proto=UDP, ident=5, flags=0x2000, offset=0)
    forged = ipv4(b"\xee" * 24, proto=UDP, ident=5, flags=0x2000, offset=16)
    last = ipv4(payload[40:48], proto=UDP, ident=5, offset=40)
    assert offer(r, first) < 0
    assert offer(r, forged) < 0
    slot = offer(r, last)
    assert slot >= 0
    data = delivered(r, slot)[1]
    assert data[:24] == payload[:24]                     # not rewritten by the forgery
    assert data[24:40] == b"\xee" * 16                   # the forgery filled only the gap
    assert data[40:] == payload[40:]
    assert r.overlaps == 1


def test_datagrams_are_keyed_by_source_destination_protocol_and_id():
    r = Reassembler(4, 16384, 15000)
    p1, d1 = datagram(2000, ident=1, seed=1)
    p2, d2 = datagram(2000, ident=1, seed=2, proto=1)    # same id, other protocol
    p3, d3 = datagram(2000, ident=1, seed=3, src=bytes([192, 168, 7, 3]))
    f1, f2, f3 = fragment(p1, 1480), fragment(p2, 1480), fragment(p3, 1480)
    for f in (f1[0], f2[0], f3[0]):
        assert offer(r, f) < 0
    assert r.in_progress() == 3
    # Completing the one in the middle of the pool shifts nothing wrongly.
    assert delivered(r, offer(r, f2[1]))[1] == d2
    assert delivered(r, offer(r, f3[1]))[1] == d3
    assert delivered(r, offer(r, f1[1]))[1] == d1


def test_interleaved_growth_moves_regions_intact():
    r = Reassembler(4, 16384, 15000)
    pa, da = datagram(4000, ident=10, seed=5)
    pb, db = datagram(4000, ident=11, seed=9)
    fa, fb = fragment(pa, 1000), fragment(pb, 1000)
    for k in range(3):                       # a and b alternate: a grows under b
        offer(r, fa[k])
        offer(r, fb[k])
    assert delivered(r, offer(r, fa[3]))[1] == da
    assert delivered(r, offer(r, fb[3]))[1] == db


def test_timeout_frees_the_datagram():
    r = Reassembler(4, 16384, 15000)
    pkt, _ = datagram(2000)
    offer(r, fragment(pkt, 1480)[0], now=100)
    assert r.next_deadline(100) == 15000
    assert r.expired(15099) < 0
    s = r.expired(15100)
    assert s >= 0 and r.first_bytes(s) == 1480
    r.time_out(s)
    assert r.in_progress() == 0 and r.timeouts == 1 and r.next_deadline(15100) == -1


def test_first_bytes_zero_without_fragment_zero():
    r = Reassembler(4, 16384, 15000)
    pkt, _ = datagram(2000)
    offer(r, fragment(pkt, 1480)[1])
    assert r.first_bytes(r.expired(20000)) == 0


def test_datagram_count_cap_evicts_the_oldest():
    r = Reassembler(2, 16384, 15000)
    pkts = [datagram(2000, ident=k, seed=k) for k in range(3)]
    frags = [fragment(p, 1480) for p, _ in pkts]
    offer(r, frags[0][0], now=0)
    offer(r, frags[1][0], now=1)
    offer(r, frags[2][0], now=2)             # table full: the oldest (0) goes
    assert r.evicted == 1 and r.in_progress() == 2
    assert offer(r, frags[0][1]) < 0         # 0 is gone: its tail starts a new datagram
    assert r.evicted == 2
    assert delivered(r, offer(r, frags[2][1]))[1] == pkts[2][1]


def test_byte_cap_evicts_others_then_refuses():
    r = Reassembler(4, 3100, 15000)
    pa, _ = datagram(1480 * 2, ident=1)
    pb, db = datagram(2900, ident=2)
    fa, fb = fragment(pa, 1480), fragment(pb, 1480)
    offer(r, fa[0], now=0)
    offer(r, fb[0], now=1)
    assert r.used_bytes() == 2 * (20 + 1480)
    slot = offer(r, fb[1], now=2)            # b needs 2920: a is evicted to make room
    assert r.evicted == 1 and delivered(r, slot)[1] == db
    big, _ = datagram(4000, ident=3)
    fbig = fragment(big, 1480)
    offer(r, fbig[0])
    assert offer(r, fbig[2]) < 0             # would need 4020 > 3100 bytes even alone
    assert r.no_space == 1 and r.in_progress() == 0 and r.used_bytes() == 0


def test_datagram_past_65535_is_refused():
    r = Reassembler(4, 16384, 15000)
    offer(r, ipv4(bytes(1480), proto=UDP, ident=7, flags=0x2000))   # fragment 0
    tail = ipv4(bytes(16), proto=UDP, ident=7, offset=65520)
    assert offer(r, tail) < 0                # 20 + 65520 + 16 > 65535: ping of death
    assert r.too_big == 1 and r.in_progress() == 0
    edge = ipv4(bytes(3), proto=UDP, ident=8, offset=65512)
    assert offer(r, edge) < 0 and r.too_big == 1      # 20 + 65512 + 3 = 65535 is allowed...
    assert r.no_space == 1                            # ...but not in a 16 KB pool
    edge = ipv4(bytes(4), proto=UDP, ident=8, offset=65512)
    assert offer(r, edge) < 0 and r.too_big == 2      # 20 + 65512 + 4 = 65536


def test_bad_fragments_are_refused():
    r = Reassembler(4, 16384, 15000)
    odd = ipv4(bytes(13), proto=UDP, ident=9, flags=0x2000)     # MF with 13 bytes
    assert offer(r, odd) < 0 and r.bad_fragment == 1 and r.in_progress() == 0
    pkt, _ = datagram(3000, ident=10)
    f = fragment(pkt, 1480)
    offer(r, f[2])                                              # last: end is 3008
    short_last = ipv4(bytes(8), proto=UDP, ident=10, offset=1480, flags=0)
    assert offer(r, short_last) < 0                             # a second, different end
    assert r.bad_fragment == 2 and r.in_progress() == 0
    offer(r, f[1])
    beyond = ipv4(bytes(8), proto=UDP, ident=10, offset=0, flags=0)
    assert offer(r, beyond) < 0                                 # "last" ends before f[1]
    assert r.bad_fragment == 3


def test_too_many_holes_drops_the_datagram():
    r = Reassembler(1, 16384, 15000)
    pkt, _ = datagram(8 * 40)
    pieces = fragment(pkt, 8)
    for k in range(1, 16, 2):                # every other 8-byte piece: the 9th hole fails
        offer(r, pieces[k])
    assert r.too_many_holes == 1 and r.in_progress() == 0


def test_reassembly_allocates_nothing():
    r = Reassembler(4, 16384, 15000)
    pkt, _ = datagram(3000)
    frames = []
    for f in fragment(pkt, 1480):
        b = bytearray(1536)
        b[14:14 + len(f)] = f
        frames.append((b, len(f)))
    for b, n in frames:                      # warm up
        s = r.input(b, 14, 20, n, 0)
    r.release(s)
    b0, n0 = frames[0]
    b1, n1 = frames[1]
    b2, n2 = frames[2]
    micropython.heap_lock()
    try:
        r.input(b2, 14, 20, n2, 1)
        r.input(b0, 14, 20, n0, 1)
        s = r.input(b1, 14, 20, n1, 1)
        r.release(s)
        r.input(b0, 14, 20, n0, 2)
        s = r.expired(20000)
        r.first_bytes(s)
        r.time_out(s)
    finally:
        micropython.heap_unlock()
    assert r.reassembled == 2 and r.timeouts == 1
