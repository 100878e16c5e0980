# The ARP neighbour cache: IPv4 address -> Ethernet address, for one interface.
#
# A fixed number of entries, preallocated (smoltcp's neighbour cache, lwIP's etharp table).
# Each entry is FREE, PENDING (a request went out, no answer yet) or VALID (MAC known until
# its lifetime ends). A PENDING entry exists only to rate-limit requests: while it stands,
# no second request for that address goes out (config.arp_retry_ms). There is no frame queue
# behind an unresolved neighbour: the sender keeps its data and tries again (smoltcp's rule).
#
# Addresses and MACs live in two flat bytearrays; times are ticks_ms values (small ints,
# below 2**30), kept in preallocated lists. Nothing here allocates after construction.
# Packet parsing and emission are the interface's job; this module only keeps the table
# (refresh() knows where a received frame carries its sender's addresses).
from time import ticks_add, ticks_diff

from micropython import const

from netkernel.wire import copy, equal, find4

# Packet layout: copies of wire's (const() inlines only within a module).
_ETH_SRC = const(6)
_ETH_HLEN = const(14)
_IP_SRC = const(12)

_FRAME_IP_SRC = const(_ETH_HLEN + _IP_SRC)   # refresh(): a frame's IPv4 source address

_FREE = const(0)
_PENDING = const(1)
_VALID = const(2)


class ArpCache:
    def __init__(self, entries, lifetime_ms, retry_ms):
        self.size = entries
        self.lifetime_ms = lifetime_ms
        self.retry_ms = retry_ms
        self.ips = bytearray(4 * entries)
        self.macs = bytearray(6 * entries)   # entry i's MAC is macs[6*i:6*i+6]
        self._state = bytearray(entries)
        self._deadline = [0] * entries        # VALID: expiry; PENDING: next request allowed
        self._used = [0] * entries            # last use, for LRU replacement
        # No entry's deadline is before _due (when _timed): expire() looks no sooner.
        self._due = 0
        self._timed = False
        self.learned = 0       # new VALID entries
        self.updated = 0       # VALID entries refreshed (same or new MAC)
        self.changed = 0       # ... of which the MAC changed
        self.expired = 0
        self.evicted = 0       # live entries replaced because the table was full
        self.rate_limited = 0  # requests not sent: one went out less than retry_ms ago

    def find(self, ip, off):
        """Index of the (non-free) entry for ip[off:off+4], or -1."""
        return find4(self.ips, self._state, self.size, ip, off)

    def lookup(self, ip, off, now):
        """Index of a live VALID entry for ip[off:off+4] (its MAC at macs[6*i]), or -1."""
        i = self.find(ip, off)
        if i < 0 or self._state[i] != _VALID:
            return -1
        if ticks_diff(self._deadline[i], now) <= 0:
            return -1   # past its lifetime; poll() will free it
        self._used[i] = now
        return i

    def update(self, ip, ip_off, mac, mac_off, now, create):
        """Record ip -> mac. Updates an existing entry; adds one only when ``create``.

        RFC 826's merge rule: any ARP packet refreshes an entry we already have (so
        gratuitous ARP moves a neighbour to its new MAC), but only packets addressed to us
        (or traffic we answer) make new entries. Returns True if the table holds it now.
        """
        i = self.find(ip, ip_off)
        if i < 0:
            if not create:
                return False
            i = self._claim(now)
            copy(self.ips, 4 * i, ip, ip_off, 4)
            self.learned += 1
        elif self._state[i] == _VALID:
            self.updated += 1
            if not equal(self.macs, 6 * i, mac, mac_off, 6):
                self.changed += 1
        else:
            self.learned += 1
        copy(self.macs, 6 * i, mac, mac_off, 6)
        self._state[i] = _VALID
        self._set_deadline(i, ticks_add(now, self.lifetime_ms))
        self._used[i] = now
        return True

    def _set_deadline(self, i, at):
        self._deadline[i] = at
        if not self._timed or ticks_diff(at, self._due) < 0:
            self._due = at
            self._timed = True

    def refresh(self, frame, now):
        """The sender of a received IPv4 frame (source address -> Ethernet source), seen in
        traffic from an on-link peer (smoltcp fills its cache so).

        The common case - a live entry with the same MAC - only extends its lifetime and
        counts nothing; anything else is an ordinary update that may add the entry.
        """
        i = self.find(frame, _FRAME_IP_SRC)
        if i >= 0 and self._state[i] == _VALID and equal(self.macs, 6 * i, frame, _ETH_SRC, 6):
            self._deadline[i] = ticks_add(now, self.lifetime_ms)
            self._used[i] = now
            return True
        return self._learn(frame, now)

    def _learn(self, frame, now):
        # refresh() of a new or changed neighbour (apart: keeps refresh's frame within 11 words)
        return self.update(frame, _FRAME_IP_SRC, frame, _ETH_SRC, now, True)

    def request_due(self, ip, off, now):
        """True if a request for ip may go out now; then the next one waits retry_ms.

        Called when a lookup failed. A PENDING entry whose wait has not ended means a
        request is already on its way: say no and count it.
        """
        i = self.find(ip, off)
        if i >= 0 and self._state[i] == _PENDING:
            if ticks_diff(self._deadline[i], now) > 0:
                self.rate_limited += 1
                return False
        elif i >= 0 and self._state[i] == _VALID and \
                ticks_diff(self._deadline[i], now) > 0:
            return False   # resolved after all; nothing to ask
        if i < 0:
            i = self._claim(now)
            copy(self.ips, 4 * i, ip, off, 4)
        self._state[i] = _PENDING
        self._set_deadline(i, ticks_add(now, self.retry_ms))
        self._used[i] = now
        return True

    def _claim(self, now):
        """An entry to (re)use: a free one, else an expired or pending one, else the LRU."""
        state = self._state
        best = -1
        best_rank = 4
        i = 0
        while i < self.size:
            s = state[i]
            if s == _FREE:
                return i
            if ticks_diff(self._deadline[i], now) <= 0:
                rank = 0          # dead already
            elif s == _PENDING:
                rank = 1          # costs only a rate limit
            else:
                rank = 2          # a live neighbour
            if rank < best_rank or (rank == best_rank and
                                    ticks_diff(self._used[i], self._used[best]) < 0):
                best = i
                best_rank = rank
            i += 1
        if best_rank == 2:
            self.evicted += 1
        state[best] = _FREE
        return best

    def expire(self, now):
        """Free entries past their deadline (VALID: lifetime over; PENDING: wait over)."""
        if not self._timed or ticks_diff(self._due, now) > 0:
            return            # per poll, so nothing before the earliest deadline
        state = self._state
        timed = False
        due = 0
        i = 0
        while i < self.size:
            if state[i] != _FREE:
                d = self._deadline[i]
                if ticks_diff(d, now) <= 0:
                    if state[i] == _VALID:
                        self.expired += 1
                    state[i] = _FREE
                elif not timed or ticks_diff(d, due) < 0:
                    due = d
                    timed = True
            i += 1
        self._due = due
        self._timed = timed

    def next_deadline(self, now):
        """Milliseconds until the next entry deadline (or sooner: a refreshed entry's
        deadline moved on and is looked at when the old one passes): 0 overdue, -1 none."""
        if not self._timed:
            return -1
        d = ticks_diff(self._due, now)
        return d if d > 0 else 0

    def flush(self):
        i = 0
        while i < self.size:
            self._state[i] = _FREE
            i += 1

    def entries(self):
        """Number of VALID entries (allocation-free; for reports and tests)."""
        n = 0
        i = 0
        while i < self.size:
            if self._state[i] == _VALID:
                n += 1
            i += 1
        return n

    def counters(self):
        return {
            "entries": self.entries(),
            "learned": self.learned,
            "updated": self.updated,
            "changed": self.changed,
            "expired": self.expired,
            "evicted": self.evicted,
            "rate_limited": self.rate_limited,
        }
