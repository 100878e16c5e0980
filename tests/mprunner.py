# Runs one firmware test function inside MicroPython; driven by tests/conftest.py.
#
#   micropython tests/mprunner.py <module> <function>
#
# Exit status: 0 passed, 1 failed (the traceback names the file and line), 3 skipped.
import sys

import fwtest


def main():
    module_name, function_name = sys.argv[1], sys.argv[2]
    module = __import__(module_name)
    try:
        getattr(module, function_name)()
    except fwtest.SkipTest as e:
        print("SKIP:", e.args[0] if e.args else "")
        sys.exit(3)
    except Exception as e:  # noqa: BLE001 - report every failure with its traceback
        sys.print_exception(e)
        sys.exit(1)
    finally:
        teardown = getattr(module, "teardown", None)
        if teardown:
            teardown()


main()
