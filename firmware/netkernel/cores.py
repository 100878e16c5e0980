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
# Dispatch help (TX_MODE "lock", several kernels): the dispatcher is core 0's, woken by its
# timer and INTn, but a kernel on another core that finds its ring empty reads a batch for
# it when INTn is low (or the last batch left frames behind) and nobody else is dispatching.
# Its state (the pool, the rings' producer ends, the flow table, the chip's receive pointer)
# is guarded by one dispatch lock, always taken with acquire(0): a core that finds it taken
# leaves the frames to the holder. Measured why: core 0 reading every frame and running its
# own kernel was the 2-kernel board's limit while core 1 had time to spare (README, bench).
#
# rp2 rules kept here: every module global exists before core 1 starts (this module is
# imported before any thread), the thread gets its state as arguments, core 0 never blocks
# on a lock for longer than one SPI transaction of the other core (a host setting of the
# dispatcher, which is rare, waits for a helper's batch), no lock is taken twice.
import _thread
from array import array
from time import sleep_us, ticks_diff, ticks_ms, ticks_us

from micropython import const

from netkernel import wire
from netkernel.busy import BusyTime
from netkernel.dispatch import ALL_CORES, KEY_LEN, Dispatcher, default_free_low
from netkernel.kernel import Handoff, NetKernel
from netkernel.rings import FramePool, TxQueue

LOG_OFF = const(0)        # the frame log: nothing, a line per frame, or the line + hex
LOG_SUMMARY = const(1)
LOG_HEX = const(2)


def _mac_str(b, off):
    return "%02x:%02x:%02x:%02x:%02x:%02x" % (
        b[off], b[off + 1], b[off + 2], b[off + 3], b[off + 4], b[off + 5])

TX_LOCK = "lock"
TX_RING = "ring"
_RX_BATCH = const(16)         # frames the dispatcher reads from the chip per turn
_TX_BATCH = const(32)         # frames core 0 sends for other kernels per turn (ring mode)
_EVENT_BATCH = const(8)
_PROTO_TCP = const(6)
_STOP_WAIT_MS = const(2000)
_C_DROP_RED = const(4)         # Dispatcher.counters_ index of drop_red
_WRAP = const(0xFFFF)          # rings.SpscRing's index wrap
_HEX_PIECE = const(64)         # frame bytes per piece of a logged frame's hex

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

    def send(self, buf, n):
        lock = self.lock
        lock.acquire()
        try:
            return self.nic.send(buf, n)
        finally:
            lock.release()

    # (recv_into and clear_interrupt keep their frame within 11 words, so MicroPython puts
    # it on the C stack: a larger one is taken from the heap on every call.)
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


def _core_loop(kernel, ctl, wait_event, pacer, helper, bell, sleep_state):
    """Kernels 1..N-1: turn after turn; with an empty ring, a batch read for the dispatcher
    (``helper``: the Cores, or None), else sleep until there is work (kernel.sleep: on
    ``bell``, its doorbell, where there is one). ``pacer`` (a simulated board's, or None)
    slows the core down to the board's speed."""
    core = kernel.core
    ring = kernel.rx
    intn = helper.intn if helper is not None else None
    while ctl[_RUN]:
        if pacer is not None:
            pacer.begin()
        try:
            # Reading for the dispatcher first: the frames it puts on our ring are taken in
            # this same turn (the other order cost an extra, empty turn per batch).
            helped = helper is not None and ring.depth() == 0 and \
                helper.help(core, ticks_ms())
            more = kernel.turn(ticks_ms()) or helped
        except Exception as e:     # count and carry on: the core must keep its flows
            kernel.errors += 1
            kernel.last_error = e
            more = False
        if pacer is not None:
            pacer.end()
        if not more:
            kernel.idle_sleeps += 1
            try:
                kernel.sleep(wait_event, intn, helper, bell, sleep_state)
            except Exception:
                kernel.errors += 1
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
        dispatcher's; a simulated board's paced cores hold them at their own speed), else
        `_thread.allocate_lock`; ``wait_event``: the board's wait of an idle kernel's core
        for an interrupt or the other core (rp2: machine.idle(), WFE), else a sleep of
        ``idle_us``; ``wake_core0``: the board's way to end core 0's idle wait when a
        helping core put frames on kernel 0's ring (None where the other core's event
        does, as on rp2: every lock released sends one); ``doorbells``: an idle kernel
        1..N-1 sleeps in a blocking acquire of its doorbell lock, which core 0 holds and
        releases when the kernel has work (on rp2 a blocked acquire is a WFE that no alarm
        wakes: machine.idle() sets one, and each alarm set wakes the other core, so two
        cores waiting that way wake each other without end)."""
        if ncores < 1:
            raise ValueError("kernels must be >= 1")
        if tx_mode not in (TX_LOCK, TX_RING):
            raise ValueError("tx_mode must be 'lock' or 'ring'")
        self.ncores = ncores
        self.log = log            # the frame log is written here, where frames arrive
        self.tx_mode = tx_mode
        self.idle_us = idle_us
        if wait_event is None:
            def wait_event():
                sleep_us(idle_us)
        self.wait_event = wait_event
        self.wake_core0 = wake_core0
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
        self.ip = bytes(ip)
        # Other cores help dispatch only where they may touch the chip (not TX_MODE "ring",
        # where core 0 alone does) and not while frames are logged (printing is core 0's).
        self.helping = (dispatch_help and ncores > 1 and tx_mode == TX_LOCK and
                        log == LOG_OFF and intn is not None)
        self.intn = intn
        self.disp_lock = allocate_lock() if self.helping else None
        self._locked_by_turn = False   # core 0's turn holds disp_lock (unlock_after_error)
        self.backlog = False      # the last batch stopped with frames maybe still waiting
        self.disp = Dispatcher(ncores, self.ip, flow_capacity=flow_capacity,
                               ring_capacity=ring_capacity)
        if pool_slots <= 0:
            pool_slots = default_pool_slots(ncores, ring_capacity)
        self.pool = FramePool(pool_slots, nic)
        self.txq = TxQueue(ncores, tx_slots, nic) if (tx_mode == TX_RING and ncores > 1) \
            else None
        self.handoff = Handoff(handoff_bytes) if ncores > 1 else None
        self.kernels = []
        for k in range(ncores):
            if self.txq is not None and k > 0:
                send = self.txq.ports[k].send
            else:
                send = self.nic.send
            kern = NetKernel(k, send, mac, ip, prefix, gateway, stack_config,
                             ncores=ncores, ring_capacity=ring_capacity,
                             return_capacity=pool_slots, flow_capacity=flow_capacity,
                             handoff=self.handoff)
            kern.pool = self.pool
            kern.disp = self.disp
            nic.views(kern.stack.iface.tx)
            self.kernels.append(kern)
        for kern in self.kernels:
            kern.peers = self.kernels
        # What the per-frame and per-turn loops walk, gathered once: each kernel's receive
        # ring, its ring's indices (a depth without a call), its return and event rings.
        self._rx_rings = [k.rx for k in self.kernels]
        self._rx_idx = [k.rx.idx for k in self.kernels]
        self._rets = [k.ret for k in self.kernels]
        self._events = [k.events for k in self.kernels]
        # Kernel 0 tells the dispatcher of closed connections itself, unless another core
        # may be dispatching meanwhile: then through its event ring, like the others.
        self.kernels[0].closes_direct = not self.helping
        # A frame with no free slot is read into the dispatching core's kernel's transmit
        # buffer and dropped: a core dispatches between its kernel's turns, when that
        # buffer is free.
        self.drop_bufs = [k.stack.iface.tx for k in self.kernels]
        self.depths = array("H", bytes(2 * ncores))
        self.dispatched = array("I", bytes(4 * ncores))  # per core: frames it read
        self.drop_full = array("I", bytes(4 * ncores))   # per kernel: its ring was full
        self.drop_red = array("I", bytes(4 * ncores))    # per kernel: early discard for it
        self.ctl = [array("B", [0, 1]) for _ in range(ncores)]
        # Dispatcher counters (core 0).
        self.rx_frames = 0
        self.rx_bytes = 0
        self.drop_no_slot = 0
        self.drop_steer = 0
        self.red_seen = 0
        self.broadcasts = 0
        self.flows_closed = 0
        self.turns = 0
        self.dispatch_busy = BusyTime()   # core 0 in dispatch(), its chip reads included

    # -- threads ---------------------------------------------------------------------------

    def start(self, pacer=None):
        """Start kernels 1..N-1, each in one thread (call after every import is done).
        ``pacer``: the board's factory of per-core pacers (simulated boards), or None."""
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
                                                  pacer() if pacer else None,
                                                  self if self.helping else None,
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
        """Core 0's share: returns, closed flows, interrupt ack + RX batch (unless another
        core is reading one), other cores' TX, kernel 0. True if work is still waiting."""
        self.turns += 1
        lock = self.disp_lock
        if lock is None:
            more = self._dispatch_turn(now, rx)
        elif lock.acquire(0):
            # No try/finally here (it would put this frame over 11 words, a heap
            # allocation per call): a turn that raises leaves the lock to unlock_after_error.
            self._locked_by_turn = True
            more = self._dispatch_turn(now, rx)
            self._locked_by_turn = False
            lock.release()
        else:
            more = rx      # another core is dispatching: look again next turn
        txq = self.txq
        if txq is not None:
            if txq.drain(self.raw_nic.send, _TX_BATCH) == _TX_BATCH:
                more = True
        if self.kernels[0].turn(now):
            more = True
        return more

    def unlock_after_error(self):
        """(Core 0, after its turn raised) Release the dispatch lock if the turn held it."""
        if self._locked_by_turn:
            self._locked_by_turn = False
            self.disp_lock.release()

    def _dispatch_turn(self, now, rx):
        """(The dispatch lock's holder, core 0) Returns and closed flows back; a batch read
        from the chip if ``rx``. True if frames are still waiting. (Apart from turn(): a
        bytecode function whose frame is over 11 words gets it from the heap on every
        call, 30 to 200 us on the RP2040.)"""
        self._collect_returns()
        self._collect_events()
        if not rx:
            return False
        if self.disp_lock is not None and self.kernels[0].rx.depth() > 0:
            # A helper filled kernel 0's ring since its last turn: work through it first and
            # leave the chip to cores with empty rings (measured: core 0 read 62 % of the
            # frames and was the last to finish; now about half).
            return True
        t0 = ticks_us()
        intn = self.intn
        if intn is None or intn() == 0:   # a tick with INTn high: no ack
            self.nic.clear_interrupt()
        more = self.dispatch(now, 0)
        self.nic.rx_release()      # what the batch read, back to the chip
        self.dispatch_busy.since(t0)
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
                        or (self.helping and (self.backlog or self.intn() == 0))):
                    self.bell_held[k] = 0
                    self.bell_rings += 1
                    bell.release()
                elif best < 0 or left < best:
                    best = left
            k += 1
        return best

    def help(self, core, now):
        """(Kernel ``core`` >= 1, its ring empty) Read a batch for the dispatcher when INTn
        is low or the last batch left frames waiting, unless another core is at it. True if
        it read any frame."""
        low = self.intn() == 0
        if not low and not self.backlog:
            return False
        lock = self.disp_lock
        if not lock.acquire(0):
            return False
        try:
            t0 = ticks_us()
            self._collect_returns()
            if low:
                self.nic.clear_interrupt()
            before = self.dispatched[core]
            # What it read stays held (at most RX_RELEASE_BYTES, which node.rx_budget
            # counts) until the driver's own release or core 0's next batch: two SPI
            # transactions saved per helping batch.
            self.dispatch(now, core)
            self.dispatch_busy.since(t0)
            if self.wake_core0 is not None and self.kernels[0].rx.depth():
                self.wake_core0()
            return self.dispatched[core] != before
        finally:
            lock.release()

    def with_dispatcher(self, fn, *args):
        """Run ``fn(*args)`` (a dispatcher setting from the host, on core 0) while no other
        core dispatches: waits at most one helper's batch. Not per frame."""
        lock = self.disp_lock
        if lock is None:
            return fn(*args)
        lock.acquire()
        try:
            return fn(*args)
        finally:
            lock.release()

    def _collect_returns(self):
        for ret in self._rets:
            idx = ret.idx
            if idx[0] != idx[1]:          # most turns: nothing back, and no call
                self._release_returned(ret)

    def _release_returned(self, ret):
        pool = self.pool
        s = ret.pop()
        while s >= 0:
            pool.release(s)
            s = ret.pop()

    def _log_frame(self, buf, n, core):
        # core: the kernel it goes to, -1 every kernel (ARP), -2 dropped by the dispatcher
        print("netkernel: rx core=%d len=%d dst=%s src=%s type=0x%04x" % (
            core, n, _mac_str(buf, 0), _mac_str(buf, 6), (buf[12] << 8) | buf[13]), end="")
        if self.log == LOG_HEX:
            # In pieces: a 1,514-byte frame is 3 KB of hex, more than the RP2040-sized heap
            # may hold in one piece.
            print(" data=", end="")
            o = 0
            while o < n:
                e = o + _HEX_PIECE if o + _HEX_PIECE < n else n
                print(buf[o:e].hex(), end="")
                o = e
        print()

    def dispatch(self, now, me):
        """(The dispatch lock's holder, on core ``me``) Read up to _RX_BATCH frames from
        the chip and steer each to a kernel's ring. True if the batch stopped with frames
        maybe still waiting."""
        pool = self.pool
        disp = self.disp
        nic = self.nic
        kernels = self.kernels
        rings = self._rx_rings
        ridx = self._rx_idx
        depths = self.depths
        nk = self.ncores
        mine = ridx[me]
        drop_buf = self.drop_bufs[me]
        stop = disp.red_min       # our kernel runs after this batch: never overfill its ring
        more = True
        got = 0
        while got < _RX_BATCH:
            if (mine[0] - mine[1]) & _WRAP >= stop:
                break
            s = pool.take()
            if s < 0:
                # Slots other kernels used since this turn began: back first.
                self._collect_returns()
                s = pool.take()
            if s < 0:
                # No slot: the frame is read (the chip must move on) and dropped.
                if nic.recv_into(drop_buf) == 0:
                    more = False
                    break
                self.drop_no_slot += 1
                got += 1
                continue
            buf = pool.bufs[s]
            n = nic.recv_into(buf)
            if n == 0:
                pool.release(s)
                more = False
                break
            got += 1
            self.rx_frames += 1
            self.rx_bytes += n
            op = disp.classify(buf, n)
            k = 0
            while k < nk:
                idx = ridx[k]
                depths[k] = (idx[0] - idx[1]) & _WRAP
                k += 1
            # Free slots as the frame found them (its own slot counted as free).
            core = disp.steer(buf, n, op, now, depths, pool.nfree + 1)
            pool.lens[s] = n
            pool.ops[s] = op
            pool.flows[s] = disp.flow
            if disp.flow_new:
                # A reused flow slot: the kernels' per-flow counts start again from 0.
                k = 0
                while k < nk:
                    kernels[k].flow_frames[disp.flow] = 0
                    k += 1
            if self.log:
                self._log_frame(buf, n, core)
            if core >= 0 and core < nk:
                if not rings[core].push(s):
                    self.drop_full[core] += 1
                    pool.release(s)
            elif core == ALL_CORES:
                self.broadcasts += 1
                pool.refs[s] = nk
                k = 0
                while k < nk:
                    if not rings[k].push(s):
                        self.drop_full[k] += 1
                        pool.release(s)
                    k += 1
            else:
                self.drop_steer += 1
                if disp.counters_[_C_DROP_RED] != self.red_seen:
                    self.red_seen = disp.counters_[_C_DROP_RED]
                    f = disp.flow
                    core = disp.flows_table.owner[f] if f >= 0 else disp._hash_core(disp.key)
                    if core < nk:
                        self.drop_red[core] += 1
                pool.release(s)
        self.dispatched[me] += got
        self.backlog = more
        return more

    def _collect_events(self):
        for ev in self._events:
            idx = ev.ring.idx
            if idx[0] != idx[1]:          # most turns: no connection closed, and no call
                self._close_flows(ev)

    def _close_flows(self, ev):
        disp = self.disp
        ip = self.ip
        data = ev.data
        i = 0
        while i < _EVENT_BATCH:
            o = ev.pop()
            if o < 0:
                break
            disp.flow_closed(_PROTO_TCP, data, o, ip, 0, wire.get16(data, o + 4),
                             wire.get16(data, o + 6))
            self.flows_closed += 1
            i += 1

    # -- reports ---------------------------------------------------------------------------

    def flow_lines(self):
        """One text line per flow of the dispatcher's table, with per-kernel frame counts,
        one at a time: n=<flow> key=<src>:<sport>><dst>:<dport>/<proto> owner= pkts= bytes=
        k0= k1= ..."""
        keys = self.disp.flows_table.keys
        for f in self.disp.flows():
            num, owner, pkts, nbytes = f[0], f[2], f[3], f[4]
            o = num * KEY_LEN
            k = keys[o:o + KEY_LEN]
            key = "%d.%d.%d.%d:%d>%d.%d.%d.%d:%d/%d" % (
                k[0], k[1], k[2], k[3], (k[8] << 8) | k[9],
                k[4], k[5], k[6], k[7], (k[10] << 8) | k[11], k[12])
            per = " ".join("k%d=%d" % (c, self.kernels[c].flow_frames[num])
                           for c in range(self.ncores))
            yield "n=%d key=%s owner=%d pkts=%d bytes=%d %s" % (num, key, owner, pkts,
                                                                 nbytes, per)
