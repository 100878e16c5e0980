# The classifier program: op codes and flow keys of golden frames, malformed frames, program
# validation, and the hash functions (RSS verification vector, symmetry).
from netkernel.dispatcher import steering as dp
from test_dispatch_frames import (
    ARP_REQ,
    FRAG0,
    FRAG1,
    FRAG2,
    ICMP_ECHO,
    IP_OPTS_UDP,
    OUR_IP,
    PEER_IP,
    TCP_DATA,
    TCP_SYN,
    UDP,
    frame_buffer,
)


def classify(frame, d=None):
    d = d or dp.Dispatcher(2, OUR_IP)
    buf, n = frame_buffer(frame)
    return d.classify(buf, n), bytes(d.key), d


def key(src, dst, a, b, proto):
    return bytes(src) + bytes(dst) + bytes((a >> 8, a & 0xFF, b >> 8, b & 0xFF, proto))


def test_tcp_syn():
    op, k, _ = classify(TCP_SYN)
    assert op == dp.OP_TCP | dp.OP_SYN | (5 << 8), hex(op)
    assert k == key(PEER_IP, OUR_IP, 40000, 80, 6)


def test_tcp_data_has_payload_no_syn():
    op, k, _ = classify(TCP_DATA)
    assert op == dp.OP_TCP | dp.OP_PAYLOAD | (5 << 8), hex(op)
    assert k == key(PEER_IP, OUR_IP, 40000, 80, 6)


def test_udp():
    op, k, _ = classify(UDP)
    assert op == dp.OP_UDP | dp.OP_PAYLOAD | (5 << 8), hex(op)
    assert k == key(PEER_IP, OUR_IP, 5353, 7, 17)


def test_udp_with_ip_options_and_no_payload():
    op, k, _ = classify(IP_OPTS_UDP)
    assert op == dp.OP_UDP | (6 << 8), hex(op)
    assert k == key(PEER_IP, OUR_IP, 1234, 7, 17)


def test_icmp_echo():
    op, k, _ = classify(ICMP_ECHO)
    assert op == dp.OP_ICMP | dp.OP_PAYLOAD | (5 << 8), hex(op)
    assert k == key(PEER_IP, OUR_IP, 0, 0, 1)


def test_arp_broadcast():
    op, k, _ = classify(ARP_REQ)
    assert op == dp.OP_ARP | dp.OP_BCAST, hex(op)
    assert k == key(PEER_IP, OUR_IP, 0, 0, 0)


def test_fragments_keyed_by_ip_id():
    for frame in (FRAG0, FRAG1, FRAG2):
        op, k, _ = classify(frame)
        assert op == dp.OP_UDP | dp.OP_FRAGMENT | dp.OP_PAYLOAD | (5 << 8), hex(op)
        assert k == key(PEER_IP, OUR_IP, 0x4242, 0, 17), k


def test_ethernet_padding_is_not_payload():
    buf, n = frame_buffer(IP_OPTS_UDP)
    d = dp.Dispatcher(2, OUR_IP)
    assert d.classify(buf, 60) == dp.OP_UDP | (6 << 8)     # padded to the Ethernet minimum


def test_other_ethertype_is_other_not_malformed():
    frame = bytearray(TCP_SYN)
    frame[12:14] = b"\x86\xdd"
    op, _, d = classify(frame)
    assert op == dp.OP_OTHER
    assert d.counters()["malformed"] == 0


def test_malformed_frames_never_raise():
    d = dp.Dispatcher(2, OUR_IP)
    bad = []
    for n in (0, 1, 13, 14, 20, 33, 40, 53):           # truncated TCP SYN
        bad.append(TCP_SYN[:n])
    ihl4 = bytearray(TCP_SYN)
    ihl4[14] = 0x44                                     # IHL < 5
    bad.append(ihl4)
    ihl15 = bytearray(TCP_SYN)
    ihl15[14] = 0x4F                                    # header longer than the frame
    bad.append(ihl15)
    v6 = bytearray(TCP_SYN)
    v6[14] = 0x65                                       # version 6 in an IPv4 frame
    bad.append(v6)
    long_total = bytearray(UDP)
    long_total[16:18] = b"\x05\xdc"                     # total length beyond the frame
    bad.append(long_total)
    short_total = bytearray(UDP)
    short_total[16:18] = b"\x00\x10"                    # total length < header length
    bad.append(short_total)
    bad.append(ARP_REQ[:30])
    for frame in bad:
        buf, n = frame_buffer(frame)
        assert d.classify(buf, n) == dp.OP_OTHER, frame
        d.free_slots = 100
        assert d.steer(buf, n, dp.OP_OTHER) == dp.DROP
    c = d.counters()
    assert c["malformed"] == len(bad), c
    assert c["drop_malformed"] == len(bad), c


def test_bad_programs_are_refused_and_the_old_one_kept():
    d = dp.Dispatcher(2, OUR_IP)
    bad = [
        b"", b"\x01\x00\x00", bytes((99, 0, 0, 0)),
        bytes((dp.JA, 5, 0, 0)),                                  # jumps past the end
        bytes((dp.EXTRACT, 0, 4, 12)),                            # key overflow
        bytes((dp.SETOP | dp.L4, 0, 0, 1)),                       # L4 bit on SETOP
        bytes((dp.SETOP, 0, 1, 0)),                               # op bits beyond 0xFF
        bytes(dp.MAX_PROGRAM + 4),
    ]
    for p in bad:
        try:
            d.set_program(p)
        except ValueError:
            pass
        else:
            raise AssertionError("accepted %r" % p)
    op, _, _ = classify(TCP_SYN, d)
    assert op & dp.OP_PROTO_MASK == dp.OP_TCP


def test_l4_access_before_ihl_is_malformed():
    d = dp.Dispatcher(2, OUR_IP)
    d.set_program(dp.assemble([(dp.LD8 | dp.L4, 0, 0xFF)]))
    op, _, _ = classify(TCP_SYN, d)
    assert op == dp.OP_OTHER and d.counters()["malformed"] == 1


def test_replaced_program_changes_the_key():
    # A host program that keys TCP by source address only (ports left zero).
    d = dp.Dispatcher(2, OUR_IP)
    d.set_program(dp.assemble([
        (dp.LD16, 12, 0xFFFF), (dp.JNE, "end", 0x0800), (dp.IHL,),
        (dp.LD8, 23, 0xFF), (dp.JNE, "end", 6),
        (dp.SETOP, 0, dp.OP_TCP), (dp.EXTRACT, 26, 4, 0), (dp.KEYSET, 12, 6), "end"]))
    op, k, _ = classify(TCP_SYN, d)
    assert op == dp.OP_TCP | (5 << 8)
    assert k == bytes(PEER_IP) + bytes(8) + b"\x06"


def test_toeplitz_matches_rss_verification_vector():
    # Microsoft RSS verification: 66.9.149.187:2794 -> 161.142.100.80:1766 = 0x51ccc178
    k = key((66, 9, 149, 187), (161, 142, 100, 80), 2794, 1766, 6)
    out = bytearray(4)
    dp.toeplitz_hash(k, b"\xff" * 13, dp.RSS_KEY, out)
    assert bytes(out) == b"\x51\xcc\xc1\x78", out


def test_symmetric_toeplitz_and_fold():
    a = key(PEER_IP, OUR_IP, 40000, 80, 6)
    b = key(OUR_IP, PEER_IP, 80, 40000, 6)
    m = b"\xff" * 13
    o1 = bytearray(4)
    o2 = bytearray(4)
    dp.toeplitz_hash(a, m, dp.SYMMETRIC_RSS_KEY, o1)
    dp.toeplitz_hash(b, m, dp.SYMMETRIC_RSS_KEY, o2)
    assert o1 == o2
    dp.toeplitz_hash(b, m, dp.RSS_KEY, o2)
    dp.toeplitz_hash(a, m, dp.RSS_KEY, o1)
    assert o1 != o2                                 # the standard key is not symmetric
    assert dp.fold_hash(a, m) == dp.fold_hash(b, m)
    assert 0 <= dp.fold_hash(a, m) < 65536


def test_hash_mask_selects_fields():
    m = b"\xff" * 8 + b"\x00" * 5                   # addresses only
    a = key(PEER_IP, OUR_IP, 40000, 80, 6)
    b = key(PEER_IP, OUR_IP, 40001, 80, 6)
    assert dp.fold_hash(a, m) == dp.fold_hash(b, m)
    assert dp.fold_hash(a, b"\xff" * 13) != dp.fold_hash(b, b"\xff" * 13)
