"""What the simulated hardware takes from MicroPython, for CPython too (host-side tests
import it there): const(), the code-emitter decorators, which change nothing there, and
the clock's ticks and sleeps.

Under MicroPython ``@micropython.native`` is read by the compiler itself; the name only has
to exist for CPython."""

try:
    import micropython
    from micropython import const
except ImportError:  # CPython

    class _Emitters:
        @staticmethod
        def native(f):
            return f

    micropython = _Emitters()

    def const(x):
        return x


try:
    from time import sleep_ms, sleep_us, ticks_diff, ticks_ms
except ImportError:  # CPython
    import time as _time

    def ticks_ms():
        return int(_time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        _time.sleep(ms / 1000)

    def sleep_us(us):
        _time.sleep(us / 1000000)
