# Busy time of one piece of work (a kernel's turns, the dispatcher, the chip's SPI I/O, core
# 0's idle wait), for the per-core statistics. Whole seconds and the microseconds below one
# second are kept apart: one microsecond counter would pass 2**30 (a small int's limit on
# the RP2040) after 18 minutes and then allocate a big int on every add.
from time import ticks_diff, ticks_us

from micropython import const

_US_PER_S = const(1000000)


class BusyTime:
    def __init__(self):
        self.s = 0
        self.us = 0

    def since(self, t0):
        """Add the time from ``t0`` (a ticks_us() value) to now."""
        us = self.us + ticks_diff(ticks_us(), t0)
        if us >= _US_PER_S:
            us -= _US_PER_S
            self.s += 1
        self.us = us

    def total_us(self):
        """Everything added so far, in microseconds (allocates past 2**30: reports only)."""
        return self.s * _US_PER_S + self.us
