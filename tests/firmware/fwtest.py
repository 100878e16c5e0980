# Helpers for firmware tests that run inside MicroPython (see tests/conftest.py).


class SkipTest(Exception):
    pass


def skip(reason):
    raise SkipTest(reason)


def raises(exc_type, func, *args):
    """Call func(*args) and return the exception it raised; fail if it raised nothing."""
    try:
        func(*args)
    except exc_type as e:
        return e
    raise AssertionError("%s not raised" % exc_type.__name__)
