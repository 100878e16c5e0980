# The simulated board: the firmware's W5500 is a register-level emulator whose PHY is a veth
# (AF_PACKET), its USB CDC a pty, its timer a thread. This file is the only place the firmware
# learns it is simulated. `twinstack sim` writes sim_config.py and starts MicroPython with
# `-X heapsize=HEAP_BYTES`.
import _thread
import os
import select
import time

import micropython
import sim_config
from micropython import const
from simhw.usb import PtyStream
from simhw.w5500_emulator import W5500Emulator
from simhw.wake import WakePipe
from simhw.wire import PacketWire

NAME = "sim"
ARCH = None          # runs on the host's MicroPython unix port; nothing to cross-compile
CORES = 2
# The heap limit stands for the RP2040's free heap after boot on RPI_PICO (242,304 bytes,
# reference/rp2.md §7), for a board running the firmware frozen into flash
# (boards/manifest.py): there the code takes no heap. The unix port is 64-bit, so the same
# data takes more heap here (pointers, object headers): the firmware's share is scaled by
# 3/2, an estimate to re-check against a real board. On top comes what the emulated
# hardware itself holds (32 KB packet memory, registers, the PHY's 8 KB transmit FIFO, its
# code), measured by tests/firmware/test_sim_board.py at about 46 KB. `twinstack sim` adds
# the heap the firmware's loaded code takes (measured when it starts), since the unix port
# cannot freeze.
FIRMWARE_HEAP_BYTES = const(242304)
EMULATOR_HEAP_BYTES = const(53248)
HEAP_BYTES = const(416704)   # FIRMWARE_HEAP_BYTES * 3 // 2 + EMULATOR_HEAP_BYTES
# The PHY's transmit FIFO (simhw/wire.py): frames the chip was told to SEND, waiting for the
# PHY thread. A few full-size frames; a sender waits while it is full.
TX_FIFO_BYTES = const(8192)
# The unix port's thread stacks are not in the GC heap (core 1's is, on rp2).
THREAD_STACK_BYTES = const(262144)


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
# The calling thread's scheduler statistics: "<run ns> <run-queue wait ns> <slices>". The
# wait is brought up to date whenever the thread gets a CPU back, so two readings by the
# thread itself bracket exactly the waits between them.
_SCHEDSTAT = "/proc/thread-self/schedstat"


class _Pacer:
    """One simulated core at `percent` of a host core's speed: after each turn the core
    sleeps as long as the turn would have taken in addition on the slower core (summed
    until it is worth a sleep). A host core runs MicroPython many times faster than an
    RP2040 core, and the host's cores also run the emulated chip's PHY thread and the
    peer's TCP/IP: at host speed those, not the board's cores, set what N kernels can do.
    The sleep comes after the turn, with no lock held.

    A turn is its wall time less the time the host kept the thread waiting for a CPU
    (run-queue wait, from the thread's schedstat): a board's core is never preempted by
    the host's other threads, and multiplying that wait would make the board slower the
    busier the machine (measured: 4 to 6 % of the wall time in a paced 2-kernel run).
    Waiting for a lock stays in: the other core holds it on the board too."""

    def __init__(self, percent):
        self._more = 100 - percent
        self._percent = percent
        self._debt = 0
        self._t0 = 0
        self._wait0 = 0
        self._stat = None          # opened by the core's own thread, at its first turn
        self._statbuf = bytearray(64)
        self.preempted_us = 0      # run-queue wait taken out of this core's turns

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
        self._wait0 = self._run_wait_us()
        self._t0 = time.ticks_us()

    def end(self):
        """The turn began at begin() has ended: sleep off what it owes."""
        us = time.ticks_diff(time.ticks_us(), self._t0)
        waited = self._run_wait_us() - self._wait0
        if 0 < waited <= us:
            us -= waited
            self.preempted_us += waited
        self.turn_took(us)

    def turn_took(self, us):
        """A turn of ``us`` microseconds of this core's own work: sleep off what it owes."""
        debt = self._debt + us * self._more // self._percent
        if debt >= _PACE_MIN_SLEEP_US:
            t0 = time.ticks_us()
            time.sleep_us(debt)
            debt -= time.ticks_diff(time.ticks_us(), t0)
        self._debt = debt


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
        # Paced cores (CORE_SPEED < 100) hand their frames to the PHY thread: sending is the
        # chip's work, not the core's (simhw/wire.py). At host speed a core writes to the
        # wire itself: there the hand-off costs more than it saves (measured: ping p50 0.43
        # against 0.49 ms, bulk 4.3 against 3.4 MB/s). TWINSTACK_PHY_FIFO=on|off overrides.
        phy_wake = getattr(sim_config, "PHY_WAKE_FDS", (-1, -1))
        fifo = os.getenv("TWINSTACK_PHY_FIFO") or (
            "on" if getattr(sim_config, "CORE_SPEED", 100) < 100 else "off")
        if phy_wake[0] >= 0 and fifo != "off":
            self.wire = PacketWire(sim_config.NETIF, tx_fifo_bytes=TX_FIFO_BYTES,
                                   tx_wake=WakePipe(*phy_wake))
        else:
            self.wire = PacketWire(sim_config.NETIF)
        self._wake = WakePipe(*getattr(sim_config, "WAKE_FDS", (-1, -1)))
        self.chip = W5500Emulator(self.wire, schedule=self._schedule)
        self.wire.attach(self.chip)
        self.spi = self.chip.spi
        self.cs = self.chip.cs
        self.rst = self.chip.rst
        self.intn = self.chip.intn
        self._usb = PtyStream(sim_config.USB_FD)
        self._idle_poll = self._wake.poller(sim_config.USB_FD)
        self._timers = []
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
        timeout_ms (an rp2 board waits for an interrupt the same way)."""
        hangup = woke = False
        for fd, ev in self._idle_poll.ipoll(timeout_ms):   # ipoll: no list per wait
            if fd != sim_config.USB_FD:
                self._wake.drain()
                woke = True
            elif not ev & select.POLLIN:
                hangup = True       # no host on the pty: poll() would return at once
        if hangup and not woke:
            time.sleep_ms(timeout_ms)

    def timer(self, period_ms, callback):
        t = _TickTimer(period_ms, callback)
        self._timers.append(t)
        return t

    def usb(self):
        return self._usb

    def pacer(self):
        """A new pacer for one core (each core keeps its own), or None at host speed."""
        speed = getattr(sim_config, "CORE_SPEED", 100)
        return _Pacer(speed) if speed < 100 else None

    def counters(self):
        """Counters of the simulated hardware (a real chip has none of these)."""
        c = self.chip.counters.as_dict()
        c["wire_rx"] = self.wire.rx_frames
        c["wire_tx"] = self.wire.tx_frames
        c["wire_tx_errors"] = self.wire.tx_errors
        c["wire_tx_queued"] = self.wire.tx_queued
        c["wire_tx_fifo_waits"] = self.wire.tx_fifo_waits
        c["wire_rx_errors"] = self.wire.rx_errors
        return c

    def close(self):
        for t in self._timers:
            t.deinit()
        self.wire.stop()
        self._usb.close()


def open_hardware():
    return Hardware()


def load_config():
    cfg = {
        "ip": sim_config.IP,
        "prefix": sim_config.PREFIX,
        "gateway": sim_config.GATEWAY,
        "mac": sim_config.MAC,
        "kernels": sim_config.KERNELS,
        "services": sim_config.SERVICES,
        "log_frames": sim_config.LOG_FRAMES,
        "stack": getattr(sim_config, "STACK", {}),   # --stack NAME=VALUE overrides
        # Kernels 1..N-1 are threads of the unix port: more C stack than core 1's 16 KB.
        "thread_stack": THREAD_STACK_BYTES,
        # TX_MODE "lock" (default) or "ring"; TWINSTACK_TX_MODE selects it for measurements.
        "tx_mode": os.getenv("TWINSTACK_TX_MODE") or "lock",
        # Kernels 1..N-1 read frames for the dispatcher when idle (netkernel.cores);
        # TWINSTACK_DISPATCH_HELP=off leaves all of it to core 0, for measurements.
        "dispatch_help": os.getenv("TWINSTACK_DISPATCH_HELP", "on") != "off",
    }
    # The I2O messaging unit's pools (msgunit.MsgUnit), when sim_config sets them.
    for key in ("frame_bytes", "inbound_depth", "outbound_max"):
        if hasattr(sim_config, key.upper()):
            cfg[key] = getattr(sim_config, key.upper())
    return cfg
