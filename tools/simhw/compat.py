"""What the simulated hardware takes from MicroPython, for CPython too (host-side tests
import it there): const(), and the code-emitter decorators, which change nothing there.

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
