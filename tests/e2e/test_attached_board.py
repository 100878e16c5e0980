"""Hardware in the loop, proved without hardware: the end-to-end suite against an attached
board, here a simulated board (BOARD_ARGS) that a second pytest knows only by its data port,
its LAN namespace and its address (``--board-port``, ``--board-netns``, ``--board-ip``), as
it would know a W5500-EVB-Pico on a USB port (docs/hardware-in-the-loop.md).

Every test of the suite but this one runs against that one board, one after the other, so
the run also shows that the tests leave the shared board as they found it. The tests that
need the simulator's internals are skipped there, each with a reason declared in
``conftest.SimOnly``; no other skip is allowed but one of the test machine's own
(``conftest.ENVIRONMENT_SKIP_PREFIXES``).
"""

from __future__ import annotations

import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from .conftest import (
    E2E_DIR,
    ENVIRONMENT_SKIP_PREFIXES,
    LOADED_BOARD_ARGS,
    ROOT,
    SIM_ONLY_PREFIX,
    SIM_ONLY_REASONS,
    SimOnly,
    require_netns_privileges,
)

pytestmark = pytest.mark.e2e

# The board: as a deployed one is configured (firmware/config.py: two kernels, services off,
# which the tests switch on and off again, no frame log), with the budget for the suite's
# loads that the simulated boards of test_multicore and test_host_sockets have
# (docs/hardware-in-the-loop.md); this test is about the attach path.
BOARD_ARGS = [*LOADED_BOARD_ARGS, "--no-services", "--no-log-frames"]
SUITE_TIMEOUT_S = 480      # the inner run; about 2.5 min on a 2-core machine
MIN_PASSED = 25            # of 27 tests that do not need the simulator (2 may meet no bbr)


def outcomes(junit: Path) -> list[tuple[str, str, str]]:
    """(test id, outcome, message) of every test case in a JUnit XML report."""
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome, message = tag, el.get("message", "")
                break
        cases.append((name, outcome, message))
    return cases


def allowed_skip(message: str) -> bool:
    """A sim-only reason declared in conftest.SimOnly, or one of the test machine's own."""
    if message.startswith(SIM_ONLY_PREFIX):
        return message[len(SIM_ONLY_PREFIX):] in SIM_ONLY_REASONS
    return message.startswith(ENVIRONMENT_SKIP_PREFIXES)


@pytest.mark.timeout(SUITE_TIMEOUT_S + 60)
@pytest.mark.sim_only(SimOnly.SUITE)
def test_e2e_suite_runs_against_an_attached_simulated_board(sim_board, tmp_path):
    require_netns_privileges()
    board = sim_board(args=BOARD_ARGS)
    junit = tmp_path / "suite.xml"
    cmd = [sys.executable, "-m", "pytest", str(E2E_DIR.relative_to(ROOT)),
           "--board-port", board.usb_path, "--board-netns", board.netns,
           "--board-ip", board.board_ip, "--ignore", str(Path(__file__).relative_to(ROOT)),
           "-p", "no:cacheprovider", "-q", "-rs", f"--junitxml={junit}"]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              timeout=SUITE_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        pytest.fail(f"the suite against the attached board took over {SUITE_TIMEOUT_S} s:\n"
                    f"{(out or '')[-5000:]}")
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    summary = [line for line in output.splitlines()
               if line.startswith(("SKIPPED", "FAILED", "ERROR")) or " passed" in line
               or "Warning: " in line]
    print(f"\n{' '.join(cmd)}\nexit {proc.returncode} after {elapsed:.0f} s:\n"
          + "\n".join(summary))
    assert junit.exists(), output[-5000:]
    cases = outcomes(junit)
    counts = Counter(outcome for _, outcome, _ in cases)
    bad = [f"{name}: {outcome} {message}" for name, outcome, message in cases
           if outcome in ("failure", "error")]
    odd_skips = [f"{name}: {message}" for name, outcome, message in cases
                 if outcome == "skipped" and not allowed_skip(message)]
    assert proc.returncode == 0 and not bad, "\n".join(bad) + "\n" + output[-8000:]
    assert not odd_skips, "skipped for a reason that is not a declared one:\n" + \
        "\n".join(odd_skips)
    assert counts["passed"] >= MIN_PASSED, (dict(counts), output[-3000:])
    # Nothing here started a board of its own: the attached one answered every test.
    assert board.process.poll() is None, "the attached board stopped during the suite"
