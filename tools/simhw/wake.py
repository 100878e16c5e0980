"""The simulated board's wake-up line: an interrupt ends core 0's idle wait at once.

On an RP2040 an idle core 0 waits for an interrupt (WFI) and the INTn edge or the timer wakes
it. The unix port's main thread instead waits in poll(): the emulator's INTn edge (raised in
the PHY thread) writes a byte into a pipe the launcher made, and the idle wait polls that
pipe next to the USB input. Without it a frame that lands while core 0 idles waits out the
rest of the idle period (1 ms), and a TCP sender with a window of a few segments stalls
that long on each gap.
"""

import select

from simhw.compat import const, micropython

_EAGAIN = const(11)


class WakePipe:
    """``set()`` from any thread; the waiting thread polls ``fileno()`` (or the poller of
    ``poller()``) and calls ``drain()`` when it is readable."""

    def __init__(self, rd, wr):
        self._rd = rd
        self._r = open(rd, "rb", buffering=0) if rd >= 0 else None
        self._w = open(wr, "wb", buffering=0) if wr >= 0 else None
        self._byte = b"\x01"
        self._drain = bytearray(64)
        self.sets = 0
        self.wakes = 0

    @micropython.native
    def set(self):
        """Wake the waiter (never blocks: a full pipe already holds a wake-up)."""
        if self._w is None:
            return
        self.sets += 1
        try:
            self._w.write(self._byte)
        except OSError as e:
            if e.args[0] != _EAGAIN:
                raise e

    def fileno(self):
        """The read end (-1 without a pipe), for a poll of one's own."""
        return self._rd if self._r is not None else -1

    def poller(self, usb_fd):
        """A poll object over the USB input and this pipe."""
        p = select.poll()
        p.register(usb_fd, select.POLLIN)
        if self._r is not None:
            p.register(self._rd, select.POLLIN)
        return p

    @micropython.native
    def drain(self):
        """Empty the pipe (after a wake-up)."""
        if self._r is None:
            return
        self.wakes += 1
        # One read: more than 64 wake-ups left behind keep the pipe readable, and the next
        # wait drains again. Reading on until EAGAIN would raise (and allocate) every time.
        try:
            self._r.readinto(self._drain)
        except OSError as e:
            if e.args[0] != _EAGAIN:
                raise e
