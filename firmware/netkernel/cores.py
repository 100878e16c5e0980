# The multi-kernel runtime: one dispatcher and N net kernels sharing one W5500.
#
# Core 0 (the main thread) runs the dispatcher, kernel 0 and the host link; kernels
# 1..N-1 each run in one `_thread` (on rp2 exactly one: core 1). Between them:
# - a FramePool of preallocated frame slots the driver reads straight into;
# - per kernel an SPSC receive ring (dispatcher -> kernel), an SPSC return ring (used slots
#   back to the dispatcher, which alone frees slots and keeps reference counts) and an SPSC
#   event ring (closed TCP connections -> the dispatcher's flow table);
# - transmit, TX_MODE "lock": every core sends its own frames, each W5500 transaction (one
#   frame's write + SEND, one receive, an interrupt acknowledge) under one `_thread` lock;
#   TX_MODE "ring": kernels 1..N-1 copy frames into their TX slots and post them on an MPSC
#   ring; core 0 alone talks to the chip, so it needs no lock.
#
# The dispatcher (netkernel/dispatcher) is core 0's; with TX_MODE "lock" and several
# kernels, a kernel whose ring is empty reads a batch for it (its reader's help()).
#
# rp2 rules kept here: every module global exists before core 1 starts (this module is
# imported before any thread), the thread gets its state as arguments, core 0 never blocks
# on a lock for longer than one SPI transaction of the other core (a host setting of the
# dispatcher, which is rare, waits for a helper's batch), no lock is taken twice.
import _thread
from array import array
from time import sleep_us, ticks_diff, ticks_ms, ticks_us

from micropython import const

from netkernel.dispatcher.port import DispatchPort
from netkernel.dispatcher.reader import LOG_OFF, FrameReader
from netkernel.dispatcher.steering import Dispatcher, default_free_low
from netkernel.kernel import Handoff, NetKernel
from netkernel.rings import FramePool, TxQueue

TX_LOCK = "lock"
TX_RING = "ring"
_TX_BATCH = const(32)         # frames core 0 sends for other kernels per turn (ring mode)
_STOP_WAIT_MS = const(2000)

# Thread control words: [0] run, [1] stopped, shared by core 0 and the thread.
_RUN = const(0)
_STOPPED = const(1)
# A sleeping kernel's words (array "i"), shared the same way: [0] 1 while it waits on its
# doorbell, [1] the ticks_ms by which core 0 must ring it (its stack's next deadline).
_SLEEPING = const(0)
_DUE = const(1)


def default_pool_slots(ncores, ring_capacity):
    """Frame slots that every frame the rings can take fits into: kernel 0's ring up to the
    dispatcher's pause (3/4 full), every other ring up to its early-discard ceiling (15/16)
    plus the frame its kernel is working on, and the slots early discard keeps free
    (free_low - 1, at least one with several kernels: with fewer, a full ring's last
    frames were discarded for want of free slots, measured on one kernel with a ring of
    8). A slot used by a kernel comes back before the dispatcher drops a frame for want of
    one (dispatch()), so more slots would only hold frames the W5500's own 16 KB buffer
    holds for free."""
    spare = default_free_low(ring_capacity) - 1
    if ncores > 1 and spare < 1:
        spare = 1
    return ring_capacity * 3 // 4 + (ncores - 1) * (ring_capacity * 15 // 16 + 1) + spare


class LockedNic:
    """The W5500 driver with one lock around every transaction (TX_MODE "lock")."""

    def __init__(self, nic, lock):
        self.nic = nic
        self.lock = lock

    # No local for the lock: a frame over 11 words is taken from the heap on every call.
    # send() still takes 13 (its try/finally): a handler further up may carry on (the ISM's
    # does), and a lock left held by a send that raised would stop every core.
    def send(self, buf, n):
        self.lock.acquire()
        try:
            return self.nic.send(buf, n)
        finally:
            self.lock.release()

    def recv_into(self, buf):
        self.lock.acquire()
        try:
            return self.nic.recv_into(buf)
        finally:
            self.lock.release()

    def clear_interrupt(self):
        self.lock.acquire()
        try:
            self.nic.clear_interrupt()
        finally:
            self.lock.release()

    def rx_release(self):
        # Only the dispatcher (one core at a time) receives, so it may ask without the lock
        # whether there is work.
        nic = self.nic
        if nic.rx_holding():
            lock = self.lock
            lock.acquire()
            try:
                nic.rx_release()
            finally:
                lock.release()

    def call(self, fn, *args):
        """Any other driver call (link state, reopen): rare, not per frame."""
        self.lock.acquire()
        try:
            return fn(*args)
        finally:
            self.lock.release()


class _Direct:
    """The driver without a lock (one kernel, or TX_MODE "ring": only core 0 uses it)."""

    def __init__(self, nic):
        self.nic = nic
        self.send = nic.send
        self.recv_into = nic.recv_into
        self.clear_interrupt = nic.clear_interrupt
        self.rx_release = nic.rx_release

    def call(self, fn, *args):
        return fn(*args)


def _core_loop(kernel, ctl, wait_event, reader, bell, sleep_state):
    """Kernels 1..N-1: turn after turn; with an empty ring, a batch read for the dispatcher
    (``reader``: its FrameReader where cores help it, else None), else sleep until there
    is work (kernel.sleep: on ``bell``, its doorbell, where there is one)."""
    core = kernel.core
    ring = kernel.rx
    intn = reader.intn if reader is not None else None
    idle = kernel.idle
    while ctl[_RUN]:
        try:
            # Reading for the dispatcher first: the frames it puts on our ring are taken in
            # this same turn (the other order cost an extra, empty turn per batch).
            helped = reader is not None and ring.depth() == 0 and \
                reader.help(core, ticks_ms())
            more = kernel.turn(ticks_ms()) or helped
        except Exception as e:     # count and carry on: the core must keep its flows
            kernel.errors += 1
            kernel.last_error = e
            kernel.recover()
            if reader is not None:
                reader.unlock_after_error(core)
            more = False
        if not more:
            kernel.idle_sleeps += 1
            t0 = ticks_us()
            try:
                kernel.sleep(wait_event, intn, reader, bell, sleep_state)
            except Exception:
                kernel.errors += 1
            idle.since(t0)
    ctl[_STOPPED] = 1


class Cores:
    def __init__(self, nic, ncores, mac, ip, prefix, gateway, stack_config, log,
                 tx_mode=TX_LOCK, pool_slots=0, ring_capacity=16, flow_capacity=256,
                 handoff_bytes=9216, tx_slots=8, idle_us=100, thread_stack=16384,
                 intn=None, dispatch_help=True, allocate_lock=None, wait_event=None,
                 wake_core0=None, doorbells=False):
        """``intn``: the W5500's INTn pin (read by helping cores); ``dispatch_help``: let
        kernels 1..N-1 read frames for the dispatcher when their rings are empty;
        ``allocate_lock``: the board's maker of the locks the cores share (the chip's, the
        dispatcher's), else `_thread.allocate_lock`; ``wait_event``: the board's wait of an
        idle kernel's core for an interrupt or the other core (rp2: machine.idle(), WFE),
        else a sleep of ``idle_us``; ``wake_core0``: the board's way to end core 0's idle
        wait when a helping core put frames on kernel 0's ring (None where the other core's
        event does, as on rp2: every lock released sends one); ``doorbells``: an idle kernel
        1..N-1 sleeps in a blocking acquire of its doorbell lock, which core 0 holds and
        releases when the kernel has work (on rp2 a blocked acquire is a WFE that no alarm
        wakes: machine.idle() sets one, and each alarm set wakes the other core, so two
        cores waiting that way wake each other without end)."""
        if ncores < 1:
            raise ValueError("kernels must be >= 1")
        if tx_mode not in (TX_LOCK, TX_RING):
            raise ValueError("tx_mode must be 'lock' or 'ring'")
        self.ncores = ncores
        self.tx_mode = tx_mode
        self.idle_us = idle_us
        if wait_event is None:
            def wait_event():
                sleep_us(idle_us)
        self.wait_event = wait_event
        self.bells = [_thread.allocate_lock() if doorbells and k > 0 else None
                      for k in range(ncores)]
        self.bell_held = bytearray(ncores)
        self.sleep_state = [array("i", [0, 0]) for _ in range(ncores)]
        self.bell_rings = 0
        self.thread_stack = thread_stack
        self.raw_nic = nic
        if allocate_lock is None:
            allocate_lock = _thread.allocate_lock
        self.lock = allocate_lock()
        locking = tx_mode == TX_LOCK and ncores > 1
        self.nic = LockedNic(nic, self.lock) if locking else _Direct(nic)
        # Other cores help dispatch only where they may touch the chip (not TX_MODE "ring",
        # where core 0 alone does) and not while frames are logged (printing is core 0's).
        self.helping = (dispatch_help and ncores > 1 and tx_mode == TX_LOCK and
                        log == LOG_OFF and intn is not None)
        self.intn = intn
        self.disp = Dispatcher(ncores, ip, flow_capacity=flow_capacity,
                               ring_capacity=ring_capacity)
        if pool_slots <= 0:
            pool_slots = default_pool_slots(ncores, ring_capacity)
        self.pool = FramePool(pool_slots, nic)
        self.txq = TxQueue(ncores, tx_slots, nic) if (tx_mode == TX_RING and ncores > 1) \
            else None
        self.handoff = Handoff(handoff_bytes) if ncores > 1 else None
        # Kernel 0 tells the dispatcher of closed connections itself, unless another core
        # may be reading meanwhile: then through its event ring, like the others.
        self.ports = [DispatchPort(self.disp, ring_capacity, pool_slots, flow_capacity,
                                   direct=k == 0 and not self.helping)
                      for k in range(ncores)]
        self.kernels = []
        for k in range(ncores):
            if self.txq is not None and k > 0:
                send = self.txq.ports[k].send
            else:
                send = self.nic.send
            kern = NetKernel(k, send, mac, ip, prefix, gateway, stack_config,
                             self.ports[k], self.pool, self.kernels, ncores=ncores,
                             handoff=self.handoff)
            nic.views(kern.stack.iface.tx)
            self.kernels.append(kern)
        # A frame with no free slot is read into the reading core's kernel's transmit
        # buffer and dropped: a core reads between its kernel's turns, when that buffer is
        # free.
        self.reader = FrameReader(self.disp, self.pool, self.nic, self.ports,
                                  [k.stack.iface.tx for k in self.kernels],
                                  intn=intn, lock=allocate_lock() if self.helping else None,
                                  log=log, wake_core0=wake_core0)
        self.ctl = [array("B", [0, 1]) for _ in range(ncores)]
        self.turns = 0

    # -- threads ---------------------------------------------------------------------------

    def start(self):
        """Start kernels 1..N-1, each in one thread (call after every import is done)."""
        if self.ncores > 1 and self.thread_stack:
            try:
                _thread.stack_size(self.thread_stack)
            except (AttributeError, ValueError):
                pass
        for k in range(1, self.ncores):
            ctl = self.ctl[k]
            ctl[_RUN] = 1
            ctl[_STOPPED] = 0
            bell = self.bells[k]
            if bell is not None and not self.bell_held[k]:
                bell.acquire()
                self.bell_held[k] = 1
            _thread.start_new_thread(_core_loop, (self.kernels[k], ctl, self.wait_event,
                                                  self.reader if self.helping else None,
                                                  bell, self.sleep_state[k]))

    def stop(self):
        for k in range(1, self.ncores):
            self.ctl[k][_RUN] = 0
            if self.bell_held[k]:
                self.bell_held[k] = 0
                self.bells[k].release()
        start = ticks_ms()
        for k in range(1, self.ncores):
            while not self.ctl[k][_STOPPED]:
                if ticks_ms() - start > _STOP_WAIT_MS:
                    break
                sleep_us(200)

    def running(self):
        return all(self.ctl[k][_RUN] and not self.ctl[k][_STOPPED]
                   for k in range(1, self.ncores))

    # -- core 0 ----------------------------------------------------------------------------

    def turn(self, now, rx):
        """Core 0's share: the dispatcher's turn (returns, closed flows, a batch read from
        the chip if ``rx``), other cores' TX, kernel 0. True if work is still waiting."""
        self.turns += 1
        more = self.reader.turn(now, rx)
        txq = self.txq
        if txq is not None:
            if txq.drain(self.raw_nic.send, _TX_BATCH) == _TX_BATCH:
                more = True
        if self.kernels[0].turn(now):
            more = True
        return more

    def ring_bells(self, now):
        """(core 0, after each turn and each idle wake) Ring the doorbell of a sleeping
        kernel with work waiting (frames, a datagram handed over, work from core 0 or the
        host, frames in the chip to read for the dispatcher) or whose deadline came; take
        back the doorbell of one that woke. Returns the ms until the earliest sleeping
        kernel's deadline (-1: none sleeps)."""
        best = -1
        k = 1
        while k < self.ncores:
            bell = self.bells[k]
            if bell is None:
                return -1
            st = self.sleep_state[k]
            if not self.bell_held[k]:
                # Rung earlier: taken back once the kernel is awake (it held the bell for a
                # moment; a failed try is retried at the next call).
                if not st[_SLEEPING] and bell.acquire(0):
                    self.bell_held[k] = 1
            elif st[_SLEEPING]:
                left = ticks_diff(st[_DUE], now)
                # Frames waiting in the chip (INTn low, or the last batch left some): a
                # sleeping kernel wakes to read them (dispatch help) while core 0 works.
                if (left <= 0 or self.kernels[k].has_work()
                        or (self.helping and (self.reader.backlog or self.intn() == 0))):
                    self.bell_held[k] = 0
                    self.bell_rings += 1
                    bell.release()
                elif best < 0 or left < best:
                    best = left
            k += 1
        return best
