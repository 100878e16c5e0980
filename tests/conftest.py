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


def pytest_pycollect_makemodule(module_path: Path, parent):
    """Firmware test modules are collected as MicroPython files instead of CPython modules."""
    if module_path.parent == FIRMWARE_TESTS:
        return MicroPythonFile.from_parent(parent, path=module_path)
    return None
