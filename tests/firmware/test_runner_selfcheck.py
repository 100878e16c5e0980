# Proves the firmware test runner really runs under MicroPython.
import sys


def test_runs_under_micropython():
    assert sys.implementation.name == "micropython"
