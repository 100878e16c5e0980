"""Life cycle of ``twinstack sim``: start, stop, leftovers, refusals, the wire works.

Needs root or a user+net namespace (``make test`` provides one); see conftest.py.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import SimOnly

FIRMWARE_MAIN = Path(__file__).resolve().parents[2] / "firmware" / "main.py"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120), pytest.mark.sim_only(SimOnly.LAUNCHER)]


def _netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _process_gone(pid: int) -> bool:
    """True if ``pid`` no longer exists (a zombie counts as existing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def assert_clean_stop(board, output: str) -> None:
    """The launcher exited 0 and left nothing behind."""
    assert board.process.returncode == 0, f"launcher exit {board.process.returncode}:\n{output}"
    assert "netkernel: down" in output, output
    names = _netns_list()
    assert board.netns not in names and board.board_ns not in names, names
    assert not board.runtime_dir.exists() and not board.runtime_dir.is_symlink()
    pid = board.board_pid
    assert pid is not None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not (_process_gone(pid) and _group_gone(pid)):
        time.sleep(0.05)
    assert _process_gone(pid), f"board process {pid} still exists"
    assert _group_gone(pid), f"processes left in the board's process group {pid}"


def test_start_stop_twice_same_name(sim_board):
    name = sim_board.unique_name()
    for _ in range(2):
        board = sim_board(name)
        fields = board.ready_fields
        assert fields["netns"] == name
        assert fields["board"] == "10.77.0.2/24"
        assert fields["peer"] == "10.77.0.1"
        assert fields["link"] == "up"
        assert fields["usb"] == f"/tmp/twinstack/{name}/usb"
        assert {name, name + "-board"} <= sim_board.netns_list()
        # The USB end is a pty in raw mode that the host can open.
        fd = os.open(fields["usb"], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            assert os.isatty(fd)
        finally:
            os.close(fd)
        # The runtime dir is private and holds the board's files.
        rd = Path("/tmp/twinstack") / name
        assert stat.S_IMODE(rd.stat().st_mode) == 0o700
        assert (rd / "board.py").read_text() == (
            "from sim import *  # the simulated board (boards/sim.py)\n")
        config: dict = {}
        exec((rd / "sim_config.py").read_text(), config)
        assert config["NAME"] == name and config["NETIF"] == "w5500"
        assert config["IP"] == "10.77.0.2" and config["PREFIX"] == 24
        assert config["MAC"] == "02:00:0a:4d:00:02" and config["KERNELS"] == 2
        output = board.stop()
        assert_clean_stop(board, output)


def test_nothing_in_the_launchers_namespace(sim_board):
    board = sim_board()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                           timeout=10).stdout
    assert "w5500" not in links
    assert f"link-netns {board.netns}" not in links
    # The board end has no address; the peer end has the peer's.
    peer = board.ns_run("ip", "-o", "-4", "addr", "show", "dev", "eth0")
    assert "10.77.0.1/24" in peer.stdout
    board_side = subprocess.run(["ip", "-n", board.board_ns, "-o", "-4", "addr"],
                                capture_output=True, text=True, timeout=10).stdout
    assert "w5500" not in board_side


def test_two_at_once(sim_board):
    a = sim_board()
    b = sim_board(board_ip="10.78.0.2/24", peer_ip="10.78.0.1")
    assert a.netns != b.netns
    assert a.ready_fields["usb"] != b.ready_fields["usb"]
    assert b.ready_fields["board"] == "10.78.0.2/24"
    assert {a.netns, a.board_ns, b.netns, b.board_ns} <= sim_board.netns_list()
    out_a = a.stop()
    # Stopping one leaves the other running.
    assert b.process.poll() is None
    assert {b.netns, b.board_ns} <= sim_board.netns_list()
    out_b = b.stop()
    assert_clean_stop(a, out_a)
    assert_clean_stop(b, out_b)


def test_sigterm_stops_like_sigint(sim_board):
    board = sim_board()
    output = board.stop(sig=signal.SIGTERM)
    assert_clean_stop(board, output)


@pytest.mark.parametrize("which", ["peer", "board"])
def test_existing_namespace_is_refused_and_left_alone(sim_board, which):
    name = sim_board.unique_name()
    existing = name if which == "peer" else name + "-board"
    subprocess.run(["ip", "netns", "add", existing], check=True, timeout=10)
    try:
        # A marker inside the existing namespace shows it is left untouched.
        subprocess.run(["ip", "-n", existing, "link", "add", "marker0", "type", "veth",
                        "peer", "name", "marker1"],
                       check=True, timeout=10)
        proc = sim_board.run_cli(name)
        assert proc.returncode != 0
        assert f"netns {existing} exists" in proc.stderr, proc.stderr
        assert existing in sim_board.netns_list()
        links = subprocess.run(["ip", "-n", existing, "-o", "link"], capture_output=True,
                               text=True, timeout=10).stdout
        assert "marker0" in links
        other = name + "-board" if which == "peer" else name
        assert other not in sim_board.netns_list()
        assert not (Path("/tmp/twinstack") / name).exists()
    finally:
        subprocess.run(["ip", "netns", "del", existing], timeout=10)


def test_bad_kernels_refused_before_anything(sim_board):
    name = sim_board.unique_name()
    proc = sim_board.run_cli(name, ["--kernels", "3"])
    assert proc.returncode == 2
    assert "runs 1, 2 or 4 net kernels" in proc.stderr


@pytest.mark.skipif(
    not FIRMWARE_MAIN.is_file() and not os.environ.get("TWINSTACK_SIM_ENTRY"),
    reason="firmware not present",
)
def test_ping_from_peer_reaches_the_board(sim_board):
    """A frame sent by the peer's kernel arrives in the board (logged as `netkernel: rx`).

    The ping itself may go unanswered (the board may not answer ARP or ICMP yet): only the
    received frame is checked, so this fails only if frames do not cross the wire.
    """
    board = sim_board(args=["--log-frames"])
    start = len(board.log_lines())
    line = None
    deadline = time.monotonic() + 15
    while line is None and time.monotonic() < deadline:
        board.ns_run("ping", "-c", "1", "-W", "1", board.board_ip, timeout=10)
        line = board.wait_for_line("netkernel: rx ", timeout=2, start=start)
    output = board.stop()
    assert line is not None, f"no `netkernel: rx` line after pinging:\n{output}"


# The RP2040's free heap after boot (bytes), measured on the emulated RP2040 (rp2040js,
# MicroPython v1.28.0 RPI_PICO with boards/manifest.py frozen in; docs/memory.md), for the
# configurations `twinstack sim` can start. The simulated board must leave the same within
# 10 %, and where it cannot match, less (boards/sim.py's heap model).
RP2040_HEAP_FREE_AT_BOOT = {
    ("--kernels", "2", "--no-services"): 32_176,     # the default configuration
    ("--kernels", "2", "--services"): 28_448,
    ("--kernels", "1", "--services"): 103_872,
    ("--kernels", "1", "--no-services"): 105_744,
}


@pytest.mark.parametrize("args", list(RP2040_HEAP_FREE_AT_BOOT), ids=" ".join)
def test_free_heap_after_boot_is_the_rp2040s(sim_board, args):
    board = sim_board(args=[*args, "--no-log-frames"])
    free = board.stats()["heap_free"]
    port = RP2040_HEAP_FREE_AT_BOOT[args]
    print(f"\n{' '.join(args)}: {free} bytes free, the RP2040 {port} ({free / port:.1%})")
    assert 0.90 * port <= free <= port


def children_of(pid: int) -> list[int]:
    """The live child processes of ``pid`` (by each process's parent in /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_line = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat_line.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_a_wire_receiver_that_ends_stops_the_sim_with_an_error(sim_board):
    # Without its receiver (simhw/phy_rx.py) the board would go on deaf: the launcher says so
    # and stops, and cleans up as always.
    board = sim_board(args=["--no-log-frames"])
    launcher = int((board.runtime_dir / "pid").read_text())
    receivers = [p for p in children_of(launcher)
                 if b"simhw.phy_rx" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(receivers) == 1, children_of(launcher)
    os.kill(receivers[0], signal.SIGKILL)
    assert board.process.wait(timeout=30) == 1
    line = board.wait_for_line(lambda x: "PHY's receiver" in x and "exited" in x, timeout=10)
    assert line is not None, board.log_lines()[-10:]
    assert not board.runtime_dir.exists()
