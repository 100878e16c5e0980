# The simulated board's heap limit: the real RP2040's free heap plus what the emulated
# hardware itself takes, so the firmware gets no more than on a real board.
import gc

import boardfake
import sim
from netkernel.node import Node


def _allocated():
    gc.collect()
    return gc.mem_alloc()


def test_heap_limit_covers_the_emulated_hardware_and_no_more():
    before = _allocated()
    from simhw.w5500_emulator import W5500Emulator
    from simhw.wire import PacketWire

    wire = PacketWire("lo")
    chip = W5500Emulator(wire)
    hardware_bytes = _allocated() - before
    reserve = sim.EMULATOR_HEAP_BYTES
    print("emulated hardware uses", hardware_bytes, "bytes; reserve", reserve)
    assert hardware_bytes <= reserve
    # Held back whole on every board (boards/sim.py Hardware): sized to the hardware, not
    # padded out of the firmware's heap.
    assert reserve - hardware_bytes < 12 * 1024
    del chip, wire


def test_firmware_after_start_fits_the_rp2040_heap_with_room_to_spare():
    from simhw.w5500_emulator import W5500Emulator
    from simhw.wire import MemoryWire
    before = _allocated()
    chip = W5500Emulator(MemoryWire())
    chip_bytes = _allocated() - before
    del chip
    before = _allocated()
    node = Node(boardfake)
    node.start()
    # boardfake's hardware is an emulator on a MemoryWire: the firmware's part is the rest.
    # Its code is not in it either (imported before `before`; `twinstack sim` adds it to the
    # heap, as it is in flash on a real board).
    firmware = _allocated() - before - chip_bytes
    left = sim.HEAP_BYTES - sim.EMULATOR_HEAP_BYTES - firmware
    print("firmware after start:", firmware, "bytes;", left, "left")
    # The simulated board gives the firmware HEAP_BYTES less the emulated hardware's whole
    # reserve. This board's one kernel must leave at least the 40 KB the RP2040's default
    # configuration keeps (its calibrated figures: tests/e2e/test_sim_lifecycle.py).
    assert left >= 40 * 1024, firmware
    node.stop()


def _busy(us):
    import time
    t0 = time.ticks_us()
    while time.ticks_diff(time.ticks_us(), t0) < us:
        pass


def _meters():
    """The simulated boards' metering (simhw.meters), without their emulated hardware."""
    from simhw.meters import Meters
    return Meters()


def test_a_metered_function_adds_the_time_of_its_calls_to_the_named_meter():
    import fwtest
    from netkernel.busy import BusyTime
    hw = _meters()
    got = []

    def recv_into(buf):
        _busy(2000)
        got.append(buf)
        return 7

    def send(buf, n):
        _busy(1000)
        got.append((buf, n))
        return n

    def turn(now):
        _busy(3000)

    recv = hw.metered("nic", recv_into, 1)
    snd = hw.metered("nic", send, 2)       # a meter two functions share
    k0 = hw.metered("k0", turn, 1)
    assert recv("a") == 7 and snd("b", 3) == 3 and k0(5) is None
    assert got == ["a", ("b", 3)]
    assert sorted(hw.meters) == ["k0", "nic"]
    nic, k = hw.meters["nic"], hw.meters["k0"]
    assert isinstance(nic, BusyTime) and isinstance(k, BusyTime)
    assert 3000 <= nic.total_us() < 50000, nic.total_us()
    assert 3000 <= k.total_us() < 50000, k.total_us()
    k0(6)
    assert k.total_us() >= 6000 and nic.total_us() < 50000

    def fails(a):
        raise OSError(5)

    assert fwtest.raises(OSError, hw.metered("nic", fails, 1), 1).args[0] == 5
    fwtest.raises(ValueError, hw.metered, "nic", send, 3)


def test_a_metered_call_allocates_nothing():
    # The firmware's loops call metered functions for every frame and every turn, on the
    # board's cores: an allocation would take the heap's one mutex, which the other core
    # and the PHY thread share.
    import micropython
    hw = _meters()

    def recv_into(buf):
        return len(buf)

    def send(buf, n):
        return n

    recv = hw.metered("nic", recv_into, 1)
    snd = hw.metered("nic", send, 2)
    buf = bytearray(8)
    recv(buf)
    snd(buf, 3)                  # first calls
    used = 0
    for _ in range(50):
        before = micropython.mem_total()
        recv(buf)
        snd(buf, 3)
        used += micropython.mem_total() - before
    assert used == 0, used
    assert hw.meters["nic"].total_us() >= 0


class _CountingSocket:
    """The PHY's socket, counting what is written to it (without allocating)."""

    def __init__(self):
        self.frames = 0
        self.bytes = 0

    def write(self, buf):
        self.frames += 1
        self.bytes += len(buf)
        return len(buf)


def test_what_the_cores_call_in_the_simulated_hardware_allocates_nothing():
    # The board's cores call the PHY's send (each frame sent), core 0's wake-up (a kernel
    # that queued frames for it) and the USB stream (each turn of core 0). heap_lock()
    # cannot see a bytecode function's frame taken from the heap, but every allocation
    # takes the heap's one mutex, which the other core and the PHY thread share (measured
    # with perf: the stream's readinto made the cores wait on it). mem_total() counts them.
    import micropython
    from simhw.usb import PtyStream
    from simhw.wake import WakePipe
    from simhw.wire import PacketWire
    wire = PacketWire("lo")
    wire._sock = _CountingSocket()
    wake_r, wake_w, wake_file = _pipe()
    wake = WakePipe(wake_r, wake_w)
    usb_fd, _, usb_file = _pipe()
    usb = PtyStream(usb_fd)       # a pipe with nothing in it: what a quiet host link reads
    buf = bytearray(64)
    frame, ack = bytearray(1514), bytearray(60)
    wire.send(frame)              # first calls
    wire.send(ack)
    wake.set()
    usb.readinto(buf)
    used = 0
    for _ in range(50):
        before = micropython.mem_total()
        wire.send(frame)
        wire.send(ack)
        wake.set()
        assert usb.readinto(buf) == 0
        used += micropython.mem_total() - before
    assert used == 0, used
    assert wire.tx_frames == 102 and wire.tx_errors == 0
    assert wire._sock.frames == 102 and wire._sock.bytes == 51 * (1514 + 60)
    assert wake.sets == 51
    assert wake_file and usb_file         # (kept open until here)


def _pipe():
    """A pipe's two ends, as file descriptors (MicroPython's os has no pipe(): a FIFO node,
    opened for reading and writing at once, which never blocks the open). The file object
    is returned too, to be kept: it closes the descriptor when collected, and the objects
    made on the same descriptor would then use a closed one. The test process ends with
    the test."""
    import os
    import time
    path = "/tmp/twinstack-test-fifo-%d" % time.ticks_us()
    os.system("mkfifo " + path)
    try:
        f = open(path, "r+b")
    finally:
        os.remove(path)
    return f.fileno(), f.fileno(), f


class _ChipTakingFrames:
    """The emulator's receive_frame(), keeping a frame's length and what the PHY had of it
    in its buffer."""

    def __init__(self, keep=True):
        self.keep = keep
        self.frames = []
        self.count = 0

    def receive_frame(self, frame, n):
        self.count += 1
        if self.keep:
            self.frames.append((n, bytes(frame[:n]) if n <= len(frame) else None))
        return True


def _records_file(frames, tail=b""):
    """A file holding ``frames`` as simhw/phy_rx.py writes them to the PHY's pipe, then
    ``tail``, opened for reading (a file's end stands for the receiver hanging up). The file
    object keeps its descriptor open for the wire under test: close it when done."""
    import os
    import time

    from simhw.wire import REC_HDR
    path = "/tmp/twinstack-test-records-%d" % time.ticks_us()
    with open(path, "wb") as f:
        for frame in frames:
            f.write(len(frame).to_bytes(REC_HDR, "big") + frame)
        f.write(tail)
    try:
        return open(path, "rb")
    finally:
        os.remove(path)


def test_the_phy_takes_each_record_of_its_receiver_whole_and_stops_at_the_end():
    from simhw.wire import PacketWire
    small = bytes(range(60))
    full = bytes(i & 0xFF for i in range(1514))
    too_long = bytes(3000)                 # longer than the PHY's buffer: only its length
    after = b"\xaa" * 64
    cut = (100).to_bytes(2, "big") + bytes(10)    # the receiver ended inside a record
    f = _records_file([small, full, too_long, b"", after], cut)   # b"": the wire's error
    wire = PacketWire("lo", rx_fd=f.fileno())
    chip = _ChipTakingFrames()
    wire.attach(chip)
    for _ in range(5):
        assert wire._receive()
    assert chip.frames == [(60, small), (1514, full), (3000, None), (64, after)]
    assert wire.rx_frames == 4 and wire.rx_errors == 1
    assert not wire._receive()             # the record cut short: the receiver is gone
    assert wire.rx_frames == 4 and len(chip.frames) == 4
    f.close()


def test_receiving_a_frame_allocates_nothing():
    import micropython
    from simhw.wire import PacketWire
    f = _records_file([bytes(1514)] * 12)
    wire = PacketWire("lo", rx_fd=f.fileno())
    chip = _ChipTakingFrames(keep=False)
    wire.attach(chip)
    used = 0
    for i in range(12):
        before = micropython.mem_total()
        wire._receive()
        if i >= 2:
            used += micropython.mem_total() - before
    assert used == 0, used
    assert chip.count == 12 and wire.rx_frames == 12
    f.close()
