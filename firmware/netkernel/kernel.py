# A net kernel: one per core, owning its frames, counters and (from the stack issue on) its
# own TCP/IPv4 stack instance. No module-level mutable state, time passed in by the caller.
#
# Until the stack lands, the kernel receives frames, counts them by ethertype, optionally logs
# them, and announces its address once (gratuitous ARP) so the wire is seen working both ways.
import struct

from micropython import const

from netkernel.w5500 import FRAME_BUFFER_SIZE

_BATCH = const(16)        # frames per turn: bounded work, so USB and timers keep running
_ETH_ARP = const(0x0806)
_ETH_IPV4 = const(0x0800)
LOG_OFF = const(0)
LOG_SUMMARY = const(1)
LOG_HEX = const(2)


def _mac_str(b, off):
    return "%02x:%02x:%02x:%02x:%02x:%02x" % (
        b[off], b[off + 1], b[off + 2], b[off + 3], b[off + 4], b[off + 5])


class NetKernel:
    def __init__(self, core, nic, mac, ip, log=LOG_OFF):
        self.core = core
        self.nic = nic
        self.mac = mac
        self.ip = ip
        self.log = log
        self.rx_buf = bytearray(FRAME_BUFFER_SIZE)
        self.tx_buf = bytearray(FRAME_BUFFER_SIZE)
        nic.views(self.rx_buf)   # transfer views made now, not on the first frame
        nic.views(self.tx_buf)
        self.rx_frames = 0
        self.rx_bytes = 0
        self.rx_arp = 0
        self.rx_ipv4 = 0
        self.rx_other = 0
        self.tx_frames = 0
        self.tx_failed = 0

    def poll(self, now_ms):
        """Take up to _BATCH frames from the NIC; return True if more may be waiting."""
        buf = self.rx_buf
        for _ in range(_BATCH):
            n = self.nic.recv_into(buf)
            if n == 0:
                return False
            self.input(buf, n)
        return True

    def input(self, buf, n):
        self.rx_frames += 1
        self.rx_bytes += n
        etype = (buf[12] << 8) | buf[13]
        if etype == _ETH_IPV4:
            self.rx_ipv4 += 1
        elif etype == _ETH_ARP:
            self.rx_arp += 1
        else:
            self.rx_other += 1
        if self.log:
            self._log_frame(buf, n, etype)

    def _log_frame(self, buf, n, etype):
        line = "netkernel: rx core=%d len=%d dst=%s src=%s type=0x%04x" % (
            self.core, n, _mac_str(buf, 0), _mac_str(buf, 6), etype)
        if self.log == LOG_HEX:
            line += " data=" + bytes(buf[:n]).hex()
        print(line)

    def transmit(self, buf, n):
        if self.nic.send(buf, n):
            self.tx_frames += 1
            return True
        self.tx_failed += 1
        return False

    def announce(self):
        """Gratuitous ARP: tell the LAN our IPv4 address is at our MAC."""
        f = self.tx_buf
        for i in range(6):
            f[i] = 0xFF
            f[6 + i] = self.mac[i]
            f[22 + i] = self.mac[i]
            f[32 + i] = 0
        struct.pack_into(">HHHBBH", f, 12, _ETH_ARP, 1, _ETH_IPV4, 6, 4, 1)
        for i in range(4):
            f[28 + i] = self.ip[i]
            f[38 + i] = self.ip[i]
        return self.transmit(f, 42)

    def stats(self):
        return ("core=%d rx_frames=%d rx_bytes=%d rx_arp=%d rx_ipv4=%d rx_other=%d "
                "tx_frames=%d tx_failed=%d" % (
                    self.core, self.rx_frames, self.rx_bytes, self.rx_arp, self.rx_ipv4,
                    self.rx_other, self.tx_frames, self.tx_failed))
