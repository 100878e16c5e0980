# UDP: bind/unbind, golden datagram in and echo out, checksums (verify when present, always
# send one), lengths, broadcast delivery, send limits.
import errno

from fwtest import raises
from iface_harness import (
    BCAST_MAC,
    LIMITED_BCAST,
    OUR_IP,
    PEER_IP,
    SUBNET_BCAST,
    UDP,
    be16,
    csum,
    eth,
    feed,
    field16,
    ipv4,
    learn,
    make,
    pseudo,
    udp,
)

# scapy: Ether(dst=OUR_MAC, src=PEER_MAC)/IP(src=192.168.7.2, dst=192.168.7.1, id=0x79, ttl=64)
#        /UDP(sport=40000, dport=7)/b"hello twinstack"
UDP_IN = bytes.fromhex(
    "02000000000102000000000208004500002b007900004011eaf5c0a80702c0a807019c4000070017727468656c"
    "6c6f207477696e737461636b")
# scapy: Ether(dst=PEER_MAC, src=OUR_MAC)/IP(src=192.168.7.1, dst=192.168.7.2, id=0x4242,
#        ttl=64)/UDP(sport=7, dport=40000)/b"hello twinstack"
UDP_OUT = bytes.fromhex(
    "02000000000202000000000108004500002b424200004011a92cc0a80701c0a8070200079c400017727468656c"
    "6c6f207477696e737461636b")


class Recorder:
    def __init__(self):
        self.got = []

    def __call__(self, buf, data_off, data_len, src, src_off, src_port, dst_port, now):
        self.got.append((bytes(buf[data_off:data_off + data_len]),
                         bytes(src[src_off:src_off + 4]), src_port, dst_port, now))


def echo_server(stack, port=7):
    udp_layer = stack.udp

    def echo(buf, data_off, data_len, src, src_off, src_port, dst_port, now):
        udp_layer.sendto(buf, data_off, data_len, src, src_off, src_port, dst_port, now)
    udp_layer.bind(port, echo)


def test_golden_datagram_is_echoed_byte_exact():
    stack, iface, nic = make()
    learn(iface)
    echo_server(stack)
    feed(iface, UDP_IN)
    assert nic.take() == [UDP_OUT]
    c = stack.udp.counters()
    assert c["rx_datagrams"] == 1 and c["tx_datagrams"] == 1


def test_handler_gets_payload_source_and_ports():
    stack, iface, nic = make()
    rec = Recorder()
    stack.udp.bind(5000, rec)
    feed(iface, eth(ipv4(udp(b"payload", sport=1234, dport=5000), proto=UDP)), 77)
    assert rec.got == [(b"payload", PEER_IP, 1234, 5000, 77)]


def test_bind_twice_is_eaddrinuse_and_unbind_frees_the_port():
    stack, iface, nic = make()
    stack.udp.bind(7, Recorder())
    e = raises(OSError, stack.udp.bind, 7, Recorder())
    assert e.args[0] == errno.EADDRINUSE
    raises(ValueError, stack.udp.bind, 0, Recorder())
    raises(ValueError, stack.udp.bind, 65536, Recorder())
    stack.udp.unbind(7)
    stack.udp.unbind(7)                                  # unbinding twice is harmless
    assert not stack.udp.bound(7)
    learn(iface)
    feed(iface, UDP_IN)
    assert nic.take()[0][34] == 3                        # now: port unreachable
    assert stack.udp.counters()["rx_no_port"] == 1


def test_zero_checksum_means_none_and_is_accepted():
    stack, iface, _ = make()
    rec = Recorder()
    stack.udp.bind(7, rec)
    feed(iface, eth(ipv4(udp(b"no sum", with_checksum=False), proto=UDP)))
    assert rec.got[0][0] == b"no sum"


def test_bad_checksum_is_counted_and_dropped():
    stack, iface, nic = make()
    rec = Recorder()
    stack.udp.bind(7, rec)
    seg = bytearray(udp(b"corrupt me"))
    seg[9] ^= 0x40
    feed(iface, eth(ipv4(bytes(seg), proto=UDP)))
    assert rec.got == [] and nic.take() == []
    assert iface.ip_counters()["udp_bad_checksum"] == 1


def test_lengths_are_checked_against_the_ip_payload():
    stack, iface, nic = make()
    learn(iface)
    rec = Recorder()
    stack.udp.bind(7, rec)
    feed(iface, eth(ipv4(udp(b"abc", length=50, with_checksum=False), proto=UDP)))  # > IP
    feed(iface, eth(ipv4(udp(b"abc", length=4, with_checksum=False), proto=UDP)))   # < 8
    feed(iface, eth(ipv4(b"\x9c\x40\x00\x07", proto=UDP)))                          # 4 bytes
    assert rec.got == [] and nic.take() == []            # malformed is not "port closed"
    c = stack.udp.counters()
    assert c["rx_bad_length"] == 2 and c["rx_too_short"] == 1


def test_shorter_udp_length_trims_trailing_bytes():
    stack, iface, _ = make()
    rec = Recorder()
    stack.udp.bind(7, rec)
    seg = udp(b"abcd") + b"trailing junk"                # UDP length says 12
    feed(iface, eth(ipv4(seg, proto=UDP)))
    assert rec.got[0][0] == b"abcd"


def test_broadcasts_reach_a_bound_port():
    stack, iface, nic = make()
    rec = Recorder()
    stack.udp.bind(67, rec)
    for dst in (LIMITED_BCAST, SUBNET_BCAST):
        feed(iface, eth(ipv4(udp(b"dhcp?", dport=67, dst=dst), proto=UDP, dst=dst),
                        dst=BCAST_MAC))
    assert len(rec.got) == 2 and nic.take() == []


def test_sendto_always_sets_a_checksum():
    stack, iface, nic = make()
    learn(iface)
    # A 2-byte payload chosen so the computed checksum is 0: it must go out as 0xFFFF.
    hdr = be16(7) + be16(9) + be16(10) + b"\x00\x00"
    s = 0xFFFF & ~csum(pseudo(OUR_IP, PEER_IP, UDP, 10) + hdr + b"\x00\x00")
    v = (0xFFFF - s) & 0xFFFF
    payload = be16(v)
    assert csum(pseudo(OUR_IP, PEER_IP, UDP, 10) + hdr + payload) == 0
    assert stack.udp.sendto(payload, 0, 2, PEER_IP, 0, 9, 7, 0)
    frame = nic.take()[0]
    assert field16(frame, 40) == 0xFFFF
    for n in (0, 1, 100):
        assert stack.udp.sendto(bytes(range(n)), 0, n, PEER_IP, 0, 9, 7, 0)
        seg = nic.take()[0][34:]
        assert field16(seg, 4) == 8 + n and seg[8:] == bytes(range(n))
        assert csum(pseudo(OUR_IP, PEER_IP, UDP, 8 + n) + seg) == 0


def test_sendto_limits_and_failures_are_counted():
    stack, iface, nic = make()
    assert not stack.udp.sendto(bytes(10), 0, 65508, PEER_IP, 0, 9, 7, 0)
    assert not stack.udp.sendto(b"x", 0, 1, PEER_IP, 0, 9, 7, 0)    # unresolved: ARP asked
    assert nic.take()[0][12:14] == b"\x08\x06"
    c = stack.udp.counters()
    assert c["tx_too_big"] == 1 and c["tx_failed"] == 1


def test_sendto_from_an_offset_and_to_broadcast():
    stack, iface, nic = make()
    data = b"....payload...."
    assert stack.udp.sendto(data, 4, 7, LIMITED_BCAST, 0, 68, 67, 0)
    frame = nic.take()[0]
    assert frame[0:6] == b"\xff" * 6 and frame[42:] == b"payload"
    assert stack.udp.counters()["bound"] == 0
