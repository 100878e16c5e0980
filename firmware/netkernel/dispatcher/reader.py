# The dispatcher's loop: read frames from the chip into the pool's slots, ask the
# Dispatcher (steering.py) where each goes, put it on that kernel's ring.
#
# Core 0 reads a batch at its turn, woken by its timer and INTn. With several kernels and
# TX_MODE "lock", a kernel on another core that finds its ring empty reads a batch too when
# INTn is low (or the last batch left frames behind) and nobody else is reading (help()).
# All the state behind the reader (the pool, the rings' producer ends, the flow table, the
# chip's receive pointer) is guarded by `lock`, always taken with acquire(0): a core that
# finds it taken leaves the frames to the holder. Measured why: core 0 reading every frame
# and running its own kernel was the 2-kernel board's limit while core 1 had time to spare.
#
# Between batches the reader takes back what kernels are done with: slots from their return
# rings (only the reader frees slots and keeps reference counts) and closed connections
# from their event rings (only the reader writes the flow table). Kernels reach it through
# their DispatchPort (port.py).
from array import array

from micropython import const

from netkernel.dispatcher.steering import ALL_CORES, KEY_LEN
from netkernel_native import get16

LOG_OFF = const(0)        # the frame log: nothing, a line per frame, or the line + hex
LOG_SUMMARY = const(1)
LOG_HEX = const(2)

# Packet layout: copies of wire's (const() inlines only within a module).
_ETH_DST = const(0)
_ETH_SRC = const(6)
_ETH_TYPE = const(12)
_PROTO_TCP = const(6)

_RX_BATCH = const(16)         # frames read from the chip per batch
_EVENT_BATCH = const(8)
_C_DROP_RED = const(4)         # Dispatcher.counters_ index of drop_red
_WRAP = const(0xFFFF)          # rings.SpscRing's index wrap
_HEX_PIECE = const(64)         # frame bytes per piece of a logged frame's hex


def _mac_str(b, off):
    return "%02x:%02x:%02x:%02x:%02x:%02x" % (
        b[off], b[off + 1], b[off + 2], b[off + 3], b[off + 4], b[off + 5])


class FrameReader:
    def __init__(self, disp, pool, nic, ports, drop_bufs, intn=None, lock=None,
                 log=LOG_OFF, wake_core0=None):
        """``disp``: the Dispatcher; ``pool``: the FramePool the chip is read into; ``nic``:
        the driver (under the chip's lock where several cores use it); ``ports``: each
        kernel's DispatchPort, by core; ``drop_bufs``: per core, a frame-sized buffer free
        while that core reads (a frame with no free slot is read into it and dropped);
        ``intn``: the chip's INTn pin (None: every batch reads); ``lock``: the reader's
        lock where several cores read, else None; ``log``: the frame log (LOG_*);
        ``wake_core0``: the board's way to end core 0's idle wait after another core put
        frames on kernel 0's ring, or None."""
        n = len(ports)
        self.disp = disp
        self.pool = pool
        self.nic = nic
        self.ncores = n
        self.intn = intn
        self.lock = lock
        self.log = log
        self.wake_core0 = wake_core0
        self.drop_bufs = drop_bufs
        self.flow_frames = [p.flow_frames for p in ports]
        # What the per-frame and per-turn loops walk, gathered once: each kernel's receive
        # ring, its indices (a depth without a call), its return and event rings.
        self._rx_rings = [p.rx for p in ports]
        self._rx_idx = [p.rx.idx for p in ports]
        self._rets = [p.ret for p in ports]
        self._events = [p.events for p in ports]
        disp.ring_idx = self._rx_idx      # steer() reads the depths it needs from them
        self._holder = -1         # the core whose batch holds the lock (unlock_after_error)
        self.backlog = False      # the last batch stopped with frames maybe still waiting
        self.dispatched = array("I", bytes(4 * n))  # per core: frames it read
        self.drop_full = array("I", bytes(4 * n))   # per kernel: its ring was full
        self.drop_red = array("I", bytes(4 * n))    # per kernel: early discard for it
        self.rx_frames = 0
        self.rx_bytes = 0
        self.drop_no_slot = 0
        self.drop_steer = 0
        self.red_seen = 0
        self.broadcasts = 0
        self.flows_closed = 0

    # -- core 0 ----------------------------------------------------------------------------

    def turn(self, now, rx):
        """(Core 0) Returns and closed flows back; a batch read from the chip if ``rx``.
        True if frames are still waiting. With a lock, nothing if another core holds it
        (``rx`` back: look again next turn). No try/finally (it would put this frame over
        11 words, a heap allocation per call): a turn that raised leaves the lock to
        unlock_after_error."""
        lock = self.lock
        if lock is None:
            return self._batch(now, rx)
        if not lock.acquire(0):
            return rx
        self._holder = 0
        more = self._batch(now, rx)
        self._holder = -1
        lock.release()
        return more

    def unlock_after_error(self, core):
        """(Core ``core``, after its turn raised) Release the lock if that turn held it."""
        if self._holder == core:
            self._holder = -1
            self.lock.release()

    def _batch(self, now, rx):
        self._collect_returns()
        self._collect_events()
        if not rx:
            return False
        if self.lock is not None:
            mine = self._rx_idx[0]
            if mine[0] != mine[1]:
                # A helper filled kernel 0's ring since its last turn: work through it first
                # and leave the chip to cores with empty rings (measured: core 0 read 62 % of
                # the frames and was the last to finish; now about half).
                return True
        intn = self.intn
        if intn is None or intn() == 0:   # a tick with INTn high: no ack
            self.nic.clear_interrupt()
        more = self.dispatch(now, 0)
        self.nic.rx_release()      # what the batch read, back to the chip
        return more

    # -- kernels 1..N-1 --------------------------------------------------------------------

    def help(self, core, now):
        """(Kernel ``core`` >= 1, its ring empty) Read a batch when INTn is low or the last
        batch left frames waiting, unless another core is at it. True if it read any. (No
        try/finally, which would put this frame over 11 words and on the heap: a batch that
        raises leaves the lock to unlock_after_error, from the core's handler.)"""
        low = self.intn() == 0
        if not low and not self.backlog:
            return False
        if not self.lock.acquire(0):
            return False
        self._holder = core
        self._collect_returns()
        if low:
            self.nic.clear_interrupt()
        before = self.dispatched[core]
        # What it read stays held (at most RX_RELEASE_BYTES, which node.rx_budget counts)
        # until the driver's own release or core 0's next batch: two SPI transactions
        # saved per helping batch.
        self.dispatch(now, core)
        mine = self._rx_idx[0]
        if self.wake_core0 is not None and mine[0] != mine[1]:
            self.wake_core0()
        self._holder = -1
        self.lock.release()
        return self.dispatched[core] != before

    def with_lock(self, fn, *args):
        """Run ``fn(*args)`` (a dispatcher setting from the host, on core 0) while no other
        core reads: waits at most one helper's batch. Not per frame."""
        lock = self.lock
        if lock is None:
            return fn(*args)
        lock.acquire()
        try:
            return fn(*args)
        finally:
            lock.release()

    # -- the batch -------------------------------------------------------------------------

    def dispatch(self, now, me):
        """(The lock's holder, on core ``me``) Read up to _RX_BATCH frames from the chip
        and steer each to a kernel's ring. True if the batch stopped with frames maybe
        still waiting. (A frame at a time in _read_one() and _steer(): one function for the
        whole batch took a frame of 32 words, from the heap, on every call.)"""
        self.disp.now = now
        mine = self._rx_idx[me]
        stop = self.disp.red_min  # our kernel runs after this batch: never overfill its ring
        more = True
        got = 0
        while got < _RX_BATCH:
            if (mine[0] - mine[1]) & _WRAP >= stop:
                break
            if self._read_one(me) < 0:
                more = False
                break
            got += 1
        self.dispatched[me] += got
        self.backlog = more
        return more

    def _read_one(self, me):
        """Read a frame into a free slot and steer it: its length, 0 if it was read into
        core ``me``'s drop buffer for want of a slot, -1 if none was waiting."""
        pool = self.pool
        s = pool.take()
        if s < 0:
            # Slots other kernels used since this turn began: back first.
            self._collect_returns()
            s = pool.take()
            if s < 0:
                return self._read_dropped(me)
        buf = pool.bufs[s]
        n = self.nic.recv_into(buf)
        if n == 0:
            pool.release(s)
            return -1
        self.rx_frames += 1
        self.rx_bytes += n
        pool.lens[s] = n
        pool.ops[s] = self.disp.classify(buf, n)
        self._steer(s)
        return n

    def _read_dropped(self, me):
        # No slot: the frame is read (the chip must move on) and dropped.
        if self.nic.recv_into(self.drop_bufs[me]) == 0:
            return -1
        self.drop_no_slot += 1
        return 0

    def _steer(self, s):
        """The frame in slot ``s`` to the ring of the kernel the dispatcher picks (every
        ring, or none)."""
        pool = self.pool
        disp = self.disp
        # Free slots as the frame found them (its own slot counted as free).
        disp.free_slots = pool.nfree + 1
        core = disp.steer(pool.bufs[s], pool.lens[s], pool.ops[s])
        pool.flows[s] = disp.flow
        if disp.flow_new:
            self._flow_reused(disp.flow)
        if self.log:
            self._log_frame(pool.bufs[s], pool.lens[s], core)
        if core >= 0:
            if not self._rx_rings[core].push(s):
                self.drop_full[core] += 1
                pool.release(s)
        elif core == ALL_CORES:
            self._broadcast(s)
        else:
            self._dropped(s)

    def _flow_reused(self, flow):
        # A reused flow slot: the kernels' per-flow counts start again from 0.
        for frames in self.flow_frames:
            frames[flow] = 0

    def _broadcast(self, s):
        self.broadcasts += 1
        pool = self.pool
        pool.refs[s] = self.ncores
        k = 0
        for ring in self._rx_rings:
            if not ring.push(s):
                self.drop_full[k] += 1
                pool.release(s)
            k += 1

    def _dropped(self, s):
        self.drop_steer += 1
        disp = self.disp
        if disp.counters_[_C_DROP_RED] != self.red_seen:
            self.red_seen = disp.counters_[_C_DROP_RED]
            f = disp.flow
            core = disp.flows_table.owner[f] if f >= 0 else disp.hash_core(disp.key)
            if core < self.ncores:
                self.drop_red[core] += 1
        self.pool.release(s)

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

    def _collect_events(self):
        for ev in self._events:
            idx = ev.ring.idx
            if idx[0] != idx[1]:          # most turns: no connection closed, and no call
                self._close_flows(ev)

    def _close_flows(self, ev):
        disp = self.disp
        ip = disp.ip              # the board's address, as the host last set it
        data = ev.data
        i = 0
        while i < _EVENT_BATCH:
            o = ev.pop()
            if o < 0:
                break
            disp.flow_closed(_PROTO_TCP, data, o, ip, 0, get16(data, o + 4),
                             get16(data, o + 6))
            self.flows_closed += 1
            i += 1

    def _log_frame(self, buf, n, core):
        # core: the kernel it goes to, -1 every kernel (ARP), -2 dropped by the dispatcher
        print("netkernel: rx core=%d len=%d dst=%s src=%s type=0x%04x" % (
            core, n, _mac_str(buf, _ETH_DST), _mac_str(buf, _ETH_SRC), get16(buf, _ETH_TYPE)),
            end="")
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
            per = " ".join("k%d=%d" % (c, self.flow_frames[c][num])
                           for c in range(self.ncores))
            yield "n=%d key=%s owner=%d pkts=%d bytes=%d %s" % (num, key, owner, pkts,
                                                                 nbytes, per)
