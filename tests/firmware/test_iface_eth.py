# Ethernet II: demux by ethertype, our MAC and broadcast accepted, everything else counted
# by reason and dropped; padding after the IP datagram; lengths the NIC could get wrong.
from iface_harness import (
    BCAST_MAC,
    OTHER_MAC,
    OUR_MAC,
    PEER_MAC,
    echo_request,
    eth,
    feed,
    ipv4,
    learn,
    make,
)


def ping():
    return ipv4(echo_request(1, 2, b"ethernet"))


def test_frames_for_us_are_demuxed_by_ethertype():
    _, iface, nic = make()
    learn(iface)
    feed(iface, eth(ping()))
    assert len(nic.take()) == 1
    feed(iface, eth(b"\x60" + bytes(59), ethertype=0x86DD))   # IPv6: not ours
    feed(iface, eth(bytes(46), ethertype=0x8100))            # VLAN tag: not handled
    feed(iface, eth(bytes(46), ethertype=0x002E))            # 802.3 length field
    c = iface.eth_counters()
    assert c["unknown_type"] == 3 and c["rx"] == 4
    assert nic.take() == []


def test_other_destinations_are_dropped_by_reason():
    _, iface, nic = make()
    learn(iface)
    feed(iface, eth(ping(), dst=OTHER_MAC))
    feed(iface, eth(ping(), dst=bytes.fromhex("01005e000001")))   # IPv4 multicast MAC
    feed(iface, eth(ping(), dst=bytes.fromhex("333300000001")))   # IPv6 multicast MAC
    feed(iface, eth(ping(), src=bytes.fromhex("010203040506")))  # group address as sender
    c = iface.eth_counters()
    assert (c["not_for_us"], c["multicast"], c["bad_src"]) == (1, 2, 1)
    assert nic.take() == []


def test_short_frames_and_bad_lengths_never_raise():
    _, iface, nic = make()
    frame = eth(ping())
    for n in range(0, 14):
        buf = bytearray(frame[:n]) if n else bytearray()
        iface.input(buf, n, 0)
    assert iface.eth_counters()["too_short"] == 14
    iface.input(bytearray(20), 21, 0)                    # n beyond the buffer
    iface.input(bytearray(20), -5, 0)
    c = iface.eth_counters()
    assert c["bad_length"] == 1 and c["too_short"] == 15
    assert nic.take() == []


def test_ethernet_padding_after_the_datagram_is_ignored():
    _, iface, nic = make()
    learn(iface)
    small = ipv4(echo_request(3, 4, b""))                # 28 bytes: padded to 46 on the wire
    feed(iface, eth(small + b"\xaa" * 18))
    reply = nic.take()[0]
    assert len(reply) == 14 + 28                         # the NIC pads, not us
    assert iface.ip_counters()["truncated"] == 0


def test_broadcast_frames_are_accepted():
    _, iface, nic = make()
    feed(iface, eth(bytes(28), dst=BCAST_MAC, ethertype=0x0806))
    assert iface.arp_counters()["rx"] == 1


def test_our_mac_in_frames_we_send():
    _, iface, nic = make()
    learn(iface)
    feed(iface, eth(ping()))
    frame = nic.take()[0]
    assert frame[0:6] == PEER_MAC and frame[6:12] == OUR_MAC and frame[12:14] == b"\x08\x00"
