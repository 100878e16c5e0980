"""Network namespaces and the veth pair that form the simulated board's Ethernet wire.

Layout for a simulated board called NAME::

    netns NAME-board                       netns NAME (the peer)
    ┌──────────────────────────┐           ┌─────────────────────────────────┐
    │ micropython (the board)  │           │ Linux TCP/IP: ping, curl, ...   │
    │   W5500 emulator         │           │                                 │
    │   AF_PACKET on "w5500" ──┼── veth ───┼── "eth0"  PEER/PREFIX           │
    └──────────────────────────┘           └─────────────────────────────────┘

The veth pair is created directly inside the two namespaces, so nothing appears in the
namespace the launcher runs in. Offloads are switched off on both ends (frames on the wire
carry real checksums and are never merged), IPv6 is disabled (no stray ND/MLD frames) and
the board end has no address, so its kernel stays silent.

Everything here needs root (real root, or root in a user namespace of our own).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from ipaddress import IPv4Interface
from pathlib import Path

log = logging.getLogger(__name__)

NAME_PATTERN = "[a-z0-9_-]{1,10}"
BOARD_NS_SUFFIX = "-board"
BOARD_IF = "w5500"
PEER_IF = "eth0"
CMD_TIMEOUT_S = 15.0
# Where tools live on Debian; a non-root PATH often lacks the sbin directories.
_EXTRA_TOOL_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin")
_TOOL_PACKAGES = {
    "ip": "iproute2", "ethtool": "ethtool", "sysctl": "procps", "unshare": "util-linux",
}


class SimError(Exception):
    """A failure of the simulated board set-up, with a message meant for the user."""


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid simulated board name, else raise ``ValueError``.

    Valid names are 1 to 10 characters from ``a-z 0-9 _ -`` (the board namespace adds
    ``-board`` to it).
    """
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(
            f"invalid netns name {name!r}: use 1 to 10 characters from a-z, 0-9, '_' and '-'"
        )
    return name


def find_tool(name: str) -> str:
    """Full path of the command-line tool ``name``; ``SimError`` (with the package) if absent."""
    found = shutil.which(name)
    if found is None:
        found = shutil.which(name, path=os.pathsep.join(_EXTRA_TOOL_DIRS))
    if found is None:
        package = _TOOL_PACKAGES.get(name, name)
        raise SimError(f"{name} not found: apt-get install {package}")
    return found


def run(
    cmd: Sequence[str], *, timeout: float = CMD_TIMEOUT_S, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a short command, bounded by ``timeout``, capturing its output.

    Raises ``SimError`` when it times out, cannot be started, or (with ``check``) fails.
    """
    text = shlex.join(cmd)
    log.debug("run: %s", text)
    try:
        cp = subprocess.run(
            list(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout, errors="replace",
        )
    except subprocess.TimeoutExpired:
        raise SimError(f"`{text}` did not finish within {timeout:g} s") from None
    except OSError as e:
        raise SimError(f"cannot run `{text}`: {e}") from None
    if check and cp.returncode != 0:
        detail = (cp.stderr or cp.stdout).strip()
        raise SimError(f"`{text}` failed (exit {cp.returncode}): {detail}")
    return cp


def list_netns() -> set[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    out = run([find_tool("ip"), "netns", "list"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def netns_exists(name: str) -> bool:
    """Whether the named network namespace ``name`` exists."""
    return name in list_netns()


def exists_message(name: str) -> str:
    """The error shown when a namespace we need already exists."""
    return (
        f"netns {name} exists: another twinstack sim with this name is running, "
        f"or a previous one was killed; remove it with `ip netns del {name}`"
    )


class UndoStack:
    """What set-up actually created, undone in reverse order.

    Each step is pushed only after the thing it removes exists, so unwinding never removes
    something this process did not create.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, undo: Callable[[], object]) -> None:
        """Remember how to undo ``what`` (a short description for the log)."""
        self._steps.append((what, undo))

    def __len__(self) -> int:
        return len(self._steps)

    def unwind(self) -> list[str]:
        """Run every undo step, newest first; return the errors (all steps are tried)."""
        errors: list[str] = []
        while self._steps:
            what, undo = self._steps.pop()
            log.debug("undo: %s", what)
            try:
                undo()
            except Exception as e:  # keep going: every other step must still run
                log.warning("could not undo %s: %s", what, e)
                errors.append(f"{what}: {e}")
        return errors


class SimNetwork:
    """The peer namespace, the board namespace and the veth pair between them."""

    def __init__(self, name: str, peer: IPv4Interface, undo: UndoStack) -> None:
        """``peer`` is the address (with the board's prefix) put on the peer's ``eth0``."""
        self.name = validate_name(name)
        self.board_ns = name + BOARD_NS_SUFFIX
        self.peer = peer
        self._undo = undo
        self._ip = ""
        self._ethtool = ""
        self._sysctl = ""

    def check_tools(self) -> None:
        """Fail early (before creating anything) if a needed tool is missing."""
        self._ip = find_tool("ip")
        self._ethtool = find_tool("ethtool")
        self._sysctl = find_tool("sysctl")

    def check_free(self) -> None:
        """Raise ``SimError`` if either namespace already exists."""
        existing = list_netns()
        for ns in (self.name, self.board_ns):
            if ns in existing:
                raise SimError(exists_message(ns))

    def create(self, check_interrupt: Callable[[], None] = lambda: None) -> None:
        """Create both namespaces and the wire; ``check_interrupt`` runs between steps."""
        if not self._ip:
            self.check_tools()
        self.check_free()
        for ns in (self.name, self.board_ns):
            self._add_netns(ns)
            check_interrupt()
        ipv6 = Path("/proc/sys/net/ipv6").exists()
        if ipv6:
            # New interfaces start with IPv6 off: not even a link-local address or MLD report.
            for ns in (self.name, self.board_ns):
                self._sysctl_ipv6_off(ns, "default")
                self._sysctl_ipv6_off(ns, "all")
        ip = self._ip
        run([ip, "link", "add", BOARD_IF, "netns", self.board_ns, "type", "veth",
             "peer", "name", PEER_IF, "netns", self.name])
        self._undo.push(
            f"veth {self.board_ns}/{BOARD_IF} <-> {self.name}/{PEER_IF}",
            lambda: run([ip, "-n", self.board_ns, "link", "del", BOARD_IF], check=False),
        )
        check_interrupt()
        for ns, ifname in ((self.board_ns, BOARD_IF), (self.name, PEER_IF)):
            if ipv6:
                self._sysctl_ipv6_off(ns, ifname)
            self._offloads_off(ns, ifname)
            check_interrupt()
        # The board end has no address; with ARP off its kernel never answers for anyone.
        run([ip, "-n", self.board_ns, "link", "set", BOARD_IF, "arp", "off"])
        run([ip, "-n", self.name, "addr", "add", self.peer.with_prefixlen, "dev", PEER_IF])
        for ns, ifname in ((self.board_ns, "lo"), (self.board_ns, BOARD_IF),
                           (self.name, "lo"), (self.name, PEER_IF)):
            run([ip, "-n", ns, "link", "set", ifname, "up"])
        self._wait_carrier()

    def _add_netns(self, ns: str) -> None:
        cp = run([self._ip, "netns", "add", ns], check=False)
        if cp.returncode != 0:
            if "exists" in cp.stderr.lower() or netns_exists(ns):
                raise SimError(exists_message(ns))
            hint = ""
            if "permission denied" in cp.stderr.lower() and os.geteuid() == 0:
                hint = (" (root in a user namespace cannot write the host's /run: mount a "
                        "tmpfs on /run first, as `make test` does)")
            raise SimError(f"`ip netns add {ns}` failed: {cp.stderr.strip()}{hint}")
        log.info("created netns %s", ns)
        self._undo.push(f"netns {ns}", lambda: self._del_netns(ns))

    def _del_netns(self, ns: str) -> None:
        run([self._ip, "netns", "del", ns])
        log.info("deleted netns %s", ns)

    def _sysctl_ipv6_off(self, ns: str, ifname: str) -> None:
        key = f"net.ipv6.conf.{ifname}.disable_ipv6=1"
        cp = run([self._ip, "netns", "exec", ns, self._sysctl, "-q", "-w", key], check=False)
        if cp.returncode != 0:
            log.warning("netns %s: could not set %s: %s", ns, key, cp.stderr.strip())

    def _offloads_off(self, ns: str, ifname: str) -> None:
        run([self._ip, "netns", "exec", ns, self._ethtool, "-K", ifname,
             "tx", "off", "tso", "off", "gso", "off", "gro", "off", "rx", "off"])

    def _wait_carrier(self, timeout: float = 3.0) -> None:
        """Wait (bounded) until both veth ends report carrier; only warn if they do not."""
        deadline = time.monotonic() + timeout
        pending = [(self.board_ns, BOARD_IF), (self.name, PEER_IF)]
        while pending and time.monotonic() < deadline:
            pending = [
                (ns, ifname) for ns, ifname in pending
                if "LOWER_UP" not in run([self._ip, "-n", ns, "-o", "link", "show", ifname]).stdout
            ]
            if pending:
                time.sleep(0.05)
        for ns, ifname in pending:
            log.warning("netns %s: %s has no carrier after %g s", ns, ifname, timeout)
