# The receive path's cost per TCP segment, counted: run inside the MicroPython unix port
# under valgrind (tools/bench.py's "yardstick" does both), so the figure is the same on
# every run and every machine.
#
#   micropython tools/segment_cost.py record FILE    (MICROPYPATH=firmware)
#   micropython tools/segment_cost.py handshake|all FILE [kernel]
#
# A sender stack streams bulk data into a receiver's discard service (port 9), back to back
# in one process; every call the receiver gets (a frame in, a poll) is recorded with its
# time. Then a second receiver, alike in everything (its RFC 6528 key too, so its sequence
# numbers are the same), replays them from the file with nothing listening to what it
# sends, in a process of its own (the recording would fill the heap the collector scans).
# Two runs, one replaying the handshake only and one replaying everything, differ by the
# cost of the data segments alone: their frames in, the ACKs out, the discard service
# reading. With ``kernel`` the frames take a one-kernel board's path instead: a NIC that
# reads the recording (no SPI bus), the dispatcher, the rings, the net kernel's turn.
# Printed: "segments=<data segments> calls=<calls> replayed=<replayed>".
# The recorder's TCP counters (FILE.tcp) are checked after a whole replay: a replay that
# went another way would count something else.
import struct
import sys
import time

from netkernel.stack import Stack, StackConfig
from netkernel.tcp import ESTABLISHED

_MAC_TX = b"\x02\x00\x00\x00\x00\x0a"
_MAC_RX = b"\x02\x00\x00\x00\x00\x0b"
_IP_TX = bytes([10, 9, 0, 1])
_IP_RX = bytes([10, 9, 0, 2])
_GW = bytes([10, 9, 0, 254])
_KEY = b"segment-cost-key"
_MSS = 1460
_SEGMENTS = 400
_DISCARD = 9
_SENDER_PORT = 49152


class _Cable:
    """Frames one way, copied as they are sent (recording is allowed to allocate)."""

    def __init__(self):
        self.frames = []

    def send(self, buf, n):
        self.frames.append(bytes(buf[:n if n >= 60 else 60]))
        return True


def _receiver_config():
    # A kernel of the 2-kernel RP2040 board: boards/rp2040.py's pools, node.rx_budget()'s
    # receive budget (3 segments).
    return StackConfig(services=True, tcp_max_connections=16, tcp_rx_pool=8192,
                       tcp_tx_pool=4096, reasm_max_bytes=4096, tcp_rx_budget=3 * _MSS)


def _receiver(send):
    rx = Stack(send, _MAC_RX, _IP_RX, 24, _GW, _receiver_config())
    rx.tcp.secret = _KEY
    return rx


def record():
    """The receiver's calls for _SEGMENTS full data segments: (frame or None, now)."""
    to_rx = _Cable()
    to_tx = _Cable()
    tx = Stack(to_rx.send, _MAC_TX, _IP_TX, 24, _GW, StackConfig(services=False))
    rx = _receiver(to_tx.send)
    tx.tcp.secret = _KEY
    calls = []
    now = 0
    # A fixed port, key and clock: the recording, and so every count, is the same each run
    # (a random port moved the dispatcher's flow-table probes, and the count with them).
    sock = tx.tcp.connect(_IP_RX, 0, _DISCARD, now, local_port=_SENDER_PORT)
    out = bytearray(_MSS)
    segments = 0
    handshake = -1
    for _ in range(100000):
        if handshake < 0 and sock.state >= ESTABLISHED:    # the handshake is over
            handshake = len(calls)
        if handshake >= 0 and segments < _SEGMENTS:
            sock.send(out, 0, _MSS)
        while to_rx.frames or to_tx.frames:
            if to_rx.frames:
                f = to_rx.frames.pop(0)
                if len(f) > 54 + 20:
                    segments += 1
                calls.append((f, now))
                rx.input(f, len(f), now)
            if to_tx.frames:
                f = to_tx.frames.pop(0)
                tx.input(f, len(f), now)
        tx.poll(now)
        calls.append((None, now))
        rx.poll(now)
        if segments >= _SEGMENTS and sock.send_space() == sock.tx.size:
            break
        now = time.ticks_add(now, 1)
    return calls, handshake, segments, rx


def _discard(buf, n):
    return True


def save(path):
    """Record, and write the calls: per call a 2-byte frame length (0: a poll), a 4-byte
    time, the frame; the handshake's call count and the data segments first."""
    calls, handshake, segments, recorded = record()
    with open(path, "wb") as f:
        f.write(struct.pack("<III", len(calls), handshake, segments))
        for frame, now in calls:
            f.write(struct.pack("<HI", len(frame) if frame else 0, now))
            if frame:
                f.write(frame)
    return recorded.tcp.counters()


class _Recording:
    """The recorded calls, read one at a time: a frame into a caller's buffer, or a poll."""

    def __init__(self, path, whole):
        self.f = open(path, "rb")
        head = bytearray(12)
        self.f.readinto(head)
        self.ncalls, handshake, self.segments = struct.unpack("<III", head)
        self.count = self.ncalls if whole else handshake
        self.done = 0
        self.rec = memoryview(head)[:6]
        self.n = -1           # the next call read ahead: frame length (0 a poll), its time
        self.now = 0

    def peek(self):
        """The next call's frame length (0: a poll), or -1 at the end; it stays next."""
        if self.n < 0 and self.done < self.count:
            self.f.readinto(self.rec)
            self.n, self.now = struct.unpack("<HI", self.rec)
        return self.n

    def take_frame(self, buf):
        n = self.n
        self.f.readinto(memoryview(buf)[:n])
        self.n = -1
        self.done += 1
        return n

    def take_poll(self):
        self.n = -1
        self.done += 1
        return self.now


class _RecordedNic:
    """The kernel path's chip: frames come from the recording up to the next poll, what is
    sent goes nowhere (a driver's calls without the SPI bus)."""

    def __init__(self, recording):
        self.recording = recording

    def views(self, buf):
        return None

    def recv_into(self, buf):
        if self.recording.peek() <= 0:
            return 0
        return self.recording.take_frame(buf)

    def send(self, buf, n):
        return True

    def clear_interrupt(self):
        pass

    def rx_release(self):
        pass


def replay_stack(recording):
    """Each call into a new receiver's Stack: input() a frame, poll()."""
    rx = _receiver(_discard)
    buf = bytearray(1536)
    while True:
        n = recording.peek()
        if n < 0:
            return rx
        if n == 0:
            rx.poll(recording.take_poll())
        else:
            rx.input(buf, recording.take_frame(buf), recording.now)


def replay_kernel(recording):
    """The same frames through a one-kernel board's path: the dispatcher reads them from the
    NIC into frame slots and rings them to the kernel, whose turn runs them through the
    stack and then polls it, once per recorded poll (the frames before a poll are the ones
    the recorder delivered in that turn)."""
    from netkernel.cores import Cores

    cores = Cores(_RecordedNic(recording), 1, _MAC_RX, _IP_RX, 24, _GW, _receiver_config(),
                  0, ring_capacity=6, flow_capacity=16, handoff_bytes=4096)
    rx = cores.kernels[0].stack
    rx.tcp.secret = _KEY
    while True:
        n = recording.peek()
        if n < 0:
            return rx
        cores.turn(recording.now, True)     # the frames before the next poll, and the poll
        if recording.peek() == 0:
            recording.take_poll()


def main():
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "record":
        counters = save(path)
        with open(path + ".tcp", "w") as f:
            for k in counters:
                f.write("%s %d\n" % (k, counters[k]))
        return
    recording = _Recording(path, mode == "all")
    kernel = len(sys.argv) > 3 and sys.argv[3] == "kernel"
    rx = replay_kernel(recording) if kernel else replay_stack(recording)
    if mode == "all":
        # The replay must have done what the recording did, or the count measures something
        # else (a segment out of window, a challenge ACK...).
        got = rx.tcp.counters()
        with open(path + ".tcp") as f:
            for line in f:
                k, v = line.split()
                if got[k] != int(v):
                    raise SystemExit("replay differs: tcp.%s %d != %s" % (k, got[k], v))
    print("segments=%d calls=%d replayed=%d" % (recording.segments, recording.ncalls,
                                                recording.count))


main()
