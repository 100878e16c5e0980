# Packet layout: field offsets and the few hot helpers every layer needs.
#
# Like smoltcp's `wire`: stateless, knows where fields are and how to sum and copy bytes,
# nothing about state. Frames live in FRAME_BUFFER_SIZE bytearrays: Ethernet at 0, IPv4 at
# ETH_HLEN, the transport header after the IPv4 header (its length comes from IHL).
#
# The names below are the one definition of the packet layout. They are private
# (`_NAME = const(V)`: no RAM on the board), and const() inlines only within its own module
# (a name from another module would be a lookup per use), so a layer copies the
# `_NAME = const(V)` lines it needs, verbatim, and uses the names, never the numbers.
# tests/host/test_wire_layout.py checks every copy against this file.
#
# 32-bit values (TCP sequence numbers, IPv4 addresses) are never made into Python ints on
# the data path: above 2**30 they would be heap objects on the RP2040. They stay as 4 bytes
# in a buffer, and seq_delta()/seq_put()/seq_add() do the arithmetic in viper, handing back
# small signed differences.
from micropython import const

# The byte work is machine code, kept outside this package (netkernel_native says why).
from netkernel_native import (  # noqa: F401 - re-exported: the layers import them from here
    checksum, copy, equal, fill, find4, get16, masked_equal, pseudo_header_sum, put16,
    seq_add, seq_delta, seq_put, tcp_frame_check)

# Ethernet II
_ETH_DST = const(0)
_ETH_SRC = const(6)
_ETH_TYPE = const(12)
_ETH_HLEN = const(14)
_ETHERTYPE_IPV4 = const(0x0800)
_ETHERTYPE_ARP = const(0x0806)
_ETH_MIN_FRAME = const(60)
_MTU = const(1500)

# ARP (Ethernet/IPv4), offsets from the start of the ARP packet
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

# IPv4, offsets from the start of the IPv4 header
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

# ICMP
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
_UNREACH_NEEDFRAG = const(4)
_EXCEEDED_REASSEMBLY = const(1)

# UDP
_UDP_SPORT = const(0)
_UDP_DPORT = const(2)
_UDP_LEN = const(4)
_UDP_CSUM = const(6)
_UDP_HLEN = const(8)

# TCP
_TCP_SPORT = const(0)
_TCP_DPORT = const(2)
_TCP_SEQ = const(4)
_TCP_ACK = const(8)
_TCP_OFF = const(12)     # data offset in the high nibble
_TCP_FLAGS = const(13)
_TCP_WIN = const(14)
_TCP_CSUM = const(16)
_TCP_URP = const(18)
_TCP_HLEN = const(20)
_TCP_FIN = const(0x01)
_TCP_SYN = const(0x02)
_TCP_RST = const(0x04)
_TCP_PSH = const(0x08)
_TCP_ACK_FLAG = const(0x10)
_TCP_URG = const(0x20)
_TCP_FLAGS_MASK = const(0x3F)   # the six flags above
_TCPOPT_END = const(0)
_TCPOPT_NOP = const(1)
_TCPOPT_MSS = const(2)
_TCPOPT_SACK_PERM = const(4)
_TCPOPT_SACK = const(5)
_TCPOPT_MSS_LEN = const(4)
_TCPOPT_SACK_PERM_LEN = const(2)
_TCPOPT_SACK_BLOCK = const(8)   # one left/right edge pair


def earliest(a, b):
    """The sooner of two waits in ms, where -1 means "nothing pending"."""
    if a < 0:
        return b
    if b < 0:
        return a
    return a if a < b else b

