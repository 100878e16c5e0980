# One complete TCP/IPv4 stack: the object a net kernel owns outright.
#
# The layers follow smoltcp: `wire` knows packet layout, `iface` is the interface (Ethernet,
# ARP cache, IPv4 with reassembly and fragmentation, ICMP, routing, egress), `tcp` and `udp`
# hold the sockets and their state machines, `services` the built-in echo/discard. There is
# no module-level mutable state anywhere below, so two Stack objects run side by side on two
# cores; time is always passed in (`now`, milliseconds from time.ticks_ms()).

from netkernel.iface import Interface
from netkernel.services import Services
from netkernel.tcp import Tcp
from netkernel.udp import Udp
from netkernel.wire import earliest


class StackConfig:
    """Tunables with their defaults; a board's config may override any of them."""

    def __init__(self, **overrides):
        self.tcp_rx_buffer = 4096        # bytes per connection: the most we advertise
        self.tcp_tx_buffer = 4096        # ...and the most queued to send
        # The memory behind those rings, shared by every connection of the stack (tcpbuf.py):
        # received data not yet read, sent data not yet acknowledged.
        self.tcp_rx_pool = 32768
        self.tcp_tx_pool = 32768
        # Bytes of window all connections together may advertise; 0 = each its own ring.
        self.tcp_rx_budget = 0
        self.tcp_max_connections = 24    # established + handshaking, per stack
        # Per listener, SYN-RECEIVED + not yet accepted. Under a receive budget a SYN-ACK
        # may wait for credit, so 16 connections opening at once are all embryonic a while.
        self.tcp_syn_backlog = 16
        self.tcp_nagle = True
        self.tcp_keepalive_ms = 0        # 0 = off (RFC 1122: off by default)
        self.tcp_delayed_ack_ms = 40     # <= 200 ms (RFC 9293)
        self.tcp_time_wait_ms = 2000     # 2 * MSL; short MSL suits a LAN offload engine
        self.arp_lifetime_ms = 60000
        self.arp_retry_ms = 1000
        self.reasm_timeout_ms = 15000
        self.reasm_max_datagrams = 4
        self.reasm_max_bytes = 16384
        self.icmp_rate_per_s = 50        # ICMP errors we send, per second
        self.services = True             # TCP/UDP echo (7), TCP discard (9)
        for name in overrides:
            if not hasattr(self, name):
                raise ValueError("unknown stack setting: " + name)
            setattr(self, name, overrides[name])


class Stack:
    def __init__(self, send, mac, ip, prefix, gateway, config=None):
        """``send(buf, n)`` transmits a frame (the NIC); ``mac``/``ip``/``gateway`` are bytes."""
        self.config = config or StackConfig()
        self.iface = Interface(self, send, mac, ip, prefix, gateway)
        self.tcp = Tcp(self)
        self.udp = Udp(self)
        self.services = Services(self) if self.config.services else None
        self.services_parked = None      # switched off at run time, kept for the next on

    def input(self, buf, n, now):
        """Run one received frame through every layer, to completion."""
        self.iface.input(buf, n, now)

    def poll(self, now):
        """Timers and pending output of every layer (bounded work). The services read and
        answer first, so their data and reopened windows leave on the ACKs TCP owes."""
        self.iface.poll(now)
        if self.services is not None:
            self.services.poll(now)
        self.tcp.poll(now)

    def poll_at(self, now):
        """Milliseconds until the stack next needs poll(); 0 = now, -1 = nothing pending."""
        return earliest(self.iface.poll_at(now), self.tcp.poll_at(now))

    def announce(self, now):
        """Gratuitous ARP for our address."""
        self.iface.announce(now)

    def counters(self):
        """Every layer's counters, by layer (allocates: for reports, not per packet)."""
        return {layer: self.layer_counters(layer) for layer in self.layers()}

    def layers(self):
        """The layers' names, sorted."""
        return ("arp", "eth", "icmp", "ip", "tcp", "udp")

    def layer_report(self, layer):
        """One layer's counters as (name, value) pairs for a report (in the same order on
        every kernel). TCP's and IP's, the most, come one at a time; the others' dicts are
        small."""
        if layer == "tcp":
            return self.tcp.report()
        if layer == "ip":
            return self.iface.ip_report()
        values = self.layer_counters(layer)
        return ((name, values[name]) for name in sorted(values))

    def layer_counters(self, layer):
        """One layer's counters (a new dict)."""
        if layer == "eth":
            return self.iface.eth_counters()
        if layer == "arp":
            return self.iface.arp_counters()
        if layer == "ip":
            return self.iface.ip_counters()
        if layer == "icmp":
            return self.iface.icmp_counters()
        if layer == "udp":
            return self.udp.counters()
        return self.tcp.counters()
