# One kernel's receive budget (StackConfig.tcp_rx_budget) as a pool of credit: the bytes of
# window its connections together may have advertised and not yet received. A connection
# takes credit before it moves its window's right edge and gets it back as the data arrives,
# so the sum of all windows never exceeds what the chip and the rings hold, however many
# connections open at once (a per-connection share cannot: it was computed before the
# others existed, and an advertised window cannot be withdrawn).
#
# Credit that comes back goes first to the connections that found the pool empty, in the
# order they asked: otherwise the busiest connection would take back at once what its own
# segment just returned while the others sit at a zero window.
#
# Window already promised to a connection that has gone quiet cannot be reclaimed, so when
# no credit has come back for _WAIT_MS while connections wait, the first of them that has
# waited _WAIT_MS is served anyway (counted as an overcommit): a loss is then possible, a
# stall is not. While credit does come back the queue moves at its pace: letting waiters in
# on their waiting time alone overran the chip whenever many connections queued, and each
# frame lost there costs its sender a retransmission timeout.
from time import ticks_diff

from micropython import const

_WAIT_MS = const(50)


class RcvCredit:
    def __init__(self, budget, unit, capacity):
        self.budget = budget
        self.unit = unit               # credit is handed out in whole segments
        self.free = budget
        self._q = [None] * capacity    # FIFO of waiting sockets, preallocated
        self._head = 0
        self._count = 0
        self.back_at = 0               # ticks: credit last came back, or the queue began
        self.waits = 0                 # connections that had to queue
        self.overcommits = 0           # served after _WAIT_MS without credit

    def waiting(self):
        return self._count

    def take(self, need, want):
        """Credit for a connection that is not waiting: ``want`` bytes, or as many whole
        segments of it as the pool has, at least ``need``; 0 if the pool is short of
        ``need`` or others are waiting."""
        if self._count:
            return 0
        return self._grant(need, want)

    def _grant(self, need, want):
        free = self.free
        if free < need:
            return 0
        g = want
        if g > free:
            g = free - free % self.unit
        if g < need:
            g = need
        self.free = free - g
        return g

    def give(self, n, now):
        self.free += n
        self.back_at = now

    def recount(self, free, now):
        """The free credit counted again from the connections' holdings (what went with a
        closed socket comes back here)."""
        if free > self.free:
            self.back_at = now
        self.free = free

    def queue(self, sock, now):
        """Wait for credit; False if the queue is full (the caller then takes it anyway)."""
        q = self._q
        if self._count >= len(q):
            return False
        if not self._count:
            self.back_at = now
        q[(self._head + self._count) % len(q)] = sock
        self._count += 1
        self.waits += 1
        return True

    def head(self):
        return self._q[self._head] if self._count else None

    def pop(self):
        q = self._q
        q[self._head] = None
        self._head = (self._head + 1) % len(q)
        self._count -= 1

    def serve(self, need, want, waited_ms, now):
        """Credit for the queue's head: what _grant gives, or ``need`` if it has waited
        long enough and credit has stopped coming back; 0 if it must wait on."""
        g = self._grant(need, want)
        if g == 0 and waited_ms >= _WAIT_MS and ticks_diff(now, self.back_at) >= _WAIT_MS:
            g = need
            self.free -= need
            self.overcommits += 1
        return g
