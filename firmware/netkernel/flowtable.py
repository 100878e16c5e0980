# Flow table (seed 002's flow database): flow key -> flow number, owner core, counters.
#
# A flow number is the index of the slot that holds the key, and it never changes while the
# entry lives (the runtime tags frames with it), so the index is a separate bucketed hash:
# head[bucket] -> first slot, nxt[slot] -> next slot in the same bucket (or on the free list).
# Removing an entry unlinks it from its chain; nothing else moves.
#
# Everything the per-frame path touches is preallocated and handled in viper: keys are
# 13-byte records in one bytearray, counters live in array('I') and are added to through
# ptr32 so a byte count past 2**30 never becomes a heap int. Times are ticks_ms values,
# which wrap at 2**30 on MicroPython, so an age is (now - seen) & _TICKS_MASK; an age past
# half the period is a `now` read before the entry's last touch (two cores take turns at
# dispatching, each with its own clock reading) and counts as 0, never as very old.
#
# Bounded: when every slot is in use, a new flow evicts the entry idle the longest (counted),
# a connectionless one if there is any: a TCP connection that lost its entry could land on
# a core without its TCB.
# Entries idle longer than their timeout are reclaimed a few slots per call of expire_step(),
# which the dispatcher calls once per steered frame: no separate sweep, no pause.
import array

import micropython
from micropython import const

KEY_LEN = const(13)
NIL = const(0xFFFF)
F_USED = const(0x01)
F_PINNED = const(0x02)       # a connection (TCP): the owner is binding, never redirected

_TICKS_MASK = const(0x3FFFFFFF)
_TICKS_HALF = const(0x20000000)

# indices into FlowTable.state (array 'I')
_S_FREE = const(0)          # first free slot (NIL when full)
_S_COUNT = const(1)
_S_EVICTIONS = const(2)
_S_EXPIRED = const(3)
_S_CURSOR = const(4)        # next slot expire_step() looks at
_S_LEN = const(5)


class FlowTable:
    def __init__(self, capacity=256, idle_ms=300000, tcp_idle_ms=7200000):
        if capacity < 1 or capacity >= NIL:
            raise ValueError("flow capacity")
        nb = 1
        while nb < capacity:
            nb <<= 1
        self.capacity = capacity
        self.bucket_mask = nb - 1
        # Why two timeouts: an idle TCP connection that lost its entry would follow the
        # current indirection table on its next segment and could land on a core without
        # its TCB, so connections are kept much longer than connectionless flows.
        self.idle_ms = idle_ms
        self.tcp_idle_ms = tcp_idle_ms
        self.keys = bytearray(capacity * KEY_LEN)
        self.owner = bytearray(capacity)
        self.flags = bytearray(capacity)
        self.packets = array.array("I", bytes(4 * capacity))
        self.nbytes = array.array("I", bytes(4 * capacity))
        self.last_op = array.array("H", bytes(2 * capacity))
        self.seen = array.array("I", bytes(4 * capacity))
        self.head = array.array("H", [NIL] * nb)
        self.bucket = array.array("H", bytes(2 * capacity))
        self.nxt = array.array("H", [i + 1 for i in range(capacity)])
        self.nxt[capacity - 1] = NIL
        self.state = array.array("I", bytes(4 * _S_LEN))
        # Pinned entries (connections) per owner: the dispatcher's load balancing counts on it.
        self.pinned = array.array("H", bytes(2 * 256))

    @micropython.viper
    def _bucket_of(self, key: ptr8, koff: int) -> int:
        h = 0x1505
        i = 0
        while i < KEY_LEN:
            h = ((h * 33) ^ key[koff + i]) & 0xFFFFFF
            i += 1
        h ^= h >> 11
        return h & int(self.bucket_mask)

    @micropython.viper
    def lookup(self, key: ptr8, koff: int) -> int:
        """The flow number of key[koff:koff+13], or -1."""
        b = int(self._bucket_of(key, koff))
        head = ptr16(self.head)
        nxt = ptr16(self.nxt)
        keys = ptr8(self.keys)
        s = head[b]
        while s != NIL:
            k = s * KEY_LEN
            i = 0
            while i < KEY_LEN:
                if keys[k + i] != key[koff + i]:
                    break
                i += 1
            if i == KEY_LEN:
                return s
            s = nxt[s]
        return -1

    @micropython.viper
    def _oldest(self, now: int) -> int:
        """The slot idle the longest, preferring entries that are not pinned."""
        seen = ptr32(self.seen)
        flags = ptr8(self.flags)
        best = -1
        best_age = -1
        best_pinned = 1
        i = 0
        cap = int(self.capacity)
        while i < cap:
            f = flags[i]
            if f & F_USED:
                age = (now - seen[i]) & _TICKS_MASK
                if age >= _TICKS_HALF:
                    age = 0
                pinned = 1 if f & F_PINNED else 0
                if pinned < best_pinned or (pinned == best_pinned and age > best_age):
                    best_age = age
                    best = i
                    best_pinned = pinned
            i += 1
        return best

    @micropython.viper
    def remove(self, slot: int):
        """Forget the entry in this slot (unlink it from its bucket, free the slot)."""
        flags = ptr8(self.flags)
        if slot < 0 or slot >= int(self.capacity) or not (flags[slot] & F_USED):
            return
        head = ptr16(self.head)
        nxt = ptr16(self.nxt)
        b = ptr16(self.bucket)[slot]
        if head[b] == slot:
            head[b] = nxt[slot]
        else:
            s = head[b]
            while s != NIL:
                if nxt[s] == slot:
                    nxt[s] = nxt[slot]
                    break
                s = nxt[s]
        if flags[slot] & F_PINNED:
            ptr16(self.pinned)[ptr8(self.owner)[slot]] -= 1
        flags[slot] = 0
        st = ptr32(self.state)
        nxt[slot] = st[_S_FREE]
        st[_S_FREE] = slot
        st[_S_COUNT] -= 1

    @micropython.viper
    def insert(self, key: ptr8, koff: int, owner: int, flags: int, now: int) -> int:
        """Add key (not present) with this owner; returns its flow number. Evicts the
        entry idle the longest when the table is full."""
        st = ptr32(self.state)
        if st[_S_FREE] == NIL:
            self.remove(int(self._oldest(now)))
            st[_S_EVICTIONS] += 1
        nxt = ptr16(self.nxt)
        slot = int(st[_S_FREE])
        st[_S_FREE] = nxt[slot]
        st[_S_COUNT] += 1
        keys = ptr8(self.keys)
        k = slot * KEY_LEN
        i = 0
        while i < KEY_LEN:
            keys[k + i] = key[koff + i]
            i += 1
        b = int(self._bucket_of(key, koff))
        head = ptr16(self.head)
        nxt[slot] = head[b]
        head[b] = slot
        ptr16(self.bucket)[slot] = b
        ptr8(self.owner)[slot] = owner
        ptr8(self.flags)[slot] = F_USED | flags
        if flags & F_PINNED:
            ptr16(self.pinned)[owner] += 1
        ptr32(self.packets)[slot] = 0
        ptr32(self.nbytes)[slot] = 0
        ptr16(self.last_op)[slot] = 0
        ptr32(self.seen)[slot] = now
        return slot

    @micropython.viper
    def set_owner(self, slot: int, owner: int):
        """Give the entry in this slot a new owner (its pinned count moves with it)."""
        o = ptr8(self.owner)
        if ptr8(self.flags)[slot] & F_PINNED:
            pinned = ptr16(self.pinned)
            pinned[o[slot]] -= 1
            pinned[owner] += 1
        o[slot] = owner

    @micropython.viper
    def touch(self, slot: int, nbytes: int, op: int, now: int):
        """Count one frame of this flow (wrapping 32-bit counters, no heap ints)."""
        ptr32(self.packets)[slot] += 1
        ptr32(self.nbytes)[slot] += nbytes
        ptr16(self.last_op)[slot] = op
        ptr32(self.seen)[slot] = now

    @micropython.viper
    def expire_step(self, now: int, count: int):
        """Look at the next `count` slots and drop those idle past their timeout."""
        st = ptr32(self.state)
        flags = ptr8(self.flags)
        seen = ptr32(self.seen)
        cap = int(self.capacity)
        idle = int(self.idle_ms)
        tcp_idle = int(self.tcp_idle_ms)
        c = int(st[_S_CURSOR])
        while count > 0:
            f = flags[c]
            if f & F_USED:
                limit = tcp_idle if f & F_PINNED else idle
                age = (now - seen[c]) & _TICKS_MASK
                if age > limit and age < _TICKS_HALF:
                    self.remove(c)
                    st[_S_EXPIRED] += 1
            c += 1
            if c >= cap:
                c = 0
            count -= 1
        st[_S_CURSOR] = c

    def clear(self):
        for s in range(self.capacity):
            self.remove(s)

    def count(self):
        return self.state[_S_COUNT]

    def stats(self):
        st = self.state
        return {"flows": st[_S_COUNT], "flow_capacity": self.capacity,
                "evictions": st[_S_EVICTIONS], "expired": st[_S_EXPIRED]}

    def key_text(self, slot):
        k = self.keys
        o = slot * KEY_LEN
        return "%d %d.%d.%d.%d:%d > %d.%d.%d.%d:%d" % (
            k[o + 12], k[o], k[o + 1], k[o + 2], k[o + 3], (k[o + 8] << 8) | k[o + 9],
            k[o + 4], k[o + 5], k[o + 6], k[o + 7], (k[o + 10] << 8) | k[o + 11])

    def entries(self):
        """(flow number, key text, owner, packets, bytes, last op) for every entry."""
        out = []
        for s in range(self.capacity):
            if self.flags[s] & F_USED:
                out.append((s, self.key_text(s), self.owner[s], self.packets[s],
                            self.nbytes[s], self.last_op[s]))
        return out
