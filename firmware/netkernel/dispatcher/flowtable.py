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

# The table's layout is defined with the machine code that walks it.
from netkernel_native import (  # noqa: F401 - F_USED, F_PINNED, NIL, KEY_LEN: public
    F_PINNED, F_USED, KEY_LEN, NIL, S_COUNT, S_EVICTIONS, S_EXPIRED, S_LEN,
    flow_bucket_of, flow_expire_step, flow_insert, flow_lookup, flow_oldest, flow_remove,
    flow_set_owner, flow_touch)


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
        self.state = array.array("I", bytes(4 * S_LEN))
        # Pinned entries (connections) per owner: the dispatcher's load balancing counts on it.
        self.pinned = array.array("H", bytes(2 * 256))

    # The per-frame probes are machine code (netkernel_native): a viper function binds
    # `self` as a method does.
    _bucket_of = flow_bucket_of
    lookup = flow_lookup                # flow number of key[koff:koff+13], or -1
    _oldest = flow_oldest               # the slot idle the longest, unpinned ones first
    remove = flow_remove                # forget a slot's entry
    insert = flow_insert                # add a key: its flow number (evicts when full)
    set_owner = flow_set_owner          # a new owner (its pinned count moves with it)
    touch = flow_touch                  # count one frame (wrapping 32-bit counters)
    expire_step = flow_expire_step      # drop entries idle past their timeout, a few a call

    def clear(self):
        for s in range(self.capacity):
            self.remove(s)

    def count(self):
        return self.state[S_COUNT]

    def stats(self):
        st = self.state
        return {"flows": st[S_COUNT], "flow_capacity": self.capacity,
                "evictions": st[S_EVICTIONS], "expired": st[S_EXPIRED]}

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
