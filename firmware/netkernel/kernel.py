# A net kernel: one per core, owning its receive buffer, counters and its own TCP/IPv4 stack
# instance. No module-level mutable state; time is passed in by the caller.
#
# One turn: take up to _BATCH frames from the NIC and run each through the whole stack to
# completion, then run the stack's timers and pending output. Bounded work per turn, so
# core 0's USB and timers keep their turn.
import micropython
from micropython import const

from netkernel.stack import Stack
from netkernel.w5500 import FRAME_BUFFER_SIZE

_BATCH = const(16)
LOG_OFF = const(0)
LOG_SUMMARY = const(1)
LOG_HEX = const(2)


def _mac_str(b, off):
    return "%02x:%02x:%02x:%02x:%02x:%02x" % (
        b[off], b[off + 1], b[off + 2], b[off + 3], b[off + 4], b[off + 5])


class NetKernel:
    def __init__(self, core, nic, mac, ip, prefix, gateway, stack_config=None, log=LOG_OFF):
        self.core = core
        self.nic = nic
        self.log = log
        self.rx_buf = bytearray(FRAME_BUFFER_SIZE)
        nic.views(self.rx_buf)   # transfer views made now, not on the first frame
        self.stack = Stack(nic.send, mac, ip, prefix, gateway, stack_config)
        nic.views(self.stack.iface.tx)
        self.rx_frames = 0
        self.rx_bytes = 0
        self.turns = 0

    @micropython.native
    def poll(self, now, rx=True):
        """One turn (frames from the NIC only if ``rx``); True if frames may be waiting."""
        self.turns += 1
        buf = self.rx_buf
        more = False
        for _ in range(_BATCH if rx else 0):
            more = True
            n = self.nic.recv_into(buf)
            if n == 0:
                more = False
                break
            self.rx_frames += 1
            self.rx_bytes += n
            if self.log:
                self._log_frame(buf, n)
            self.stack.input(buf, n, now)
        self.stack.poll(now)
        return more

    def _log_frame(self, buf, n):
        line = "netkernel: rx core=%d len=%d dst=%s src=%s type=0x%04x" % (
            self.core, n, _mac_str(buf, 0), _mac_str(buf, 6), (buf[12] << 8) | buf[13])
        if self.log == LOG_HEX:
            line += " data=" + bytes(buf[:n]).hex()
        print(line)

    def transmit(self, buf, n):
        """Send a ready-made frame (the host's diagnostic KIND_WIRE_TX)."""
        return self.nic.send(buf, n)

    def stats(self):
        """name=value pairs of this kernel and every layer of its stack (allocates)."""
        parts = ["core=%d rx_frames=%d rx_bytes=%d turns=%d tcp_conns=%d" % (
            self.core, self.rx_frames, self.rx_bytes, self.turns,
            self.stack.tcp.connection_count())]
        layers = self.stack.counters()
        for layer in sorted(layers):
            values = layers[layer]
            for name in sorted(values):
                parts.append("%s.%s=%d" % (layer, name, values[name]))
        return " ".join(parts)
