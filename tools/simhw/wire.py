"""The wires a W5500Emulator's PHY connects to.

MemoryWire keeps frames in memory for unit tests. PacketWire is the simulated board's
Ethernet cable, one end of a veth pair: it transmits on an AF_PACKET socket (needs
CAP_NET_RAW, i.e. root in the network namespace the sim runs in) and receives the frames
simhw/phy_rx.py, a process of its own, reads off that interface and passes on a pipe.

Note for whoever sets up the veth pair: the peer's kernel must hand over finished frames,
so turn offloads off on the peer end (`ethtool -K PEER tx off tso off gso off`); otherwise
TCP/UDP checksums arrive unfilled (CHECKSUM_PARTIAL) and TCP segments arrive as
super-frames larger than 1514 bytes, which the emulator drops as oversize.
"""

import _thread
import select
import socket
import struct

from simhw.compat import const, micropython, sleep_ms, ticks_diff, ticks_ms

# A record, on the receive pipe from simhw/phy_rx.py (CPython): a 2-byte length
# (big-endian), then the frame.
REC_HDR = const(2)

_AF_PACKET = const(17)
_POLL_MS = const(100)
_CARRIER_EVERY_MS = const(200)
_RX_BUF = const(2048)          # the largest frame the PHY takes in; longer ones are counted


class MemoryWire:
    """A wire for unit tests: transmitted frames land in self.sent, inject() receives."""

    def __init__(self):
        self.link_up = True
        self.sent = []
        self._emu = None

    def attach(self, emulator):
        self._emu = emulator

    def send(self, frame):
        self.sent.append(bytes(frame))

    def inject(self, frame):
        return self._emu.receive_frame(frame)


class PacketWire:
    """The simulated board's cable: one network interface, the board's end of a veth pair.

    Reception: ``rx_fd`` is the read end of the pipe simhw/phy_rx.py writes what arrives on
    the interface to, a record per frame; a PHY thread reads each into one buffer made here
    and hands it to the emulator (-1: a wire that only transmits, for tests). Transmission:
    send() writes the frame at once, on the caller's thread, to a socket that receives
    nothing.
    """

    def __init__(self, ifname, rx_fd=-1):
        self.ifname = ifname
        self.rx_frames = 0
        self.tx_frames = 0
        self.tx_errors = 0
        self.rx_errors = 0  # the wire's receive errors, and exceptions raised by the emulator
        self.rx_lost = False  # the receiver process is gone: nothing arrives any more
        self.last_error = None
        self._emu = None
        self._sock = None
        self._stop = False
        self._running = False
        self._carrier_path = "/sys/class/net/%s/carrier" % ifname
        self._link = False
        self._link_checked = None  # ticks of the last carrier read
        self._rx_fd = rx_fd
        self._rx = open(rx_fd, "rb") if rx_fd >= 0 else None
        self._rx_hdr = bytearray(REC_HDR)
        self._rx_buf = bytearray(_RX_BUF)

    def attach(self, emulator):
        self._emu = emulator

    def start(self):
        with open("/sys/class/net/%s/ifindex" % self.ifname) as f:
            ifindex = int(f.read())
        # Protocol 0: the socket is not given any frame (simhw/phy_rx.py receives them).
        s = socket.socket(_AF_PACKET, socket.SOCK_RAW, 0)
        try:
            try:
                # struct sockaddr_ll: family, protocol (network order), ifindex, hatype,
                # pkttype, halen, addr[8].
                s.bind(struct.pack("<HHiHBB8s", _AF_PACKET, 0, ifindex, 0, 0, 0, b""))
            except TypeError:
                s.bind((self.ifname, 0))  # CPython wants (ifname, proto) instead
            s.setblocking(False)
        except Exception:
            s.close()
            raise
        self._sock = s
        self._stop = False
        self._running = True
        _thread.start_new_thread(self._phy_loop, ())

    def stop(self):
        self._stop = True
        t0 = ticks_ms()
        while self._running and ticks_diff(ticks_ms(), t0) < 1000:
            sleep_ms(10)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._rx is not None:
            self._rx.close()
            self._rx = None

    def _phy_loop(self):
        poller = select.poll()
        rx_fd = self._rx_fd if self._rx is not None else -1
        if rx_fd >= 0:
            poller.register(rx_fd, select.POLLIN)
        # MicroPython's ipoll() reuses one tuple for what it yields; poll() makes a list of
        # new tuples on every call, and every allocation takes the heap's one mutex, which
        # the board's cores take too.
        wait = getattr(poller, "ipoll", poller.poll)
        try:
            while not self._stop:
                received = False
                for _ in wait(_POLL_MS):   # a record, or the receiver hung up (see _receive)
                    received = True
                if received and not self._receive():
                    poller.unregister(rx_fd)
                    self.rx_lost = True
                    print("simhw: the wire's receiver (phy_rx) is gone: no frame arrives")
        finally:
            self._running = False

    @micropython.native
    def _receive(self):
        # (PHY thread) One record from the receiver into the PHY's buffer, to the emulator;
        # False once the pipe is at its end. Native: a bytecode frame this size would come
        # from the heap on every call, under the mutex the board's cores take too.
        rx = self._rx
        hdr = self._rx_hdr
        try:
            if rx.readinto(hdr) != REC_HDR:
                return False
            n = (hdr[0] << 8) | hdr[1]
            if n == 0:
                # The receiver's socket reported an error (e.g. ENETDOWN while the
                # interface is reconfigured): a PHY keeps listening, so count it.
                self.rx_errors += 1
                return True
            buf = self._rx_buf
            size = len(buf)
            k = n if n < size else size
            if rx.readinto(buf, k) != k:
                return False
            left = n - k
            while left > 0:                # longer than any frame: only its length counts
                k = left if left < size else size
                if rx.readinto(buf, k) != k:
                    return False
                left -= k
        except OSError as e:
            self.rx_errors += 1
            self.last_error = e
            return False
        self.rx_frames += 1
        emu = self._emu
        if emu is None:
            return True
        try:
            # Frames above 1514 bytes are handed over too (as their length and the start of
            # them): the emulator counts them.
            emu.receive_frame(buf, n)
        except Exception as e:
            self.rx_errors += 1
            self.last_error = e
        return True

    @micropython.native
    def send(self, frame):
        """Transmit one frame (an object of the frame's exact length), at once."""
        try:
            if self._sock.write(frame) is None:
                self.tx_errors += 1  # EAGAIN: the interface's queue is full
                return
            self.tx_frames += 1
        except (OSError, AttributeError):
            self.tx_errors += 1

    @property
    def link_up(self):
        # Read the carrier at most every 200 ms: the emulator asks on every PHYCFGR read.
        now = ticks_ms()
        if self._link_checked is None or ticks_diff(now, self._link_checked) >= _CARRIER_EVERY_MS:
            self._link_checked = now
            try:
                with open(self._carrier_path) as f:
                    self._link = f.read().strip() == "1"
            except OSError:
                self._link = False  # reading carrier fails while the interface is down
        return self._link
