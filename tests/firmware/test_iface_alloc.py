# Nothing on the per-packet path allocates: with the heap locked, input() of an ICMP echo
# request, an ARP request and a UDP datagram to a bound port, a TCP segment, fragments being
# reassembled and answered, and send_ipv4 of a TCP-sized segment in place all run without a
# MemoryError.
import micropython
from iface_harness import (
    OUR_IP,
    PEER_IP,
    PEER_MAC,
    TCP,
    UDP,
    ZERO_MAC,
    CountingTcp,
    QuietNic,
    arp,
    echo_request,
    eth,
    fragment,
    ipv4,
    learn,
    make,
    tcp,
    udp,
)


class Sink:
    """A UDP handler that allocates nothing."""

    def __init__(self):
        self.n = 0
        self.bytes = 0

    def handler(self, buf, data_off, data_len, src, src_off, src_port, dst_port, now):
        self.n += 1
        self.bytes += data_len


def frame_buffer(frame):
    buf = bytearray(1536)
    buf[:len(frame)] = frame
    return buf, len(frame)


def test_hot_paths_do_not_allocate():
    nic = QuietNic()
    stack, iface, _ = make(nic=nic)
    learn(iface)
    stack.tcp = CountingTcp()
    sink = Sink()
    stack.udp.bind(9, sink.handler)      # the bound method is made once, here
    frames = [
        frame_buffer(eth(ipv4(echo_request(1, 1, bytes(56))))),
        frame_buffer(arp(1, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP)),
        frame_buffer(eth(ipv4(udp(bytes(100), dport=9), proto=UDP))),
        frame_buffer(eth(ipv4(tcp(bytes(1000)), proto=TCP))),
        frame_buffer(eth(ipv4(udp(b"closed", dport=9999), proto=UDP))),
    ]
    frags = [frame_buffer(eth(f))
             for f in fragment(ipv4(echo_request(2, 2, bytes(3000)), ident=5), 1480)]
    seg = tcp(bytes(1460), sport=80, dport=40000, src=OUR_IP, dst=PEER_IP)
    t = iface.tx
    for buf, n in frames + frags:                      # warm up every path once
        iface.input(buf, n, 0)
    t[34:34 + len(seg)] = seg
    iface.send_ipv4(TCP, PEER_IP, 0, t, 34, 20, t, 54, 1460, 0)
    sent = nic.frames
    f0, f1, f2, f3, f4 = frames
    g0, g1, g2 = frags
    micropython.heap_lock()
    try:
        for now in (10, 20):
            iface.input(f0[0], f0[1], now)             # ICMP echo request -> reply
            iface.input(f1[0], f1[1], now)             # ARP request -> reply
            iface.input(f2[0], f2[1], now)             # UDP to a bound port
            iface.input(f3[0], f3[1], now)             # TCP (checksum verified, handed on)
            iface.input(f4[0], f4[1], now)             # UDP to a closed port -> ICMP error
            iface.input(g2[0], g2[1], now)             # fragments, out of order ...
            iface.input(g0[0], g0[1], now)
            iface.input(g1[0], g1[1], now)             # ... reassembled, answered in 3
            iface.send_ipv4(TCP, PEER_IP, 0, t, 34, 20, t, 54, 1460, now)
            iface.poll(now)
            iface.poll_at(now)
    finally:
        micropython.heap_unlock()
    assert nic.frames - sent == 2 * (1 + 1 + 1 + 3 + 1)
    assert sink.n == 3 and stack.tcp.segments == 3
    assert iface.icmp_counters()["tx_echo_replies"] == 6
