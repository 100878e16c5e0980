"""Busy-time meters of a simulated board.

The firmware's loops carry no meters (on an RP2040 every call and clock read is priced in
instructions). A simulated board times the steps it wants reported instead: the node hands
it each one as it builds them, ``hw.metered(name, fn, nargs)`` (the chip's I/O as ``nic``,
the dispatcher's turns as ``disp``, kernel N's turns as ``kN``), and reports the shares of
``hw.meters`` in its statistics (``nic.io_pct``, ``disp.busy_pct``, ``kN.busy_pct``)."""

from time import ticks_us

from netkernel.busy import BusyTime


class Meters:
    def __init__(self):
        self.meters = {}    # name -> BusyTime

    def metered(self, name, fn, nargs):
        """``fn``, which takes ``nargs`` positional arguments (1 or 2), as a function that
        also adds the time of each call to the BusyTime ``self.meters[name]`` (made at the
        first use of ``name``; several functions may share one). A call allocates nothing:
        one closure for each arity (no *args), at most 5 closed-over values and arguments
        (more and the unix port copies them to the heap), frames under 12 words, no
        try/finally (a call that raises is not timed)."""
        meter = self.meters.get(name)
        if meter is None:
            meter = self.meters[name] = BusyTime()
        since = meter.since
        if nargs == 1:
            def metered1(a):
                t0 = ticks_us()
                r = fn(a)
                since(t0)
                return r
            return metered1
        if nargs == 2:
            def metered2(a, b):
                t0 = ticks_us()
                r = fn(a, b)
                since(t0)
                return r
            return metered2
        raise ValueError("metered %s: 1 or 2 arguments, not %r" % (name, nargs))
