# ICMP: golden echo request/reply, destination unreachable (port, protocol), the RFC 1122
# rules for when no error may be sent, the rate limit, time exceeded on reassembly timeout.
from iface_harness import (
    BCAST_MAC,
    FAR_IP,
    GATEWAY,
    GW_MAC,
    ICMP,
    LIMITED_BCAST,
    OTHER_IP,
    OUR_IP,
    PEER_IP,
    SUBNET_BCAST,
    UDP,
    ZERO_IP,
    csum,
    echo_request,
    eth,
    feed,
    field16,
    fragment,
    icmp,
    ipv4,
    learn,
    make,
    udp,
)

# scapy: Ether(dst=OUR_MAC, src=PEER_MAC)/IP(src=192.168.7.2, dst=192.168.7.1, id=0x77,
#        flags=DF, ttl=64)/ICMP(type=8, id=0x1234, seq=1)/bytes(range(56))
ECHO_REQUEST = bytes.fromhex(
    "020000000001020000000002080045000054007740004001aadec0a80702c0a807010800eeb7123400010001"
    "02030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d"
    "2e2f3031323334353637")
# scapy: Ether(dst=PEER_MAC, src=OUR_MAC)/IP(src=192.168.7.1, dst=192.168.7.2, id=0x4242,
#        flags=0, ttl=64)/ICMP(type=0, id=0x1234, seq=1)/bytes(range(56))
ECHO_REPLY = bytes.fromhex(
    "020000000002020000000001080045000054424200004001a913c0a80701c0a807020000f6b7123400010001"
    "02030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d"
    "2e2f3031323334353637")
# scapy: Ether(dst=OUR_MAC, src=PEER_MAC)/IP(src=.2, dst=.1, id=0x7a, ttl=64)
#        /UDP(sport=40001, dport=9999)/b"nobody listens here"
UDP_CLOSED = bytes.fromhex(
    "02000000000102000000000208004500002f007a00004011eaf0c0a80702c0a807019c41270f001b2028"
    "6e6f626f6479206c697374656e732068657265")
# scapy: Ether(dst=PEER_MAC, src=OUR_MAC)/IP(src=.1, dst=.2, id=0x4242, ttl=64)
#        /ICMP(type=3, code=3)/raw(UDP_CLOSED[IP])[:28]
PORT_UNREACH = bytes.fromhex(
    "020000000002020000000001080045000038424200004001a92fc0a80701c0a8070203031969000000004500"
    "002f007a00004011eaf0c0a80702c0a807019c41270f001b2028")
# scapy: Ether(dst=OUR_MAC, src=PEER_MAC)/IP(src=.2, dst=.1, id=0x7b, ttl=64, proto=253)
#        /b"experimental payload"
PROTO_253 = bytes.fromhex(
    "020000000001020000000002080045000028007b000040fdea0ac0a80702c0a807016578706572696d656e74"
    "616c207061796c6f6164")
# scapy: Ether(dst=PEER_MAC, src=OUR_MAC)/IP(src=.1, dst=.2, id=0x4242, ttl=64)
#        /ICMP(type=3, code=2)/raw(PROTO_253[IP])[:28]
PROTO_UNREACH = bytes.fromhex(
    "020000000002020000000001080045000038424200004001a92fc0a80701c0a80702030247510000000045000028"
    "007b000040fdea0ac0a80702c0a807016578706572696d65")


def test_echo_request_gets_golden_reply():
    _, iface, nic = make()
    learn(iface)
    feed(iface, ECHO_REQUEST)
    assert nic.take() == [ECHO_REPLY]
    c = iface.icmp_counters()
    assert c["rx_echo_requests"] == 1 and c["tx_echo_replies"] == 1
    assert iface.ip_id == 0x4243


def test_echo_request_does_not_touch_the_receive_buffer():
    _, iface, nic = make()
    learn(iface)
    buf = bytearray(1536)
    buf[:len(ECHO_REQUEST)] = ECHO_REQUEST
    iface.input(buf, len(ECHO_REQUEST), 0)
    assert bytes(buf[:len(ECHO_REQUEST)]) == ECHO_REQUEST
    assert len(nic.take()) == 1


def test_echo_without_data_and_with_odd_data():
    _, iface, nic = make()
    learn(iface)
    for data in (b"", b"x", b"abc"):
        feed(iface, eth(ipv4(echo_request(7, 9, data))))
        reply = nic.take()[0]
        ip = reply[14:]
        assert field16(ip, 2) == 28 + len(data) and csum(ip[:20]) == 0
        assert ip[20] == 0 and csum(ip[20:]) == 0 and ip[28:] == data


def test_echo_to_broadcast_is_not_answered():
    _, iface, nic = make()
    learn(iface)
    for dst in (LIMITED_BCAST, SUBNET_BCAST):
        feed(iface, eth(ipv4(echo_request(1, 1, b"hi"), dst=dst), dst=BCAST_MAC))
    assert nic.take() == []
    assert iface.ip_counters()["bcast_not_udp"] == 2


def test_bad_icmp_checksum_and_short_message_are_dropped():
    _, iface, nic = make()
    learn(iface)
    bad = bytearray(echo_request(1, 1, b"data"))
    bad[5] ^= 0xFF
    feed(iface, eth(ipv4(bytes(bad))))
    feed(iface, eth(ipv4(b"\x08\x00\xf7\xff")))          # 4 bytes: no room for a header
    assert nic.take() == []
    c = iface.icmp_counters()
    assert c["bad_checksum"] == 1 and c["too_short"] == 1


def test_received_icmp_kinds_are_counted():
    _, iface, nic = make()
    learn(iface)
    feed(iface, eth(ipv4(icmp(0, 0, b"\x00\x01\x00\x01", b"pong"))))
    feed(iface, eth(ipv4(icmp(3, 1, bytes(4), bytes(28)))))
    feed(iface, eth(ipv4(icmp(11, 0, bytes(4), bytes(28)))))
    feed(iface, eth(ipv4(icmp(13, 0, bytes(4), bytes(12)))))
    c = iface.icmp_counters()
    assert (c["rx_echo_replies"], c["rx_unreachable"], c["rx_time_exceeded"],
            c["rx_other"]) == (1, 1, 1, 1)
    assert nic.take() == []


def test_udp_to_closed_port_gets_golden_port_unreachable():
    _, iface, nic = make()
    learn(iface)
    feed(iface, UDP_CLOSED)
    assert nic.take() == [PORT_UNREACH]
    assert iface.icmp_counters()["tx_unreachable"] == 1


def test_port_unreachable_quotes_options_and_eight_bytes():
    _, iface, nic = make()
    learn(iface)
    dgram = ipv4(udp(b"0123456789abcdef", dport=9), proto=UDP, options=b"\x01\x01\x01\x00")
    feed(iface, eth(dgram))
    ip = nic.take()[0][14:]
    assert ip[20:24] == b"\x03\x03" + ip[22:24] and csum(ip[20:]) == 0
    assert ip[28:] == dgram[:24 + 8]                     # 24-byte header + 8 bytes


def test_unknown_protocol_gets_golden_protocol_unreachable():
    _, iface, nic = make()
    learn(iface)
    feed(iface, PROTO_253)
    assert nic.take() == [PROTO_UNREACH]
    assert iface.ip_counters()["unknown_protocol"] == 1


def test_no_errors_about_broadcasts_fragments_errors_or_odd_sources():
    _, iface, nic = make()
    learn(iface)
    closed = udp(b"x", dport=9999, dst=LIMITED_BCAST)
    feed(iface, eth(ipv4(closed, proto=UDP, dst=LIMITED_BCAST), dst=BCAST_MAC))
    closed = udp(b"x", dport=9999, dst=SUBNET_BCAST)
    feed(iface, eth(ipv4(closed, proto=UDP, dst=SUBNET_BCAST), dst=BCAST_MAC))
    # Unknown protocol, but not the first fragment.
    feed(iface, eth(ipv4(bytes(16), proto=253, offset=1480, flags=0x2000)))
    # Source 0.0.0.0: dropped at IPv4 input, so no error either.
    feed(iface, eth(ipv4(udp(b"x", dport=9999, src=ZERO_IP), proto=UDP, src=ZERO_IP)))
    assert nic.take() == []
    assert iface.icmp_counters()["suppressed"] == 1
    assert iface.ip_counters()["bad_src"] == 1


def test_never_an_error_about_an_icmp_error():
    _, iface, nic = make()
    learn(iface)
    err = ipv4(icmp(3, 3, bytes(4), bytes(28)))
    buf = bytearray(err)
    assert not iface._icmp_error(buf, 0, 3, 2, 0)
    echo = bytearray(ipv4(echo_request(1, 1, b"q")))
    assert iface._icmp_error(echo, 0, 3, 2, 0)           # a query may be reported
    assert iface.icmp_counters()["suppressed"] == 1


def test_errors_are_rate_limited_by_a_token_bucket():
    _, iface, nic = make(icmp_rate_per_s=50)
    learn(iface)
    frame = eth(ipv4(udp(b"x", dport=9999), proto=UDP))
    for _ in range(60):
        feed(iface, frame, 1000)
    assert len(nic.take()) == 50
    assert iface.icmp_counters()["rate_limited"] == 10
    for _ in range(10):
        feed(iface, frame, 1100)                         # 100 ms: 5 tokens back
    assert len(nic.take()) == 5
    for _ in range(100):
        feed(iface, frame, 60000)                        # a long pause: full bucket, no more
    assert len(nic.take()) == 50


def test_rate_zero_sends_no_errors_but_still_echoes():
    _, iface, nic = make(icmp_rate_per_s=0)
    learn(iface)
    feed(iface, UDP_CLOSED)
    assert nic.take() == []
    feed(iface, ECHO_REQUEST)
    assert nic.take() == [ECHO_REPLY]


def test_reassembly_timeout_sends_time_exceeded_when_fragment_zero_came():
    _, iface, nic = make()
    learn(iface)
    pkt = ipv4(echo_request(5, 5, bytes(range(256)) * 8), ident=0x999)
    frags = fragment(pkt, 1480)
    feed(iface, eth(frags[0]), 0)
    assert iface.poll_at(0) == 15000
    iface.poll(14999)
    assert nic.take() == []
    iface.poll(15000)
    ip = nic.take()[0][14:]
    assert ip[20] == 11 and ip[21] == 1 and csum(ip[20:]) == 0
    quoted = ip[28:]
    assert len(quoted) == 28 and csum(quoted[:20]) == 0
    assert quoted[4:6] == b"\x09\x99" and quoted[12:20] == PEER_IP + OUR_IP
    assert quoted[20:28] == pkt[20:28]
    assert iface.icmp_counters()["tx_time_exceeded"] == 1
    assert iface.ip_counters()["reasm_timeouts"] == 1
    assert iface.reasm.next_deadline(15000) == -1


def test_reassembly_timeout_is_silent_without_fragment_zero_or_for_icmp_errors():
    _, iface, nic = make()
    learn(iface)
    pkt = ipv4(echo_request(5, 5, bytes(2000)), ident=1)
    feed(iface, eth(fragment(pkt, 1480)[1]), 0)
    err = ipv4(icmp(3, 1, bytes(4), bytes(2000)), ident=2)
    feed(iface, eth(fragment(err, 1480)[0]), 0)
    iface.poll(20000)
    assert nic.take() == []
    assert iface.ip_counters()["reasm_timeouts"] == 2


def test_error_to_an_unresolved_sender_asks_arp_instead():
    _, iface, nic = make()
    far = udp(b"x", dport=9999, src=FAR_IP)
    feed(iface, eth(ipv4(far, proto=UDP, src=FAR_IP), src=GW_MAC))
    sent = nic.take()
    assert len(sent) == 1 and sent[0][12:14] == b"\x08\x06" and sent[0][38:42] == GATEWAY
    assert iface.icmp_counters()["tx_failed"] == 1


def test_errors_use_the_offending_source_as_destination():
    _, iface, nic = make()
    learn(iface, OTHER_IP)
    feed(iface, eth(ipv4(udp(b"x", dport=9999, src=OTHER_IP), proto=UDP, src=OTHER_IP)))
    ip = nic.take()[0][14:]
    assert ip[12:16] == OUR_IP and ip[16:20] == OTHER_IP and ip[9] == ICMP
