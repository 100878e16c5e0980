# The simulated board: the firmware's W5500 is a register-level emulator whose PHY is a veth
# (AF_PACKET), its USB CDC a pty, its timer a thread. This file is the only place the firmware
# learns it is simulated. `twinstack sim` writes sim_config.py and starts MicroPython with
# the heap made up below.
import _thread
import gc
import os
import select
import time

import micropython
import sim_config
from micropython import const
from rp2040 import BUDGET  # the simulated board stands for an RP2040: its memory budget
from simhw.spin import spin_acquire
from simhw.usb import PtyStream
from simhw.w5500_emulator import W5500Emulator
from simhw.wake import WakePipe
from simhw.wire import PacketWire

NAME = "sim"
ARCH = None          # runs on the host's MicroPython unix port; nothing to cross-compile
CORES = 2
# The heap: the simulated board leaves the free heap the RP2040 leaves after boot with the
# same configuration (RPI_PICO, MicroPython v1.28.0, the firmware frozen in; emulated RP2040,
# docs/memory.md), a little less rather than more; tests/e2e/test_sim_lifecycle.py holds the
# calibration points. `twinstack sim` gives MicroPython
#   HEAP_BYTES + KERNEL_HEAP_BYTES x (kernels - 1) + the loaded code + BOOT_HEAP_BYTES.
# HEAP_BYTES is the one-kernel board: the firmware's data, which takes more of a 64-bit port
# than of the RP2040, and the emulated hardware (packet memory, registers, the PHY's buffer
# and transmit FIFO): EMULATOR_HEAP_BYTES of it, on every board (Hardware holds back what its
# parts leave, so a board without a FIFO leaves the firmware no more). Core 1's 8 KB stack,
# in the RP2040's heap, is in these figures; the unix port's thread stacks are not in its
# heap. Each further kernel costs the 64-bit port KERNEL_HEAP_BYTES more than it costs the
# RP2040. The code is in flash on the RP2040 and cannot be frozen here: `twinstack sim`
# measures what it takes and adds it. Loading it takes more on the way than it keeps:
# BOOT_HEAP_BYTES, held back once the code is in (Hardware), so the node's pools are made in
# the heap the RP2040 has for them.
EMULATOR_HEAP_BYTES = const(53248)
BOOT_HEAP_BYTES = const(65536)
_HELD_BACK_PIECE = const(16)          # bytes of a held-back piece...
_HELD_BACK_PIECE_COST = const(48)     # ...and the least heap one takes (object and data)
HEAP_BYTES = const(304464)
KERNEL_HEAP_BYTES = const(15500)
# The PHY's transmit FIFO (simhw/wire.py): frames the chip was told to SEND, waiting for the
# PHY thread. A few full-size frames; a sender waits while it is full.
TX_FIFO_BYTES = const(8192)
# The unix port's thread stacks are not in the GC heap (core 1's is, on rp2).
THREAD_STACK_BYTES = const(262144)


def _hold_back(nbytes):
    """Take ``nbytes`` of the heap and keep them, in small pieces: the heap's allocator
    fills its holes first, and loading code leaves many (an RP2040 has none: its code is in
    flash), so the node's pools find the heap as whole as on the board."""
    if nbytes <= 0:
        return None
    gc.collect()
    start = gc.mem_alloc()
    held = [None] * (nbytes // _HELD_BACK_PIECE_COST)
    i = 0
    while i < len(held) and gc.mem_alloc() - start < nbytes:
        held[i] = bytearray(_HELD_BACK_PIECE)
        i += 1
    return held


class _TickTimer:
    """machine.Timer stand-in: a thread that schedules ``callback`` on the main thread, as an
    rp2 soft Timer runs on core 0."""

    def __init__(self, period_ms, callback):
        self._period = period_ms
        self._callback = callback
        self._running = True
        _thread.start_new_thread(self._run, ())

    def _run(self):
        while self._running:
            time.sleep_ms(self._period)
            try:
                micropython.schedule(self._callback, self)
            except RuntimeError:
                pass  # schedule queue full: this tick coalesces with a pending one

    def deinit(self):
        self._running = False


_PACE_MIN_SLEEP_US = const(200)   # shorter sleeps cost the host more than they pace
# A paced core pays for a lock it held before it lets go (_Pacer.pay_hold): by spinning,
# since sleep_us() oversleeps by some 50 us, or for longer debts by sleeping all but this
# much first and spinning the rest.
_HOLD_SPIN_US = const(100)
# Tries before a lock the cores share blocks (simhw/spin.py): a core holds it for one chip
# transaction or one dispatch batch, and a blocked thread of the unix port takes longer to
# wake than that; a paced core would be charged the wake-up too.
_LOCK_SPINS = const(64)
# The calling thread's scheduler statistics: "<run ns> <run-queue wait ns> <slices>". The
# wait is brought up to date whenever the thread gets a CPU back, so two readings by the
# thread itself bracket exactly the waits between them.
_SCHEDSTAT = "/proc/thread-self/schedstat"
# The board's SPI clock (boards/w5500_evb_pico.py: 24 MHz, the fastest of the default
# clk_peri) and how much faster a host core runs MicroPython than the RP2040 does, at
# least: tests/perf_bench's pystone makes about 1,850 loops/s on a PYBv1.0 (168 MHz
# Cortex-M4, published with the benchmark) and 190,000 to 270,000 on this machine's unix
# port, and the RP2040 (125 MHz Cortex-M0+, code from flash through a cache) is taken to
# be no faster than the PYBv1.0. A paced core runs CORE_SPEED % x that many times faster
# than the RP2040's, and its bus is sped up by as much, the least of it, so that the bus
# weighs no less than on a board: at 10 %, 24 MHz x 100 x 10 % = 240 MHz, a full frame in
# 51 us.
_BOARD_SPI_HZ = 24_000_000
_HOST_OVER_RP2040 = const(100)
_MAX_PACED = const(8)             # paced cores one board may run (kernels 1, 2 or 4)


class _PacedCores:
    """Which paced core runs on the calling thread: the chip's bus and the cores' locks
    charge their time to it. Each pacer registers at its first turn, on its own thread."""

    def __init__(self):
        self._idents = [0] * _MAX_PACED
        self._pacers = [None] * _MAX_PACED
        self._n = 0

    def add(self, pacer):
        if self._n == _MAX_PACED:
            raise RuntimeError("more paced cores than %d" % _MAX_PACED)
        self._pacers[self._n] = pacer
        self._idents[self._n] = _thread.get_ident()
        self._n += 1

    @micropython.native
    def current(self):
        """The calling thread's pacer, or None (a thread that is not a paced core)."""
        ident = _thread.get_ident()
        idents = self._idents
        for i in range(self._n):
            if idents[i] == ident:
                return self._pacers[i]
        return None


class _Pacer:
    """One simulated core at `percent` of a host core's speed: after each turn the core
    sleeps as long as the turn would have taken in addition on the slower core (summed
    until it is worth a sleep). A host core runs MicroPython many times faster than an
    RP2040 core, and the host's cores also run the emulated chip's PHY thread and the
    peer's TCP/IP: at host speed those, not the board's cores, set what N kernels can do.

    What the other cores wait for is paced where they wait for it: a lock shared by the
    cores (_PacedLock: the chip's, the dispatcher's) is held as long as the slower core
    would hold it, the core paying for its hold before it lets go, and the chip's SPI bus
    (_PacedBus) runs at the bus's own speed, which does not depend on the core's. So a turn
    is charged for its wall time less:
    - the time the host kept the thread waiting for a CPU (run-queue wait, from the
      thread's schedstat; its share outside the time below): a board's core is never
      preempted by the host's other threads, and multiplying that wait would make the
      board slower the busier the machine (measured: 4 to 6 % of the wall time in a
      paced 2-kernel run);
    - the time on the bus, held locks already paid for, and waiting for a lock the other
      core holds (which that core pays for in full): ``exempt_us`` counts all three, and
      the paced locks' own Python, which stands in for a `_thread` lock's C call."""

    def __init__(self, percent, cores=None):
        self._more = 100 - percent
        self._percent = percent
        self._debt = 0
        self._t0 = 0
        self._wait0 = 0
        self._exempt0 = 0
        self._cores = cores        # registered with at the first turn
        self._stat = None          # opened by the core's own thread, at its first turn
        self._statbuf = bytearray(64)
        self.preempted_us = 0      # run-queue wait taken out of this core's own work
        self.exempt_us = 0         # bus time, paid holds and lock waits (see above)
        self.bus_us = 0            # on the chip's bus
        self.lock_wait_us = 0      # waiting for a lock another core held
        self.held_us = 0           # the core's own work under a lock, paid before release
        self.work_us = 0           # and the rest of its own work (the turns' charges)

    def _run_wait_us(self):
        f = self._stat
        if f is None:
            try:
                f = self._stat = open(_SCHEDSTAT, "rb")
            except OSError:        # no schedstat (kernel without CONFIG_SCHED_INFO)
                f = self._stat = False
        if not f:
            return 0
        f.seek(0)
        return _second_field(self._statbuf, f.readinto(self._statbuf)) // 1000

    def begin(self):
        """A turn starts (called by the core's own thread)."""
        cores = self._cores
        if cores is not None:
            self._cores = None
            cores.add(self)
        self._wait0 = self._run_wait_us()
        self._exempt0 = self.exempt_us
        self._t0 = time.ticks_us()

    def end(self):
        """The turn began at begin() has ended: sleep off what it owes."""
        wall = time.ticks_diff(time.ticks_us(), self._t0)
        waited = self._run_wait_us() - self._wait0
        us = wall - (self.exempt_us - self._exempt0)
        if us < 0:
            us = 0
        if 0 < waited <= wall:
            # The run-queue wait is taken as spread over the turn: the part of it in the
            # bus's, the locks' and the waits' time came off with them. (Taking it all off
            # again under-charged the cores the more they shared: measured, a 2-kernel
            # run's own work came to 0.94 host seconds against a 1-kernel run's 1.24 for
            # the same bytes, its preemption being 0.44 s against 0.05 s.)
            cut = waited * us // wall
            us -= cut
            self.preempted_us += cut
        self.work_us += us
        self.turn_took(us)

    def turn_took(self, us):
        """A turn of ``us`` microseconds of this core's own work: sleep off what it owes."""
        debt = self._debt + us * self._more // self._percent
        if debt >= _PACE_MIN_SLEEP_US:
            t0 = time.ticks_us()
            time.sleep_us(debt)
            debt -= time.ticks_diff(time.ticks_us(), t0)
        self._debt = debt

    @micropython.native
    def waited(self, us):
        """The core waited ``us`` for a lock another core held (that core's paced time)."""
        self.lock_wait_us += us
        self.exempt_us += us

    @micropython.native
    def pay_hold(self, lock, now):
        """``lock`` (a _PacedLock this core took) is about to be released (at ``now``):
        wait, still holding it, what the core's work under it would have taken in addition
        on the slower core. Bus time and nested holds, already paced, are not paid again.
        Overslept time is credit for the turn's own sleep. Returns the time paid."""
        held = time.ticks_diff(now, lock.t0) - (self.exempt_us - lock.exempt0)
        if held <= 0:
            return 0
        owed = held * self._more // self._percent
        if owed > _HOLD_SPIN_US * 2:
            time.sleep_us(owed - _HOLD_SPIN_US)
        paid = time.ticks_diff(time.ticks_us(), now)
        while paid < owed:
            paid = time.ticks_diff(time.ticks_us(), now)
        self.held_us += held
        self.exempt_us += held + paid
        self._debt -= paid - owed
        lock.held_us += held
        lock.paid_us += paid
        return paid


class _SpinLock:
    """A `_thread` lock that spins a while before it blocks (a board at host speed)."""

    def __init__(self):
        self._lock = _thread.allocate_lock()

    @micropython.native
    def acquire(self, blocking=True):
        if not blocking:
            return self._lock.acquire(0)
        spin_acquire(self._lock, _LOCK_SPINS)
        return True

    def release(self):
        self._lock.release()

    def locked(self):
        return self._lock.locked()


class _PacedLock:
    """A `_thread` lock for what a paced board's cores share (the chip, the dispatcher): a
    paced core holds it as long as a core of that speed would (_Pacer.pay_hold), and the
    time another core waits for it is left out of that core's turn (it is the holder's
    work, paid by the holder). It spins a while before it blocks, as _SpinLock does.
    Threads that are not paced cores use it as a plain lock."""

    def __init__(self, cores):
        self._lock = _thread.allocate_lock()
        self._cores = cores
        self._holder = None        # the holding paced core, and its marks at acquire()
        self.held_us = 0           # paced cores' own work under it (before pacing)
        self.paid_us = 0           # and what they waited, holding it, to pay for that
        self.t0 = 0
        self.exempt0 = 0

    @micropython.native
    def acquire(self, blocking=True):
        since = time.ticks_us()
        lock = self._lock
        pacer = self._cores.current()
        waited = False
        if not lock.acquire(0):
            if not blocking:
                return False
            spin_acquire(lock, _LOCK_SPINS)
            waited = True
        if pacer is not None:
            # All of it is the lock's time, not the core's: waiting for the other core, or
            # this Python, which stands in for a `_thread` lock's C call on a board.
            self._holder = pacer
            t0 = time.ticks_us()
            if waited:
                pacer.waited(time.ticks_diff(t0, since))
            else:
                pacer.exempt_us += time.ticks_diff(t0, since)
            self.exempt0 = pacer.exempt_us
            self.t0 = t0
        return True

    @micropython.native
    def release(self):
        pacer = self._holder
        if pacer is None:
            self._lock.release()
            return
        self._holder = None
        t0 = time.ticks_us()
        paid = pacer.pay_hold(self, t0)
        self._lock.release()
        pacer.exempt_us += time.ticks_diff(time.ticks_us(), t0) - paid

    def locked(self):
        return self._lock.locked()


class _PacedBus:
    """The emulated chip's SPI bus and chip select on a paced board. A transaction, chip
    select low to high, takes at least its bytes' time at ``bus_hz``, and all of it is the
    bus's time, not the calling core's (left out of the core's turn); the emulator's own
    work for it stands in for the bus's time where it takes longer. Timing the transaction
    as a whole, not each call in it, keeps the measuring's own cost off the chip's lock
    (measured: 4 us of host time per register read when each pin edge and transfer timed
    itself, against 6.5 us for the emulator's work); the driver's few calls inside the
    window count as the bus's. ``spi`` is this object, ``cs`` its ``select``."""

    def __init__(self, spi, cs, bus_hz, cores):
        self._spi = spi
        self._cs = cs
        self._ps_per_byte = 8 * 1_000_000_000_000 // bus_hz
        self._cores = cores
        self._t0 = 0
        self._bytes = 0
        self._low = False          # inside a transaction: only one core at a time (the
        #                            chip's lock), as on a board's one SPI bus

    @micropython.native
    def select(self, v=None):
        """The chip-select pin: low starts a transaction, high ends it."""
        if v is None:
            return self._cs()
        if v:
            self._cs(1)
            if self._low:
                self._low = False
                self._ended()
        else:
            self._bytes = 0
            self._low = True
            self._t0 = time.ticks_us()
            self._cs(0)
        return None

    @micropython.native
    def write(self, buf):
        self._bytes += len(buf)
        self._spi.write(buf)

    @micropython.native
    def readinto(self, buf, write=0x00):
        self._bytes += len(buf)
        self._spi.readinto(buf, write)

    @micropython.native
    def _ended(self):
        pacer = self._cores.current()
        t0 = self._t0
        bus = self._bytes * self._ps_per_byte // 1_000_000
        us = time.ticks_diff(time.ticks_us(), t0)
        while us < bus:
            us = time.ticks_diff(time.ticks_us(), t0)
        if pacer is not None:
            pacer.bus_us += us
            pacer.exempt_us += us


@micropython.viper
def _second_field(buf, n: int) -> int:
    # The second space-separated decimal of buf[:n], without allocating (a 63-bit small int
    # holds nanoseconds for 292 years).
    b = ptr8(buf)  # noqa: F821 (viper built-in)
    i = 0
    while i < n and b[i] != 32:
        i += 1
    i += 1
    v = 0
    while i < n and b[i] >= 48 and b[i] <= 57:
        v = v * 10 + b[i] - 48
        i += 1
    return v


class Hardware:
    """What the firmware gets from a board: SPI + pins of the W5500, a tick timer, USB data."""

    def __init__(self):
        # The code is loaded by now (the node opens the hardware before it makes any pool):
        # what loading it took beyond what it keeps is held back from here on.
        self._held_back = _hold_back(getattr(sim_config, "HEAP_HELD_BACK", 0))
        gc.collect()
        before = gc.mem_alloc()
        # Paced cores (CORE_SPEED < 100) hand their frames to the PHY thread: sending is the
        # chip's work, not the core's (simhw/wire.py). At host speed a core writes to the
        # wire itself: there the hand-off costs more than it saves (measured: ping p50 0.43
        # against 0.49 ms, bulk 4.3 against 3.4 MB/s). TWINSTACK_PHY_FIFO=on|off overrides.
        self._speed = getattr(sim_config, "CORE_SPEED", 100)
        self._paced = _PacedCores() if self._speed < 100 else None
        phy_wake = getattr(sim_config, "PHY_WAKE_FDS", (-1, -1))
        fifo = os.getenv("TWINSTACK_PHY_FIFO") or ("on" if self._paced else "off")
        rx_fd = getattr(sim_config, "PHY_RX_FD", -1)
        if phy_wake[0] >= 0 and fifo != "off":
            self.wire = PacketWire(sim_config.NETIF, tx_fifo_bytes=TX_FIFO_BYTES,
                                   tx_wake=WakePipe(*phy_wake), rx_fd=rx_fd)
        else:
            self.wire = PacketWire(sim_config.NETIF, rx_fd=rx_fd)
        self._wake = WakePipe(*getattr(sim_config, "WAKE_FDS", (-1, -1)))
        self.chip = W5500Emulator(self.wire, schedule=self._schedule)
        self.wire.attach(self.chip)
        self._pacers = []
        self._locks = []
        if self._paced is not None:
            # TWINSTACK_SPI_HZ sets another bus clock, for measurements.
            bus_hz = int(os.getenv("TWINSTACK_SPI_HZ") or
                         _BOARD_SPI_HZ * _HOST_OVER_RP2040 * self._speed // 100)
            self.spi = _PacedBus(self.chip.spi, self.chip.cs, bus_hz, self._paced)
            self.cs = self.spi.select
        else:
            self.spi = self.chip.spi
            self.cs = self.chip.cs
        self.rst = self.chip.rst
        self.intn = self.chip.intn
        self._usb = PtyStream(sim_config.USB_FD)
        self._idle_poll = self._wake.poller(sim_config.USB_FD)
        self._timers = []
        # What the emulated hardware took comes out of its reserve; the rest is held back,
        # so the firmware gets the same heap whichever parts this board's hardware has
        # (a paced board's transmit FIFO, say). Measured before the PHY thread starts, so
        # the figure does not depend on how far it got.
        gc.collect()
        spare = EMULATOR_HEAP_BYTES - (gc.mem_alloc() - before)
        if spare < 0:
            print("sim: the emulated hardware takes %d bytes more than its reserve "
                  "(EMULATOR_HEAP_BYTES): the firmware gets that much less" % -spare)
        self._reserve_spare = bytearray(spare) if spare > 0 else None
        self.wire.start()

    @micropython.native
    def _schedule(self, handler, arg):
        # The INTn edge, from the PHY thread: the handler runs on the main thread, as an
        # rp2 Pin IRQ runs on core 0, and the idle wait ends at once.
        try:
            micropython.schedule(handler, arg)
        finally:
            self._wake.set()

    @micropython.native
    def idle(self, timeout_ms):
        """Core 0 has nothing to do: wait for USB input or an interrupt, at most
        timeout_ms (an rp2 board waits for an interrupt the same way). True if the host's
        bytes are waiting."""
        hangup = woke = usb = False
        for fd, ev in self._idle_poll.ipoll(timeout_ms):   # ipoll: no list per wait
            if fd != sim_config.USB_FD:
                self._wake.drain()
                woke = True
            elif ev & select.POLLIN:
                usb = True
            else:
                hangup = True       # no host on the pty: poll() would return at once
        if hangup and not woke:
            time.sleep_ms(timeout_ms)
        return usb

    def wake_core0(self):
        """End core 0's idle wait (another core put frames on its ring): on an RP2040
        the event every released lock sends does it."""
        self._wake.set()

    def timer(self, period_ms, callback):
        t = _TickTimer(period_ms, callback)
        self._timers.append(t)
        return t

    def usb(self):
        return self._usb

    def pacer(self):
        """A new pacer for one core (each core keeps its own), or None at host speed."""
        if self._paced is None:
            return None
        pacer = _Pacer(self._speed, self._paced)
        self._pacers.append(pacer)      # made in core order: core 0's first (node.start)
        return pacer

    def allocate_lock(self):
        """A lock for what the board's cores share: held at the cores' own speed."""
        if self._paced is None:
            return _SpinLock()
        lock = _PacedLock(self._paced)
        self._locks.append(lock)        # in the order the firmware makes them
        return lock

    def counters(self):
        """Counters of the simulated hardware (a real chip has none of these)."""
        c = self.chip.counters.as_dict()
        c["wire_rx"] = self.wire.rx_frames
        c["wire_tx"] = self.wire.tx_frames
        c["wire_tx_errors"] = self.wire.tx_errors
        c["wire_tx_queued"] = self.wire.tx_queued
        c["wire_tx_fifo_waits"] = self.wire.tx_fifo_waits
        c["wire_rx_errors"] = self.wire.rx_errors
        c["wire_rx_lost"] = int(self.wire.rx_lost)
        for i, p in enumerate(self._pacers):     # what each paced core's turns left out
            c["pace.c%d.preempted_us" % i] = p.preempted_us
            c["pace.c%d.exempt_us" % i] = p.exempt_us
            c["pace.c%d.held_us" % i] = p.held_us
            c["pace.c%d.bus_us" % i] = p.bus_us
            c["pace.c%d.lock_wait_us" % i] = p.lock_wait_us
            c["pace.c%d.work_us" % i] = p.work_us
        for i, lock in enumerate(self._locks):
            c["pace.lock%d.held_us" % i] = lock.held_us
            c["pace.lock%d.paid_us" % i] = lock.paid_us
        return c

    def close(self):
        for t in self._timers:
            t.deinit()
        self.wire.stop()
        self._usb.close()


def open_hardware():
    return Hardware()


def load_config():
    cfg = dict(BUDGET)
    # --stack NAME=VALUE: a memory budget entry (boards/rp2040.py) or a StackConfig setting.
    stack = dict(getattr(sim_config, "STACK", {}))
    for name in BUDGET:
        if name in stack:
            cfg[name] = stack.pop(name)
    cfg.update({
        "ip": sim_config.IP,
        "prefix": sim_config.PREFIX,
        "gateway": sim_config.GATEWAY,
        "mac": sim_config.MAC,
        "kernels": sim_config.KERNELS,
        "services": sim_config.SERVICES,
        "log_frames": sim_config.LOG_FRAMES,
        "stack": stack,
        # Kernels 1..N-1 are threads of the unix port, whose C stacks are not in the heap
        # (core 1's is, on rp2) and need more room.
        "thread_stack": THREAD_STACK_BYTES,
        "stack_in_heap": False,
        # TX_MODE "lock" (default) or "ring"; TWINSTACK_TX_MODE selects it for measurements.
        "tx_mode": os.getenv("TWINSTACK_TX_MODE") or "lock",
        # Kernels 1..N-1 read frames for the dispatcher when idle (netkernel.cores);
        # TWINSTACK_DISPATCH_HELP=off leaves all of it to core 0, for measurements.
        "dispatch_help": os.getenv("TWINSTACK_DISPATCH_HELP", "on") != "off",
    })
    return cfg
