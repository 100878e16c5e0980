# IPv4: header validation (every malformed case counted, never an exception), options,
# which destinations we accept, delivery to TCP, and output: headers, IDs, checksums,
# routing (on-link, gateway, broadcast, multicast, no route), in place versus copied.
from iface_harness import (
    BCAST_MAC,
    FAR_IP,
    GATEWAY,
    GW_MAC,
    ICMP,
    LIMITED_BCAST,
    OTHER_IP,
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    SUBNET_BCAST,
    TCP,
    UDP,
    ZERO_IP,
    csum,
    echo_request,
    eth,
    feed,
    field16,
    icmp,
    ipv4,
    learn,
    make,
    pseudo,
    tcp,
    udp,
)

# scapy: Ether(dst=OUR_MAC, src=PEER_MAC)/IP(src=.2, dst=.1, id=0x78, ttl=64,
#        options=[IPOption_RR(routers=[0.0.0.0]*2), IPOption_NOP()])
#        /ICMP(type=8, id=0x99, seq=7)/b"options!"
ECHO_WITH_OPTIONS = bytes.fromhex(
    "020000000001020000000002080048000030007800004001dcf5c0a80702c0a80701070b0400000000000000"
    "0001080030f6009900076f7074696f6e7321")
# scapy: Ether(dst=PEER_MAC, src=OUR_MAC)/IP(src=.1, dst=.2, id=0x4242, ttl=64)
#        /ICMP(type=0, id=0x99, seq=7)/b"options!"     (we do not copy options back)
REPLY_WITHOUT_OPTIONS = bytes.fromhex(
    "020000000002020000000001080045000024424200004001a943c0a80701c0a80702000038f6009900076f70"
    "74696f6e7321")


def ping(**kw):
    return ipv4(echo_request(1, 1, b"ipv4 test"), **kw)


def test_options_are_skipped_by_ihl_golden():
    _, iface, nic = make()
    learn(iface)
    feed(iface, ECHO_WITH_OPTIONS)
    assert nic.take() == [REPLY_WITHOUT_OPTIONS]
    assert iface.ip_counters()["options"] == 1


def test_malformed_headers_are_counted_by_reason():
    _, iface, nic = make()
    learn(iface)
    good = ping()
    bad_sum = bytearray(good)
    bad_sum[10] ^= 1
    cases = [
        (good[:19], "too_short"),
        (ping(version=6), "bad_version"),
        (ping(ihl=4), "bad_ihl"),
        (ping(ihl=0), "bad_ihl"),
        (ping(options=bytes(40))[:40], "too_short"),          # IHL 15, 40 bytes there
        (bytes(bad_sum), "bad_checksum"),
        (ping(total=19), "bad_length"),
        (ping(total=len(good) + 1), "truncated"),
        (ping(total=65535), "truncated"),
        (ping(src=LIMITED_BCAST), "bad_src"),
        (ping(src=SUBNET_BCAST), "bad_src"),
        (ping(src=bytes([224, 0, 0, 1])), "bad_src"),
        (ping(src=bytes([127, 0, 0, 1])), "bad_src"),
        (ping(src=ZERO_IP), "bad_src"),
        (ping(src=OUR_IP), "bad_src"),
        (ping(dst=OTHER_IP), "not_for_us"),
        (ping(dst=bytes([224, 0, 0, 1])), "not_for_us"),
    ]
    for packet, reason in cases:
        before = iface.ip_counters()[reason]
        feed(iface, eth(packet))
        assert iface.ip_counters()[reason] == before + 1, reason
    assert nic.take() == []
    assert iface.icmp_counters()["rx"] == 0


def test_unicast_ip_in_a_link_broadcast_is_dropped():
    _, iface, nic = make()
    learn(iface)
    feed(iface, eth(ping(), dst=BCAST_MAC))
    assert nic.take() == [] and iface.ip_counters()["l2_bcast_unicast"] == 1


def test_tcp_is_delivered_after_its_checksum():
    stack, iface, _ = make()
    seg = tcp(b"hello", dport=80)
    feed(iface, eth(ipv4(seg, proto=TCP)))
    assert stack.tcp.segments == [(PEER_IP, seg)]
    bad = bytearray(seg)
    bad[-1] ^= 0xFF
    feed(iface, eth(ipv4(bytes(bad), proto=TCP)))
    feed(iface, eth(ipv4(seg[:19], proto=TCP)))
    feed(iface, eth(ipv4(seg, proto=TCP, dst=SUBNET_BCAST), dst=BCAST_MAC))
    assert len(stack.tcp.segments) == 1
    c = iface.ip_counters()
    assert c["tcp_bad_checksum"] == 1 and c["tcp_too_short"] == 1 and c["bcast_not_udp"] == 1


def test_tcp_with_ip_options_gets_offsets_past_them():
    stack, iface, _ = make()
    got = []

    class Tcp:
        def input(self, buf, ip_off, tcp_off, tcp_len, now):
            got.append((ip_off, tcp_off, tcp_len))
    stack.tcp = Tcp()
    feed(iface, eth(ipv4(tcp(b"xy"), proto=TCP, options=b"\x01\x01\x01\x01")))
    assert got == [(14, 38, 22)]


def test_mutated_frames_never_raise():
    stack, iface, nic = make()
    learn(iface)
    stack.udp.bind(7, lambda *a: None)
    seeds = [eth(ping()), eth(ipv4(udp(b"fuzz"), proto=UDP)), eth(ipv4(tcp(b"z"), proto=TCP)),
             ECHO_WITH_OPTIONS, eth(ipv4(icmp(3, 3, bytes(4), bytes(28)))),
             eth(ipv4(udp(bytes(100)), proto=UDP, flags=0x2000))]
    x = 12345
    for seed in seeds:
        for n in range(len(seed) + 1):                 # every truncation
            buf = bytearray(1536)
            buf[:n] = seed[:n]
            iface.input(buf, n, 0)
        for _ in range(300):                           # random byte flips
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF
            buf = bytearray(1536)
            buf[:len(seed)] = seed
            for _ in range(1 + x % 3):
                x = (x * 1103515245 + 12345) & 0x7FFFFFFF
                buf[14 + x % (len(seed) - 14)] = (x >> 8) & 0xFF
            iface.input(buf, len(seed), 0)
    nic.take()
    iface.poll(100000)


def test_output_header_fields_and_incrementing_id():
    _, iface, nic = make()
    learn(iface)
    t = iface.tx
    for k in range(3):
        t[34:42] = b"\x00\x07\x00\x09\x00\x0c\x00\x00"
        assert iface.send_ipv4(UDP, PEER_IP, 0, t, 34, 8, b"data", 0, 4, 0)
    frames = nic.take()
    for k, f in enumerate(frames):
        ip = f[14:]
        assert ip[0] == 0x45 and ip[1] == 0 and field16(ip, 2) == 32
        assert field16(ip, 4) == 0x4242 + k and field16(ip, 6) == 0 and ip[8] == 64
        assert ip[9] == UDP and ip[12:16] == OUR_IP and ip[16:20] == PEER_IP
        assert csum(ip[:20]) == 0 and csum(pseudo(OUR_IP, PEER_IP, UDP, 12) + ip[20:]) == 0
    iface.ip_id = 0xFFFF
    iface.ip_id_step = 2
    t[34:42] = b"\x00\x07\x00\x09\x00\x0c\x00\x00"
    iface.send_ipv4(UDP, PEER_IP, 0, t, 34, 8, b"data", 0, 4, 0)
    assert field16(nic.take()[0], 18) == 0xFFFF and iface.ip_id == 1


def test_in_place_and_copied_sends_are_identical():
    _, iface, nic = make()
    learn(iface)
    hdr = tcp(b"", sport=80, dport=40000, src=OUR_IP, dst=PEER_IP)
    payload = bytes(range(200))
    t = iface.tx
    iface.ip_id = 1
    assert iface.send_ipv4(TCP, PEER_IP, 0, hdr, 0, 20, payload, 0, 200, 0)
    t[34:54] = hdr
    t[54:254] = payload
    iface.ip_id = 1
    assert iface.send_ipv4(TCP, PEER_IP, 0, t, 34, 20, t, 54, 200, 0)
    a, b = nic.take()
    assert a == b
    ip = a[14:]
    assert csum(pseudo(OUR_IP, PEER_IP, TCP, 220) + ip[20:]) == 0


def test_header_only_and_odd_header_lengths_checksum():
    _, iface, nic = make()
    learn(iface)
    t = iface.tx
    t[34:54] = tcp(b"", src=OUR_IP, dst=PEER_IP)
    assert iface.send_ipv4(TCP, PEER_IP, 0, t, 34, 20, None, 0, 0, 0)
    ip = nic.take()[0][14:]
    assert len(ip) == 40 and csum(pseudo(OUR_IP, PEER_IP, TCP, 20) + ip[20:]) == 0
    # An odd-length header followed by data: the payload's sum is byte-swapped.
    hdr = b"\x08\x00\x00\x00\x00\x01\x00\x02\x41"        # echo header + 1 byte
    assert iface.send_ipv4(ICMP, PEER_IP, 0, hdr, 0, 9, b"BCDEFG", 0, 6, 0)
    ip = nic.take()[0][14:]
    assert ip[20:] == b"\x08\x00" + ip[22:24] + b"\x00\x01\x00\x02ABCDEFG"
    assert csum(ip[20:]) == 0


def test_next_hop_choice():
    _, iface, nic = make()
    learn(iface, PEER_IP, PEER_MAC)
    learn(iface, GATEWAY, GW_MAC)
    t = iface.tx
    cases = [
        (PEER_IP, PEER_MAC),
        (FAR_IP, GW_MAC),
        (LIMITED_BCAST, BCAST_MAC),
        (SUBNET_BCAST, BCAST_MAC),
        (bytes([239, 129, 2, 3]), bytes.fromhex("01005e010203")),
    ]
    for dst, mac in cases:
        t[34:42] = b"\x00\x07\x00\x09\x00\x08\x00\x00"
        assert iface.send_ipv4(UDP, dst, 0, t, 34, 8, None, 0, 0, 0)
        f = nic.take()[0]
        assert f[0:6] == mac and f[6:12] == OUR_MAC and f[30:34] == dst
    for dst in (OUR_IP, bytes([127, 0, 0, 1]), ZERO_IP, bytes([240, 0, 0, 1])):
        assert not iface.send_ipv4(UDP, dst, 0, t, 34, 8, None, 0, 0, 0)
    assert nic.take() == [] and iface.ip_counters()["tx_no_route"] == 4


def test_no_gateway_means_no_route_off_link():
    _, iface, nic = make(gateway=ZERO_IP)
    t = iface.tx
    assert not iface.send_ipv4(UDP, FAR_IP, 0, t, 34, 8, None, 0, 0, 0)
    assert nic.take() == [] and iface.ip_counters()["tx_no_route"] == 1


def test_prefix_sizes():
    _, iface, _ = make(prefix=20)
    assert iface.netmask == bytearray([255, 255, 240, 0])
    _, iface, nic = make(prefix=32, gateway=GATEWAY)
    learn(iface, GATEWAY, GW_MAC)
    t = iface.tx
    assert iface.send_ipv4(UDP, PEER_IP, 0, t, 34, 8, None, 0, 0, 0)   # /32: all via gateway
    assert nic.take()[0][0:6] == GW_MAC
    _, iface, _ = make(prefix=31)
    assert iface._dst_kind(bytes([192, 168, 7, 1]), 0) == 1          # no subnet broadcast
    assert iface._dst_kind(bytes([192, 168, 7, 255]), 0) == 0


def test_subnet_broadcast_and_limited_broadcast_are_accepted_for_udp():
    stack, iface, _ = make()
    got = []
    stack.udp.bind(520, lambda b, o, n, s, so, sp, dp, now: got.append(dp))
    for dst in (LIMITED_BCAST, SUBNET_BCAST):
        feed(iface, eth(ipv4(udp(b"rip", dport=520, dst=dst), proto=UDP, dst=dst),
                        dst=BCAST_MAC))
    assert got == [520, 520]


def test_poll_at_is_minus_one_when_idle():
    _, iface, _ = make()
    assert iface.poll_at(0) == -1
    iface.poll(0)
