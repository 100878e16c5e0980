"""The simulated board's USB CDC: a pty master inherited from the launcher.

The host side opens the pty's slave with pyserial as it would open /dev/ttyACM1.
"""

import select

from simhw.compat import const, micropython, sleep_ms

_EAGAIN = const(11)
_EIO = const(5)


class PtyStream:
    """Non-blocking byte stream over a pty master fd (the launcher sets O_NONBLOCK).

    readinto() and write() never block and never raise on "try again": they return 0.
    """

    def __init__(self, fd):
        self._fd = fd
        try:
            self._f = open(fd, "r+b", buffering=0)
        except TypeError:
            self._f = open(fd, "r+b")
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)

    @micropython.native
    def readinto(self, buf):
        """Read what is waiting into buf; return the number of bytes (0 if none)."""
        # Core 0 asks on every turn and mostly nothing is there: ask poll first, since a
        # read that finds nothing raises OSError(EAGAIN), and that allocates.
        for _fd, ev in self._poller.ipoll(0):
            if ev & select.POLLIN:
                break
            return 0
        else:
            return 0
        try:
            n = self._f.readinto(buf)
        except OSError as e:
            # EIO: no process has the slave end open (the host is not connected).
            if e.args[0] in (_EAGAIN, _EIO):
                return 0
            raise e
        return n or 0

    @micropython.native
    def write(self, buf):
        """Write as much of buf as the pty takes; return that count (0 if it is full)."""
        try:
            n = self._f.write(buf)
        except OSError as e:
            if e.args[0] == _EAGAIN:
                return 0
            raise e
        return n or 0

    def poll(self, timeout_ms):
        """Wait up to timeout_ms for input; True if there is something to read."""
        events = self._poller.poll(timeout_ms)
        for ev in events:
            if ev[1] & select.POLLIN:
                return True
        if events:
            # Hang-up only (slave closed): poll() would return at once forever, so wait
            # out the timeout here instead of letting the caller spin.
            sleep_ms(timeout_ms)
        return False

    def close(self):
        if self._f is not None:
            self._poller.unregister(self._fd)
            self._f.close()
            self._f = None
