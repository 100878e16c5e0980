# UDP (RFC 768): a port -> handler table, datagrams in and out.
#
# The interface has already checked the IPv4 header and, when the sender computed one, the UDP
# checksum (0 = none is allowed in IPv4); a failed checksum never reaches us. input() checks
# the UDP length against what IPv4 delivered and hands the payload to the bound handler in
# place (no copy): the handler must be done with it when it returns. sendto() builds the
# datagram in the interface's tx frame and lets send_l4 compute the checksum, which we always
# send; a payload beyond one frame goes to send_ipv4, which fragments it from where it is.
import errno
import os

from micropython import const

from netkernel.iface import L4_OFF
from netkernel.wire import copy, get16, put16

# Packet layout: copies of wire's (const() inlines only within a module).
_MTU = const(1500)
_IP_SRC = const(12)
_IP_HLEN = const(20)     # without options
_PROTO_UDP = const(17)
_UDP_DPORT = const(2)
_UDP_LEN = const(4)
_UDP_CSUM = const(6)
_UDP_HLEN = const(8)

_MAX_PAYLOAD = const(65535 - _IP_HLEN - _UDP_HLEN)
_EPHEMERAL_LO = const(49152)
_EPHEMERAL_SPAN = const(16384)


class Udp:
    def __init__(self, stack):
        self.stack = stack
        self._handlers = {}        # port -> handler; changed by bind/unbind, only read per packet
        self.rx_datagrams = 0
        self.rx_too_short = 0      # fewer than 8 bytes after the IPv4 header
        self.rx_bad_length = 0     # UDP length < 8 or beyond the IPv4 payload
        self.rx_no_port = 0
        self.tx_datagrams = 0
        self.tx_failed = 0         # send_ipv4 said no (neighbour unresolved, NIC full, no route)
        self.tx_too_big = 0

    def bind(self, port, handler):
        """handler(buf, data_off, data_len, src, src_off, src_port, dst_port, now)."""
        if port < 1 or port > 65535:
            raise ValueError("port must be 1..65535")
        if port in self._handlers:
            raise OSError(errno.EADDRINUSE)
        self._handlers[port] = handler

    def ephemeral_port(self):
        """A port no handler has, from the dynamic range (RFC 6335), starting at random."""
        r = os.urandom(2)
        start = (r[0] << 8 | r[1]) % _EPHEMERAL_SPAN
        for i in range(_EPHEMERAL_SPAN):
            port = _EPHEMERAL_LO + (start + i) % _EPHEMERAL_SPAN
            if port not in self._handlers:
                return port
        raise OSError(errno.EADDRINUSE)

    def unbind(self, port):
        self._handlers.pop(port, None)

    def bound(self, port):
        return port in self._handlers

    def input(self, buf, ip_off, udp_off, udp_len, now):
        """One datagram (udp_len bytes from udp_off). False only when no socket has the port.

        Malformed datagrams are counted and dropped, and return True: the port was not the
        problem, so no ICMP port unreachable.
        """
        if udp_len < _UDP_HLEN:
            self.rx_too_short += 1
            return True
        ulen = get16(buf, udp_off + _UDP_LEN)
        if ulen < _UDP_HLEN or ulen > udp_len:
            self.rx_bad_length += 1
            return True
        dst_port = get16(buf, udp_off + _UDP_DPORT)
        handler = self._handlers.get(dst_port)
        if handler is None:
            self.rx_no_port += 1
            return False
        self.rx_datagrams += 1
        handler(buf, udp_off + _UDP_HLEN, ulen - _UDP_HLEN, buf, ip_off + _IP_SRC,
                get16(buf, udp_off), dst_port, now)
        return True

    def sendto(self, data, off, n, dst, dst_off, dst_port, src_port, now):
        """Send data[off:off+n] to dst[dst_off:+4]:dst_port. True if it went to the NIC."""
        if n < 0 or n > _MAX_PAYLOAD:
            self.tx_too_big += 1
            return False
        iface = self.stack.iface
        t = iface.tx
        put16(t, L4_OFF, src_port)
        put16(t, L4_OFF + _UDP_DPORT, dst_port)
        put16(t, L4_OFF + _UDP_LEN, _UDP_HLEN + n)
        if n <= _MTU - _IP_HLEN - _UDP_HLEN:
            if n:
                copy(t, L4_OFF + _UDP_HLEN, data, off, n)
            if iface.send_l4(_PROTO_UDP, dst, dst_off, _UDP_HLEN + n, now):
                self.tx_datagrams += 1
                return True
        elif iface.send_ipv4(_PROTO_UDP, dst, dst_off, t, L4_OFF, _UDP_HLEN, data, off, n, now):
            self.tx_datagrams += 1         # fragmented, the payload read where it is
            return True
        self.tx_failed += 1
        return False

    def counters(self):
        return {
            "rx_datagrams": self.rx_datagrams,
            "rx_too_short": self.rx_too_short,
            "rx_bad_length": self.rx_bad_length,
            "rx_no_port": self.rx_no_port,
            "tx_datagrams": self.tx_datagrams,
            "tx_failed": self.tx_failed,
            "tx_too_big": self.tx_too_big,
            "bound": len(self._handlers),
        }
