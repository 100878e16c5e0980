# TCP storage: the byte rings and the out-of-order assembler (smoltcp's `storage`).
#
# A connection owns two ChunkRings. The TX ring is also the retransmit queue: bytes stay in
# it from the moment the application queues them until the peer acknowledges them, so a
# retransmission just copies them out again (no per-segment objects, no second copy of the
# data). The RX ring holds in-order data the application has not read yet; its free space is
# the receive window, and out-of-order segments that arrive within that window are written
# straight into that free space at their offset. The Assembler only remembers which ranges
# of the free space hold data (a few pairs of small ints), so reassembly costs no extra
# buffer memory.
#
# A ring's bytes live in chunks of CHUNK bytes taken from its kernel's ChunkPool when data is
# written into them and given back as soon as no byte in them is needed. A ring's size is
# the most it may hold (the largest window, the most unacknowledged data); what it costs is
# only the chunks it holds now. So the RP2040's heap is spent on the data that is actually
# in flight or waiting for a reader, which the receive credit (rcvcredit.py) and the host's
# credit keep small, instead of on every connection's largest window: 32 connections with
# 4 KB rings each would need 256 KB, the board has about 240 KB in all. A pool that runs
# out refuses the write (counted by the caller): the peer sends the segment again, the
# application writes again later.
#
# Offsets handed to these classes are always small ints (at most the buffer size), never
# sequence numbers. Nothing here allocates after construction. The walks over a ring's
# chunks are machine code (netkernel_native's ring_*): per segment they were a fifth of the
# receive path's interpreted lines.
from array import array

from micropython import const

from netkernel_native import ring_discard, ring_drop_unused, ring_peek, ring_room, ring_store

CHUNK = const(512)
_SHIFT = const(9)               # CHUNK == 1 << _SHIFT
_MASK = const(511)
_NONE = const(0xFF)             # a ring slot with no chunk (a pool has fewer than 255)


class ChunkPool:
    """A kernel's TCP buffer memory: ``nchunks`` chunks of CHUNK bytes in one bytearray,
    made at boot; ``free`` is a stack of the free chunks' numbers, ``st`` holds how many
    (nfree) and the fewest there were (low), where machine code updates them."""

    def __init__(self, nchunks):
        if not 0 < nchunks < _NONE:
            raise ValueError("a chunk pool holds 1..254 chunks")
        self.mem = bytearray(nchunks << _SHIFT)
        self.free = bytearray(range(nchunks))
        self.size = nchunks
        self.st = array("H", [nchunks, nchunks])
        self.short = 0             # writes refused because the pool was empty

    @property
    def nfree(self):
        return self.st[0]

    @property
    def low(self):
        """The fewest free chunks seen."""
        return self.st[1]

    def take(self):
        st = self.st
        n = st[0] - 1
        st[0] = n
        if n < st[1]:
            st[1] = n
        return self.free[n]

    def give(self, c):
        st = self.st
        n = st[0]
        self.free[n] = c
        st[0] = n + 1


class ChunkRing:
    """A byte ring: ``used`` bytes starting at ``head``, free space after them, stored in
    chunks of ``pool``. Positions are bytes from 0 to ``size`` (a multiple of CHUNK); slot
    ``p >> _SHIFT`` of ``map`` names the chunk that holds position p, or _NONE.

    ring_store, ring_peek and ring_discard take 7 to 9 arguments, which fill a bytecode
    frame of 11 words almost by themselves (a larger one comes from the heap on every
    call, py/objfun.c): the methods that call them have only ``self`` (and one flag), and
    get position, buffer, offset and length from ``_p``, ``_buf``, ``_off`` and ``_n``."""

    def __init__(self, pool, size):
        slots = (size + CHUNK - 1) >> _SHIFT
        self.pool = pool
        self.map = bytearray(b"\xff" * slots)
        self.slots = slots
        self.size = slots << _SHIFT
        self.head = 0
        self.used = 0
        self._p = 0
        self._buf = None
        self._off = 0
        self._n = 0

    def free(self):
        return self.size - self.used

    def clear(self):
        """Forget every byte and give every chunk back."""
        self.used = 0
        self.drop_unused()

    def _room(self, rel, n, reserve=0):
        """How many of n bytes from ``rel`` bytes past the end of the data the chunks held
        and the pool's free ones, less ``reserve`` of them, can store (rel + n <= free
        space); leaves that position in _p."""
        rel += self.head + self.used
        if rel >= self.size:
            rel -= self.size
        self._p = rel
        return ring_room(self.map, self.size, rel, n, self.pool.st[0] - reserve)

    def _store(self):
        """Copy _buf[_off:_off+_n] to position _p on, taking chunks where none is held yet
        (the caller checked with _room that the pool has them)."""
        ring_store(self.map, self.size, self._p, self.pool.mem, self.pool.free, self.pool.st,
                   self._buf, self._off, self._n)

    def writable(self):
        """Bytes write() would take now: the free space, as far as chunks can be had."""
        free = self.size - self.used
        if free == 0:
            return 0
        return self._room(0, free)

    def write(self, src, off, n):
        """Append up to n bytes of src[off:]; returns how many fit (the free space, and the
        chunks the pool can give)."""
        k = self.size - self.used
        if n > k:
            n = k
        if n > 0:
            k = self._room(0, n)
            if k < n:
                self.pool.short += 1
            self._buf = src
            self._off = off
            self._n = k
            self._store()
            self.used += k
            n = k
        return n

    def write_at(self, rel, src, off, n, reserve=0):
        """Store n bytes at ``rel`` bytes past the end of the data, without committing them;
        False (nothing stored) if the pool cannot give the chunks and still keep
        ``reserve`` free ones.

        The caller guarantees rel + n <= free(): this is how out-of-order data is parked in
        the free space until the assembler says it has become contiguous.
        """
        if self._room(rel, n, reserve) < n:
            self.pool.short += 1
            return False
        self._buf = src
        self._off = off
        self._n = n
        self._store()
        return True

    def commit(self, n):
        """n bytes written with write_at(0, ...) (and after) now count as data."""
        self.used += n

    def peek_into(self, dst, doff, rel, n):
        """Copy n bytes starting ``rel`` bytes after the head to dst[doff:], not consuming."""
        rel += self.head
        if rel >= self.size:
            rel -= self.size
        self._p = rel
        self._buf = dst
        self._off = doff
        self._n = n
        self._peek()

    def _peek(self):
        """Copy _n bytes from position _p on into _buf[_off:]."""
        ring_peek(self.map, self.size, self._p, self.pool.mem, self._buf, self._off, self._n)

    def read_into(self, dst, doff, n, parked=False):
        """Move up to n bytes from the head into dst[doff:]; returns how many. ``parked``:
        out-of-order data may be parked in the free space (see discard)."""
        if n > self.used:
            n = self.used
        if n > 0:
            self.peek_into(dst, doff, 0, n)
            self.discard(n, parked)
        return n

    def discard(self, n, parked=False):
        """Drop n bytes from the head (acknowledged TX data, or data the reader consumed),
        giving back every chunk left behind.

        The head does not jump back to 0 when the ring empties, and the chunk under it stays:
        out-of-order data parked in the free space is addressed from head + used (the owner
        calls drop_unused() when it knows none is parked). With ``parked``, the chunk under
        the old head stays too: the free space runs round to just behind the head, into
        that chunk, and parked data may be there.
        """
        if n > self.used:
            n = self.used
        if n <= 0:
            return
        self.used -= n
        self._n = n
        self._discard(parked)

    def _discard(self, parked):
        """Drop _n bytes at the head (``used`` is what stays); see discard."""
        self.head = ring_discard(self.map, self.slots, self.head, self._n, self.used, parked,
                                 self.pool.free, self.pool.st)

    def consume(self, n):
        """Drop n bytes (n <= used) from the head when no data is parked in the free space,
        giving back every chunk that holds none of the rest: discard() then drop_unused(),
        in one call."""
        self.used -= n
        n += self.head
        if n >= self.size:
            n -= self.size
        self.head = n if self.used else 0
        ring_drop_unused(self.map, self.slots, self.head, self.used, self.pool.free,
                         self.pool.st)

    def drop_unused(self):
        """Give back every chunk that holds none of the ``used`` bytes (nothing may be parked
        past them); an empty ring starts again at position 0, filling whole chunks."""
        used = self.used
        if used == 0:
            self.head = 0
        pool = self.pool
        ring_drop_unused(self.map, self.slots, self.head, used, pool.free, pool.st)

    def chunks(self):
        """Chunks this ring holds (for tests and counters)."""
        n = 0
        for c in self.map:
            if c != _NONE:
                n += 1
        return n


class Assembler:
    """Which byte ranges past the in-order point hold out-of-order data.

    Ranges are [start, end) offsets from the receive point (RCV.NXT), kept sorted, disjoint
    and non-touching, at most ``capacity`` of them: a segment that would need one more hole
    is refused (the peer retransmits it later), so a hostile peer cannot make us keep an
    unbounded list.
    """

    def __init__(self, capacity=4):
        self.starts = [0] * capacity
        self.ends = [0] * capacity
        self.capacity = capacity
        self.count = 0

    def clear(self):
        self.count = 0

    def add(self, start, end):
        """Record [start, end) as held; False (and nothing changed) if out of ranges."""
        if end <= start:
            return True
        s = self.starts
        e = self.ends
        i = 0
        while i < self.count and e[i] < start:
            i += 1
        # Ranges i..j-1 touch or overlap the new one and merge into it.
        j = i
        while j < self.count and s[j] <= end:
            if s[j] < start:
                start = s[j]
            if e[j] > end:
                end = e[j]
            j += 1
        j -= i                                   # how many merge
        if self.count - j >= self.capacity:
            return False
        if j == 0:
            # Open a slot at i: move i..count-1 up by one.
            k = self.count
            while k > i:
                s[k] = s[k - 1]
                e[k] = e[k - 1]
                k -= 1
        elif j > 1:
            # Close the gap: move i+j..count-1 down to i+1.
            k = i + 1
            while k + j - 1 < self.count:
                s[k] = s[k + j - 1]
                e[k] = e[k + j - 1]
                k += 1
        s[i] = start
        e[i] = end
        self.count = self.count - j + 1
        return True

    def truncate(self, off):
        """Forget everything held at or beyond ``off`` (the peer's FIN is there)."""
        s = self.starts
        e = self.ends
        c = self.count
        k = 0
        while k < c and s[k] < off:
            if e[k] > off:
                e[k] = off
            k += 1
        self.count = k

    def take_front(self):
        """If data now starts at offset 0, remove that range and return its length.

        The remaining ranges are re-based so offset 0 is again the new receive point.
        """
        if self.count == 0 or self.starts[0] != 0:
            return 0
        n = self.ends[0]
        s = self.starts
        e = self.ends
        c = self.count - 1
        k = 0
        while k < c:
            s[k] = s[k + 1] - n
            e[k] = e[k + 1] - n
            k += 1
        self.count = c
        return n

    def shift(self, n):
        """The receive point moved n bytes forward by in-order data: re-base every range."""
        s = self.starts
        e = self.ends
        c = self.count
        k = 0
        out = 0
        while k < c:
            a = s[k] - n
            b = e[k] - n
            if b > 0:
                s[out] = a if a > 0 else 0
                e[out] = b
                out += 1
            k += 1
        self.count = out

    def held(self):
        """Bytes held out of order (for tests and counters)."""
        total = 0
        k = 0
        while k < self.count:
            total += self.ends[k] - self.starts[k]
            k += 1
        return total
