# The interface: Ethernet II, ARP, IPv4 in and out (routing, reassembly, fragmentation), ICMP.
#
# smoltcp's `iface` for one Ethernet port: ingress runs one frame through every layer to
# completion (input), egress builds one datagram in `tx` and hands it to the NIC (send_l4 for
# a transport segment already in `tx`, send_ipv4 for the general case and fragmentation),
# maintenance runs the ARP and reassembly timers (poll / poll_at). Packet layout comes from
# `wire`; the neighbour table lives in `arp`, reassembly in `reasm`.
#
# Rules that hold throughout:
# - Nothing on the packet path allocates: no slices, tuples or f-strings; addresses stay as
#   4 bytes compared with wire.equal; counters are int attributes.
# - input() validates every length and field before using it, so malformed frames are counted
#   by reason and dropped, never an exception. It never writes into the frame it was given
#   (the dispatcher may hand the same frame to both cores).
# - Everything we send is built in `tx` (ARP replies and requests too). A send that fails may
#   leave `tx` overwritten (an ARP request goes out in it), which is fine: the caller keeps
#   its data and builds the segment again when it retries.
# - No frame queue behind an unresolved neighbour (smoltcp's rule): a send sends an ARP
#   request (at most one per address per arp_retry_ms) and returns False; the caller retries.
# - Per-frame functions keep their bytecode frame within 11 words (locals + value stack):
#   MicroPython takes a larger one from the heap on every call.
import time

from micropython import const

from netkernel.arp import ArpCache
from netkernel.reasm import Reassembler
from netkernel.w5500 import FRAME_BUFFER_SIZE
from netkernel.wire import (
    checksum,
    copy,
    earliest,
    equal,
    fill,
    get16,
    masked_equal,
    pseudo_header_sum,
    put16,
    tcp_frame_check,
)

# Packet layout: copies of wire's (const() inlines only within a module).
_ETH_DST = const(0)
_ETH_SRC = const(6)
_ETH_TYPE = const(12)
_ETH_HLEN = const(14)
_ETHERTYPE_IPV4 = const(0x0800)
_ETHERTYPE_ARP = const(0x0806)
_MTU = const(1500)
_ARP_HTYPE = const(0)
_ARP_PTYPE = const(2)
_ARP_HLEN = const(4)
_ARP_PLEN = const(5)
_ARP_OPER = const(6)
_ARP_SHA = const(8)
_ARP_SPA = const(14)
_ARP_THA = const(18)
_ARP_TPA = const(24)
_ARP_LEN = const(28)
_ARP_HTYPE_ETH = const(1)
_ARP_REQUEST = const(1)
_ARP_REPLY = const(2)
_IP_VIHL = const(0)
_IP_TOS = const(1)
_IP_LEN = const(2)
_IP_ID = const(4)
_IP_FRAG = const(6)
_IP_TTL = const(8)
_IP_PROTO = const(9)
_IP_CSUM = const(10)
_IP_SRC = const(12)
_IP_DST = const(16)
_IP_HLEN = const(20)     # without options
_IP_VIHL_NOOPT = const(0x45)   # version 4, IHL 5
_IP_DF = const(0x4000)
_IP_MF = const(0x2000)
_IP_OFFSET_MASK = const(0x1FFF)
_PROTO_ICMP = const(1)
_PROTO_TCP = const(6)
_PROTO_UDP = const(17)
_ICMP_TYPE = const(0)
_ICMP_CODE = const(1)
_ICMP_CSUM = const(2)
_ICMP_HLEN = const(8)
_ICMP_ECHO_REPLY = const(0)
_ICMP_UNREACH = const(3)
_ICMP_ECHO_REQUEST = const(8)
_ICMP_TIME_EXCEEDED = const(11)
_UNREACH_PROTOCOL = const(2)
_UNREACH_PORT = const(3)
_EXCEEDED_REASSEMBLY = const(1)
_UDP_LEN = const(4)
_UDP_CSUM = const(6)
_UDP_HLEN = const(8)
_TCP_CSUM = const(16)
_TCP_HLEN = const(20)

L4_OFF = const(_ETH_HLEN + _IP_HLEN)    # transport header in tx
_IP = const(_ETH_HLEN)                  # IPv4 header in a frame
_ARP = const(_ETH_HLEN)                 # ARP packet in a frame
_ARP_FRAME = const(_ETH_HLEN + _ARP_LEN)    # the NIC pads to 60
_FRAG_MAX = const((_MTU - _IP_HLEN) & ~7)   # payload per fragment: a multiple of 8
_TTL = const(64)
_SUM_CHUNK = const(32768)      # keeps the viper checksum accumulator below 2**31
_ARP_ENTRIES = const(8)        # default neighbour table size (config.arp_entries overrides)

# Where a destination address leads (_dst_kind for input, _route for output).
_NOT_OURS = const(0)
_UNICAST = const(1)
_BROADCAST = const(2)
_MULTICAST = const(3)
_NO_ROUTE = const(0)

_BCAST_MAC = b"\xff\xff\xff\xff\xff\xff"
_ZERO_MAC = b"\x00\x00\x00\x00\x00\x00"
_BCAST_IP = b"\xff\xff\xff\xff"


def _sum(buf, off, n, acc):
    """wire.checksum over any length: chunks keep viper's 32-bit accumulator from overflowing."""
    while n > _SUM_CHUNK:
        acc = checksum(buf, off, _SUM_CHUNK, acc)
        off += _SUM_CHUNK
        n -= _SUM_CHUNK
    return checksum(buf, off, n, acc)


def _is_icmp_query(t):
    """ICMP types that are not error messages (RFC 1122 3.2.2: errors never answer errors)."""
    return t == _ICMP_ECHO_REPLY or t == _ICMP_ECHO_REQUEST or t == 9 or t == 10 or 13 <= t <= 18


class Interface:
    def __init__(self, stack, send, mac, ip, prefix, gateway):
        cfg = stack.config
        self.stack = stack
        self._send = send
        self.mac = bytes(mac)
        self.ip = bytearray(4)
        self.gateway = bytearray(4)
        self.netmask = bytearray(4)
        self.prefix = 0
        self._bcast = bytearray(4)        # subnet broadcast
        self._subnet_bcast = False        # prefixes /31 and /32 have none (RFC 3021)
        self._have_ip = False
        self._have_gateway = False
        self.set_address(ip, prefix, gateway)
        # Every core learns from ARP; one answers (several cores share one address and MAC).
        self.arp_responder = True
        self.tx = bytearray(FRAME_BUFFER_SIZE)
        self._dst = bytearray(4)          # where we send to (copied out of the caller's buffer)
        self._nexthop = bytearray(4)
        self._l4_off = 0                  # the transport part of the datagram _deliver hands on
        self._l4_len = 0
        self.ip_id = 0                    # next IPv4 identification
        self.ip_id_step = 1               # two stacks share one address: give them disjoint IDs
        # Multi-kernel hook: None, or handoff(buf, ip_off, total, now) -> True when a
        # reassembled datagram was handed to the core that owns its flow (not delivered here).
        self.handoff = None
        self.arp = ArpCache(getattr(cfg, "arp_entries", _ARP_ENTRIES),
                            cfg.arp_lifetime_ms, cfg.arp_retry_ms)
        self.reasm = Reassembler(cfg.reasm_max_datagrams, cfg.reasm_max_bytes,
                                 cfg.reasm_timeout_ms)
        self._icmp_rate = cfg.icmp_rate_per_s
        self._icmp_tokens = cfg.icmp_rate_per_s * 1000   # milli-tokens; a full bucket to start
        self._icmp_last = 0
        self._icmp_started = False
        self._zero_counters()

    def _zero_counters(self):
        self.eth_rx = 0
        self.eth_too_short = 0
        self.eth_bad_length = 0
        self.eth_not_for_us = 0
        self.eth_multicast = 0
        self.eth_bad_src = 0
        self.eth_unknown_type = 0
        self.eth_tx = 0
        self.eth_tx_failed = 0
        self.arp_rx = 0
        self.arp_rx_requests = 0
        self.arp_rx_replies = 0
        self.arp_too_short = 0
        self.arp_bad_htype = 0
        self.arp_bad_ptype = 0
        self.arp_bad_hlen = 0
        self.arp_bad_plen = 0
        self.arp_bad_oper = 0
        self.arp_bad_sender = 0
        self.arp_conflict = 0
        self.arp_tx_requests = 0
        self.arp_tx_replies = 0
        self.arp_tx_gratuitous = 0
        self.ip_rx = 0
        self.ip_too_short = 0
        self.ip_bad_version = 0
        self.ip_bad_ihl = 0
        self.ip_bad_checksum = 0
        self.ip_bad_length = 0
        self.ip_truncated = 0
        self.ip_bad_src = 0
        self.ip_not_for_us = 0
        self.ip_l2_bcast_unicast = 0
        self.ip_bcast_not_udp = 0
        self.ip_unknown_protocol = 0
        self.ip_options = 0
        self.ip_delivered = 0
        self.ip_tcp_too_short = 0
        self.ip_tcp_bad_checksum = 0
        self.ip_udp_bad_checksum = 0
        self.ip_tx = 0
        self.ip_tx_fragmented = 0
        self.ip_tx_fragments = 0
        self.ip_tx_no_route = 0
        self.ip_tx_unresolved = 0
        self.ip_tx_df_drop = 0
        self.ip_tx_too_big = 0
        self.icmp_rx = 0
        self.icmp_too_short = 0
        self.icmp_bad_checksum = 0
        self.icmp_rx_echo_requests = 0
        self.icmp_rx_echo_replies = 0
        self.icmp_rx_unreachable = 0
        self.icmp_rx_time_exceeded = 0
        self.icmp_rx_other = 0
        self.icmp_tx_echo_replies = 0
        self.icmp_tx_unreachable = 0
        self.icmp_tx_time_exceeded = 0
        self.icmp_tx_failed = 0
        self.icmp_rate_limited = 0
        self.icmp_suppressed = 0

    def set_address(self, ip, prefix, gateway):
        """(Re)configure the address, e.g. when a DHCP lease arrives. Not for the packet path."""
        if prefix < 0 or prefix > 32:
            raise ValueError("prefix must be 0..32")
        self.prefix = prefix
        for i in range(4):
            self.ip[i] = ip[i]
            self.gateway[i] = gateway[i]
            bits = min(8, max(0, prefix - 8 * i))
            self.netmask[i] = (0xFF << (8 - bits)) & 0xFF
            self._bcast[i] = ip[i] | (~self.netmask[i] & 0xFF)
        self._subnet_bcast = prefix <= 30
        self._have_ip = ip[0] | ip[1] | ip[2] | ip[3] != 0
        self._have_gateway = gateway[0] | gateway[1] | gateway[2] | gateway[3] != 0

    # == Ethernet ============================================================================

    def input(self, buf, n, now):
        """One received Ethernet frame (buf[0:n], no FCS), through every layer to completion.

        A plain TCP segment for us (most frames) goes straight to TCP: one machine-code
        check does what the layers below would (wire.tcp_frame_check), and the counters
        and the neighbour refresh are theirs. Anything else takes the layers one by one,
        which count what is wrong with it."""
        self.eth_rx += 1
        if n > len(buf):
            self.eth_bad_length += 1
            return
        if self._have_ip and tcp_frame_check(buf, n, self.mac, self.ip, self._bcast) > 0:
            self.ip_rx += 1
            self.ip_delivered += 1
            if self._on_link(buf, _IP + _IP_SRC):
                self.arp.refresh(buf, now)
            # n: the TCP length from here, no IPv4 options (reused: keeps this frame within
            # 11 words)
            n = get16(buf, _IP + _IP_LEN) - _IP_HLEN
            self.stack.tcp.input(buf, _IP, L4_OFF, n, now)
            return
        if n < _ETH_HLEN:
            self.eth_too_short += 1
            return
        if not (equal(buf, _ETH_DST, self.mac, 0, 6) or equal(buf, _ETH_DST, _BCAST_MAC, 0, 6)):
            if buf[_ETH_DST] & 1:
                self.eth_multicast += 1      # we join no groups
            else:
                self.eth_not_for_us += 1
            return
        if buf[_ETH_SRC] & 1:
            self.eth_bad_src += 1            # a group address is never a sender
            return
        if get16(buf, _ETH_TYPE) == _ETHERTYPE_IPV4:
            self._ipv4_input(buf, n, now)
        elif get16(buf, _ETH_TYPE) == _ETHERTYPE_ARP:
            self._arp_input(buf, n, now)
        else:
            self.eth_unknown_type += 1

    def _transmit(self, n):
        if self._send(self.tx, n):
            self.eth_tx += 1
            return True
        self.eth_tx_failed += 1
        return False

    def _eth_header(self, dst, dst_off, ethertype):
        t = self.tx
        copy(t, _ETH_DST, dst, dst_off, 6)
        copy(t, _ETH_SRC, self.mac, 0, 6)
        t[_ETH_TYPE] = ethertype >> 8
        t[_ETH_TYPE + 1] = ethertype & 0xFF

    # == ARP =================================================================================

    def _arp_input(self, buf, n, now):
        self.arp_rx += 1
        if n < _ARP + _ARP_LEN:
            self.arp_too_short += 1
            return
        if get16(buf, _ARP + _ARP_HTYPE) != _ARP_HTYPE_ETH:
            self.arp_bad_htype += 1
            return
        if get16(buf, _ARP + _ARP_PTYPE) != _ETHERTYPE_IPV4:
            self.arp_bad_ptype += 1
            return
        if buf[_ARP + _ARP_HLEN] != 6:
            self.arp_bad_hlen += 1
            return
        if buf[_ARP + _ARP_PLEN] != 4:
            self.arp_bad_plen += 1
            return
        oper = get16(buf, _ARP + _ARP_OPER)
        if oper != _ARP_REQUEST and oper != _ARP_REPLY:
            self.arp_bad_oper += 1
            return
        if buf[_ARP + _ARP_SHA] & 1 or equal(buf, _ARP + _ARP_SHA, self.mac, 0, 6):
            self.arp_bad_sender += 1         # group or our own hardware address
            return
        if self._have_ip and equal(buf, _ARP + _ARP_SPA, self.ip, 0, 4):
            self.arp_conflict += 1           # another station claims our address
            return
        if oper == _ARP_REQUEST:
            self.arp_rx_requests += 1
        else:
            self.arp_rx_replies += 1
        for_us = self._have_ip and equal(buf, _ARP + _ARP_TPA, self.ip, 0, 4)
        # RFC 826 merge: refresh a known sender from any ARP packet (gratuitous ARP moves it);
        # add it only when the packet was meant for us. Probes (sender 0.0.0.0) teach nothing.
        if self._is_peer(buf, _ARP + _ARP_SPA) and self._on_link(buf, _ARP + _ARP_SPA):
            self.arp.update(buf, _ARP + _ARP_SPA, buf, _ARP + _ARP_SHA, now, for_us)
        if oper == _ARP_REQUEST and for_us and self.arp_responder:
            if self._arp_send(_ARP_REPLY, buf, _ARP + _ARP_SHA, buf, _ARP + _ARP_SHA,
                              buf, _ARP + _ARP_SPA):
                self.arp_tx_replies += 1

    def _arp_send(self, oper, eth_dst, eth_off, tha, tha_off, tpa, tpa_off):
        """ARP packet from us (SHA, SPA) in tx; the Ethernet destination given separately."""
        t = self.tx
        self._eth_header(eth_dst, eth_off, _ETHERTYPE_ARP)
        t[_ARP + _ARP_HTYPE] = _ARP_HTYPE_ETH >> 8
        t[_ARP + _ARP_HTYPE + 1] = _ARP_HTYPE_ETH & 0xFF
        t[_ARP + _ARP_PTYPE] = _ETHERTYPE_IPV4 >> 8
        t[_ARP + _ARP_PTYPE + 1] = _ETHERTYPE_IPV4 & 0xFF
        t[_ARP + _ARP_HLEN] = 6
        t[_ARP + _ARP_PLEN] = 4
        t[_ARP + _ARP_OPER] = 0
        t[_ARP + _ARP_OPER + 1] = oper
        copy(t, _ARP + _ARP_SHA, self.mac, 0, 6)
        copy(t, _ARP + _ARP_SPA, self.ip, 0, 4)
        copy(t, _ARP + _ARP_THA, tha, tha_off, 6)
        copy(t, _ARP + _ARP_TPA, tpa, tpa_off, 4)
        return self._transmit(_ARP_FRAME)

    def announce(self, now):
        """Gratuitous ARP, request form (SPA = TPA = our address), so neighbours update."""
        if not self._have_ip:
            return False
        if self._arp_send(_ARP_REQUEST, _BCAST_MAC, 0, _ZERO_MAC, 0, self.ip, 0):
            self.arp_tx_gratuitous += 1
            return True
        return False

    # == IPv4 input ==========================================================================

    def _ipv4_input(self, buf, n, now):
        self.ip_rx += 1
        n -= _IP                           # n: the bytes after the Ethernet header
        if n < _IP_HLEN:
            self.ip_too_short += 1
            return
        if buf[_IP] >> 4 != 4:
            self.ip_bad_version += 1
            return
        ihl = (buf[_IP] & 0x0F) << 2
        if ihl < _IP_HLEN:
            self.ip_bad_ihl += 1
            return
        if ihl > n:
            self.ip_too_short += 1
            return
        if checksum(buf, _IP, ihl, 0) != 0xFFFF:
            self.ip_bad_checksum += 1
            return
        if get16(buf, _IP + _IP_LEN) > n:
            self.ip_truncated += 1         # bytes beyond total are Ethernet padding: fine
            return
        # n: the datagram's total length from here (reused: keeps this frame within 11 words)
        n = get16(buf, _IP + _IP_LEN)
        if n < ihl:
            self.ip_bad_length += 1
            return
        if not self._is_peer(buf, _IP + _IP_SRC):
            self.ip_bad_src += 1           # RFC 1122 3.2.1.3: broadcast/multicast sources
            return
        kind = self._dst_kind(buf, _IP + _IP_DST)
        if kind == _NOT_OURS:
            self.ip_not_for_us += 1        # a host does not forward
            return
        # input() let through only our MAC and broadcast: a group bit is the broadcast
        if kind == _UNICAST and buf[_ETH_DST] & 1:
            self.ip_l2_bcast_unicast += 1  # RFC 1122 3.3.6: discard
            return
        if ihl > _IP_HLEN:
            self.ip_options += 1           # skipped: only IHL is trusted, never their content
        if kind == _BROADCAST and buf[_IP + _IP_PROTO] != _PROTO_UDP:
            self.ip_bcast_not_udp += 1
            return
        if kind == _UNICAST and self._on_link(buf, _IP + _IP_SRC):
            # smoltcp fills the neighbour cache from on-link IPv4 traffic too: a peer that
            # talks to us keeps its entry alive, so replies never stall on an expired entry.
            self.arp.refresh(buf, now)
        kind = buf[_IP + _IP_PROTO]        # kind: the protocol from here
        if kind != _PROTO_ICMP and kind != _PROTO_TCP and kind != _PROTO_UDP:
            self._protocol_unreachable(buf, now)
            return
        if get16(buf, _IP + _IP_FRAG) & (_IP_MF | _IP_OFFSET_MASK):
            self._reassemble(buf, ihl, now)
            return
        self._deliver(buf, _IP, now)

    def _protocol_unreachable(self, buf, now):
        # (apart: keeps _ipv4_input's frame within 11 words)
        self.ip_unknown_protocol += 1
        self._icmp_error(buf, _IP, _ICMP_UNREACH, _UNREACH_PROTOCOL, now)

    def _reassemble(self, buf, ihl, now):
        r = self.reasm
        s = r.input(buf, _IP, ihl, get16(buf, _IP + _IP_LEN), now)
        if s < 0:
            return
        b = r.base[s]
        try:
            h = self.handoff
            if h is None or not h(r.pool, b, get16(r.pool, b + _IP_LEN), now):
                self._deliver(r.pool, b, now)
        finally:
            r.release(s)

    def deliver_handoff(self, buf, ip_off, total, now):
        """A reassembled datagram handed over by another core's handoff hook (its header
        carries total, as the pool's does)."""
        self._deliver(buf, ip_off, now)

    def _deliver(self, buf, ip_off, now):
        """A whole datagram for us (a frame, or the reassembly pool) to its transport.

        Where its transport part is, and how long, go in _l4_off and _l4_len for the input
        below (attributes, not arguments: keeps each frame within 11 words)."""
        self.ip_delivered += 1
        ihl = (buf[ip_off] & 0x0F) << 2
        self._l4_off = ip_off + ihl
        self._l4_len = get16(buf, ip_off + _IP_LEN) - ihl
        proto = buf[ip_off + _IP_PROTO]
        if proto == _PROTO_TCP:
            self._tcp_input(buf, ip_off, now)
        elif proto == _PROTO_UDP:
            self._udp_input(buf, ip_off, now)
        else:
            self._icmp_input(buf, ip_off, now)

    def _l4_sum(self, buf, ip_off, proto, n):
        """The transport checksum's sum over n bytes at _l4_off, pseudo header included."""
        acc = pseudo_header_sum(buf, ip_off, proto, n)
        return _sum(buf, self._l4_off, n, acc)

    def _tcp_input(self, buf, ip_off, now):
        if self._l4_len < _TCP_HLEN:
            self.ip_tcp_too_short += 1
            return
        if self._l4_sum(buf, ip_off, _PROTO_TCP, self._l4_len) != 0xFFFF:
            self.ip_tcp_bad_checksum += 1
            return
        self.stack.tcp.input(buf, ip_off, self._l4_off, self._l4_len, now)

    def _udp_input(self, buf, ip_off, now):
        if self._udp_sum_bad(buf, ip_off):
            self.ip_udp_bad_checksum += 1
            return
        if self.stack.udp.input(buf, ip_off, self._l4_off, self._l4_len, now):
            return
        if self._dst_kind(buf, ip_off + _IP_DST) != _BROADCAST:
            self._icmp_error(buf, ip_off, _ICMP_UNREACH, _UNREACH_PORT, now)

    def _udp_sum_bad(self, buf, ip_off):
        """A checksum the sender computed (0 = none, allowed in IPv4) that is wrong. A bad
        length is left to Udp.input, which counts it."""
        off = self._l4_off
        if self._l4_len < _UDP_HLEN or not (buf[off + _UDP_CSUM] | buf[off + (_UDP_CSUM + 1)]):
            return False
        n = get16(buf, off + _UDP_LEN)
        if n < _UDP_HLEN or n > self._l4_len:
            return False
        return self._l4_sum(buf, ip_off, _PROTO_UDP, n) != 0xFFFF

    def _dst_kind(self, buf, off):
        if self._have_ip and equal(buf, off, self.ip, 0, 4):
            return _UNICAST
        if equal(buf, off, _BCAST_IP, 0, 4):
            return _BROADCAST
        if self._subnet_bcast and equal(buf, off, self._bcast, 0, 4):
            return _BROADCAST
        return _NOT_OURS

    def _is_peer(self, buf, off):
        """Could this address be one other host? Not 0/8, loopback, multicast, class E,
        broadcast, nor our own."""
        b0 = buf[off]
        if b0 == 0 or b0 == 127 or b0 >= 224 or equal(buf, off, self.ip, 0, 4):
            return False
        return not (self._subnet_bcast and equal(buf, off, self._bcast, 0, 4))

    def _on_link(self, buf, off):
        return masked_equal(buf, off, self.ip, 0, self.netmask)

    # == ICMP ================================================================================

    def _icmp_input(self, buf, ip_off, now):
        self.icmp_rx += 1
        if self._l4_len < _ICMP_HLEN:
            self.icmp_too_short += 1
            return
        if _sum(buf, self._l4_off, self._l4_len, 0) != 0xFFFF:
            self.icmp_bad_checksum += 1
            return
        kind = buf[self._l4_off]
        if kind == _ICMP_ECHO_REQUEST:
            self.icmp_rx_echo_requests += 1
            self._echo_reply(buf, ip_off, now)
        elif kind == _ICMP_ECHO_REPLY:
            self.icmp_rx_echo_replies += 1
        elif kind == _ICMP_UNREACH:
            self.icmp_rx_unreachable += 1
        elif kind == _ICMP_TIME_EXCEEDED:
            self.icmp_rx_time_exceeded += 1
        else:
            self.icmp_rx_other += 1

    def _echo_reply(self, buf, ip_off, now):
        """Same identifier, sequence and data back to the sender (fragmented if need be)."""
        if self._l4_len > _MTU - _IP_HLEN:
            self._echo_reply_fragmented(buf, ip_off, now)
            return
        copy(self.tx, L4_OFF, buf, self._l4_off, self._l4_len)
        self.tx[L4_OFF + _ICMP_TYPE] = _ICMP_ECHO_REPLY
        self.tx[L4_OFF + _ICMP_CODE] = 0
        if self.send_l4(_PROTO_ICMP, buf, ip_off + _IP_SRC, self._l4_len, now):
            self.icmp_tx_echo_replies += 1
        else:
            self.icmp_tx_failed += 1

    def _echo_reply_fragmented(self, buf, ip_off, now):
        # (apart: keeps _echo_reply's frame within 11 words)
        t = self.tx
        copy(t, L4_OFF, buf, self._l4_off, _ICMP_HLEN)
        t[L4_OFF + _ICMP_TYPE] = _ICMP_ECHO_REPLY
        t[L4_OFF + _ICMP_CODE] = 0
        if self.send_ipv4(_PROTO_ICMP, buf, ip_off + _IP_SRC, t, L4_OFF, _ICMP_HLEN,
                          buf, self._l4_off + _ICMP_HLEN, self._l4_len - _ICMP_HLEN, now):
            self.icmp_tx_echo_replies += 1
        else:
            self.icmp_tx_failed += 1

    def _icmp_error(self, buf, ip_off, kind, code, now):
        """Report a problem with the datagram at buf[ip_off] to its sender (RFC 1122 3.2.2).

        Never about: an ICMP error, a datagram not sent to our unicast address (broadcast,
        multicast), a fragment other than the first, a source that is not one host. Sends
        the offending IPv4 header and the first 8 bytes of its payload; rate-limited.
        """
        ihl = (buf[ip_off] & 0x0F) << 2
        total = get16(buf, ip_off + _IP_LEN)
        if (get16(buf, ip_off + _IP_FRAG) & _IP_OFFSET_MASK
                or not self._have_ip
                or not equal(buf, ip_off + _IP_DST, self.ip, 0, 4)
                or not self._is_peer(buf, ip_off + _IP_SRC)
                or (buf[ip_off + _IP_PROTO] == _PROTO_ICMP and
                    (total <= ihl or not _is_icmp_query(buf[ip_off + ihl])))):
            self.icmp_suppressed += 1
            return False
        if not self._icmp_token(now):
            self.icmp_rate_limited += 1
            return False
        quote = total - ihl
        if quote > 8:
            quote = 8
        t = self.tx
        t[L4_OFF + _ICMP_TYPE] = kind
        t[L4_OFF + _ICMP_CODE] = code
        fill(t, L4_OFF + _ICMP_CSUM, _ICMP_HLEN - _ICMP_CSUM, 0)
        if self.send_ipv4(_PROTO_ICMP, buf, ip_off + _IP_SRC, t, L4_OFF, _ICMP_HLEN,
                          buf, ip_off, ihl + quote, now):
            if kind == _ICMP_UNREACH:
                self.icmp_tx_unreachable += 1
            else:
                self.icmp_tx_time_exceeded += 1
            return True
        self.icmp_tx_failed += 1
        return False

    def _icmp_token(self, now):
        """Token bucket: icmp_rate_per_s errors per second, bursts up to that many."""
        rate = self._icmp_rate
        if rate <= 0:
            return False
        if self._icmp_started:
            elapsed = time.ticks_diff(now, self._icmp_last)
            if elapsed > 1000:
                elapsed = 1000                 # a full bucket; keeps the product small
            if elapsed > 0:
                self._icmp_tokens += elapsed * rate
                if self._icmp_tokens > rate * 1000:
                    self._icmp_tokens = rate * 1000
        self._icmp_started = True
        self._icmp_last = now
        if self._icmp_tokens < 1000:
            return False
        self._icmp_tokens -= 1000
        return True

    # == IPv4 output =========================================================================

    def send_l4(self, proto, dst, dst_off, l4_len, now):
        """Send the l4_len transport bytes (header and payload) already in tx at L4_OFF to
        dst[dst_off:+4], in one frame: at most _MTU - 20 bytes, else False (send_ipv4
        fragments). Computes the transport checksum and adds the IPv4 and Ethernet
        headers. Returns what the NIC returned; False also when the neighbour is still
        being resolved, so the caller retries later."""
        if l4_len > _MTU - _IP_HLEN:
            self.ip_tx_too_big += 1
            return False
        if not self._link_dst(dst, dst_off, now):
            return False
        self._ip_header(proto)
        self._l4_checksum(proto, l4_len)
        self.ip_tx += 1
        return self._emit(l4_len, 0)

    def send_ipv4(self, proto, dst, dst_off, hdr, hdr_off, hdr_len, data, data_off, data_len,
                  now, df=False):
        """Send transport header hdr[hdr_off:+hdr_len] + payload data[data_off:+data_len].

        The general form of send_l4: copies header and payload into tx where they are not
        already (hdr at L4_OFF, data right after it), fragments when the datagram is larger
        than the MTU (unless df; then the payload stays where it is and goes out piece by
        piece). Returns what the NIC returned, or False as send_l4 does.
        """
        if data is None:
            data_len = 0
        if hdr_len + data_len > _MTU - _IP_HLEN:
            if hdr_len + data_len > 65535 - _IP_HLEN or hdr_len > _FRAG_MAX:
                self.ip_tx_too_big += 1
                return False
            if df:
                self.ip_tx_df_drop += 1
                return False
        t = self.tx
        if not (hdr is t and hdr_off == L4_OFF):
            copy(t, L4_OFF, hdr, hdr_off, hdr_len)
        if hdr_len + data_len <= _MTU - _IP_HLEN:
            if data_len and not (data is t and data_off == L4_OFF + hdr_len):
                copy(t, L4_OFF + hdr_len, data, data_off, data_len)
            if not df:
                return self.send_l4(proto, dst, dst_off, hdr_len + data_len, now)
        if not self._link_dst(dst, dst_off, now):
            return False
        self._ip_header(proto)
        if df:                                     # one frame (larger ones were refused)
            self._l4_checksum(proto, hdr_len + data_len)
            self.ip_tx += 1
            return self._emit(hdr_len + data_len, _IP_DF)
        self._l4_checksum_split(proto, hdr_len, data, data_off, data_len)
        self.ip_tx += 1
        return self._send_fragments(hdr_len, data, data_off, data_len)

    def _send_fragments(self, hdr_len, data, data_off, data_len):
        """RFC 791 fragmentation: 1480-byte pieces (a multiple of 8), MF on all but the last.

        The first fragment carries the transport header, already in tx; each later one
        copies its part of the payload to L4_OFF (a memmove when data itself is in tx).
        """
        self.ip_tx_fragmented += 1
        t = self.tx
        l4_len = hdr_len + data_len
        pos = 0
        while pos < l4_len:
            n = l4_len - pos
            more = 0
            if n > _FRAG_MAX:
                n = _FRAG_MAX
                more = _IP_MF
            if pos == 0:
                if not (data is t and data_off == L4_OFF + hdr_len):
                    copy(t, L4_OFF + hdr_len, data, data_off, n - hdr_len)
            else:
                copy(t, L4_OFF, data, data_off + pos - hdr_len, n)
            if not self._emit(n, more | (pos >> 3)):
                return False
            self.ip_tx_fragments += 1
            pos += n
        return True

    def _ip_header(self, proto):
        """The fields every frame of this datagram shares; _emit fills length/flags/sum."""
        t = self.tx
        t[_IP + _IP_VIHL] = _IP_VIHL_NOOPT
        t[_IP + _IP_TOS] = 0
        put16(t, _IP + _IP_ID, self.ip_id)
        self.ip_id = (self.ip_id + self.ip_id_step) & 0xFFFF
        t[_IP + _IP_TTL] = _TTL
        t[_IP + _IP_PROTO] = proto
        copy(t, _IP + _IP_SRC, self.ip, 0, 4)
        copy(t, _IP + _IP_DST, self._dst, 0, 4)

    def _emit(self, payload_len, frag):
        """One frame: the IPv4 header's length, flags and checksum, then the NIC (what
        _transmit does, inline: one call less per frame)."""
        t = self.tx
        put16(t, _IP + _IP_LEN, _IP_HLEN + payload_len)
        put16(t, _IP + _IP_FRAG, frag)
        t[_IP + _IP_CSUM] = 0
        t[_IP + _IP_CSUM + 1] = 0
        csum = ~checksum(t, _IP, _IP_HLEN, 0) & 0xFFFF
        put16(t, _IP + _IP_CSUM, csum)
        if self._send(t, L4_OFF + payload_len):
            self.eth_tx += 1
            return True
        self.eth_tx_failed += 1
        return False

    def _csum_field(self, proto):
        """Where ``proto``'s checksum sits in tx, zeroed for the sum; -1 for a protocol
        whose checksum is not ours to fill."""
        if proto == _PROTO_TCP:
            field = L4_OFF + _TCP_CSUM
        elif proto == _PROTO_UDP:
            field = L4_OFF + _UDP_CSUM
        elif proto == _PROTO_ICMP:
            field = L4_OFF + _ICMP_CSUM
        else:
            return -1
        self.tx[field] = 0
        self.tx[field + 1] = 0
        return field

    def _l4_checksum(self, proto, l4_len):
        """Transport checksum over the l4_len bytes in tx at L4_OFF."""
        field = self._csum_field(proto)
        if field < 0:
            return
        t = self.tx
        acc = 0
        if proto != _PROTO_ICMP:
            acc = pseudo_header_sum(t, _IP, proto, l4_len)
        acc = ~checksum(t, L4_OFF, l4_len, acc) & 0xFFFF    # l4_len < _SUM_CHUNK
        if acc == 0 and proto == _PROTO_UDP:
            acc = 0xFFFF                           # 0 would mean "no checksum"
        put16(t, field, acc)

    def _l4_checksum_split(self, proto, hdr_len, data, data_off, data_len):
        """Transport checksum over the header in tx and the payload wherever it is."""
        field = self._csum_field(proto)
        if field < 0:
            return
        t = self.tx
        acc = 0
        if proto != _PROTO_ICMP:
            acc = pseudo_header_sum(t, _IP, proto, hdr_len + data_len)
        acc = checksum(t, L4_OFF, hdr_len, acc)
        if data_len:
            s = _sum(data, data_off, data_len, 0)
            if hdr_len & 1:
                s = ((s & 0xFF) << 8) | (s >> 8)   # payload starts on an odd byte
            acc += s
            acc = (acc & 0xFFFF) + (acc >> 16)
            acc = (acc & 0xFFFF) + (acc >> 16)
        v = ~acc & 0xFFFF
        if v == 0 and proto == _PROTO_UDP:
            v = 0xFFFF                             # 0 would mean "no checksum"
        put16(t, field, v)

    def _link_dst(self, dst, dst_off, now):
        """Ethernet header in tx for IPv4 destination dst[dst_off:+4] (copied to _dst);
        False if there is none yet."""
        kind = self._route(dst, dst_off)
        if kind == _UNICAST:
            i = self.arp.lookup(self._nexthop, 0, now)
            if i < 0:
                return self._arp_miss(now)
            self._eth_header(self.arp.macs, 6 * i, _ETHERTYPE_IPV4)
            return True
        if kind == _NO_ROUTE:
            self.ip_tx_no_route += 1
            return False
        self._eth_header(_BCAST_MAC, 0, _ETHERTYPE_IPV4)
        if kind == _MULTICAST:
            self._multicast_mac()
        return True

    def _arp_miss(self, now):
        """No neighbour entry for _nexthop: ask (at most once per arp_retry_ms); False."""
        self.ip_tx_unresolved += 1
        if self.arp.request_due(self._nexthop, 0, now):
            if self._arp_send(_ARP_REQUEST, _BCAST_MAC, 0, _ZERO_MAC, 0, self._nexthop, 0):
                self.arp_tx_requests += 1
        return False

    def _multicast_mac(self):
        """RFC 1112: 01:00:5e + the low 23 bits of _dst, as the Ethernet destination."""
        t = self.tx
        d = self._dst
        t[0] = 0x01
        t[1] = 0x00
        t[2] = 0x5E
        t[3] = d[1] & 0x7F
        t[4] = d[2]
        t[5] = d[3]

    def _route(self, dst, dst_off):
        """Where dst[dst_off:+4] (copied to _dst) is reached: _BROADCAST, _MULTICAST,
        _UNICAST (via _nexthop) or _NO_ROUTE."""
        d = self._dst
        copy(d, 0, dst, dst_off, 4)
        b0 = d[0]
        if equal(d, 0, _BCAST_IP, 0, 4):
            return _BROADCAST
        if b0 == 0 or b0 == 127 or b0 >= 240 or not self._have_ip:
            return _NO_ROUTE
        if b0 >= 224:
            return _MULTICAST
        if self._on_link(d, 0):
            if self._subnet_bcast and equal(d, 0, self._bcast, 0, 4):
                return _BROADCAST
            if equal(d, 0, self.ip, 0, 4):
                return _NO_ROUTE                   # no loopback device
            copy(self._nexthop, 0, d, 0, 4)
            return _UNICAST
        if not self._have_gateway:
            return _NO_ROUTE
        copy(self._nexthop, 0, self.gateway, 0, 4)
        return _UNICAST

    # == Timers ==============================================================================

    def poll(self, now):
        """ARP entry expiry; reassembly timeouts (ICMP time exceeded if fragment 0 came)."""
        self.arp.expire(now)
        r = self.reasm
        s = r.expired(now)
        while s >= 0:
            if r.first_bytes(s) > 0:
                self._icmp_error(r.pool, r.base[s], _ICMP_TIME_EXCEEDED,
                                 _EXCEEDED_REASSEMBLY, now)
            r.time_out(s)
            s = r.expired(now)

    def poll_at(self, now):
        """Milliseconds until poll() has work: 0 now, -1 nothing pending."""
        return earliest(self.arp.next_deadline(now), self.reasm.next_deadline(now))

    # == Counters (allocate: for reports) ====================================================

    def eth_counters(self):
        return {
            "rx": self.eth_rx,
            "too_short": self.eth_too_short,
            "bad_length": self.eth_bad_length,
            "not_for_us": self.eth_not_for_us,
            "multicast": self.eth_multicast,
            "bad_src": self.eth_bad_src,
            "unknown_type": self.eth_unknown_type,
            "tx": self.eth_tx,
            "tx_failed": self.eth_tx_failed,
        }

    def arp_counters(self):
        c = {
            "rx": self.arp_rx,
            "rx_requests": self.arp_rx_requests,
            "rx_replies": self.arp_rx_replies,
            "too_short": self.arp_too_short,
            "bad_htype": self.arp_bad_htype,
            "bad_ptype": self.arp_bad_ptype,
            "bad_hlen": self.arp_bad_hlen,
            "bad_plen": self.arp_bad_plen,
            "bad_oper": self.arp_bad_oper,
            "bad_sender": self.arp_bad_sender,
            "conflict": self.arp_conflict,
            "tx_requests": self.arp_tx_requests,
            "tx_replies": self.arp_tx_replies,
            "tx_gratuitous": self.arp_tx_gratuitous,
        }
        c.update(self.arp.counters())
        return c

    def ip_report(self):
        """The IPv4 counters as (name, value) pairs, one at a time (a report must not need
        the ~300-byte dict of them in one piece: a busy board may not have it)."""
        yield "rx", self.ip_rx
        yield "too_short", self.ip_too_short
        yield "bad_version", self.ip_bad_version
        yield "bad_ihl", self.ip_bad_ihl
        yield "bad_checksum", self.ip_bad_checksum
        yield "bad_length", self.ip_bad_length
        yield "truncated", self.ip_truncated
        yield "bad_src", self.ip_bad_src
        yield "not_for_us", self.ip_not_for_us
        yield "l2_bcast_unicast", self.ip_l2_bcast_unicast
        yield "bcast_not_udp", self.ip_bcast_not_udp
        yield "unknown_protocol", self.ip_unknown_protocol
        yield "options", self.ip_options
        yield "delivered", self.ip_delivered
        yield "tcp_too_short", self.ip_tcp_too_short
        yield "tcp_bad_checksum", self.ip_tcp_bad_checksum
        yield "udp_bad_checksum", self.ip_udp_bad_checksum
        yield "tx", self.ip_tx
        yield "tx_fragmented", self.ip_tx_fragmented
        yield "tx_fragments", self.ip_tx_fragments
        yield "tx_no_route", self.ip_tx_no_route
        yield "tx_unresolved", self.ip_tx_unresolved
        yield "tx_df_drop", self.ip_tx_df_drop
        yield "tx_too_big", self.ip_tx_too_big
        r = self.reasm.counters()
        for name in sorted(r):
            yield name, r[name]

    def ip_counters(self):
        return dict(self.ip_report())

    def icmp_counters(self):
        return {
            "rx": self.icmp_rx,
            "too_short": self.icmp_too_short,
            "bad_checksum": self.icmp_bad_checksum,
            "rx_echo_requests": self.icmp_rx_echo_requests,
            "rx_echo_replies": self.icmp_rx_echo_replies,
            "rx_unreachable": self.icmp_rx_unreachable,
            "rx_time_exceeded": self.icmp_rx_time_exceeded,
            "rx_other": self.icmp_rx_other,
            "tx_echo_replies": self.icmp_tx_echo_replies,
            "tx_unreachable": self.icmp_tx_unreachable,
            "tx_time_exceeded": self.icmp_tx_time_exceeded,
            "tx_failed": self.icmp_tx_failed,
            "rate_limited": self.icmp_rate_limited,
            "suppressed": self.icmp_suppressed,
        }
