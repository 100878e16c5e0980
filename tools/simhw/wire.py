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

from simhw.bytecopy import copy_bytes
from simhw.compat import const, micropython, sleep_ms, sleep_us, ticks_diff, ticks_ms

# A record, on the receive pipe from simhw/phy_rx.py (CPython) and in the transmit FIFO: a
# 2-byte length (big-endian), then the frame.
REC_HDR = const(2)

_AF_PACKET = const(17)
_POLL_MS = const(100)
_CARRIER_EVERY_MS = const(200)
_RX_BUF = const(2048)          # the largest frame the PHY takes in; longer ones are counted
_FIFO_TRIES = const(200)       # a sender waits at most this many times 50 us for room

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
    and hands it to the emulator (-1: a wire that only transmits, for tests). Transmission,
    on a socket that receives nothing, with a transmit FIFO (``tx_fifo_bytes`` > 0, woken
    through ``tx_wake``, a WakePipe): send() copies the frame into the FIFO and the PHY
    thread puts it on the wire, as the W5500 sends a frame by itself once SEND is given.
    Without one, send() writes to the socket at once, on the caller's thread.

    Why the FIFO: writing to a veth runs the peer's whole receive path (its TCP included)
    inside that system call, about 50 us for an ACK, on the thread that sends. Without the
    FIFO that is the board core's time, under its chip lock, and a paced core is charged
    for it again several times over (measured, runs taken in turns: the paced 1-kernel
    board 2.9 to 3.1 MB/s with it, 2.4 to 2.7 without). The hand-off to the PHY thread
    costs a thread wake-up, so boards at host speed send at once (boards/sim.py).
    """

    def __init__(self, ifname, tx_fifo_bytes=0, tx_wake=None, rx_fd=-1):
        self.ifname = ifname
        self.rx_frames = 0
        self.tx_frames = 0
        self.tx_errors = 0
        self.tx_queued = 0  # frames that went through the FIFO
        self.tx_fifo_waits = 0  # a sender found the FIFO full and waited
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
        if tx_fifo_bytes > 0 and tx_wake is None:
            raise ValueError("a transmit FIFO needs a wake-up for the PHY thread")
        self._fifo = bytearray(tx_fifo_bytes) if tx_fifo_bytes > 0 else None
        self._fifo_lock = _thread.allocate_lock()
        self._head = 0  # the next record to send (PHY thread)
        self._tail = 0  # where the next record goes (senders)
        self._used = 0  # bytes taken: records, and the unused end skipped by a wrap
        self._tx_wake = tx_wake
        self._phy_waiting = False  # the PHY thread waits on tx_wake: a sender must wake it
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
        wake = self._tx_wake
        wake_fd = -1
        if wake is not None and wake.fileno() >= 0:
            wake_fd = wake.fileno()
            poller.register(wake_fd, select.POLLIN)
        fifo = self._fifo is not None
        # MicroPython's ipoll() reuses one tuple for what it yields; poll() makes a list of
        # new tuples on every call, and every allocation takes the heap's one mutex, which
        # the board's cores take too.
        wait = getattr(poller, "ipoll", poller.poll)
        try:
            while not self._stop:
                if fifo:
                    self._send_queued()    # all of it: a frame queued after wakes us
                ready = wait(_POLL_MS)
                self._phy_waiting = False
                received = False
                for entry in ready:
                    if entry[0] == wake_fd:
                        wake.drain()
                    else:                  # a record, or the receiver hung up (see _receive)
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
        """Transmit one frame (an object of the frame's exact length): queued for the PHY
        thread if there is a FIFO, else written at once."""
        if self._fifo is None:
            self._write_from(frame, 0, len(frame))
            return
        lock = self._fifo_lock
        for _ in range(_FIFO_TRIES):
            lock.acquire()
            try:
                queued = self._put(frame)
                wake = queued and self._phy_waiting
                if wake:
                    self._phy_waiting = False
                if queued:
                    self.tx_queued += 1
            finally:
                lock.release()
            if queued:
                if wake:
                    self._tx_wake.set()
                return
            # Full: the wire is behind. The chip holds the frame until there is room.
            self.tx_fifo_waits += 1
            sleep_us(50)
        self.tx_errors += 1  # the PHY thread stopped taking frames (stopped wire)

    @micropython.native
    def _put(self, frame):
        # (FIFO lock held) One record at the tail; False if there is no room for it. A
        # record is never split: one that does not fit before the end starts again at 0.
        fifo = self._fifo
        size = len(fifo)
        n = len(frame)
        need = REC_HDR + n
        if self._used == 0:
            self._head = self._tail = 0
        tail = self._tail
        skip = size - tail if tail + need > size else 0
        if self._used + skip + need > size:
            return False
        if skip:
            if skip >= REC_HDR:
                fifo[tail] = fifo[tail + 1] = 0   # length 0: the rest of the FIFO is unused
            tail = 0
        fifo[tail] = n >> 8
        fifo[tail + 1] = n & 0xFF
        copy_bytes(fifo, tail + REC_HDR, frame, 0, n)
        self._tail = tail + need
        self._used += skip + need
        return True

    @micropython.native
    def _send_queued(self):
        # (PHY thread) Put every queued record on the wire, in order. The record being sent
        # stays counted as used, so no sender overwrites it meanwhile.
        fifo = self._fifo
        size = len(fifo)
        lock = self._fifo_lock
        while True:
            lock.acquire()
            head = self._head
            if self._used == 0:
                self._phy_waiting = True   # a sender from now on wakes the PHY thread
                lock.release()
                return
            if size - head < REC_HDR or (fifo[head] | fifo[head + 1]) == 0:
                self._used -= size - head
                self._head = 0
                lock.release()
                continue
            n = (fifo[head] << 8) | fifo[head + 1]
            lock.release()
            start = head + REC_HDR
            self._write_from(fifo, start, n)
            lock.acquire()
            self._head = start + n
            self._used -= REC_HDR + n
            lock.release()

    @micropython.native
    def _write_from(self, buf, off, n):
        # buf[off:off + n] as one frame, from the FIFO or (no FIFO) straight from the
        # chip. The stream write takes an offset, where a slice would be a new view per
        # frame, and every allocation takes the heap's one mutex, which the board's cores
        # share with this thread.
        try:
            if self._sock.write(buf, off, n) is None:
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
