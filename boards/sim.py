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
from simhw.meters import Meters
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
# than of the RP2040, the code of this file and of simhw (`twinstack sim` measures the
# firmware's code only, below: code taken out of them comes off HEAP_BYTES too), and the
# emulated hardware (packet memory, registers, the PHY's buffer): EMULATOR_HEAP_BYTES of it
# (Hardware holds back what its parts leave, so the firmware gets no more if they take
# less). Core 1's 8 KB stack,
# in the RP2040's heap, is in these figures; the unix port's thread stacks are not in its
# heap. Each further kernel costs the 64-bit port KERNEL_HEAP_BYTES more than it costs the
# RP2040. The code is in flash on the RP2040 and cannot be frozen here: `twinstack sim`
# measures what it takes and adds it. Loading it takes more on the way than it keeps:
# BOOT_HEAP_BYTES, held back once the code is in (Hardware), so the node's pools are made in
# the heap the RP2040 has for them.
EMULATOR_HEAP_BYTES = const(45056)
BOOT_HEAP_BYTES = const(65536)
_HELD_BACK_PIECE = const(16)          # bytes of a held-back piece...
_HELD_BACK_PIECE_COST = const(48)     # ...and the least heap one takes (object and data)
HEAP_BYTES = const(290768)
KERNEL_HEAP_BYTES = const(16524)
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


# Tries before a lock the cores share blocks (simhw/spin.py): a core holds it for one chip
# transaction or one dispatch batch, and a blocked thread of the unix port takes longer to
# wake than that.
_LOCK_SPINS = const(64)


class _SpinLock:
    """A `_thread` lock that spins a while before it blocks."""

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


class Hardware:
    """What the firmware gets from a board: SPI + pins of the W5500, a tick timer, USB data."""

    def __init__(self):
        # The code is loaded by now (the node opens the hardware before it makes any pool):
        # what loading it took beyond what it keeps is held back from here on.
        self._held_back = _hold_back(getattr(sim_config, "HEAP_HELD_BACK", 0))
        gc.collect()
        before = gc.mem_alloc()
        self.wire = PacketWire(sim_config.NETIF, rx_fd=getattr(sim_config, "PHY_RX_FD", -1))
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
        # Busy time of the firmware's loops, by name (simhw.meters).
        meters = Meters()
        self.metered = meters.metered
        self.meters = meters.meters
        # What the emulated hardware took comes out of its reserve; the rest is held back,
        # so the firmware gets the same heap whatever its parts take. Measured before the
        # PHY thread starts, so the figure does not depend on how far it got.
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

    def allocate_lock(self):
        """A lock for what the board's cores share (the chip, the dispatcher)."""
        return _SpinLock()

    def counters(self):
        """Counters of the simulated hardware (a real chip has none of these)."""
        c = self.chip.counters.as_dict()
        c["wire_rx"] = self.wire.rx_frames
        c["wire_tx"] = self.wire.tx_frames
        c["wire_tx_errors"] = self.wire.tx_errors
        c["wire_rx_errors"] = self.wire.rx_errors
        c["wire_rx_lost"] = int(self.wire.rx_lost)
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
