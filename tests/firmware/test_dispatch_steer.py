# Steering: flows to cores through the flow table, hash and indirection table; fragments,
# ARP, overload redirect, random early discard, rules, core_for()/owner_of()/flow_closed().
import array

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
    icmp,
    ipv4,
    peer,
    tcp,
    udp,
)


def idle(ncores):
    return array.array("i", [0] * ncores)


def steer(d, frame, now=0, depths=None, free=1000):
    buf, n = frame_buffer(frame)
    op = d.classify(buf, n)
    return steer_op(d, buf, n, op, now, depths or idle(d.ncores), free)


def steer_op(d, buf, n, op, now, depths, free):
    """Dispatcher.steer() with the inputs the reader sets."""
    d.now = now
    for k in range(d.ncores):
        d.ring_idx[k][0] = depths[k]      # the ring's head; its tail stays 0

    d.free_slots = free
    return d.steer(buf, n, op)


def flow_spread(d, nflows):
    per = [0] * d.ncores
    for i in range(nflows):
        core = steer(d, tcp(peer(i), OUR_IP, 30000 + i, 80, SYN))
        assert 0 <= core < d.ncores
        # the owner is indirection[hash & 63] of this key
        assert core == d.indirection[dp.fold_hash(d.key, b"\xff" * 13) & 63]
        per[core] += 1
    return per


def test_tcp_flows_spread_over_2_and_4_cores_by_hash():
    for ncores in (2, 4):
        d = dp.Dispatcher(ncores, OUR_IP, balance="hash")
        per = flow_spread(d, 64)
        assert min(per) >= 64 // ncores // 4, per
        assert d.counters()["new_flows"] == 64 and d.counters()["balanced"] == 0


def syn_of(i):
    return tcp(peer(i), OUR_IP, 30000 + i, 80, SYN)


def balanced_spread(d, nflows, first=0):
    per = [0] * d.ncores
    for i in range(first, first + nflows):
        per[steer(d, syn_of(i))] += 1
    return per


def test_a_burst_of_connections_is_spread_by_the_cores_shares_not_by_chance():
    # 16 connections that the hash alone puts all on core 0
    by_hash = dp.Dispatcher(2, OUR_IP, balance="hash")
    on_core_0 = [i for i in range(200) if steer(by_hash, syn_of(i)) == 0][:16]
    assert len(on_core_0) == 16
    d = dp.Dispatcher(2, OUR_IP)
    assert d.balance() == "flows"
    per = [0, 0]
    for i in on_core_0:
        per[steer(d, syn_of(i))] += 1
    assert per == [8, 8] and d.counters()["balanced"] == 8
    assert list(d.flows_table.pinned[:2]) == per
    d4 = dp.Dispatcher(4, OUR_IP)
    assert balanced_spread(d4, 64) == [16] * 4
    # a table that gives core 1 three quarters: it takes new connections until it has
    # three quarters of them (core 0's 8 are its quarter of 32)
    d.set_indirection([0, 1, 1, 1])
    assert balanced_spread(d, 16, 300) == [0, 16]
    assert balanced_spread(d, 8, 400) == [2, 6]


def test_balancing_counts_open_connections_and_moves_none_of_them():
    d = dp.Dispatcher(2, OUR_IP, flow_capacity=64)
    d.set_indirection([0, 1])
    first = [steer(d, tcp(peer(i), OUR_IP, 30000 + i, 80, SYN)) for i in range(8)]
    assert sorted(first) == [0] * 4 + [1] * 4
    # segments of open connections stay where their connection is, whatever the load
    for _ in range(3):
        for i in range(8):
            assert steer(d, tcp(peer(i), OUR_IP, 30000 + i, 80, ACK | PSH, b"x")) == first[i]
    # core 1's connections close: the next four new ones all go to core 1
    for i in range(8):
        if first[i] == 1:
            d.flow_closed(6, OUR_IP, 0, peer(i), 0, 80, 30000 + i)
    assert list(d.flows_table.pinned[:2]) == [4, 0]
    assert balanced_spread(d, 4, 50) == [0, 4]
    # a SYN-ACK answers our own active open: its port hashes to the opener, never moved
    d.set_indirection([0] * 64)
    for i in range(4):
        assert steer(d, tcp(peer(60 + i), OUR_IP, 80, 50000 + i, SYN | ACK)) == 0
    # host rules go first; "hash" turns balancing off
    d.set_balance("hash")
    assert balanced_spread(d, 4, 70) == [4, 0]
    try:
        d.set_balance("random")
        raise AssertionError("a bad balance name was accepted")
    except ValueError:
        pass


def test_indirection_table_decides():
    d = dp.Dispatcher(4, OUR_IP, balance="hash")
    d.set_indirection([3] * 64)
    assert flow_spread(d, 16) == [0, 0, 0, 16]
    # balancing keeps to the cores the table names
    d.set_balance("flows")
    assert balanced_spread(d, 8, 100) == [0, 0, 0, 8]
    d.set_indirection([2, 3])
    assert balanced_spread(d, 8, 200) == [0, 0, 8, 0]


def test_every_segment_of_a_connection_stays_on_its_core():
    d = dp.Dispatcher(2, OUR_IP)
    first = steer(d, TCP_SYN)
    flow = d.flow
    assert flow >= 0
    for _ in range(5):
        assert steer(d, TCP_DATA, now=10) == first
        assert d.flow == flow
    (num, text, owner, packets, nbytes, last_op), = d.flows()
    assert (num, owner, packets) == (flow, first, 6)
    assert nbytes == len(TCP_SYN) + 5 * len(TCP_DATA)
    assert last_op == dp.OP_TCP | dp.OP_PAYLOAD | (5 << 8)
    assert text == "6 10.0.0.2:40000 > 10.0.0.1:80", text


def test_return_flow_of_an_active_open_maps_to_the_same_core():
    for algorithm in ("fold", "toeplitz"):
        d = dp.Dispatcher(4, OUR_IP)
        d.set_hash(algorithm=algorithm)
        for i in range(32):
            # the kernel's SYN goes out OUR_IP:port > peer:80; the reply comes back reversed
            out_core = d.core_for(OUR_IP, 0, peer(i), 0, 6, 50000 + i, 80)
            back = steer(d, tcp(peer(i), OUR_IP, 80, 50000 + i, SYN | ACK))
            assert back == out_core, (algorithm, i)


def test_core_for_agrees_with_steer_and_picks_a_local_port():
    d = dp.Dispatcher(2, OUR_IP, flow_capacity=64)
    remote = bytes((192, 168, 1, 9))
    for want in (0, 1):
        port = 49152
        while d.core_for(remote, 0, OUR_IP, 0, 6, 443, port) != want:
            port += 1
        assert d.owner_of(remote, 0, OUR_IP, 0, 6, 443, port) == -1
        assert steer(d, tcp(remote, OUR_IP, 443, port, SYN | ACK)) == want
        assert d.owner_of(remote, 0, OUR_IP, 0, 6, 443, port) == want
    # core_for honours an existing owner even when the table changed since
    d.set_indirection([1] * 64)
    assert d.core_for(remote, 0, OUR_IP, 0, 6, 443, 49152) == \
        d.owner_of(remote, 0, OUR_IP, 0, 6, 443, 49152)


def test_owners_survive_hash_and_indirection_changes():
    d = dp.Dispatcher(2, OUR_IP)
    frames = [tcp(peer(i), OUR_IP, 30000 + i, 80, SYN) for i in range(32)]
    before = [steer(d, f) for f in frames]
    assert 0 in before and 1 in before
    d.set_indirection([1] * 64)
    d.set_hash(mask=b"\xff" * 8 + bytes(5), algorithm="toeplitz")
    data = [tcp(peer(i), OUR_IP, 30000 + i, 80, ACK | PSH, b"x") for i in range(32)]
    assert [steer(d, f, now=5) for f in data] == before
    # new flows follow the new table
    for i in range(8):
        assert steer(d, tcp(peer(100 + i), OUR_IP, 1000, 80, SYN)) == 1


def test_flow_closed_forgets_the_owner():
    d = dp.Dispatcher(2, OUR_IP)
    core = steer(d, TCP_SYN)
    d.set_indirection([1 - core] * 64)
    # the kernel reports it with local/remote reversed: either direction is accepted
    d.flow_closed(6, OUR_IP, 0, bytes((10, 0, 0, 2)), 0, 80, 40000)
    assert d.flows() == []
    assert steer(d, TCP_SYN) == 1 - core


def test_unknown_tcp_segment_creates_an_entry():
    d = dp.Dispatcher(2, OUR_IP)
    core = steer(d, TCP_DATA)               # mid-connection, e.g. after a restart
    assert d.flow >= 0 and len(d.flows()) == 1
    d.set_indirection([1 - core] * 64)
    assert steer(d, TCP_DATA) == core


def test_fragments_of_a_datagram_meet_on_one_core():
    for ncores in (2, 4):
        d = dp.Dispatcher(ncores, OUR_IP)
        seen = set()
        for ident in range(1, 64):
            cores = set()
            for f in (FRAG0, FRAG1, FRAG2):
                f = bytearray(f)
                f[18] = ident >> 8
                f[19] = ident & 0xFF
                cores.add(steer(d, f))
                assert d.flow == -1                 # fragments are not flow owners
            assert len(cores) == 1, cores
            seen |= cores
        assert len(seen) == ncores                  # different datagrams spread
        assert d.flows() == []
        assert d.counters()["fragments"] == 63 * 3


def test_arp_goes_to_all_cores():
    d = dp.Dispatcher(2, OUR_IP)
    assert steer(d, ARP_REQ, depths=array.array("i", [32, 32])) == dp.ALL_CORES
    assert d.flow == -1
    assert d.counters()["all_cores"] == 1


def test_overload_redirects_icmp_echo_and_udp_never_tcp():
    d = dp.Dispatcher(2, OUR_IP, ring_capacity=32)      # overload threshold 16
    d.set_indirection([0] * 64)
    busy = array.array("i", [16, 3])
    assert steer(d, ICMP_ECHO, depths=busy) == 1
    assert steer(d, UDP, depths=busy) == 1
    udp_owner = d.owner_of(bytes((10, 0, 0, 2)), 0, OUR_IP, 0, 17, 5353, 7)
    assert udp_owner == 0               # the recorded owner stays the hash owner
    assert steer(d, icmp(bytes((10, 0, 0, 3)), OUR_IP, 0), depths=busy) == 0   # echo reply
    assert steer(d, TCP_SYN, depths=busy) == 0
    assert steer(d, TCP_DATA, depths=array.array("i", [32, 0])) == dp.DROP    # full: dropped
    below = array.array("i", [15, 0])
    assert steer(d, ICMP_ECHO, depths=below) == 0
    assert steer(d, UDP, depths=below) == 0
    both = array.array("i", [20, 20])                   # no less loaded core: stay
    assert steer(d, UDP, depths=both) == 0
    c = d.counters()
    assert c["redirects"] == 2, c
    assert c["drop_ring_full"] == 1, c


def test_overload_picks_the_least_loaded_of_four():
    d = dp.Dispatcher(4, OUR_IP)
    d.set_indirection([1] * 64)
    assert steer(d, ICMP_ECHO, depths=array.array("i", [9, 20, 4, 7])) == 2


def red_drops(d, depth, frames=1000):
    depths = array.array("i", [depth, depth])
    drops = 0
    for i in range(frames):
        if steer(d, udp(peer(i & 7), OUR_IP, 1000, 7, b"d"), depths=depths) == dp.DROP:
            drops += 1
    return drops


def test_random_early_discard_by_ring_depth():
    d = dp.Dispatcher(2, OUR_IP, ring_capacity=32, red_min=16, red_max=24, overload=99,
                      seed=1234)
    assert red_drops(d, 15) == 0
    assert red_drops(d, 16) == 0                        # probability 0 at red_min
    quarter = red_drops(d, 18)                          # 2/8
    half = red_drops(d, 20)                             # 4/8
    assert 180 <= quarter <= 320, quarter
    assert 420 <= half <= 580, half
    assert red_drops(d, 24) == 1000
    c = d.counters()
    assert c["drop_red"] == quarter + half + 1000 and c["drop_ring_full"] == 0, c
    assert red_drops(d, 32) == 1000
    assert d.counters()["drop_ring_full"] == 1000
    # deterministic: the same seed gives the same drops
    d2 = dp.Dispatcher(2, OUR_IP, ring_capacity=32, red_min=16, red_max=24, overload=99,
                       seed=1234)
    red_drops(d2, 15)
    red_drops(d2, 16)
    assert red_drops(d2, 18) == quarter


def test_random_early_discard_by_packet_memory():
    d = dp.Dispatcher(2, OUR_IP, free_low=8, free_min=0, seed=7)
    drops = 0
    for free in (100, 8):
        for _ in range(200):
            assert steer(d, UDP, free=free) != dp.DROP
    for _ in range(1000):
        if steer(d, UDP, free=4) == dp.DROP:
            drops += 1
    assert 400 <= drops <= 600, drops
    assert steer(d, ARP_REQ, free=0) == dp.DROP
    c = d.counters()
    assert c["drop_no_buffer"] == 1 and c["drop_red"] == drops, c


def test_rules_take_precedence_for_new_flows():
    d = dp.Dispatcher(4, OUR_IP)
    d.set_indirection([0] * 64)
    rule_key = bytes((10, 0, 0, 2, 10, 0, 0, 1, 0x9c, 0x40, 0, 80, 6))   # TCP_SYN's key
    d.add_rule(rule_key, 3)
    assert d.core_for(bytes((10, 0, 0, 2)), 0, OUR_IP, 0, 6, 40000, 80) == 3
    assert steer(d, TCP_SYN) == 3
    assert steer(d, tcp(peer(1), OUR_IP, 1, 80, SYN)) == 0
    assert d.remove_rule(rule_key)
    assert steer(d, TCP_DATA) == 3                      # the flow keeps its owner
    d.flow_closed(6, bytes((10, 0, 0, 2)), 0, OUR_IP, 0, 40000, 80)
    assert steer(d, TCP_SYN) == 0
    assert d.counters()["rule_hits"] == 1


def test_other_ip_protocols_by_hash_and_unknown_ethertypes_dropped():
    d = dp.Dispatcher(2, OUR_IP)
    core = steer(d, ipv4(peer(1), OUR_IP, 47, b"gre!"))     # GRE
    assert 0 <= core < 2 and d.flow == -1
    v6 = bytearray(TCP_SYN)
    v6[12:14] = b"\x86\xdd"
    assert steer(d, v6) == dp.DROP
    assert d.counters()["drop_other"] == 1


def test_idle_udp_flows_expire_tcp_flows_live_longer():
    d = dp.Dispatcher(2, OUR_IP, flow_capacity=8, idle_ms=1000, tcp_idle_ms=50000)
    steer(d, UDP, now=0)
    steer(d, TCP_SYN, now=0)
    for t in range(2000, 2020):                         # each steer looks at one slot
        steer(d, ARP_REQ, now=t)
    assert [f[5] & dp.OP_PROTO_MASK for f in d.flows()] == [dp.OP_TCP]
    for t in range(60000, 60020):
        steer(d, ARP_REQ, now=t)
    assert d.flows() == []
    assert d.counters()["expired"] == 2
