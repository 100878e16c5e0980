"""Test collection shared by every test folder.

Firmware tests (``tests/firmware/test_*.py``) run inside the MicroPython unix port, not
CPython: each test function becomes a pytest item that runs ``tests/mprunner.py`` in a fresh
``micropython`` process, so one pytest run reports firmware, host and end-to-end tests in one
summary. A failing assertion shows MicroPython's traceback, which names the file and line.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_TESTS = ROOT / "tests" / "firmware"
# Firmware tests see the firmware, the board files, the simulated hardware and their helpers.
MICROPYPATH = ":".join(["firmware", "boards", "tools", "tests/firmware", "tests", ".frozen"])
DEFAULT_TIMEOUT_S = 60
_EXIT_SKIPPED = 3


def micropython_binary() -> str:
    """The MicroPython unix port next to this interpreter (the project venv), else on PATH."""
    candidate = Path(sys.executable).parent / "micropython"
    if candidate.exists():
        return str(candidate)
    return "micropython"


class MicroPythonTestFailure(Exception):
    """A firmware test failed; args[0] is what MicroPython printed."""


class MicroPythonFile(pytest.File):
    """A firmware test module: test functions are found with CPython's ast, run in MicroPython."""

    def collect(self):
        tree = ast.parse(self.path.read_text(), filename=str(self.path))
        timeout = DEFAULT_TIMEOUT_S
        for node in tree.body:
            # A module may set TIMEOUT_S = <int> for slow tests (e.g. the simulated wire).
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "TIMEOUT_S" for t in node.targets
            ):
                timeout = int(ast.literal_eval(node.value))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                yield MicroPythonItem.from_parent(
                    self, name=node.name, lineno=node.lineno, timeout=timeout
                )


class MicroPythonItem(pytest.Item):
    def __init__(self, *, lineno: int, timeout: int, **kwargs):
        super().__init__(**kwargs)
        self.lineno = lineno
        self.timeout = timeout

    def runtest(self) -> None:
        module = self.path.stem
        cmd = [micropython_binary(), "tests/mprunner.py", module, self.name]
        env = dict(os.environ, MICROPYPATH=MICROPYPATH)
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                timeout=self.timeout, errors="replace",
            )
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or "") if isinstance(e.stdout, str) else ""
            raise MicroPythonTestFailure(f"timed out after {self.timeout} s\n{out}") from None
        output = proc.stdout + proc.stderr
        if proc.returncode == _EXIT_SKIPPED:
            pytest.skip(output.strip().removeprefix("SKIP:").strip())
        if proc.returncode != 0:
            raise MicroPythonTestFailure(output)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, MicroPythonTestFailure):
            return f"MicroPython test failed:\n{excinfo.value.args[0]}"
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, self.lineno - 1, f"{self.path.name}::{self.name} (MicroPython)"


def pytest_addoption(parser: pytest.Parser) -> None:
    """The board the end-to-end tests run against (read by ``tests/e2e/conftest.py``).

    Registered here, not in ``tests/e2e/conftest.py``: pytest takes options only from
    conftests it loads at startup, and a plain ``pytest`` (``make test``) loads the e2e one
    only once it collects that folder."""
    g = parser.getgroup("board", "end-to-end tests: the board under test "
                        "(default: each test starts the simulated boards it needs)")
    g.addoption("--board-port", metavar="PATH",
                help="run the e2e tests against an already running board: its data serial "
                     "port (/dev/ttyACM1, or the usb= pty of a simulated or emulated board); "
                     "needs --board-ip and one of --board-netns / --board-iface")
    g.addoption("--board-netns", metavar="NAME",
                help="the attached board's LAN is in network namespace NAME: peer commands "
                     "run with `ip netns exec NAME ...`")
    g.addoption("--board-iface", metavar="IFACE",
                help="the attached board's LAN is interface IFACE of this host: peer "
                     "commands run in this host's own namespace")
    g.addoption("--board-ip", metavar="ADDR", help="the attached board's IPv4 address")
    g.addoption("--board-peer-ip", metavar="ADDR",
                help="the peer's IPv4 address on the board's LAN (default: the source "
                     "address of the namespace's route to the board, or IFACE's address)")
    g.addoption("--board-time-scale", type=float, default=1.0, metavar="X",
                help="multiply the e2e tests' timeouts and waits by X, for slow boards "
                     "(an emulated RP2040 wants 10-20) (default: 1)")
    g.addoption("--board-data-scale", type=float, default=1.0, metavar="X",
                help="multiply the e2e tests' bulk data volumes by X, for slow boards "
                     "(e.g. 0.02 where TCP moves ~60 KB/s) (default: 1)")


def pytest_pycollect_makemodule(module_path: Path, parent):
    """Firmware test modules are collected as MicroPython files instead of CPython modules."""
    if module_path.parent == FIRMWARE_TESTS:
        return MicroPythonFile.from_parent(parent, path=module_path)
    return None
