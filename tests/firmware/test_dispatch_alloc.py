# The per-frame path allocates nothing: classify + steer of TCP/UDP/ICMP/ARP/fragment frames
# (new flows, known flows, redirect, RED drops, both hashes), core_for, owner_of,
# flow_closed. The heap is locked while they run, so any object they made would raise
# MemoryError. (A bytecode function whose locals and stack pass 11 words takes its frame from
# the heap for the call, or from the C stack while the heap is locked: that is the VM's own
# and not counted here; README, "Frozen firmware".)
import array

import micropython
from netkernel.dispatcher import steering as dp
from test_dispatch_frames import (
    ACK,
    ARP_REQ,
    FRAG0,
    FRAG1,
    FRAG2,
    ICMP_ECHO,
    OUR_IP,
    PSH,
    SYN,
    TCP_DATA,
    TCP_SYN,
    UDP,
    frame_buffer,
    peer,
    tcp,
)


def frames():
    out = [frame_buffer(f) for f in (TCP_SYN, TCP_DATA, UDP, ICMP_ECHO, ARP_REQ, FRAG0, FRAG1,
                                     FRAG2, TCP_SYN[:30])]
    for i in range(40):                                  # new flows: the table fills, evicts
        out.append(frame_buffer(tcp(peer(i), OUR_IP, 20000 + i, 80, SYN)))
        out.append(frame_buffer(tcp(peer(i), OUR_IP, 20000 + i, 80, ACK | PSH, b"data")))
    return out


@micropython.native
def run(d, batch, depths_list, rounds, remote):
    """Steer every frame under every depth vector; returns the frames steered."""
    count = 0
    r = 0
    now = 1000
    while r < rounds:
        i = 0
        while i < len(batch):
            fb = batch[i]
            buf = fb[0]
            n = fb[1]
            j = 0
            while j < len(depths_list):
                op = d.classify(buf, n)
                depths = depths_list[j]
                d.now = now
                d.ring_idx[0][0] = depths[0]    # the rings' heads; tails stay 0
                d.ring_idx[1][0] = depths[1]
                d.free_slots = 40 - j * 9
                d.steer(buf, n, op)
                count += 1
                j += 1
            i += 1
        d.core_for(remote, 0, OUR_IP, 0, 6, 80, 40000 + r)
        d.owner_of(remote, 0, OUR_IP, 0, 6, 40000, 80)
        d.flow_closed(6, remote, 0, OUR_IP, 0, 40000, 80)
        now += 7
        r += 1
    return count


def check(d):
    batch = frames()
    depths_list = [array.array("i", [0, 0]), array.array("i", [20, 2]),
                   array.array("i", [28, 29]), array.array("i", [32, 32])]
    remote = bytes((10, 0, 0, 2))
    run(d, batch, depths_list, 2, remote)                        # warm up (first calls, caches)
    micropython.heap_lock()
    try:
        count = run(d, batch, depths_list, 5, remote)
    finally:
        micropython.heap_unlock()
    c = d.counters()
    assert count > 1000
    assert c["drop_red"] and c["drop_ring_full"] and c["redirects"] and c["evictions"], c


def test_per_frame_path_does_not_allocate_fold():
    check(dp.Dispatcher(2, OUR_IP, flow_capacity=32))


def test_per_frame_path_does_not_allocate_toeplitz_with_rules():
    d = dp.Dispatcher(2, OUR_IP, flow_capacity=32)
    d.set_hash(algorithm="toeplitz", mask=b"\xff" * 12 + b"\x00")
    d.add_rule(bytes((10, 0, 0, 2, 10, 0, 0, 1, 0x9c, 0x40, 0, 80, 6)), 1)
    check(d)
