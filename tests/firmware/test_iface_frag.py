# Fragmentation out and reassembly in, end to end: a golden fragmented ping, a 3,000-byte
# echo reply, an 8,000-byte UDP datagram (checked against a reference reassembly and by a
# second stack reassembling our own fragments), DF, size limits.
from iface_harness import (
    BCAST_MAC,
    ICMP,
    LIMITED_BCAST,
    OUR_IP,
    PEER_IP,
    TCP,
    UDP,
    csum,
    echo_request,
    eth,
    feed,
    field16,
    fragment,
    ipv4,
    learn,
    make,
    make_peer,
    pseudo,
    reassemble,
    tcp,
    udp,
)

BIG = bytes(i % 251 for i in range(2000))
# scapy: fragment(IP(src=.2, dst=.1, id=0x5151, ttl=64)/ICMP(type=8, id=0x2222, seq=3)/BIG,
#        fragsize=1480), each in Ether(dst=OUR_MAC, src=PEER_MAC). Headers as hex, then BIG.
FRAG_REQ = [
    bytes.fromhex("0200000000010200000000020800450005dc515120004001747cc0a80702c0a80701"
                  "0800899222220003") + BIG[:1472],
    bytes.fromhex("020000000001020000000002080045000224515100b94001977bc0a80702c0a80701")
    + BIG[1472:],
]
# scapy: fragment(IP(src=.1, dst=.2, id=0x4242, ttl=64)/ICMP(type=0, id=0x2222, seq=3)/BIG,
#        fragsize=1480), each in Ether(dst=PEER_MAC, src=OUR_MAC).
FRAG_REP = [
    bytes.fromhex("0200000000020200000000010800450005dc424220004001838bc0a80701c0a80702"
                  "0000919222220003") + BIG[:1472],
    bytes.fromhex("020000000002020000000001080045000224424200b94001a68ac0a80701c0a80702")
    + BIG[1472:],
]


def check_fragments(frames, total_l4, ident=0x4242):
    """Offsets, MF, lengths, header checksums; returns the reference reassembly."""
    packets = [f[14:] for f in frames]
    pos = 0
    for k, p in enumerate(packets):
        assert len(frames[k]) <= 1514
        frag = field16(p, 6)
        assert field16(p, 4) == ident and csum(p[:20]) == 0 and p[8] == 64
        assert (frag & 0x1FFF) * 8 == pos
        last = k == len(packets) - 1
        assert bool(frag & 0x2000) == (not last) and not frag & 0x4000
        n = len(p) - 20
        assert n == (1480 if not last else total_l4 - pos)
        pos += n
    assert pos == total_l4
    return reassemble(packets)


def test_fragmented_echo_request_gets_golden_fragmented_reply():
    _, iface, nic = make()
    learn(iface)
    feed(iface, FRAG_REQ[0])
    assert nic.take() == []
    feed(iface, FRAG_REQ[1])
    assert nic.take() == FRAG_REP
    c = iface.ip_counters()
    assert c["reasm_ok"] == 1 and c["tx_fragmented"] == 1 and c["tx_fragments"] == 2


def test_3000_byte_ping_is_answered_with_fragments_in_any_order():
    data = bytes((i * 13) & 0xFF for i in range(3000))
    request = ipv4(echo_request(0x77, 1, data), ident=0x1111)
    for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0, 1]):
        _, iface, nic = make()
        learn(iface)
        frags = fragment(request, 1480)
        for k in order:
            feed(iface, eth(frags[k]))
        frames = nic.take()
        assert len(frames) == 3
        assert [len(f) for f in frames] == [1514, 1514, 14 + 20 + 48]
        hdr, l4 = check_fragments(frames, 3008)
        assert hdr[12:16] == OUR_IP and hdr[16:20] == PEER_IP and hdr[9] == ICMP
        assert l4[0] == 0 and csum(l4) == 0 and l4[4:8] == request[24:28] and l4[8:] == data


def test_our_fragments_reassemble_in_a_second_stack():
    data = bytes((i * 13) & 0xFF for i in range(3000))
    _, iface, nic = make()
    learn(iface)
    for f in fragment(ipv4(echo_request(9, 9, data), ident=0x1111), 1480):
        feed(iface, eth(f))
    _, peer, _ = make_peer()
    for f in nic.take():
        feed(peer, f)
    assert peer.ip_counters()["reasm_ok"] == 1
    assert peer.icmp_counters()["rx_echo_replies"] == 1   # whole and checksum-correct


def test_8000_byte_udp_datagram_is_fragmented_and_reassembles_exactly():
    stack, iface, nic = make()
    learn(iface)
    payload = bytes((i * 31 + 7) & 0xFF for i in range(8000))
    assert stack.udp.sendto(payload, 0, 8000, PEER_IP, 0, 5555, 4444, 0)
    frames = nic.take()
    assert len(frames) == 6
    hdr, seg = check_fragments(frames, 8008)
    assert field16(seg, 0) == 4444 and field16(seg, 2) == 5555 and field16(seg, 4) == 8008
    assert csum(pseudo(OUR_IP, PEER_IP, UDP, 8008) + seg) == 0
    assert seg[8:] == payload
    # The peer's own stack reassembles and delivers it whole.
    pstack, peer, _ = make_peer()
    got = []
    pstack.udp.bind(5555, lambda b, o, n, s, so, sp, dp, now: got.append(bytes(b[o:o + n])))
    for f in reversed(frames):
        feed(peer, f)
    assert got == [payload]


def test_largest_udp_datagram_65507_bytes():
    stack, iface, nic = make()
    learn(iface)
    payload = bytes((i * 7) & 0xFF for i in range(65507))
    assert stack.udp.sendto(payload, 0, 65507, PEER_IP, 0, 9, 9, 0)
    frames = nic.take()
    assert len(frames) == 45
    hdr, seg = check_fragments(frames, 65515)
    assert csum(pseudo(OUR_IP, PEER_IP, UDP, 65515) + seg) == 0 and seg[8:] == payload
    assert not stack.udp.sendto(payload + b"x", 0, 65508, PEER_IP, 0, 9, 9, 0)
    assert stack.udp.counters()["tx_too_big"] == 1


def test_fragmented_udp_is_delivered_and_echoed_in_fragments():
    stack, iface, nic = make()
    learn(iface)
    u = stack.udp
    u.bind(7, lambda b, o, n, s, so, sp, dp, now: u.sendto(b, o, n, s, so, sp, dp, now))
    payload = bytes((i * 3) & 0xFF for i in range(4000))
    for f in fragment(ipv4(udp(payload), proto=UDP, ident=0x3333), 1480):
        feed(iface, eth(f))
    frames = nic.take()
    hdr, seg = check_fragments(frames, 4008)
    assert seg[8:] == payload and field16(seg, 0) == 7 and field16(seg, 2) == 40000


def test_fragmented_broadcast_udp_is_delivered_but_never_echo():
    stack, iface, nic = make()
    got = []
    stack.udp.bind(9, lambda b, o, n, s, so, sp, dp, now: got.append(n))
    dgram = ipv4(udp(bytes(2000), dport=9, dst=LIMITED_BCAST), proto=UDP, dst=LIMITED_BCAST)
    for f in fragment(dgram, 1480):
        feed(iface, eth(f, dst=BCAST_MAC))
    assert got == [2000]
    echo = ipv4(echo_request(1, 1, bytes(2000)), dst=LIMITED_BCAST)
    for f in fragment(echo, 1480):
        feed(iface, eth(f, dst=BCAST_MAC))
    assert nic.take() == [] and iface.reasm.in_progress() == 0


def test_fragmented_tcp_segment_reaches_tcp_checksum_verified():
    stack, iface, _ = make()
    seg = tcp(bytes(range(256)) * 8)
    for f in fragment(ipv4(seg, proto=TCP, ident=0x4444), 1480):
        feed(iface, eth(f))
    assert stack.tcp.segments == [(PEER_IP, seg)]


def test_df_refuses_to_fragment():
    _, iface, nic = make()
    learn(iface)
    t = iface.tx
    assert not iface.send_ipv4(UDP, PEER_IP, 0, t, 34, 8, bytes(2000), 0, 2000, 0, df=True)
    assert nic.take() == [] and iface.ip_counters()["tx_df_drop"] == 1
    assert iface.send_ipv4(UDP, PEER_IP, 0, t, 34, 8, bytes(1472), 0, 1472, 0, df=True)
    frame = nic.take()[0]
    assert len(frame) == 1514 and field16(frame, 20) == 0x4000


def test_datagram_over_65535_is_refused():
    _, iface, nic = make()
    learn(iface)
    t = iface.tx
    assert not iface.send_ipv4(UDP, PEER_IP, 0, t, 34, 8, bytes(65508), 0, 65508, 0)
    assert nic.take() == [] and iface.ip_counters()["tx_too_big"] == 1


def test_in_place_payload_longer_than_the_mtu_is_fragmented_correctly():
    _, iface, nic = make()
    learn(iface)
    t = iface.tx
    body = bytes((i * 5) & 0xFF for i in range(1492))     # 8 + 1492 = 1500 > 1480
    t[34:42] = b"\x00\x07\x00\x07\x05\xdc\x00\x00"
    t[42:42 + len(body)] = body
    assert iface.send_ipv4(UDP, PEER_IP, 0, t, 34, 8, t, 42, len(body), 0)
    hdr, seg = check_fragments(nic.take(), 1500)
    assert seg[8:] == body and csum(pseudo(OUR_IP, PEER_IP, UDP, 1500) + seg) == 0


def test_nic_refusing_a_fragment_stops_the_datagram():
    stack, iface, nic = make()
    learn(iface)
    sent = []

    def two_then_full(buf, n):
        if len(sent) == 2:
            return False
        sent.append(n)
        return True
    iface._send = two_then_full
    assert not stack.udp.sendto(bytes(5000), 0, 5000, PEER_IP, 0, 9, 9, 0)
    assert sent == [1514, 1514] and iface.eth_counters()["tx_failed"] == 1
