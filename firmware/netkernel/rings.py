# Queues between the dispatcher and the net kernels: fixed-capacity rings of frame-slot
# indices and the frame pools they point into. Everything is allocated at boot; nothing on
# the per-frame path allocates (no slices, tuples or big ints: indices wrap at 16 bits).
#
# SpscRing: exactly one producer and one consumer, no lock. head is written only by the
# producer, tail only by the consumer, each a single word store into an array('I'); the
# producer stores the item before it publishes the new head, the consumer reads the item
# before it publishes the new tail. (Cortex-M0+ and x86 keep stores in program order, and
# the VM makes each store a separate C call.)
#
# MpscRing: several producers, one consumer: producers take a `_thread` lock for the two
# stores of one push (never held across anything else); the consumer needs none.
#
# FramePool: N frame buffers of FRAME_BUFFER_SIZE bytes, each with its length, op code,
# flow number and reference count. Only core 0 (the dispatcher) takes and frees slots and
# touches the reference counts; kernels give slots back through their SPSC return ring.
# A frame sent to every core (ARP) is one slot with refs = number of kernels.
import _thread
from array import array

from micropython import const

from netkernel import wire
from netkernel.w5500 import FRAME_BUFFER_SIZE

_WRAP = const(0xFFFF)
_EVENT = const(8)          # event entry: remote ip (4), remote port (2), local port (2)


def pow2_at_least(n):
    c = 1
    while c < n:
        c <<= 1
    return c


class SpscRing:
    """Ring of 16-bit values, one producer, one consumer, lock-free."""

    def __init__(self, capacity):
        if capacity < 1 or capacity > 32768 or capacity & (capacity - 1):
            raise ValueError("ring capacity must be a power of two, 1..32768")
        self.items = array("H", bytes(2 * capacity))
        self.idx = array("I", [0, 0])        # [0] head (producer), [1] tail (consumer)
        self.mask = capacity - 1
        self.capacity = capacity
        self.hwm = 0                         # highest depth seen (written by the producer)

    def push(self, v):
        """Append v; False (nothing stored) when the ring is full."""
        idx = self.idx
        h = idx[0]
        d = (h - idx[1]) & _WRAP
        if d >= self.capacity:
            return False
        self.items[h & self.mask] = v
        idx[0] = (h + 1) & _WRAP             # publish after the item is stored
        if d >= self.hwm:
            self.hwm = d + 1
        return True

    def pop(self):
        """The oldest value, or -1 when the ring is empty."""
        idx = self.idx
        t = idx[1]
        if t == idx[0]:
            return -1
        v = self.items[t & self.mask]
        idx[1] = (t + 1) & _WRAP             # release the place after reading it
        return v

    def depth(self):
        idx = self.idx
        return (idx[0] - idx[1]) & _WRAP

    def discard(self):
        """(consumer) Drop every value waiting: the tail moves up to the head."""
        idx = self.idx
        idx[1] = idx[0]


class MpscRing(SpscRing):
    """Several producers (each push under a lock, held for two stores), one consumer."""

    def __init__(self, capacity):
        super().__init__(capacity)
        self.lock = _thread.allocate_lock()

    def push(self, v):
        lock = self.lock
        lock.acquire()
        idx = self.idx
        h = idx[0]
        d = (h - idx[1]) & _WRAP
        ok = d < self.capacity
        if ok:
            self.items[h & self.mask] = v
            idx[0] = (h + 1) & _WRAP
            if d >= self.hwm:
                self.hwm = d + 1
        lock.release()
        return ok


class Mailbox:
    """One request from core 0 to another core, carried out at that core's next turn.

    The sender writes ``request`` and then bumps ``seq[0]``; the receiver alone writes
    ``seq[1]``, the sequence number it has carried out. One writer per word, so no lock, and
    a request posted while the receiver is busy with the previous one is never lost (the
    receiver sees the new number at its next turn)."""

    def __init__(self):
        self.request = None
        self.seq = bytearray(2)
        self._taken = 0           # receiver's own: the number it is carrying out

    def post(self, request):
        """(sender) Replace the request; it is carried out at the receiver's next turn."""
        self.request = request
        self.seq[0] = (self.seq[0] + 1) & 0xFF     # after the request: receivers read seq first

    def pending(self):
        return self.seq[0] != self.seq[1]

    def take(self):
        """(receiver) Start on the waiting request (check pending() first) and return it."""
        self._taken = self.seq[0]
        return self.request

    def done(self):
        """(receiver) The request taken is carried out."""
        self.seq[1] = self._taken


class EventRing:
    """SPSC ring of small fixed records: a closed TCP connection (remote ip, ports), sent
    by a kernel to the dispatcher on core 0."""

    def __init__(self, capacity):
        self.ring = SpscRing(capacity)       # indices are positions in data
        self.data = bytearray(_EVENT * capacity)
        self.dropped = 0

    def push(self, ip, ip_off, rport, lport):
        r = self.ring
        i = r.idx[0] & r.mask
        if r.depth() >= r.capacity:
            self.dropped += 1
            return False
        d = self.data
        o = i * _EVENT
        wire.copy(d, o, ip, ip_off, 4)
        wire.put16(d, o + 4, rport)
        wire.put16(d, o + 6, lport)
        r.push(i)
        return True

    def pop(self):
        """Offset of the oldest record in ``data`` (valid until the next pop), or -1."""
        i = self.ring.pop()
        if i < 0:
            return -1
        return i * _EVENT


class FramePool:
    """Preallocated frame slots shared by the dispatcher and every kernel."""

    def __init__(self, nslots, nic=None):
        self.size = nslots
        self.bufs = [bytearray(FRAME_BUFFER_SIZE) for _ in range(nslots)]
        if nic is not None:
            for b in self.bufs:
                nic.views(b)                 # the driver reads straight into the slots
        self.lens = array("H", bytes(2 * nslots))
        self.ops = array("H", bytes(2 * nslots))
        self.flows = array("h", bytes(2 * nslots))
        self.refs = array("B", bytes(nslots))
        self.free = array("H", range(nslots))   # stack of free slots (core 0 only)
        self.nfree = nslots
        self.low = nslots                    # fewest free slots seen

    def take(self):
        """A free slot (refs 1), or -1 when none is free. Core 0 only."""
        n = self.nfree
        if n == 0:
            return -1
        n -= 1
        self.nfree = n
        if n < self.low:
            self.low = n
        s = self.free[n]
        self.refs[s] = 1
        return s

    def release(self, s):
        """Drop one reference; the slot is free again when none is left. Core 0 only."""
        r = self.refs[s]
        if r > 1:
            self.refs[s] = r - 1
            return
        self.refs[s] = 0
        n = self.nfree
        self.free[n] = s
        self.nfree = n + 1


class TxPort:
    """A kernel's transmit path through core 0 (TX_MODE "ring"): copy the frame into one of
    this kernel's TX slots and post it on the shared MPSC ring; core 0 sends it."""

    def __init__(self, txq, core):
        self.txq = txq
        self.free = txq.free[core]
        self.frames = 0
        self.no_slot = 0

    def send(self, buf, n):
        s = self.free.pop()
        if s < 0:
            self.no_slot += 1
            return False
        q = self.txq
        wire.copy(q.bufs[s], 0, buf, 0, n)
        q.lens[s] = n
        q.post.push(s)                       # cannot be full: it holds every TX slot
        self.frames += 1
        return True


class TxQueue:
    """TX slots of kernels 1..N-1, their free rings (core 0 -> kernel) and the post ring
    (kernels -> core 0)."""

    def __init__(self, ncores, per_core, nic=None):
        per_core = pow2_at_least(per_core)
        total = (ncores - 1) * per_core
        self.bufs = [bytearray(FRAME_BUFFER_SIZE) for _ in range(total)]
        if nic is not None:
            for b in self.bufs:
                nic.views(b)
        self.lens = array("H", bytes(2 * total))
        self.owner = array("B", bytes(total))
        self.post = MpscRing(pow2_at_least(max(total, 1)))
        self.free = [None]
        s = 0
        for core in range(1, ncores):
            ring = SpscRing(per_core)
            for _ in range(per_core):
                self.owner[s] = core
                ring.push(s)
                s += 1
            self.free.append(ring)
        self.ports = [None] + [TxPort(self, k) for k in range(1, ncores)]
        self.sent = 0
        self.failed = 0

    def drain(self, send, limit):
        """Send up to ``limit`` posted frames with ``send(buf, n)`` (core 0); count sent."""
        post = self.post
        free = self.free
        done = 0
        while done < limit:
            s = post.pop()
            if s < 0:
                break
            if send(self.bufs[s], self.lens[s]):
                self.sent += 1
            else:
                self.failed += 1
            free[self.owner[s]].push(s)
            done += 1
        return done
