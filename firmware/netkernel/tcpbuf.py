# TCP storage: the byte ring and the out-of-order assembler (smoltcp's `storage`).
#
# A connection owns two RingBuffers. The TX ring is also the retransmit queue: bytes stay in
# it from the moment the application queues them until the peer acknowledges them, so a
# retransmission just copies them out again (no per-segment objects, no second copy of the
# data). The RX ring holds in-order data the application has not read yet; its free space is
# the receive window, and out-of-order segments that arrive within that window are written
# straight into that free space at their offset. The Assembler only remembers which ranges
# of the free space hold data (a few pairs of small ints), so reassembly costs no extra
# buffer memory.
#
# Offsets handed to these classes are always small ints (at most the buffer size), never
# sequence numbers. Nothing here allocates after construction.
import micropython

from netkernel.wire import copy


class RingBuffer:
    """A byte ring: ``used`` bytes starting at ``head``, free space after them."""

    def __init__(self, size):
        self.buf = bytearray(size)
        self.size = size
        self.head = 0
        self.used = 0

    @micropython.native
    def free(self):
        return self.size - self.used

    @micropython.native
    def clear(self):
        self.head = 0
        self.used = 0

    @micropython.native
    def _pos(self, rel):
        """Index in buf of the byte ``rel`` bytes after the head (0 <= rel < 2 * size)."""
        p = self.head + rel
        if p >= self.size:
            p -= self.size
        return p

    @micropython.native
    def write(self, src, off, n):
        """Append up to n bytes of src[off:]; returns how many fit."""
        free = self.size - self.used
        if n > free:
            n = free
        if n > 0:
            self.write_at(0, src, off, n)
            self.used += n
        return n

    @micropython.native
    def write_at(self, rel, src, off, n):
        """Store n bytes at ``rel`` bytes past the end of the data, without committing them.

        The caller guarantees rel + n <= free(): this is how out-of-order data is parked in
        the free space until the assembler says it has become contiguous.
        """
        size = self.size
        p = self._pos(self.used + rel)
        first = size - p
        if first >= n:
            copy(self.buf, p, src, off, n)
        else:
            copy(self.buf, p, src, off, first)
            copy(self.buf, 0, src, off + first, n - first)

    @micropython.native
    def commit(self, n):
        """n bytes written with write_at(0, ...) (and after) now count as data."""
        self.used += n

    @micropython.native
    def peek_into(self, dst, doff, rel, n):
        """Copy n bytes starting ``rel`` bytes after the head to dst[doff:], not consuming."""
        size = self.size
        p = self._pos(rel)
        first = size - p
        if first >= n:
            copy(dst, doff, self.buf, p, n)
        else:
            copy(dst, doff, self.buf, p, first)
            copy(dst, doff + first, self.buf, 0, n - first)

    @micropython.native
    def read_into(self, dst, doff, n):
        """Move up to n bytes from the head into dst[doff:]; returns how many."""
        if n > self.used:
            n = self.used
        if n > 0:
            self.peek_into(dst, doff, 0, n)
            self.discard(n)
        return n

    @micropython.native
    def discard(self, n):
        """Drop n bytes from the head (acknowledged TX data, or data the reader consumed).

        The head never jumps back to 0 when the ring empties: out-of-order data parked in
        the free space is addressed from head + used and would move with it.
        """
        if n > self.used:
            n = self.used
        self.head = self._pos(n)
        self.used -= n


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

    @micropython.native
    def clear(self):
        self.count = 0

    @micropython.native
    def add(self, start, end):
        """Record [start, end) as held; False (and nothing changed) if out of ranges."""
        if end <= start:
            return True
        s = self.starts
        e = self.ends
        c = self.count
        i = 0
        while i < c and e[i] < start:
            i += 1
        # Ranges i..j-1 touch or overlap the new one and merge into it.
        j = i
        while j < c and s[j] <= end:
            if s[j] < start:
                start = s[j]
            if e[j] > end:
                end = e[j]
            j += 1
        merged = j - i
        new_count = c - merged + 1
        if new_count > self.capacity:
            return False
        if merged == 0:
            # Open a slot at i: move i..c-1 up by one.
            k = c
            while k > i:
                s[k] = s[k - 1]
                e[k] = e[k - 1]
                k -= 1
        elif merged > 1:
            # Close the gap: move j..c-1 down to i+1.
            k = j
            while k < c:
                s[k - merged + 1] = s[k]
                e[k - merged + 1] = e[k]
                k += 1
        s[i] = start
        e[i] = end
        self.count = new_count
        return True

    @micropython.native
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

    @micropython.native
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

    @micropython.native
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

    @micropython.native
    def held(self):
        """Bytes held out of order (for tests and counters)."""
        total = 0
        k = 0
        while k < self.count:
            total += self.ends[k] - self.starts[k]
            k += 1
        return total
