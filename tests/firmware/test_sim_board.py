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
    from simhw.wake import WakePipe
    from simhw.wire import PacketWire

    wire = PacketWire("lo", tx_fifo_bytes=sim.TX_FIFO_BYTES, tx_wake=WakePipe(-1, -1))
    chip = W5500Emulator(wire)
    hardware_bytes = _allocated() - before
    reserve = sim.EMULATOR_HEAP_BYTES
    print("emulated hardware uses", hardware_bytes, "bytes; reserve", reserve)
    assert hardware_bytes <= reserve
    # Held back whole on every board (boards/sim.py Hardware): sized to the hardware, the
    # FIFO's board's, not padded out of the firmware's heap.
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


def test_a_paced_core_sleeps_what_a_slower_core_would_have_worked_on():
    import time
    pacer = sim._Pacer(25)                 # a quarter of a host core: 3 times as long again
    t0 = time.ticks_us()
    for _ in range(10):
        pacer.turn_took(1000)               # ten turns of 1 ms each
    slept = time.ticks_diff(time.ticks_us(), t0)
    assert 28000 <= slept < 60000, slept   # 30 ms owed, minus what is still carried
    fast = sim._Pacer(100)
    t0 = time.ticks_us()
    fast.turn_took(1000)
    assert time.ticks_diff(time.ticks_us(), t0) < 1000


def test_a_paced_turn_leaves_out_the_time_the_host_kept_the_core_waiting():
    import time
    pacer = sim._Pacer(75)                 # 3/4 of a host core: a turn costs a third again
    waits = [0, 700]                       # run-queue wait (us) at begin() and at end()
    pacer._run_wait_us = lambda: waits.pop(0)
    pacer.begin()
    t0 = time.ticks_us()
    while time.ticks_diff(time.ticks_us(), t0) < 1000:
        time.ticks_us()                    # busy for 1 ms of wall time, 0.7 ms preempted
    pacer.end()
    assert pacer.preempted_us == 700
    assert 300 <= pacer.work_us < 400, pacer.work_us    # the core's own work, counted
    # Only the core's own ~300 us count: ~100 us owed, too little to sleep yet, so carried
    # (all 1,000 us would owe 333 us, and that is slept at once).
    assert 80 <= pacer._debt < 200, pacer._debt


def test_a_run_queue_wait_in_exempt_time_is_not_taken_off_the_turn_again():
    # A turn of 1,000 us: 600 on the bus (exempt), 400 the core's own; the host kept the
    # thread waiting 500 us in all. Spread over the turn, 200 us of that wait fell in the
    # core's own 400: it is charged 200 (taking off all 500 again charged it nothing).
    import time
    pacer = sim._Pacer(50)
    waits = [0, 500]
    pacer._run_wait_us = lambda: waits.pop(0)
    charged = []
    pacer.turn_took = charged.append
    pacer.begin()
    t0 = time.ticks_us()
    pacer.exempt_us += 600
    while time.ticks_diff(time.ticks_us(), t0) < 1000:
        pass
    pacer.end()
    assert 190 <= charged[0] <= 240, charged
    assert 190 <= pacer.preempted_us <= 220 and pacer.work_us == charged[0]


def test_the_pacer_reads_its_own_threads_run_queue_wait():
    pacer = sim._Pacer(50)
    first = pacer._run_wait_us()
    assert first >= 0 and pacer._run_wait_us() >= first
    buf = bytearray(b"123456789 4500123 77\n")
    assert sim._second_field(buf, len(buf)) == 4500123


def _busy(us):
    import time
    t0 = time.ticks_us()
    while time.ticks_diff(time.ticks_us(), t0) < us:
        pass


def _paced_core(percent, cores):
    """A pacer registered for the calling thread, with no run-queue wait to read; what its
    turns are charged for is kept in ``charged`` (and not slept)."""
    pacer = sim._Pacer(percent, cores)
    pacer._run_wait_us = lambda: 0
    pacer.charged = []
    pacer.turn_took = pacer.charged.append
    pacer.begin()
    return pacer


def test_a_paced_core_holds_a_shared_lock_as_long_as_a_core_of_its_speed_would():
    import time
    cores = sim._PacedCores()
    pacer = _paced_core(25, cores)          # a quarter of a host core: 4 times as long
    lock = sim._PacedLock(cores)
    t0 = time.ticks_us()
    assert lock.acquire()
    _busy(500)                              # 500 us of the core's work under the lock
    lock.release()
    held = time.ticks_diff(time.ticks_us(), t0)
    assert not lock.locked()
    assert 2000 <= held < 8000, held        # the other 1,500 us paid before letting go
    assert 500 <= lock.held_us < 1500 and 1500 <= lock.paid_us < 2000, (
        lock.held_us, lock.paid_us)
    pacer.end()
    assert pacer.charged[0] < 300, pacer.charged   # and not charged again at the turn's end


def test_taking_and_releasing_a_paced_lock_is_the_locks_time_not_the_cores():
    # The paced lock's own Python stands in for a `_thread` lock's C call: a core taking
    # and releasing it with nothing in between is charged for little more than its loop.
    cores = sim._PacedCores()
    pacer = _paced_core(50, cores)
    lock = sim._PacedLock(cores)
    for _ in range(1000):
        lock.acquire()
        lock.release()
    pacer.end()
    assert pacer.lock_wait_us == 0
    assert pacer.charged[0] < pacer.exempt_us // 2, (pacer.charged, pacer.exempt_us)


def test_a_nested_lock_is_paid_for_once():
    cores = sim._PacedCores()
    pacer = _paced_core(50, cores)
    outer, inner = sim._PacedLock(cores), sim._PacedLock(cores)
    outer.acquire()
    _busy(300)
    inner.acquire()
    _busy(300)
    inner.release()                         # pays its 300 us, inside the outer hold
    outer.release()
    assert 300 <= inner.held_us < 600 and 300 <= outer.held_us < 600, (
        inner.held_us, outer.held_us)
    assert pacer.held_us == inner.held_us + outer.held_us


def test_waiting_for_a_lock_the_other_core_holds_is_not_charged_to_the_waiter():
    import _thread
    import time
    cores = sim._PacedCores()
    holder = _paced_core(50, cores)
    lock = sim._PacedLock(cores)
    lock.acquire()
    result = []

    def other_core():
        waiter = _paced_core(50, cores)
        result.append(None)                 # registered: the holder may start its work
        lock.acquire()                      # spins, then blocks
        lock.release()
        waiter.end()
        result.append(waiter)

    _thread.start_new_thread(other_core, ())
    deadline = time.ticks_add(time.ticks_ms(), 2000)
    while not result and time.ticks_diff(deadline, time.ticks_ms()) > 0:
        time.sleep_ms(1)
    _busy(1000)                             # 1 ms of work: held 2 ms, paid included
    lock.release()
    holder.end()
    while len(result) < 2 and time.ticks_diff(deadline, time.ticks_ms()) > 0:
        time.sleep_ms(1)
    waiter = result[1]
    assert waiter.lock_wait_us >= 1000, waiter.lock_wait_us
    # Its turn was nearly all waiting: charged for a fraction of it.
    assert waiter.charged[0] < waiter.lock_wait_us // 4, (waiter.charged, waiter.lock_wait_us)
    assert cores.current() is holder


def test_a_paced_bus_transaction_takes_its_bytes_time_and_that_time_is_not_the_cores():
    import time

    class Spi:
        def write(self, buf):
            pass

        def readinto(self, buf, write=0):
            pass

    pin = []
    cores = sim._PacedCores()
    pacer = _paced_core(50, cores)
    bus = sim._PacedBus(Spi(), pin.append, 8_000_000, cores)      # a byte a microsecond
    cs = bus.select
    t0 = time.ticks_us()
    cs(0)
    bus.write(bytearray(1000))
    bus.readinto(bytearray(500))
    cs(1)
    took = time.ticks_diff(time.ticks_us(), t0)
    assert pin == [0, 1]
    assert 1500 <= took < 6000, took
    assert 1500 <= pacer.bus_us <= took, (pacer.bus_us, took)
    t0 = time.ticks_us()
    cs(1)                                   # high again: no transaction, no bus time
    cs(0)
    cs(1)                                   # no bytes: only the pin's own time
    assert time.ticks_diff(time.ticks_us(), t0) < 1000
    assert pacer.bus_us < took + 1000
    pacer.end()
    assert pacer.charged[0] < 300, pacer.charged


def test_pacing_the_cores_locks_bus_and_pins_allocates_nothing():
    # Called on the board's cores for every SPI transaction: an allocation would take the
    # heap's one mutex, which the other core and the PHY thread share.
    import micropython
    from simhw.w5500_emulator import W5500Emulator
    cores = sim._PacedCores()
    _paced_core(33, cores)
    chip = W5500Emulator(None)
    bus = sim._PacedBus(chip.spi, chip.cs, 800_000_000, cores)
    cs = bus.select
    lock = sim._PacedLock(cores)
    hdr, reg = bytearray(b"\x00\x39\x00"), bytearray(1)     # VERSIONR
    used = 0
    for i in range(52):                      # the first 2: first calls, not counted
        before = micropython.mem_total()
        lock.acquire()
        cs(0)
        bus.write(hdr)
        bus.readinto(reg)
        cs(1)
        lock.release()
        lock.acquire(0)
        lock.release()
        if i >= 2:
            used += micropython.mem_total() - before
    assert used == 0, used
    assert reg[0] == 0x04                    # the chip answered through it all


class _RecordingSocket:
    def __init__(self):
        self.frames = []

    def write(self, buf, off, n):
        self.frames.append(bytes(buf[off:off + n]))
        return n


def _fifo_wire(fifo_bytes):
    from simhw.wake import WakePipe
    from simhw.wire import PacketWire
    wire = PacketWire("lo", tx_fifo_bytes=fifo_bytes, tx_wake=WakePipe(-1, -1))
    wire._sock = _RecordingSocket()
    return wire


def test_the_phy_fifo_sends_frames_whole_and_in_order_across_its_wrap():
    import _thread
    import time
    wire = _fifo_wire(1024)        # two or three frames: the tail wraps again and again
    done = [False, False]

    def phy():                     # the PHY thread's part: take what is queued, in turn
        while not done[0]:
            wire._send_queued()
        wire._send_queued()
        done[1] = True

    _thread.start_new_thread(phy, ())
    sent = []
    for i in range(300):
        frame = bytes([i & 0xFF]) * (60 + (i * 37) % 400)   # lengths that wrap at odd places
        wire.send(frame)
        sent.append(frame)
    done[0] = True
    t0 = time.ticks_ms()
    while not done[1] and time.ticks_diff(time.ticks_ms(), t0) < 2000:
        time.sleep_ms(1)
    assert done[1]
    assert wire._sock.frames == sent
    assert wire.tx_frames == 300 and wire.tx_errors == 0 and wire._used == 0


def test_what_the_cores_call_in_the_simulated_hardware_allocates_nothing():
    # The board's cores call the PHY's FIFO (each frame sent), the PHY thread's wake-up
    # (when it waits) and the USB stream (each turn of core 0). heap_lock() cannot see a
    # bytecode function's frame taken from the heap, but every allocation takes the heap's
    # one mutex: in a paced 2-kernel run such frames (the FIFO's send and its _put, the
    # stream's readinto) made the cores wait on that mutex over 1,600 times a second
    # (perf). mem_total() counts them.
    import micropython
    from simhw.usb import PtyStream
    from simhw.wake import WakePipe
    wire = _fifo_wire(8192)
    wake_r, wake_w, wake_file = _pipe()
    wire._tx_wake = WakePipe(wake_r, wake_w)
    usb_fd, _, usb_file = _pipe()
    usb = PtyStream(usb_fd)       # a pipe with nothing in it: what a quiet host link reads
    buf = bytearray(64)
    frame, ack = bytearray(1514), bytearray(60)
    for f in (frame, ack):        # first calls
        wire._phy_waiting = True
        wire.send(f)
    wire._send_queued()
    usb.readinto(buf)
    used = 0
    for _ in range(50):
        before = micropython.mem_total()
        wire._phy_waiting = True  # the PHY thread waits: the sender wakes it
        wire.send(frame)
        wire.send(ack)
        assert usb.readinto(buf) == 0
        used += micropython.mem_total() - before
        wire._send_queued()       # (the PHY thread's part, not measured)
    assert used == 0, used
    assert wire.tx_queued == 102 and len(wire._sock.frames) == 102
    assert wire._tx_wake.sets == 52       # one wake-up per wait of the PHY thread
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


def test_a_full_phy_fifo_holds_the_sender_and_then_counts_the_frame_lost():
    from simhw.wire import PacketWire
    wire = _fifo_wire(256)
    wire.send(bytes(200))
    wire.send(bytes(100))          # no room while the PHY thread takes nothing
    assert wire.tx_fifo_waits > 0 and wire.tx_errors == 1
    wire._send_queued()
    assert wire._sock.frames == [bytes(200)]
    try:
        PacketWire("lo", tx_fifo_bytes=256)
    except ValueError:
        pass
    else:
        raise AssertionError("a FIFO without a wake-up for the PHY thread")


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
