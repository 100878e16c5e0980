# ARP: golden request/reply frames, the neighbour cache (learn, update, expire, replace),
# request rate limiting while resolving, gratuitous ARP, malformed packets.
import time

from iface_harness import (
    BCAST_MAC,
    FAR_IP,
    GATEWAY,
    GW_MAC,
    OTHER_IP,
    OTHER_MAC,
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    UDP,
    ZERO_IP,
    ZERO_MAC,
    arp,
    feed,
    learn,
    make,
)
from netkernel import wire
from netkernel.arp import ArpCache

# scapy: Ether(dst=ff*6, src=PEER_MAC)/ARP(op=1, hwsrc=PEER_MAC, psrc=192.168.7.2,
#        hwdst=00*6, pdst=192.168.7.1)
ARP_REQUEST = bytes.fromhex(
    "ffffffffffff02000000000208060001080006040001020000000002c0a80702000000000000c0a80701")
# scapy: Ether(dst=PEER_MAC, src=OUR_MAC)/ARP(op=2, hwsrc=OUR_MAC, psrc=192.168.7.1,
#        hwdst=PEER_MAC, pdst=192.168.7.2)
ARP_REPLY = bytes.fromhex(
    "02000000000202000000000108060001080006040002020000000001c0a80701020000000002c0a80702")
# scapy: Ether(dst=ff*6, src=OUR_MAC)/ARP(op=1, hwsrc=OUR_MAC, psrc=192.168.7.1,
#        hwdst=00*6, pdst=192.168.7.1)   (gratuitous, request form)
GRATUITOUS = bytes.fromhex(
    "ffffffffffff02000000000108060001080006040001020000000001c0a80701000000000000c0a80701")
# scapy: Ether(dst=ff*6, src=OUR_MAC)/ARP(op=1, hwsrc=OUR_MAC, psrc=192.168.7.1,
#        hwdst=00*6, pdst=192.168.7.9)
REQUEST_FOR_9 = bytes.fromhex(
    "ffffffffffff02000000000108060001080006040001020000000001c0a80701000000000000c0a80709")
IP_9 = bytes([192, 168, 7, 9])


def udp_to(iface, dst, now, nbytes=4):
    """A UDP datagram through send_ipv4 (header in tx), for resolution tests."""
    t = iface.tx
    t[34:42] = b"\x9c\x40\x00\x07\x00\x0c\x00\x00"
    return iface.send_ipv4(UDP, dst, 0, t, 34, 8, b"abcd", 0, nbytes, now)


def test_request_for_us_gets_golden_reply_and_teaches_sender():
    _, iface, nic = make()
    feed(iface, ARP_REQUEST, 5)
    assert nic.take() == [ARP_REPLY]
    i = iface.arp.lookup(PEER_IP, 0, 6)
    assert i >= 0 and iface.arp.macs[6 * i:6 * i + 6] == PEER_MAC
    c = iface.arp_counters()
    assert c["rx_requests"] == 1 and c["tx_replies"] == 1 and c["learned"] == 1


def test_request_for_another_address_is_neither_answered_nor_learned():
    _, iface, nic = make()
    feed(iface, arp(1, PEER_MAC, PEER_IP, ZERO_MAC, OTHER_IP))
    assert nic.take() == []
    assert iface.arp.lookup(PEER_IP, 0, 0) < 0
    assert iface.arp_counters()["rx_requests"] == 1


def test_gratuitous_arp_moves_a_known_neighbour_but_adds_no_one():
    _, iface, nic = make()
    learn(iface, PEER_IP, PEER_MAC)
    feed(iface, arp(1, OTHER_MAC, PEER_IP, ZERO_MAC, PEER_IP), 10)      # PEER moved NIC
    feed(iface, arp(2, OTHER_MAC, OTHER_IP, BCAST_MAC, OTHER_IP), 10)   # reply form, unknown
    i = iface.arp.lookup(PEER_IP, 0, 11)
    assert iface.arp.macs[6 * i:6 * i + 6] == OTHER_MAC
    assert iface.arp.lookup(OTHER_IP, 0, 11) < 0
    assert iface.arp.changed == 1 and nic.take() == []


def test_announce_sends_golden_gratuitous_request():
    _, iface, nic = make()
    assert iface.announce(0)
    assert nic.take() == [GRATUITOUS]
    assert iface.arp_counters()["tx_gratuitous"] == 1


def test_no_announce_without_an_address():
    _, iface, nic = make(ip=ZERO_IP)
    assert not iface.announce(0)
    assert nic.take() == []


def test_resolving_sends_golden_request_and_rate_limits_it():
    _, iface, nic = make(arp_retry_ms=1000)
    assert not udp_to(iface, IP_9, 100)
    assert nic.take() == [REQUEST_FOR_9]
    assert not udp_to(iface, IP_9, 600)       # still waiting: no second request
    assert nic.take() == []
    assert not udp_to(iface, IP_9, 1100)      # retry time passed
    assert nic.take() == [REQUEST_FOR_9]
    c = iface.arp_counters()
    assert c["tx_requests"] == 2 and c["rate_limited"] == 1
    assert iface.ip_counters()["tx_unresolved"] == 3


def test_reply_completes_resolution():
    _, iface, nic = make()
    udp_to(iface, IP_9, 0)
    nic.take()
    feed(iface, arp(2, OTHER_MAC, IP_9, OUR_MAC, OUR_IP, dst=OUR_MAC), 5)
    assert udp_to(iface, IP_9, 6)
    frame = nic.take()[0]
    assert frame[0:6] == OTHER_MAC and frame[6:12] == OUR_MAC and frame[30:34] == IP_9


def test_off_link_destination_resolves_the_gateway():
    _, iface, nic = make()
    assert not udp_to(iface, FAR_IP, 0)
    req = nic.take()[0]
    assert req[38:42] == GATEWAY
    learn(iface, GATEWAY, GW_MAC)
    assert udp_to(iface, FAR_IP, 1)
    frame = nic.take()[0]
    assert frame[0:6] == GW_MAC and frame[30:34] == FAR_IP


def test_entry_expires_after_its_lifetime():
    _, iface, _ = make(arp_lifetime_ms=5000)
    learn(iface, PEER_IP, PEER_MAC, now=1000)
    assert iface.poll_at(1000) == 5000
    assert iface.arp.lookup(PEER_IP, 0, 5999) >= 0
    assert iface.arp.lookup(PEER_IP, 0, 6000) < 0      # dead even before poll() runs
    iface.poll(6000)
    assert iface.arp.entries() == 0 and iface.arp.expired == 1
    assert iface.poll_at(6000) == -1


def test_traffic_from_an_on_link_peer_keeps_its_entry_alive():
    from iface_harness import eth, ipv4, udp
    stack, iface, _ = make(arp_lifetime_ms=5000)
    stack.udp.bind(7, lambda *a: None)
    learn(iface, PEER_IP, PEER_MAC, now=0)
    feed(iface, eth(ipv4(udp(b"x"), proto=UDP)), 4000)
    assert iface.arp.lookup(PEER_IP, 0, 8000) >= 0
    assert iface.arp.updated == 0                        # a plain refresh counts nothing
    feed(iface, eth(ipv4(udp(b"x", src=OTHER_IP), proto=UDP, src=OTHER_IP), src=OTHER_MAC),
         4000)
    i = iface.arp.lookup(OTHER_IP, 0, 8000)              # unknown on-link peer: added
    assert i >= 0 and iface.arp.macs[6 * i:6 * i + 6] == OTHER_MAC
    feed(iface, eth(ipv4(udp(b"x", src=FAR_IP), proto=UDP, src=FAR_IP), src=GW_MAC))
    assert iface.arp.find(FAR_IP, 0) < 0                 # off-link: its MAC is the router's


def test_full_table_replaces_the_least_recently_used():
    cache = ArpCache(3, 60000, 1000)
    ips = [bytes([192, 168, 7, 10 + k]) for k in range(4)]
    for k in range(3):
        cache.update(ips[k], 0, PEER_MAC, 0, k, True)
    cache.lookup(ips[0], 0, 10)              # 0 used recently, so 1 is the oldest now
    cache.update(ips[3], 0, OTHER_MAC, 0, 11, True)
    assert cache.find(ips[1], 0) < 0
    assert cache.find(ips[0], 0) >= 0 and cache.find(ips[2], 0) >= 0
    assert cache.evicted == 1


def test_pending_entries_are_replaced_before_live_ones():
    cache = ArpCache(2, 60000, 1000)
    a, b, c = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), bytes([10, 0, 0, 3])
    cache.update(a, 0, PEER_MAC, 0, 0, True)
    assert cache.request_due(b, 0, 1)
    cache.update(c, 0, OTHER_MAC, 0, 2, True)
    assert cache.lookup(a, 0, 3) >= 0 and cache.lookup(c, 0, 3) >= 0
    assert cache.find(b, 0) < 0 and cache.evicted == 0


def test_cache_works_across_the_ticks_wrap():
    cache = ArpCache(2, 5000, 1000)
    t0 = time.ticks_add(0, -2000)            # 2 s before ticks_ms wraps
    cache.update(PEER_IP, 0, PEER_MAC, 0, t0, True)
    assert cache.lookup(PEER_IP, 0, time.ticks_add(t0, 4999)) >= 0
    assert cache.lookup(PEER_IP, 0, time.ticks_add(t0, 5000)) < 0
    assert cache.request_due(OTHER_IP, 0, t0)
    assert not cache.request_due(OTHER_IP, 0, time.ticks_add(t0, 999))
    assert cache.request_due(OTHER_IP, 0, time.ticks_add(t0, 1000))


def test_probe_is_answered_but_teaches_nothing():
    _, iface, nic = make()
    feed(iface, arp(1, PEER_MAC, ZERO_IP, ZERO_MAC, OUR_IP))
    reply = nic.take()[0]
    assert reply[0:6] == PEER_MAC and reply[21] == 2 and reply[38:42] == ZERO_IP
    assert iface.arp.entries() == 0


def test_off_link_sender_is_not_learned():
    _, iface, nic = make()
    feed(iface, arp(1, PEER_MAC, FAR_IP, ZERO_MAC, OUR_IP))
    assert len(nic.take()) == 1              # answered (harmless), but no entry
    assert iface.arp.entries() == 0


def test_malformed_packets_are_counted_and_dropped():
    _, iface, nic = make()
    good = arp(1, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP)
    cases = [
        (good[:41], "too_short"),
        (arp(1, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP, htype=6), "bad_htype"),
        (arp(1, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP, ptype=0x86DD), "bad_ptype"),
        (arp(1, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP, hlen=8), "bad_hlen"),
        (arp(1, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP, plen=16), "bad_plen"),
        (arp(3, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP), "bad_oper"),
        (arp(0, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP), "bad_oper"),
        (arp(1, BCAST_MAC, PEER_IP, ZERO_MAC, OUR_IP, src=PEER_MAC), "bad_sender"),
        (arp(1, OUR_MAC, PEER_IP, ZERO_MAC, OUR_IP, src=PEER_MAC), "bad_sender"),
        (arp(1, PEER_MAC, OUR_IP, ZERO_MAC, OUR_IP), "conflict"),
    ]
    for frame, reason in cases:
        before = iface.arp_counters()[reason]
        feed(iface, frame)
        assert iface.arp_counters()[reason] == before + 1, reason
    assert nic.take() == [] and iface.arp.entries() == 0
    for n in range(0, 42):                   # every truncation of a good request
        buf = bytearray(1536)
        buf[:n] = good[:n]
        iface.input(buf, n, 0)
    assert nic.take() == []


def test_padded_request_is_answered():
    _, iface, nic = make()
    feed(iface, ARP_REQUEST + bytes(18))     # padded to 60 bytes on the wire
    assert nic.take() == [ARP_REPLY]


def test_failed_nic_send_is_counted():
    _, iface, nic = make()
    nic.accept = False
    feed(iface, ARP_REQUEST)
    assert iface.arp_counters()["tx_replies"] == 0
    assert iface.eth_counters()["tx_failed"] == 1


def test_cache_helpers_allocate_nothing():
    import micropython
    cache = ArpCache(4, 60000, 1000)
    cache.update(PEER_IP, 0, PEER_MAC, 0, 0, True)
    cache.lookup(PEER_IP, 0, 1)
    cache.request_due(OTHER_IP, 0, 1)
    micropython.heap_lock()
    try:
        for now in (2, 3, 2000):
            assert cache.lookup(PEER_IP, 0, now) >= 0
            cache.update(PEER_IP, 0, OTHER_MAC, 0, now, False)
            cache.request_due(OTHER_IP, 0, now)
            cache.expire(now)
            cache.next_deadline(now)
    finally:
        micropython.heap_unlock()
    assert wire.equal(cache.macs, 6 * cache.find(PEER_IP, 0), OTHER_MAC, 0, 6)
