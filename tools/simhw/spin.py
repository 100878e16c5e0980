"""spin_acquire(): take a `_thread` lock that is held for microseconds at a time.

Blocking on the unix port sleeps the thread, and waking it takes longer than such a hold
(one SPI call, storing one frame, one chip transaction of a board core): try for a while
first. The emulator's own lock and the simulated board's locks use it."""

from simhw.compat import micropython


@micropython.native
def spin_acquire(lock, spins):
    """``lock.acquire()``, after up to ``spins`` tries that do not block."""
    for _ in range(spins):
        if lock.acquire(0):
            return
    lock.acquire()
