# IPv4 reassembly: fragments in, whole datagrams out, within fixed memory.
#
# Limits (from the stack config): at most `max_datagrams` datagrams in progress, all of them
# inside one preallocated pool of `max_bytes` bytes, each given up `timeout_ms` after its first
# fragment arrived. Datagrams are keyed by (source, destination, protocol, identification).
#
# Layout. Each datagram in progress owns one contiguous region of the pool: a 20-byte IPv4
# header (built here, no options) followed by the payload, each fragment copied to header +
# its offset. A region is as long as the furthest fragment seen so far; regions are packed
# end to end, so growing one shifts the regions above it (a memmove of at most the pool) and
# freeing one closes the gap. The common case - one datagram at a time, fragments in order -
# only ever grows the topmost region and moves nothing. A completed datagram is handed out as
# (pool, base[slot]): a whole IPv4 datagram whose header says so (no MF, offset 0, total
# length, checksum), so the layers above parse it exactly like a received frame.
#
# Which bytes are still missing is tracked with RFC 815 hole descriptors, at most _HOLES per
# datagram (more gaps than that and the datagram is dropped).
#
# Overlaps: the first copy wins. A fragment only fills bytes that are still missing; bytes
# already received are never rewritten (so a later overlapping fragment cannot change a
# transport header that was already assembled), and exact duplicates - normal on a lossy
# path - fall out as "nothing new". Such fragments are counted in `overlaps`.
#
# Refused, counted, never stored: fragments whose end would take the datagram past 65,535
# bytes (the datagram is dropped as well), non-last fragments whose length is not a multiple
# of 8, empty fragments, and fragments that contradict the datagram's known end.
#
# When the table is full, the oldest datagram in progress is dropped to make room (counted in
# `evicted`): a stale incomplete datagram should not block new ones for the whole timeout. The
# same happens when the pool cannot hold a growing datagram; one that cannot fit even alone is
# dropped (`no_space`).
import time
from array import array

from micropython import const

from netkernel import wire

_HOLES = const(8)          # hole descriptors per datagram
_NO_END = const(0xFFFF)    # hole end while the last fragment has not been seen
_MAX_DATAGRAM = const(65535)

# Packet layout: copies of wire's (const() inlines only within a module).
_IP_LEN = const(2)
_IP_ID = const(4)
_IP_FRAG = const(6)
_IP_PROTO = const(9)
_IP_CSUM = const(10)
_IP_SRC = const(12)
_IP_HLEN = const(20)     # without options
_IP_VIHL_NOOPT = const(0x45)   # version 4, IHL 5
_IP_MF = const(0x2000)
_IP_OFFSET_MASK = const(0x1FFF)


class Reassembler:
    def __init__(self, max_datagrams, max_bytes, timeout_ms):
        if max_datagrams < 1 or max_bytes < _IP_HLEN + 8:
            raise ValueError("reassembly needs a slot and room for a header and 8 bytes")
        self.pool = bytearray(max_bytes)
        self.slots = max_datagrams
        self.timeout_ms = timeout_ms
        self.base = [0] * max_datagrams       # region start in pool (the header)
        self._size = [0] * max_datagrams      # region length: 20 + furthest fragment end
        self._end = [0] * max_datagrams       # payload length once the last fragment came
        self._deadline = [0] * max_datagrams
        # No datagram times out before _due (when _timed): expired() looks no sooner.
        self._due = 0
        self._timed = False
        self._active = bytearray(max_datagrams)
        self._nholes = bytearray(max_datagrams)
        self._hole_lo = array("H", [0] * (max_datagrams * _HOLES))
        self._hole_hi = array("H", [0] * (max_datagrams * _HOLES))
        self._used = 0                        # pool bytes in regions (packed from 0)
        self.fragments = 0
        self.reassembled = 0
        self.timeouts = 0
        self.evicted = 0
        self.no_space = 0
        self.too_big = 0
        self.bad_fragment = 0
        self.overlaps = 0
        self.too_many_holes = 0

    # -- input ---------------------------------------------------------------------------

    def input(self, buf, ip_off, ihl, total, now):
        """Take the fragment at buf[ip_off] (header ihl bytes, datagram total bytes).

        Returns the slot of the datagram it completed (whole datagram at pool[base[slot]];
        call release(slot) when done with it), or -1.
        """
        self.fragments += 1
        frag = wire.get16(buf, ip_off + _IP_FRAG)
        start = (frag & _IP_OFFSET_MASK) << 3
        n = total - ihl
        end = start + n
        more = frag & _IP_MF
        if n <= 0 or (more and (n & 7)):
            self.bad_fragment += 1
            return -1
        slot = self._find(buf, ip_off)
        if end + _IP_HLEN > _MAX_DATAGRAM:
            self.too_big += 1
            if slot >= 0:
                self.release(slot)
            return -1
        if slot < 0:
            slot = self._create(buf, ip_off, now)
        if not self._accept_end(slot, end, more):
            self.bad_fragment += 1
            self.release(slot)
            return -1
        if not self._grow(slot, _IP_HLEN + end):
            self.no_space += 1
            self.release(slot)
            return -1
        if not self._fill(slot, buf, ip_off + ihl, start, end):
            self.too_many_holes += 1
            self.release(slot)
            return -1
        if self._nholes[slot]:
            return -1
        self._finish(slot)
        self.reassembled += 1
        return slot

    def _find(self, buf, ip_off):
        pool = self.pool
        s = 0
        while s < self.slots:
            if self._active[s]:
                b = self.base[s]
                if (pool[b + _IP_PROTO] == buf[ip_off + _IP_PROTO]
                        and wire.equal(pool, b + _IP_ID, buf, ip_off + _IP_ID, 2)
                        and wire.equal(pool, b + _IP_SRC, buf, ip_off + _IP_SRC, 8)):
                    return s
            s += 1
        return -1

    def _create(self, buf, ip_off, now):
        s = self._free_slot()
        if s < 0:
            s = self._oldest(-1)
            self.evicted += 1
            self.release(s)
        self._active[s] = 1
        self.base[s] = self._used
        self._size[s] = 0
        self._end[s] = _NO_END
        at = time.ticks_add(now, self.timeout_ms)
        self._deadline[s] = at
        if not self._timed or time.ticks_diff(at, self._due) < 0:
            self._due = at
            self._timed = True
        self._nholes[s] = 1
        self._hole_lo[s * _HOLES] = 0
        self._hole_hi[s * _HOLES] = _NO_END
        self._grow(s, _IP_HLEN)   # always fits: the pool holds at least one header
        wire.copy(self.pool, self.base[s], buf, ip_off, _IP_HLEN)
        return s

    def _accept_end(self, s, end, more):
        """Check a fragment against the datagram's end; learn the end from the last one."""
        known = self._end[s]
        if more:
            return known == _NO_END or end <= known
        if known != _NO_END:
            return end == known
        if self._size[s] > _IP_HLEN + end:
            return False        # an earlier fragment reached past this "last" one
        self._end[s] = end
        self._cut_holes(s, end)
        return True

    def _cut_holes(self, s, end):
        """The end is known now: holes that were open-ended stop there."""
        h0 = s * _HOLES
        i = 0
        while i < self._nholes[s]:
            if self._hole_hi[h0 + i] > end:
                self._hole_hi[h0 + i] = end
            if self._hole_lo[h0 + i] >= self._hole_hi[h0 + i]:
                self._drop_hole(s, i)
            else:
                i += 1

    def _fill(self, s, buf, data_off, start, end):
        """Copy the parts of buf's payload [start, end) that fall into holes (RFC 815).

        Returns False if the datagram would need more than _HOLES holes.
        """
        lo_a = self._hole_lo
        hi_a = self._hole_hi
        h0 = s * _HOLES
        dst = self.base[s] + _IP_HLEN
        copied = 0
        i = 0
        while i < self._nholes[s]:
            lo = lo_a[h0 + i]
            hi = hi_a[h0 + i]
            if end <= lo or start >= hi:
                i += 1
                continue
            a = start if start > lo else lo
            b = end if end < hi else hi
            wire.copy(self.pool, dst + a, buf, data_off + a - start, b - a)
            copied += b - a
            self._drop_hole(s, i)     # the last hole moved into i: look at i again
            if lo < start and not self._add_hole(s, lo, start):
                return False
            if end < hi and not self._add_hole(s, end, hi):
                return False
        if copied < end - start:
            self.overlaps += 1
        return True

    def _add_hole(self, s, lo, hi):
        k = self._nholes[s]
        if k >= _HOLES:
            return False
        self._hole_lo[s * _HOLES + k] = lo
        self._hole_hi[s * _HOLES + k] = hi
        self._nholes[s] = k + 1
        return True

    def _drop_hole(self, s, i):
        h0 = s * _HOLES
        last = self._nholes[s] - 1
        self._hole_lo[h0 + i] = self._hole_lo[h0 + last]
        self._hole_hi[h0 + i] = self._hole_hi[h0 + last]
        self._nholes[s] = last

    def _finish(self, s):
        """Make the header describe the whole datagram."""
        self._set_header(s, _IP_HLEN + self._end[s], 0)

    def _set_header(self, s, total, frag):
        pool = self.pool
        b = self.base[s]
        pool[b] = _IP_VIHL_NOOPT
        wire.put16(pool, b + _IP_LEN, total)
        wire.put16(pool, b + _IP_FRAG, frag)
        pool[b + _IP_CSUM] = 0
        pool[b + (_IP_CSUM + 1)] = 0
        wire.put16(pool, b + _IP_CSUM, ~wire.checksum(pool, b, _IP_HLEN, 0) & 0xFFFF)

    # -- pool regions --------------------------------------------------------------------

    def _free_slot(self):
        s = 0
        while s < self.slots:
            if not self._active[s]:
                return s
            s += 1
        return -1

    def _oldest(self, keep):
        """The active slot (other than keep) that started first, or -1."""
        best = -1
        s = 0
        while s < self.slots:
            if self._active[s] and s != keep and (
                    best < 0 or time.ticks_diff(self._deadline[s], self._deadline[best]) < 0):
                best = s
            s += 1
        return best

    def _grow(self, s, need):
        """Make slot s's region `need` bytes long, moving the regions above it up."""
        g = need - self._size[s]
        if g <= 0:
            return True
        pool = self.pool
        if need > len(pool):
            return False
        while self._used + g > len(pool):
            victim = self._oldest(s)
            if victim < 0:
                return False          # cannot happen (need <= pool), but never index -1
            self.evicted += 1
            self.release(victim)
        top = self.base[s] + self._size[s]
        if top < self._used:
            wire.copy(pool, top + g, pool, top, self._used - top)
            k = 0
            while k < self.slots:
                if self._active[k] and k != s and self.base[k] >= top:
                    self.base[k] += g
                k += 1
        self._size[s] = need
        self._used += g
        return True

    def release(self, s):
        """Forget slot s and close its gap in the pool."""
        if not self._active[s]:
            return
        b = self.base[s]
        size = self._size[s]
        top = b + size
        if top < self._used:
            wire.copy(self.pool, b, self.pool, top, self._used - top)
            k = 0
            while k < self.slots:
                if self._active[k] and k != s and self.base[k] > b:
                    self.base[k] -= size
                k += 1
        self._used -= size
        self._active[s] = 0
        self._size[s] = 0
        self._nholes[s] = 0

    # -- timers --------------------------------------------------------------------------

    def expired(self, now):
        """A slot whose time is up (the caller reports and releases it), or -1."""
        if not self._timed or time.ticks_diff(self._due, now) > 0:
            return -1         # per poll, so nothing before the earliest deadline
        timed = False
        due = 0
        s = 0
        while s < self.slots:
            if self._active[s]:
                d = self._deadline[s]
                if time.ticks_diff(d, now) <= 0:
                    return s      # the due stays: the next call looks again
                if not timed or time.ticks_diff(d, due) < 0:
                    due = d
                    timed = True
            s += 1
        self._due = due
        self._timed = timed
        return -1

    def time_out(self, s):
        self.timeouts += 1
        self.release(s)

    def first_bytes(self, s):
        """Payload bytes received contiguously from offset 0 (0 if fragment zero is missing).

        For the ICMP time-exceeded report (RFC 792/1122: sent only if fragment zero came);
        also rewrites the header to describe just that part.
        """
        h0 = s * _HOLES
        n = self._size[s] - _IP_HLEN
        i = 0
        while i < self._nholes[s]:
            if self._hole_lo[h0 + i] < n:
                n = self._hole_lo[h0 + i]
            i += 1
        if n > 0:
            self._set_header(s, _IP_HLEN + n, _IP_MF)
        return n

    def next_deadline(self, now):
        """Milliseconds until the next datagram times out: 0 overdue, -1 none."""
        if self._timed and time.ticks_diff(self._due, now) <= 0:
            self.expired(now)     # the due may be stale (released since): look again
        if not self._timed:
            return -1
        d = time.ticks_diff(self._due, now)
        return d if d > 0 else 0

    def in_progress(self):
        n = 0
        s = 0
        while s < self.slots:
            n += self._active[s]
            s += 1
        return n

    def used_bytes(self):
        return self._used

    def counters(self):
        return {
            "reasm_fragments": self.fragments,
            "reasm_ok": self.reassembled,
            "reasm_timeouts": self.timeouts,
            "reasm_evicted": self.evicted,
            "reasm_no_space": self.no_space,
            "reasm_too_big": self.too_big,
            "reasm_bad_fragment": self.bad_fragment,
            "reasm_overlaps": self.overlaps,
            "reasm_too_many_holes": self.too_many_holes,
            "reasm_in_progress": self.in_progress(),
        }
