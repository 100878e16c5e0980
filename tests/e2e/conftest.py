"""Fixtures for end-to-end tests: the board under test and the peer side of its LAN.

The board under test is either

* **simulated** (the default): each test starts the boards it needs with ``twinstack sim``.
  ``sim_board`` is a factory: ``board = sim_board(netns=None, board_ip=..., peer_ip=...,
  args=())`` starts ``python -m twinstack sim`` with a unique ``--netns`` name, waits (≤ 30 s)
  for its ``ready`` line and returns a :class:`SimHandle`. Every board started this way is
  stopped at teardown; or
* **attached** (``--board-port PATH --board-ip ADDR`` and ``--board-netns NAME`` or
  ``--board-iface IFACE``; options registered in ``tests/conftest.py``): one already running
  board (real, emulated or simulated) known only by its data port, its LAN and its address,
  shared by every test (:class:`AttachedBoard`).

Tests get their board from ``board_under_test(args=(), services=True, kernels=1)``: on the
simulator a new board started with ARGS; attached, the one board, its built-in services
switched on for the test if it needs them (and back as they were after it), the test
skipped if the board has fewer than KERNELS net kernels. Both handles satisfy :class:`Board`.

A test that needs the simulator's internals (its launcher, its console, its namespaces, its
process) says so with ``@pytest.mark.sim_only(SimOnly.REASON)``; on an attached board it is
skipped with that reason, and it may use ``sim_board`` (no other test may, there).

Slow boards: ``--board-time-scale X`` multiplies the pytest-timeout limit of every test here
and every timeout the helpers here take (``ns_run``, ``stats``, ``run_peer_script``,
``PeerServer``, ``Capture``, ``wait_until``): tests give those at simulated-board speed.
Other timeouts (sockets, a peer script's ``--timeout``) and the pace of light traffic (``ping
-i``: light for this board) go through :func:`scaled_time`; bulk data volumes through
:func:`scaled_bytes` (``--board-data-scale``). Both scales default to 1.

An attached board is shared: a test closes what it opens, changes settings only through
:meth:`Board.configure` (undone after the test), and judges counters by how much they moved
during the test, never by their absolute values (:meth:`Board.errors`).

These tests need root (``make test`` runs pytest as root or inside ``unshare -rmn``);
otherwise they are skipped. ``TWINSTACK_SIM_ENTRY`` (inherited by the launcher) replaces
``firmware/main.py`` with a stand-in, for testing the launcher alone.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import runpy
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from twinstack.link import Link, LinkTimeout

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_BASE = Path("/tmp/twinstack")
FIRMWARE_MAIN = ROOT / "firmware" / "main.py"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
E2E_DIR = Path(__file__).resolve().parent
ECHO_PORT = 7           # the board's built-in services: TCP and UDP echo
DISCARD_PORT = 9        # ... and TCP discard


class SimOnly:
    """Why a test needs the simulated board: the one reason every ``sim_only`` mark gives.
    On an attached board such a test is skipped with ``sim only: <reason>``."""

    LAUNCHER = "tests the twinstack sim launcher itself (namespaces, runtime files, processes)"
    CONSOLE = ("reads what the board prints on its console (frame log), which only the "
               "simulator's launcher hands to the tests")
    WIRE = "reconfigures the simulated wire (the emulated W5500's end of the veth)"
    RESET = "presses the board's RESET button through the simulator (SIGUSR1)"
    STOP = "stops the board's process, taking its USB link away"
    SUITE = "starts a simulated board of its own to run this suite against"


SIM_ONLY_REASONS = frozenset(v for k, v in vars(SimOnly).items() if k.isupper())
SIM_ONLY_PREFIX = "sim only: "
# Skips that depend on the test machine, not on the board (they happen on the simulator too).
ENVIRONMENT_SKIP_PREFIXES = ("congestion control is not available",)


# -- options: which board, how slow ---------------------------------------------------------


@dataclass(frozen=True)
class BoardOptions:
    """The ``--board-*`` options (tests/conftest.py), checked."""

    port: str | None = None
    netns: str | None = None
    iface: str | None = None
    ip: str | None = None
    peer_ip: str | None = None
    time_scale: float = 1.0
    data_scale: float = 1.0

    @property
    def attached(self) -> bool:
        return self.port is not None


_options_key = pytest.StashKey[BoardOptions]()
_scale = {"time": 1.0, "data": 1.0}


def board_options(config: pytest.Config) -> BoardOptions:
    """The board options of this run (checked once; pytest.UsageError if they do not fit)."""
    if _options_key in config.stash:
        return config.stash[_options_key]

    def opt(name: str) -> str | None:
        value = config.getoption(name, default=None)
        return str(value) if value not in (None, "") else None

    o = BoardOptions(port=opt("board_port"), netns=opt("board_netns"),
                     iface=opt("board_iface"), ip=opt("board_ip"),
                     peer_ip=opt("board_peer_ip"),
                     time_scale=float(config.getoption("board_time_scale", default=1.0)),
                     data_scale=float(config.getoption("board_data_scale", default=1.0)))
    problems = []
    if o.time_scale <= 0 or o.data_scale <= 0:
        problems.append("--board-time-scale and --board-data-scale must be above 0")
    given = [n for n, v in (("--board-netns", o.netns), ("--board-iface", o.iface),
                            ("--board-ip", o.ip), ("--board-peer-ip", o.peer_ip)) if v]
    if not o.attached:
        if given:
            problems.append(f"{', '.join(given)} without --board-port")
    else:
        if (o.netns is None) == (o.iface is None):
            problems.append("give the board's LAN as exactly one of --board-netns NAME and "
                            "--board-iface IFACE")
        for name, value in (("--board-ip", o.ip), ("--board-peer-ip", o.peer_ip)):
            if name == "--board-ip" and value is None:
                problems.append("--board-port needs --board-ip")
            elif value is not None:
                try:
                    ipaddress.IPv4Address(value)
                except ValueError:
                    problems.append(f"{name} {value}: not an IPv4 address")
        if "://" not in o.port and not os.path.exists(o.port):
            problems.append(f"--board-port {o.port}: no such file")
        if o.iface is not None and not Path("/sys/class/net", o.iface).exists():
            problems.append(f"--board-iface {o.iface}: no such interface here")
        if o.netns is not None and shutil.which("ip") and o.netns not in netns_list():
            problems.append(f"--board-netns {o.netns}: no such network namespace")
    if problems:
        raise pytest.UsageError("; ".join(problems))
    config.stash[_options_key] = o
    return o


def scaled_time(seconds: float) -> float:
    """A timeout or wait for the board under test: ``seconds`` (what the simulated board
    needs) times ``--board-time-scale``."""
    return seconds * _scale["time"]


def scaled_arg(seconds: float) -> str:
    """:func:`scaled_time` for a command line (``ping -W``, a peer script's ``--timeout``):
    whole seconds, rounded up, where ``seconds`` is whole."""
    t = scaled_time(seconds)
    return str(math.ceil(t)) if float(seconds).is_integer() else f"{t:g}"


def scaled_bytes(nbytes: int, minimum: int = 1) -> int:
    """A bulk data volume for the board under test: ``nbytes`` times
    ``--board-data-scale``, at least ``minimum``."""
    return max(minimum, int(nbytes * _scale["data"]))


def pytest_configure(config: pytest.Config) -> None:
    _scale["time"] = float(config.getoption("board_time_scale", default=1.0))
    _scale["data"] = float(config.getoption("board_data_scale", default=1.0))


def _is_e2e(item: pytest.Item) -> bool:
    return E2E_DIR in Path(item.path).parents


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check the board options; on an attached board skip the sim-only tests; scale every
    e2e test's time limit by ``--board-time-scale``."""
    ours = [item for item in items if _is_e2e(item)]
    if not ours:
        return
    opts = board_options(config)
    base = config.getoption("timeout", default=None) or config.getini("timeout") or None
    for item in ours:
        for mark in item.iter_markers("sim_only"):
            reason = mark.args[0] if mark.args else mark.kwargs.get("reason")
            if reason not in SIM_ONLY_REASONS:
                raise pytest.UsageError(f"{item.nodeid}: sim_only({reason!r}) is not one of "
                                        "the reasons declared in SimOnly (tests/e2e/conftest.py)")
            if opts.attached:
                item.add_marker(pytest.mark.skip(reason=SIM_ONLY_PREFIX + reason))
        if opts.time_scale != 1.0:
            mark = item.get_closest_marker("timeout")
            args: tuple = ()
            kwargs: dict = {}
            if mark is not None:
                limit = mark.kwargs.get("timeout", mark.args[0] if mark.args else None)
                args = mark.args[1:]
                kwargs = {k: v for k, v in mark.kwargs.items() if k != "timeout"}
            else:
                limit = base
            if limit:
                item.add_marker(pytest.mark.timeout(float(limit) * opts.time_scale, *args,
                                                    **kwargs), append=False)


# -- the board under test -------------------------------------------------------------------


class Board(Protocol):
    """What a test may use of the board under test, simulated or attached."""

    kind: str               # "sim" or "attached"
    board_ip: str           # the board's IPv4 address
    peer_ip: str            # the peer's address on the board's LAN (also the board's gateway)
    usb_path: str           # the board's data port (pyserial URL: a device, a pty, ...)
    netns: str | None       # the peer's network namespace; None: this host's own
    peer_iface: str         # the peer's interface on the board's LAN

    def peer_cmd(self, *cmd: str) -> list[str]:
        """``cmd`` as a command line that runs on the peer (in its namespace)."""
        ...

    def ns_run(self, *cmd: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` on the peer, bounded by ``timeout`` (scaled) seconds."""
        ...

    def log_lines(self) -> list[str]:
        """What the board printed so far (empty for an attached board)."""
        ...

    def stats(self, timeout: float = 5.0, tries: int = 3) -> dict[str, int]:
        """The board's counters over its data port (:meth:`twinstack.link.Link.stats`)."""
        ...

    def errors(self, stats: dict[str, int]) -> int:
        """Internal errors the board counted during this test, by ``stats``."""
        ...

    def configure(self, **settings: object) -> str:
        """:meth:`twinstack.link.Link.configure`; undone after the test on a shared board."""
        ...

    def mac(self) -> str:
        """The board's MAC address (lower case)."""
        ...

    def peer_mac(self) -> str:
        """The peer interface's MAC address."""
        ...


FALLBACK_CONNECTIONS = 8    # what the default board holds in an RP2040's heap (test_multicore)

# The simulated board for the suite's loads (64 connections, 100 clients at once), which do
# not fit the RP2040's budget (16 connections a kernel): room for 48 a kernel, TCP pools for
# their traffic, and rings of 8 frames, deep enough for early discard to start before a
# ring is full. The RP2040's own budget is the emulated board's.
LOADED_BOARD_ARGS = ["--heap", "2M", "--stack", "tcp_max_connections=48",
                     "--stack", "ring_capacity=8", "--stack", "tcp_rx_pool=65536",
                     "--stack", "tcp_tx_pool=32768"]


def concurrent_connections(board: Board, wanted: int, *, per_kernel: bool = False,
                           read_stats: Callable[[], dict[str, int]] | None = None) -> int:
    """How many TCP connections a test has open at once: ``wanted`` on a simulated board
    (its args give it the heap for them). On an attached board no more than three quarters
    of what it says it holds (the rest is margin for an uneven split between kernels and for
    connections of earlier tests in TIME-WAIT): ``tcp.max_connections`` over all kernels, or
    with ``per_kernel`` (a test that may put them all on one kernel) the smallest
    ``kN.tcp.max_connections``; if it does not say, :data:`FALLBACK_CONNECTIONS` over all
    kernels, shared equally. ``read_stats``: how to read its counters while a host
    application holds the data port (``Board.stats`` of :mod:`twinstack`)."""
    if board.kind == "sim":
        return wanted
    s = (read_stats or board.stats)()
    kernels = max(1, s.get("kernels", 1))
    if per_kernel:
        each = [s.get(f"k{k}.tcp.max_connections") for k in range(kernels)]
        capacity = None if None in each else min(each)
        fallback = FALLBACK_CONNECTIONS // kernels
    else:
        capacity = s.get("tcp.max_connections")
        fallback = FALLBACK_CONNECTIONS
    if capacity is None:
        return max(1, min(wanted, fallback))
    return max(1, min(wanted, capacity * 3 // 4))


class _BoardCommon:
    """What the simulated and the attached board do alike."""

    usb_path: str
    netns: str | None
    peer_iface: str

    def peer_cmd(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else list(cmd)

    def ns_run(self, *cmd: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` on the peer (``ip netns exec NAME ...``, or here), ≤ ``timeout`` s
        (scaled)."""
        return subprocess.run(self.peer_cmd(*cmd), capture_output=True, text=True,
                              timeout=scaled_time(timeout))

    def stats(self, timeout: float = 5.0, tries: int = 3) -> dict[str, int]:
        """The board's counters, over its data port. An unanswered request is asked again
        (the board then says why in its output, e.g. no memory for the reply)."""
        for attempt in range(1, tries + 1):
            try:
                with Link(self.usb_path) as link:
                    return link.stats(timeout=scaled_time(timeout))
            except LinkTimeout:
                if attempt == tries:
                    raise
                time.sleep(0.5)
        raise AssertionError("unreachable")

    def configure(self, **settings: object) -> str:
        with Link(self.usb_path) as link:
            return link.configure(timeout=scaled_time(2.0), **settings)

    def peer_mac(self) -> str:
        return self.ns_run("cat", f"/sys/class/net/{self.peer_iface}/address").stdout.strip()


def rp2040_budget() -> dict[str, int]:
    """The memory budget of ``boards/rp2040.py``, which the simulated board runs with."""
    return dict(runpy.run_path(str(ROOT / "boards" / "rp2040.py"))["BUDGET"])


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


class SimHandle(_BoardCommon):
    """One running ``twinstack sim``: its process, output and namespaces (a :class:`Board`)."""

    kind = "sim"
    peer_iface = "eth0"

    def __init__(self, netns: str, board_ip: str, peer_ip: str, args: Sequence[str]) -> None:
        self.netns: str = netns
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

    def mac(self) -> str:
        """The board's MAC from its ``netkernel: up`` line."""
        line = self.wait_for_line("netkernel: up ", 1)
        assert line is not None, self.log_lines()
        m = re.search(r"mac=(\S+)", line)
        assert m is not None, line
        return m.group(1).lower()

    def errors(self, stats: dict[str, int]) -> int:
        """Internal errors the board counted (it was started for this test)."""
        return stats["errors"]

    # -- actions -------------------------------------------------------------------------

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


_SERVICES_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except ConnectionRefusedError:
    sys.exit(3)
"""


class AttachedBoard(_BoardCommon):
    """A board that was running before the tests and goes on after them (a :class:`Board`):
    known by its data port, its LAN (a namespace or an interface here) and its address."""

    kind = "attached"

    def __init__(self, opts: BoardOptions) -> None:
        assert opts.port is not None and opts.ip is not None
        self.usb_path = opts.port
        self.board_ip = opts.ip
        self.netns = opts.netns
        self.peer_iface, found_ip = self._find_peer(opts)
        self.peer_ip = opts.peer_ip or found_ip
        self._mac: str | None = None
        self._services_found: bool | None = None    # as the tests found them (probed once)
        self._kernels: int | None = None
        self._errors_at_start = 0
        self._conns_at_start = 0
        self._changed: set[str] = set()             # settings this test changed

    def __repr__(self) -> str:
        lan = f"netns {self.netns}" if self.netns else "this host"
        return (f"<attached board {self.board_ip} on {self.usb_path}, peer {self.peer_ip} "
                f"{self.peer_iface} in {lan}>")

    def _find_peer(self, opts: BoardOptions) -> tuple[str, str]:
        """The peer's interface and address: the route to the board in the namespace, or
        the interface's IPv4 address (the one on the board's subnet, if several)."""
        if opts.iface is None:
            out = self.ns_run("ip", "-4", "-o", "route", "get", self.board_ip).stdout
            dev, src = re.search(r"\bdev (\S+)", out), re.search(r"\bsrc (\S+)", out)
            if dev is None or (src is None and opts.peer_ip is None):
                pytest.fail(f"netns {opts.netns} has no route to {self.board_ip}: {out!r}")
            return dev.group(1), src.group(1) if src else ""
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", opts.iface],
                             capture_output=True, text=True, timeout=10).stdout
        addrs = [ipaddress.IPv4Interface(a) for a in re.findall(r"\binet (\S+)", out)]
        board = ipaddress.IPv4Address(self.board_ip)
        addrs.sort(key=lambda a: board not in a.network)
        if not addrs and opts.peer_ip is None:
            pytest.fail(f"{opts.iface} has no IPv4 address (give --board-peer-ip): {out!r}")
        return opts.iface, str(addrs[0].ip) if addrs else ""

    def log_lines(self) -> list[str]:
        return []

    def mac(self) -> str:
        """The board's MAC, from the peer's neighbour table (after a ping)."""
        if self._mac is None:
            self.ns_run("ping", "-c", "1", "-W", "2", self.board_ip, timeout=10)
            out = self.ns_run("ip", "neigh", "show", self.board_ip, "dev",
                              self.peer_iface).stdout
            m = re.search(r"lladdr (\S+)", out)
            assert m is not None, f"no neighbour entry for {self.board_ip}: {out!r}"
            self._mac = m.group(1).lower()
        return self._mac

    def errors(self, stats: dict[str, int]) -> int:
        """Internal errors the board counted since this test began."""
        return stats["errors"] - self._errors_at_start

    def configure(self, **settings: object) -> str:
        self._changed.update(settings)
        return super().configure(**settings)

    def kernels(self) -> int:
        if self._kernels is None:
            self._kernels = self.stats()["kernels"]
        return self._kernels

    def services_on(self) -> bool:
        """Whether the built-in services answer: a TCP connection to the discard port."""
        wait = scaled_time(5.0)
        r = self.ns_run(sys.executable, "-c", _SERVICES_PROBE, self.board_ip,
                        str(DISCARD_PORT), str(wait), timeout=10)
        if r.returncode not in (0, 3):
            pytest.fail(f"{self!r} does not answer on its LAN (TCP to port {DISCARD_PORT}): "
                        f"exit {r.returncode} {r.stderr.strip()}")
        return r.returncode == 0

    # -- one test at a time ------------------------------------------------------------

    def begin_test(self, services: bool, kernels: int) -> None:
        """Before a test: enough kernels (else skip), counters' starting point, services on
        if the test needs them."""
        if self.kernels() < kernels:
            pytest.skip(f"needs a board with {kernels} or more net kernels "
                        f"(the attached board has {self.kernels()})")
        self._changed.clear()
        start = self.stats()
        self._errors_at_start = start["errors"]
        self._conns_at_start = start["tcp_conns"]
        if services:
            if self._services_found is None:
                self._services_found = self.services_on()
            if not self._services_found:
                self.configure(services="on")

    def end_test(self) -> None:
        """After a test: every setting it changed goes back to what the tests found (the
        built-in services) or to the firmware's default (the dispatcher, whose settings the
        board does not report)."""
        changed, undo = self._changed, {}
        if "services" in changed:
            undo["services"] = "on" if self._services_found else "off"
        if changed & {"hash", "mask"}:
            undo.update(hash="fold", mask="ff" * 13)
        if "indirection" in changed:
            undo["indirection"] = [i % self.kernels() for i in range(64)]
        if "balance" in changed:
            undo["balance"] = "flows"
        unknown = changed - {"services", "hash", "mask", "indirection", "balance"}
        if undo:
            super().configure(**undo)
        self._changed = set()
        assert not unknown, f"a test changed {sorted(unknown)}, which cannot be undone"
        # The test's connections finish (TIME-WAIT: 2 s) before the next test begins: on a
        # board of an RP2040's size they take its room.
        seen: list[int] = []
        if not wait_until(lambda: seen.append(self.stats()["tcp_conns"])
                          or seen[-1] <= self._conns_at_start, 10, step=0.5):
            warnings.warn(f"{self!r}: {seen[-1]} TCP connections 10 s after the test, "
                          f"{self._conns_at_start} before it", stacklevel=1)


@pytest.fixture(scope="session")
def attached_board(request: pytest.FixtureRequest) -> AttachedBoard:
    """The attached board (``--board-port``), checked to answer on its data port."""
    opts = board_options(request.config)
    if not opts.attached:
        pytest.skip("no attached board (--board-port)")
    require_netns_privileges()
    hw = AttachedBoard(opts)
    try:
        with Link(hw.usb_path) as link:
            link.echo(timeout=scaled_time(5.0))
    except (LinkTimeout, OSError) as e:
        pytest.fail(f"{hw!r} does not answer on its data port: {e}")
    return hw


@pytest.fixture
def board_under_test(request: pytest.FixtureRequest) -> Callable[..., Board]:
    """Factory: ``board_under_test(args=(), services=True, kernels=1)`` -> the board this
    test runs against. Simulated: a new ``twinstack sim ARGS`` (SERVICES and KERNELS are
    ARGS' business). Attached: the shared board, with its built-in services on for the test
    if SERVICES (as they were after it), the test skipped unless it has KERNELS kernels."""
    if board_options(request.config).attached:
        hw: AttachedBoard = request.getfixturevalue("attached_board")

        def attach(args: Sequence[str] = (), *, services: bool = True,
                   kernels: int = 1) -> Board:
            request.addfinalizer(hw.end_test)
            hw.begin_test(services, kernels)
            return hw

        return attach
    factory: SimFactory = request.getfixturevalue("sim_board")

    def start(args: Sequence[str] = (), *, services: bool = True, kernels: int = 1) -> Board:
        return factory(args=args)

    return start


@pytest.fixture
def sim_board(request: pytest.FixtureRequest) -> Iterator[SimFactory]:
    """Factory fixture: ``sim_board(netns=None, board_ip=..., peer_ip=..., args=())``."""
    if board_options(request.config).attached \
            and request.node.get_closest_marker("sim_only") is None:
        pytest.fail("this test starts simulated boards but is not marked sim_only: "
                    "use board_under_test, or mark it @pytest.mark.sim_only(SimOnly.X)")
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
    """tcpdump on the peer's interface, into a pcap file, until ``count`` frames match."""

    def __init__(self, board: Board, path: Path, bpf: str, count: int) -> None:
        self.path = path if path.suffix == ".pcap" else path / "capture.pcap"
        self.proc = subprocess.Popen(
            board.peer_cmd("tcpdump", "-i", board.peer_iface, "-U", "-n",
                           "-w", str(self.path), "-c", str(count), bpf),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        # tcpdump says "listening on" once its socket is attached; wait for that, bounded.
        deadline = time.monotonic() + scaled_time(10)
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            if not ready:
                break
            line = self.proc.stderr.readline()
            if "listening on" in line or not line:
                break

    def frames(self, timeout: float = 10.0) -> list[bytes]:
        """The captured frames, once tcpdump has its count or ``timeout`` s (scaled) have
        passed."""
        from scapy.utils import rdpcap

        try:
            self.proc.wait(scaled_time(timeout))
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            self.proc.wait(5)
        if not self.path.exists() or self.path.stat().st_size == 0:
            return []
        return [bytes(p) for p in rdpcap(str(self.path))]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0,
               step: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` s (scaled) pass; its last value."""
    deadline = time.monotonic() + scaled_time(timeout)
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def run_peer_script(board: Board, script: Path, *args: str, timeout: float = 30.0,
                    netns: str | None = None) -> dict:
    """Run a peer-side Python script on the board's peer (or in namespace ``netns``), ≤
    ``timeout`` s (scaled); its last JSON line. Fails the test, with the script's output, if
    it fails or prints none."""
    cmd = (sys.executable, str(script), *args)
    proc = subprocess.run(["ip", "netns", "exec", netns, *cmd] if netns else board.peer_cmd(*cmd),
                          capture_output=True, text=True, timeout=scaled_time(timeout))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"{script.name} {' '.join(args)}: exit {proc.returncode}\n"
                    f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return json.loads(lines[-1])


class PeerServer:
    """A peer-side script running in the background (a server): started, waited for until it
    prints ``{"ready": true}``, then its last JSON line collected by :meth:`result`."""

    def __init__(self, board: Board, script: Path, *args: str,
                 ready_timeout: float = 10.0) -> None:
        self.name = f"{script.name} {' '.join(args)}"
        self.proc = subprocess.Popen(
            board.peer_cmd(sys.executable, str(script), *args),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], scaled_time(ready_timeout))
        line = self.proc.stdout.readline() if ready else ""
        if '"ready"' not in line:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
            pytest.fail(f"{self.name} did not get ready: {line!r} {err}")

    def result(self, timeout: float = 30.0) -> dict:
        """Its last JSON line once it has ended (killed and failed after ``timeout`` s,
        scaled)."""
        try:
            out, err = self.proc.communicate(timeout=scaled_time(timeout))
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
