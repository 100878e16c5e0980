"""Fixtures for end-to-end tests against the simulated board (``twinstack sim``).

``sim_board`` is a factory: ``board = sim_board(netns=None, board_ip=..., peer_ip=..., args=())``
starts ``python -m twinstack sim`` with a unique ``--netns`` name, waits (≤ 30 s) for its
``ready`` line and returns a :class:`SimHandle`. Every board started this way is stopped at
teardown. These tests need root (``make test`` runs pytest as root or inside
``unshare -rmn``); otherwise they are skipped.

``TWINSTACK_SIM_ENTRY`` (inherited by the launcher) replaces ``firmware/main.py`` with a
stand-in, for testing the launcher alone.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_BASE = Path("/tmp/twinstack")
FIRMWARE_MAIN = ROOT / "firmware" / "main.py"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def firmware_present() -> bool:
    """Whether the board has something to run: the firmware, or a stand-in for it."""
    return FIRMWARE_MAIN.is_file() or bool(os.environ.get("TWINSTACK_SIM_ENTRY"))


def require_netns_privileges() -> None:
    """Skip unless we may create network namespaces (root, or root in a user namespace)."""
    if os.geteuid() != 0:
        pytest.skip("needs root or a user+net+mount namespace with a tmpfs on /run "
                    "(`make test` provides one)")
    if shutil.which("ip") is None and not Path("/usr/sbin/ip").exists():
        pytest.skip("iproute2 (ip) is not installed: make deps")


def unique_name(prefix: str = "t") -> str:
    """A fresh namespace name (≤ 10 characters) for one test."""
    return f"{prefix}{secrets.token_hex(3)}"


def netns_list() -> set[str]:
    """Named network namespaces right now."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                         timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def launcher_command(netns: str, args: Sequence[str] = ()) -> list[str]:
    """The command line that runs one simulated board."""
    return [sys.executable, "-m", "twinstack", "-v", "sim", "--netns", netns,
            "--root", str(ROOT), *args]


def launcher_env() -> dict[str, str]:
    """The launcher's environment: this tree's host package importable."""
    host = str(ROOT / "host")
    pythonpath = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=host + (os.pathsep + pythonpath if pythonpath else ""))


class SimHandle:
    """One running ``twinstack sim``: its process, output and namespaces."""

    def __init__(self, netns: str, board_ip: str, peer_ip: str, args: Sequence[str]) -> None:
        self.netns = netns
        self.board_ns = netns + "-board"
        self.board_ip = board_ip.split("/")[0]
        self.board_cidr = board_ip
        self.peer_ip = peer_ip
        self.usb_path = str(RUNTIME_BASE / netns / "usb")
        self.runtime_dir = RUNTIME_BASE / netns
        self.ready_fields: dict[str, str] = {}
        self.board_pid: int | None = None
        self.output = ""
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self.process = subprocess.Popen(
            launcher_command(netns, args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=launcher_env(), cwd=ROOT,
        )
        self._reader = threading.Thread(target=self._read, name=f"sim-{netns}", daemon=True)
        self._reader.start()

    # -- output --------------------------------------------------------------------------

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def log_lines(self) -> list[str]:
        """The launcher's output lines (board output and its own) seen so far."""
        with self._cond:
            return list(self._lines)

    def wait_for_line(self, match: str | Callable[[str], bool], timeout: float,
                      start: int = 0) -> str | None:
        """The first line from index ``start`` that starts with ``match`` (or satisfies it),
        waiting ≤ ``timeout`` s; None on timeout or end of output."""
        pred = match if callable(match) else (lambda line: line.startswith(match))
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self._lines):
                    if pred(self._lines[i]):
                        return self._lines[i]
                    i += 1
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait for the ``ready`` line; fail the test (with the output) if it does not come."""
        line = self.wait_for_line("ready ", timeout)
        if line is None:
            out = self.stop()
            pytest.fail(f"twinstack sim {self.netns} not ready within {timeout:g} s "
                        f"(exit {self.process.returncode}):\n{out}")
        self.ready_fields = dict(re.findall(r"(\w+)=(\S+)", line))
        with open(self.runtime_dir / "board.pid") as f:
            self.board_pid = int(f.read())

    # -- actions -------------------------------------------------------------------------

    def ns_run(self, *cmd: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the peer namespace (``ip netns exec NAME ...``)."""
        return subprocess.run(["ip", "netns", "exec", self.netns, *cmd], capture_output=True,
                              text=True, timeout=timeout)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the launcher if it still runs."""
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def stop(self, sig: int = signal.SIGINT, timeout: float = STOP_TIMEOUT_S) -> str:
        """Stop the launcher (``sig``, wait ≤ ``timeout`` s, then SIGKILL); return all output."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
                self._remove_leftovers()   # a killed launcher could not undo its work
        self._reader.join(timeout=5)
        self.output = "\n".join(self.log_lines())
        return self.output


    def _remove_leftovers(self) -> None:
        for name in (self.board_ns, self.netns):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


class SimFactory:
    """Callable that starts simulated boards; stops them all at teardown."""

    def __init__(self) -> None:
        self.started: list[SimHandle] = []

    def spawn(self, netns: str | None = None, *, board_ip: str = "10.77.0.2/24",
              peer_ip: str = "10.77.0.1", args: Sequence[str] = ()) -> SimHandle:
        """Start ``twinstack sim`` without waiting for it to be ready."""
        netns = netns or unique_name()
        all_args = ["--board-ip", board_ip, "--peer-ip", peer_ip, *args]
        handle = SimHandle(netns, board_ip, peer_ip, all_args)
        self.started.append(handle)
        return handle

    def __call__(self, netns: str | None = None, *, board_ip: str = "10.77.0.2/24",
                 peer_ip: str = "10.77.0.1", args: Sequence[str] = (),
                 timeout: float = READY_TIMEOUT_S) -> SimHandle:
        """Start ``twinstack sim`` and wait for its ``ready`` line."""
        handle = self.spawn(netns, board_ip=board_ip, peer_ip=peer_ip, args=args)
        handle.wait_ready(timeout)
        return handle

    @staticmethod
    def unique_name(prefix: str = "t") -> str:
        """A fresh namespace name (≤ 10 characters)."""
        return unique_name(prefix)

    @staticmethod
    def netns_list() -> set[str]:
        """Named network namespaces right now."""
        return netns_list()

    @staticmethod
    def run_cli(netns: str, args: Sequence[str] = (),
                timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``twinstack sim --netns NAME ARGS`` to completion (for refusals)."""
        return subprocess.run(launcher_command(netns, args), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, env=launcher_env(), cwd=ROOT,
                              timeout=timeout)

    def stop_all(self) -> None:
        """Stop every board this factory started (in parallel, bounded)."""
        threads = [threading.Thread(target=h.stop, daemon=True) for h in self.started]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=STOP_TIMEOUT_S + 10)


@pytest.fixture
def sim_board() -> Iterator[SimFactory]:
    """Factory fixture: ``sim_board(netns=None, board_ip=..., peer_ip=..., args=())``."""
    require_netns_privileges()
    if not firmware_present():
        pytest.skip("firmware not present (firmware/main.py); "
                    "TWINSTACK_SIM_ENTRY can name a stand-in to test the launcher alone")
    factory = SimFactory()
    try:
        yield factory
    finally:
        factory.stop_all()


class Capture:
    """tcpdump on the peer namespace's eth0, into a pcap file, until ``count`` frames match."""

    def __init__(self, board: SimHandle, path: Path, bpf: str, count: int) -> None:
        self.path = path if path.suffix == ".pcap" else path / "capture.pcap"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", board.netns, "tcpdump", "-i", "eth0", "-U", "-n",
             "-w", str(self.path), "-c", str(count), bpf],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        # tcpdump says "listening on" once its socket is attached; wait for that, bounded.
        deadline = time.monotonic() + 10
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            if not ready:
                break
            line = self.proc.stderr.readline()
            if "listening on" in line or not line:
                break

    def frames(self, timeout: float = 10.0) -> list[bytes]:
        """The captured frames, once tcpdump has its count or ``timeout`` s have passed."""
        from scapy.utils import rdpcap

        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(5)
        if not self.path.exists() or self.path.stat().st_size == 0:
            return []
        return [bytes(p) for p in rdpcap(str(self.path))]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
               step: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` s pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def run_peer_script(board: SimHandle, script: Path, *args: str, timeout: float = 30.0,
                    netns: str | None = None) -> dict:
    """Run a peer-side Python script in the namespace (default: the board's peer); its last
    JSON line. Fails the test, with the script's output, if it fails or prints none."""
    proc = subprocess.run(["ip", "netns", "exec", netns or board.netns, sys.executable,
                           str(script), *args],
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"{script.name} {' '.join(args)}: exit {proc.returncode}\n"
                    f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return json.loads(lines[-1])


class PeerServer:
    """A peer-side script running in the background (a server): started, waited for until it
    prints ``{"ready": true}``, then its last JSON line collected by :meth:`result`."""

    def __init__(self, board: SimHandle, script: Path, *args: str,
                 ready_timeout: float = 10.0) -> None:
        self.name = f"{script.name} {' '.join(args)}"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", board.netns, sys.executable, str(script), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], ready_timeout)
        line = self.proc.stdout.readline() if ready else ""
        if '"ready"' not in line:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
            pytest.fail(f"{self.name} did not get ready: {line!r} {err}")

    def result(self, timeout: float = 30.0) -> dict:
        """Its last JSON line once it has ended (killed and failed after ``timeout`` s)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=5)
            pytest.fail(f"{self.name} still running after {timeout:g} s\n{out}\n{err}")
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if self.proc.returncode != 0 or not lines:
            pytest.fail(f"{self.name}: exit {self.proc.returncode}\n{out}\n{err}")
        return json.loads(lines[-1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=5)
