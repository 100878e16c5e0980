"""The firmware test runner: a failing MicroPython assertion fails and names file and line."""

import os
import subprocess
from pathlib import Path

from tests.conftest import ROOT, micropython_binary


def _run(tmp_path: Path, source: str, function: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(source)
    env = dict(os.environ, MICROPYPATH=f"{tmp_path}:tests/firmware:tests")
    return subprocess.run(
        [micropython_binary(), "tests/mprunner.py", "test_probe", function],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
    )


def test_failing_assertion_names_file_and_line(tmp_path):
    proc = _run(tmp_path, "def test_bad():\n    x = 1\n    assert x == 2, 'x is 1'\n", "test_bad")
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "test_probe.py" in out and "line 3" in out and "x is 1" in out


def test_passing_and_skipped(tmp_path):
    src = (
        "import fwtest\n"
        "def test_ok():\n    pass\n"
        "def test_skip():\n    fwtest.skip('no board')\n"
    )
    assert _run(tmp_path, src, "test_ok").returncode == 0
    skipped = _run(tmp_path, src, "test_skip")
    assert skipped.returncode == 3 and "no board" in skipped.stdout
