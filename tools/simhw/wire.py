"""The wires a W5500Emulator's PHY connects to.

MemoryWire keeps frames in memory for unit tests. PacketWire is the simulated board's
Ethernet cable: an AF_PACKET socket on one end of a veth pair (needs CAP_NET_RAW, i.e.
root in the network namespace the sim runs in).

Note for whoever sets up the veth pair: the peer's kernel must hand over finished frames,
so turn offloads off on the peer end (`ethtool -K PEER tx off tso off gso off`); otherwise
TCP/UDP checksums arrive unfilled (CHECKSUM_PARTIAL) and TCP segments arrive as
super-frames larger than 1514 bytes, which the emulator drops as oversize.
"""

import _thread
import select
import socket
import struct
import time

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_AF_PACKET = const(17)
_ETH_P_ALL_BE = const(0x0300)  # htons(ETH_P_ALL = 0x0003) on a little-endian host
_SOL_PACKET = const(263)
_PACKET_IGNORE_OUTGOING = const(23)
_EAGAIN = const(11)
_POLL_MS = const(100)
_CARRIER_EVERY_MS = const(200)
_RX_BUF = const(2048)

try:
    _ticks_ms = time.ticks_ms
    _ticks_diff = time.ticks_diff
except AttributeError:

    def _ticks_ms():
        return int(time.monotonic() * 1000)

    def _ticks_diff(a, b):
        return a - b


def _sleep_ms(ms):
    try:
        time.sleep_ms(ms)
    except AttributeError:
        time.sleep(ms / 1000)


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
    """The simulated board's cable: an AF_PACKET socket bound to one network interface.

    A PHY thread polls the socket and hands each frame to the emulator; send() transmits
    on the emulator's behalf. Our own transmissions are not looped back
    (PACKET_IGNORE_OUTGOING).
    """

    def __init__(self, ifname):
        self.ifname = ifname
        self.rx_frames = 0
        self.tx_frames = 0
        self.tx_errors = 0
        self.rx_errors = 0  # exceptions raised by the emulator while receiving
        self.last_error = None
        self._emu = None
        self._sock = None
        self._stop = False
        self._running = False
        self._carrier_path = "/sys/class/net/%s/carrier" % ifname
        self._link = False
        self._link_checked = None  # ticks of the last carrier read

    def attach(self, emulator):
        self._emu = emulator

    def start(self):
        with open("/sys/class/net/%s/ifindex" % self.ifname) as f:
            ifindex = int(f.read())
        s = socket.socket(_AF_PACKET, socket.SOCK_RAW, _ETH_P_ALL_BE)
        try:
            s.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
            try:
                # struct sockaddr_ll: family, protocol (network order), ifindex, hatype,
                # pkttype, halen, addr[8].
                s.bind(struct.pack("<HHiHBB8s", _AF_PACKET, _ETH_P_ALL_BE, ifindex, 0, 0, 0, b""))
            except TypeError:
                s.bind((self.ifname, 0x0003))  # CPython wants (ifname, proto) instead
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
        t0 = _ticks_ms()
        while self._running and _ticks_diff(_ticks_ms(), t0) < 1000:
            _sleep_ms(10)
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _phy_loop(self):
        sock = self._sock
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        try:
            while not self._stop:
                if not poller.poll(_POLL_MS):
                    continue
                try:
                    # One datagram per call. (MicroPython's readinto() on a non-blocking
                    # socket keeps reading until the buffer is full, gluing frames
                    # together; recv() is one recvfrom(2). It allocates the frame, but
                    # this is the simulated PHY, not the firmware.)
                    frame = sock.recv(_RX_BUF)
                except MemoryError as e:
                    # The firmware has the heap nearly full: this frame is lost on the
                    # wire, as on a real link whose receiver is overrun. Keep listening.
                    self.rx_errors += 1
                    self.last_error = e
                    _sleep_ms(1)
                    continue
                except OSError as e:
                    if e.args[0] != _EAGAIN:
                        # e.g. ENETDOWN while the interface is reconfigured: a PHY keeps
                        # listening, so count it and carry on.
                        self.rx_errors += 1
                        self.last_error = e
                        _sleep_ms(10)
                    continue
                if not frame:
                    continue
                self.rx_frames += 1
                emu = self._emu
                if emu is None:
                    continue
                try:
                    # Frames above 1514 bytes are handed over too: the emulator counts them.
                    emu.receive_frame(frame)
                except Exception as e:
                    self.rx_errors += 1
                    self.last_error = e
        finally:
            self._running = False

    def send(self, frame):
        try:
            self._sock.send(frame)
            self.tx_frames += 1
        except (OSError, AttributeError):
            self.tx_errors += 1  # interface down, or not started

    @property
    def link_up(self):
        # Read the carrier at most every 200 ms: the emulator asks on every PHYCFGR read.
        now = _ticks_ms()
        if self._link_checked is None or _ticks_diff(now, self._link_checked) >= _CARRIER_EVERY_MS:
            self._link_checked = now
            try:
                with open(self._carrier_path) as f:
                    self._link = f.read().strip() == "1"
            except OSError:
                self._link = False  # reading carrier fails while the interface is down
        return self._link
