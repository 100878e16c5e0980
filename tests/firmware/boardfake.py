# A board for in-process firmware tests: the emulated W5500 on a MemoryWire and an in-memory
# USB stream, with the same interface as boards/*.py.
from rp2040 import BUDGET
from simhw.meters import Meters
from simhw.w5500_emulator import W5500Emulator
from simhw.wire import MemoryWire

NAME = "fake"


class MemoryStream:
    """Non-blocking stream: the host side writes into `incoming`, reads from `outgoing`.
    `room`: how many more bytes the board may write (None: no limit), as a pty or a USB
    endpoint whose host has not read yet takes only so much."""

    def __init__(self):
        self.incoming = bytearray()
        self.outgoing = bytearray()
        self.room = None

    def readinto(self, buf):
        if not self.incoming:
            return 0          # nothing waiting: no allocation (the no-allocation tests)
        n = min(len(buf), len(self.incoming))
        buf[:n] = self.incoming[:n]
        self.incoming = self.incoming[n:]
        return n

    def write(self, buf):
        n = len(buf) if self.room is None else min(len(buf), self.room)
        if n:
            self.outgoing += buf[:n]
        if self.room is not None:
            self.room -= n
        return n

    def close(self):
        pass


class _Timer:
    def __init__(self, callback):
        self.callback = callback

    def deinit(self):
        self.callback = None


class Hardware:
    def __init__(self):
        self.wire = MemoryWire()
        self.chip = W5500Emulator(self.wire)
        self.spi, self.cs, self.rst, self.intn = (
            self.chip.spi, self.chip.cs, self.chip.rst, self.chip.intn)
        self.stream = MemoryStream()
        self.timers = []
        meters = Meters()
        self.metered = meters.metered
        self.meters = meters.meters

    def timer(self, period_ms, callback):
        t = _Timer(callback)
        self.timers.append(t)
        return t

    def usb(self):
        return self.stream

    def counters(self):
        return self.chip.counters.as_dict()

    def close(self):
        pass


CONFIG = dict(BUDGET)
CONFIG.update({"ip": "10.77.0.2", "prefix": 24, "gateway": "10.77.0.1",
          "mac": "02:00:0a:4d:00:02", "kernels": 1, "services": True, "log_frames": False,
          # the unix port's threads: more C stack than core 1's on rp2, not from the heap
          "thread_stack": 256 * 1024, "stack_in_heap": False})
# Tests set extra or changed config keys here (e.g. {"kernels": 2, "tx_mode": "ring"}).
OVERRIDES = {}


def open_hardware():
    return Hardware()


def load_config():
    cfg = dict(CONFIG)
    cfg.update(OVERRIDES)
    return cfg
