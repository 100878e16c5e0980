"""The dispatcher and two net kernels, judged from the wire and from the board's counters.

Every test starts its own simulated board with two kernels (``--kernels 2``, services on,
no frame log), or runs on the attached board if it has two kernels (its services switched
on, the dispatcher's settings put back to the firmware's defaults after each test; see
conftest.py), drives traffic from the peer with ``multicore_peer.py`` (and
``ping``/``arping``), and reads over the USB link what each kernel did:

* ``Link.stats()``: unprefixed counters are sums over the kernels, ``kN.*`` are kernel N's
  own (``k0.rx_frames``, ``k1.icmp.rx_echo_requests``, ``k0.arp.entries``, ...), ``disp.*``
  the dispatcher's (``disp.redirects``, ``disp.drop_red``);
* ``Link.flows()``: the flow table, one dict per flow with ``key``
  (``<src>:<sport>><dst>:<dport>/<proto>``), ``owner`` and ``k0``/``k1`` (frames of that flow
  each kernel processed);
* ``Link.configure(hash=..., indirection=...)`` replaces the hash program at run time
  (here through ``Board.configure``, which a shared board undoes after the test).

Every step is bounded in time; every peer process is stopped at the end.
"""

from __future__ import annotations

import json
import logging
import re
import select
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
from twinstack.link import Link

from .conftest import (
    LOADED_BOARD_ARGS,
    Board,
    concurrent_connections,
    require_netns_privileges,
    run_peer_script,
    scaled_arg,
    scaled_bytes,
    scaled_time,
    wait_until,
)

pytestmark = pytest.mark.e2e

log = logging.getLogger(__name__)

PEER = Path(__file__).with_name("multicore_peer.py")
KERNELS = 2
# These tests judge where frames go, not how much memory that takes (test 7 below does, on
# the RP2040's budget).
BOARD_ARGS = ["--kernels", str(KERNELS), *LOADED_BOARD_ARGS, "--no-log-frames"]
ECHO_PORT = 7
DISCARD_PORT = 9
CONCURRENT_CONNS = 64      # test 1 (on the simulated board; an attached one: its capacity)
HASH_OLD_CONNS = 6         # test 6: open across every change of the hash program
HASH_NEW_CONNS = 3         # test 6: opened after each change (closed before the next)
OVERLOAD_TCP_CONNS = 2     # test 4: bulk transfers that keep kernel 0 busy
OVERLOAD_UDP_SENDERS = 8   # test 4: UDP flows flooding the echo
RED_RAW_FLOWS = 4          # test 5: UDP flows per raw burst sender (2 senders)
RED_UDP_SENDERS = 8        # test 5: UDP flows flooding through the socket layer
# Counters that say a reassembled datagram went from one kernel to another (kernel N's
# ``kN.handoffs_out``/``kN.handoffs_in``; their sums ``handoffs_out``/``handoffs_in``).
HANDOFF_PATTERNS = ("k*.handoffs_out", "k*.handoffs_in")


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture
def board(board_under_test) -> Iterator[Board]:
    """One simulated board with two kernels and services, no frame log (or the attached
    board, if it has two kernels). Its output (but the periodic counter lines) is printed at
    teardown: pytest shows it when a test fails."""
    require_netns_privileges()
    handle = board_under_test(args=BOARD_ARGS, kernels=KERNELS)
    need_exactly_two_kernels(handle)
    yield handle
    lines = [line for line in handle.log_lines() if not line.startswith("netkernel: stats")]
    print("board output:\n" + "\n".join(lines[-60:]))


def need_exactly_two_kernels(board: Board) -> None:
    """These tests judge two kernels (``k0``, ``k1``); skip on an attached board with more."""
    if board.kind != "sim" and (n := stats(board)["kernels"]) != KERNELS:
        pytest.skip(f"needs a board with exactly {KERNELS} net kernels (this one has {n})")


def stats(board: Board) -> dict[str, int]:
    """The board's counters, over its USB link (an unanswered request is asked again)."""
    return board.stats(timeout=5, tries=3)


def flows(board: Board) -> list[dict[str, Any]]:
    """The board's flow table, over its USB link."""
    with Link(board.usb_path) as link:
        return link.flows(timeout=scaled_time(2))


def configure(board: Board, **settings: str) -> None:
    """Replace part of the dispatcher's hash program (OSError if the board refuses)."""
    board.configure(**settings)


def need(s: dict[str, int], key: str) -> int:
    """``s[key]``, failing with the counters there are if the board has no such counter."""
    if key not in s:
        near = sorted(k for k in s if k.split(".")[-1] == key.split(".")[-1]
                      or k.startswith(key.split(".")[0] + "."))
        pytest.fail(f"the board has no counter {key!r} (similar: {near[:40]})")
    return s[key]


def delta(before: dict[str, int], after: dict[str, int], key: str) -> int:
    """How much counter ``key`` went up (0 if the board has no such counter)."""
    return after.get(key, 0) - before.get(key, 0)


def per_kernel(s: dict[str, int], name: str) -> list[int]:
    """Counter ``name`` of every kernel (``k0.name``, ``k1.name``, ...)."""
    return [need(s, f"k{k}.{name}") for k in range(KERNELS)]


def matching(s: dict[str, int], patterns: Sequence[str]) -> dict[str, int]:
    """Counters whose names match any of the fnmatch patterns."""
    return {k: v for k, v in s.items() if any(fnmatch(k, p) for p in patterns)}


def peer_cmd(board: Board, *args: str) -> list[str]:
    return board.peer_cmd(sys.executable, str(PEER), *args)


def peer(board: Board, *args: str, timeout: float = 30.0) -> dict[str, Any]:
    """Run ``multicore_peer.py ARGS`` on the peer; its JSON result."""
    return run_peer_script(board, PEER, *args, timeout=timeout)


class Background:
    """A ``multicore_peer.py`` command running while the test does other things."""

    def __init__(self, board: Board, *args: str) -> None:
        self.args = args
        self.proc = subprocess.Popen(peer_cmd(board, *args), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self, timeout: float) -> dict[str, Any]:
        """Wait ≤ ``timeout`` s (scaled; then kill); its JSON result."""
        try:
            out, err = self.proc.communicate(timeout=scaled_time(timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=5)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if not lines:
            pytest.fail(f"multicore_peer {' '.join(self.args)}: exit {self.proc.returncode}\n"
                        f"stdout: {out}\nstderr: {err}")
        return json.loads(lines[-1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=5)


class Session:
    """``multicore_peer.py session``: concurrent TCP connections to the board's echo that
    stay open between commands."""

    def __init__(self, board: Board, limit: float = 240.0) -> None:
        self.proc = subprocess.Popen(
            peer_cmd(board, "session", board.board_ip, "--port", str(ECHO_PORT),
                     "--timeout", scaled_arg(20), "--limit", scaled_arg(limit)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._answer(15)

    def _answer(self, timeout: float) -> dict[str, Any]:
        """The next JSON line, within ``timeout`` s (scaled)."""
        assert self.proc.stdout is not None
        timeout = scaled_time(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not select.select([self.proc.stdout], [], [], deadline - time.monotonic())[0]:
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                return json.loads(line)
        self.close()
        err = self.proc.stderr.read() if self.proc.stderr else ""
        pytest.fail(f"session: no answer within {timeout:g} s (exit {self.proc.returncode})"
                    f"\n{err}")

    def command(self, line: str, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._answer(timeout)

    def open(self, count: int) -> dict[str, Any]:
        """Open ``count`` more connections (a new group); all of them must open."""
        r = self.command(f"open {count}")
        assert r["opened"] == count, json.dumps(r)
        return r

    def echo(self, size: int, *groups: int) -> dict[str, Any]:
        """``size`` bytes on every connection of ``groups`` (all if none), checked."""
        r = self.command(" ".join(["echo", str(size), *map(str, groups)]))
        assert r["ok"], json.dumps(r)
        return r

    def shut(self, group: int) -> None:
        """Close the connections of one group."""
        self.command(f"shut {group}")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.communicate(input="close\n", timeout=scaled_time(15))
            except (subprocess.TimeoutExpired, ValueError, OSError):
                self.proc.kill()
                self.proc.communicate(timeout=5)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def session(board: Board) -> Iterator[Callable[[], Session]]:
    """Factory for sessions on the board; every one is closed at teardown."""
    made: list[Session] = []

    def make() -> Session:
        made.append(Session(board))
        return made[-1]

    try:
        yield make
    finally:
        for s in made:
            s.close()


# -- flows ----------------------------------------------------------------------------------

_KEY_RE = re.compile(r"^(?P<a>[\d.]+):(?P<ap>\d+)>(?P<b>[\d.]+):(?P<bp>\d+)/(?P<proto>\w+)$")


def flow_proto(flow: dict[str, Any]) -> str:
    """``tcp``/``udp``/``icmp``/... of a flow (from its key)."""
    m = _KEY_RE.match(str(flow.get("key", "")))
    if not m:
        return "?"
    return {"6": "tcp", "17": "udp", "1": "icmp"}.get(m["proto"], m["proto"].lower())


def peer_port(flow: dict[str, Any], peer_ip: str) -> int | None:
    """The peer's port of a flow (whichever way round its key is written)."""
    m = _KEY_RE.match(str(flow.get("key", "")))
    if not m:
        return None
    if m["a"] == peer_ip:
        return int(m["ap"])
    if m["b"] == peer_ip:
        return int(m["bp"])
    return None


def tcp_flows(table: list[dict[str, Any]], board: Board) -> dict[int, dict[str, Any]]:
    """The table's TCP flows with the peer, by the peer's port."""
    return {p: f for f in table if flow_proto(f) == "tcp"
            and (p := peer_port(f, board.peer_ip)) is not None}


def kernel_frames(flow: dict[str, Any]) -> list[int]:
    """Frames of the flow that each kernel processed."""
    return [int(flow.get(f"k{k}", 0)) for k in range(KERNELS)]


def only_kernel(flow: dict[str, Any]) -> int | None:
    """The one kernel that processed the flow's frames, or None if none or several did."""
    busy = [k for k, n in enumerate(kernel_frames(flow)) if n]
    return busy[0] if len(busy) == 1 else None


def check_single_kernel(by_port: dict[int, dict[str, Any]], ports: Sequence[int],
                        owner: dict[int, int] | None = None) -> list[str]:
    """Problems: a port with no flow, a flow on several kernels (or on a kernel that is not
    its owner), or one whose owner differs from ``owner[port]``."""
    problems = []
    for p in ports:
        f = by_port.get(p)
        if f is None:
            problems.append(f"port {p}: not in the flow table")
            continue
        k = only_kernel(f)
        if k is None:
            problems.append(f"port {p}: frames on kernels {kernel_frames(f)}: {f}")
        elif k != f["owner"]:
            problems.append(f"port {p}: owner {f['owner']} but processed on kernel {k}: {f}")
        if owner is not None and f["owner"] != owner[p]:
            problems.append(f"port {p}: owner moved from {owner[p]} to {f['owner']}: {f}")
    return problems


def assert_board_healthy(board: Board) -> None:
    """The board answers ping, UDP and TCP echo, and has counted no internal error."""
    ok = wait_until(lambda: board.ns_run("ping", "-c", "1", "-W", scaled_arg(1),
                                         board.board_ip, timeout=5).returncode == 0,
                    10, step=0.5)
    assert ok, "the board does not answer ping any more"
    ping = board.ns_run("ping", "-c", "5", "-i", scaled_arg(0.2),
                        "-W", scaled_arg(2), board.board_ip,
                        timeout=15)
    assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
    udp = peer(board, "udp-echo", board.board_ip, "--sport", "45999", "--size", "3000",
               "--timeout", scaled_arg(2.0))
    assert udp["ok"], udp
    s = stats(board)
    assert board.errors(s) == 0, s
    assert "error in kernel turn" not in "\n".join(board.log_lines())


# -- 1. 64 concurrent connections -----------------------------------------------------------


@pytest.mark.timeout(180)
def test_64_concurrent_connections_each_on_one_kernel_both_kernels_own_some(board, session):
    count = max(KERNELS, concurrent_connections(board, CONCURRENT_CONNS))
    with session() as sess:
        opened = sess.open(count)
        echo = sess.echo(scaled_bytes(20_000, minimum=2_000))
        again = sess.echo(scaled_bytes(5_000, minimum=500))
        table = flows(board)
        s = stats(board)
    log.info("opened %s; echo %s, %s", opened, echo, again)
    by_port = tcp_flows(table, board)
    problems = check_single_kernel(by_port, opened["ports"])
    owners = Counter(by_port[p]["owner"] for p in opened["ports"] if p in by_port)
    frames = Counter()
    for p in opened["ports"]:
        if p in by_port:
            frames.update({k: n for k, n in enumerate(kernel_frames(by_port[p]))})
    owned = {k: s.get(f"k{k}.flows_owned") for k in range(KERNELS)}
    print(f"\n{count} connections: owners {dict(owners)}, frames per kernel {dict(frames)}, "
          f"k*.flows_owned {owned}, rx_frames per kernel {per_kernel(s, 'rx_frames')}, "
          f"tcp_conns {s.get('tcp_conns')}")
    assert not problems, "\n".join(problems[:20])
    assert all(owners[k] > 0 for k in range(KERNELS)), f"owners: {dict(owners)}"
    for k, n in owned.items():
        assert n is None or n > 0, f"k{k}.flows_owned = {n}"
    assert board.errors(s) == 0, s
    assert_board_healthy(board)


# -- 2. fragments ---------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_fragmented_ping_and_udp_datagram_handed_to_the_owner_kernel(board):
    before = stats(board)
    ping = board.ns_run("ping", "-c", "5", "-i", scaled_arg(0.2), "-s", "3000", "-M", "dont",
                        "-W", scaled_arg(3), board.board_ip, timeout=30).stdout
    log.info("%s", ping)
    assert "5 packets transmitted, 5 received, 0% packet loss" in ping, ping
    assert ping.count(f"3008 bytes from {board.board_ip}") == 5, ping
    assert "wrong data" not in ping, ping
    s = stats(board)
    assert sum(delta(before, s, f"k{k}.ip.reasm_ok") for k in range(KERNELS)) >= 5, s

    # Fragments go by (src, dst, proto, IP id), the datagram by its flow: try source ports
    # (each datagram has a new IP id) until the reassembling kernel is not the owner.
    attempts: list[dict[str, Any]] = []
    found = None
    for sport in range(41000, 41040):
        before = stats(board)
        r = peer(board, "udp-echo", board.board_ip, "--sport", str(sport), "--size", "4000",
                 "--timeout", scaled_arg(2.0))
        after = stats(board)
        reasm = [k for k in range(KERNELS) if delta(before, after, f"k{k}.ip.reasm_ok")]
        delivered = [k for k in range(KERNELS)
                     if delta(before, after, f"k{k}.udp.rx_datagrams")]
        handoffs = {k: delta(before, after, k) for k in matching(after, HANDOFF_PATTERNS)
                    if delta(before, after, k)}
        attempt = {"sport": sport, "ok": r["ok"], "tries": [x["tries"] for x in r["results"]],
                   "reassembled_on": reasm, "delivered_on": delivered, "handoffs": handoffs}
        attempts.append(attempt)
        assert r["ok"], (r, attempts)
        if handoffs or (reasm and delivered and set(reasm) != set(delivered)):
            found = attempt
            break
    table = flows(board)
    print(f"\nfragmented UDP echo attempts: {attempts}")
    assert found is not None, ("no datagram was reassembled on a kernel other than its "
                               f"owner's in {len(attempts)} tries: {attempts}; handoff "
                               f"counters: {matching(stats(board), HANDOFF_PATTERNS)}")
    flow = next((f for f in table if flow_proto(f) == "udp"
                 and peer_port(f, board.peer_ip) == found["sport"]), None)
    log.info("handoff: %s; flow %s", found, flow)
    if flow is not None and found["delivered_on"]:
        assert flow["owner"] == found["delivered_on"][0], (flow, found)
    if found["reassembled_on"] and found["delivered_on"]:
        # The counter that says so went up as well (if the board has one).
        assert found["handoffs"] or not matching(stats(board), HANDOFF_PATTERNS), found
    assert_board_healthy(board)


# -- 3. ARP ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_both_kernels_arp_caches_learn_the_neighbour(board):
    arping = board.ns_run("arping", "-c", "3", "-w", scaled_arg(5), "-I", board.peer_iface,
                          board.board_ip, timeout=15).stdout
    assert len(re.findall(r"reply from", arping)) == 3, arping
    ping = board.ns_run("ping", "-c", "2", "-i", scaled_arg(0.2),
                        "-W", scaled_arg(2), board.board_ip)
    assert ping.returncode == 0, ping.stdout
    seen: list[list[int]] = []

    def learned() -> bool:
        seen.append(per_kernel(stats(board), "arp.entries"))
        return all(n >= 1 for n in seen[-1])

    assert wait_until(learned, 5, step=0.5), f"k*.arp.entries over time: {seen}"
    print(f"\nARP entries per kernel: {seen[-1]}")


# -- 4. overload redirect -------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_overload_redirects_icmp_and_udp_to_the_other_kernel_never_tcp(board):
    ping = board.ns_run("ping", "-c", "1", "-W", scaled_arg(2), board.board_ip)
    assert ping.returncode == 0, ping.stdout
    configure(board, indirection="0")          # every flow hashes to kernel 0
    before = stats(board)
    # The transfer runs 8 s beyond the start below (which a slow board needs longer for).
    bulk = Background(board, "bulk", board.board_ip, "--port", str(DISCARD_PORT),
                      "--conns", str(OVERLOAD_TCP_CONNS), "--seconds",
                      f"{8 + scaled_time(1.0):g}", "--timeout", scaled_arg(30))
    try:
        time.sleep(scaled_time(1.0))           # kernel 0 busy with the transfer
        flood = Background(board, "flood-udp", board.board_ip, "--senders",
                           str(OVERLOAD_UDP_SENDERS), "--seconds", "4", "--first-sport",
                           "42000")
        pings = board.ns_run("ping", "-f", "-c", "4000", "-w", "4", board.board_ip,
                             timeout=20)
        flooded = flood.result(20)
        # Still during the transfer: its connections are in the flow table.
        table = flows(board)
        during = stats(board)
        moved = bulk.result(60)
    finally:
        bulk.kill()
    log.info("ping -f: %s", pings.stdout[-300:])
    d = {k: delta(before, during, k) for k in (
        "disp.redirects", "k0.icmp.rx_echo_requests", "k1.icmp.rx_echo_requests",
        "k0.udp.rx_datagrams", "k1.udp.rx_datagrams", "k0.tcp.segs_in", "k1.tcp.segs_in",
        "k0.rx_frames", "k1.rx_frames")}
    by_port = tcp_flows(table, board)
    problems = check_single_kernel(by_port, [p for p in moved["ports"] if p])
    owners = {p: by_port[p]["owner"] for p in moved["ports"] if p in by_port}
    tcp_split = {f["key"]: kernel_frames(f) for f in by_port.values()}
    print(f"\noverload: counters went up by {d}; flood {flooded}; bulk {moved['bytes']} B in "
          f"{moved['seconds']} s; bulk owners {owners}; ring_hwm "
          f"{[during.get(f'k{k}.ring_hwm') for k in range(KERNELS)]}; TCP flows {tcp_split}")
    need(during, "disp.redirects")
    assert moved["ok"], moved
    assert d["disp.redirects"] > 0, d
    assert d["k1.icmp.rx_echo_requests"] + d["k1.udp.rx_datagrams"] > 0, d
    assert d["k1.tcp.segs_in"] == 0, f"TCP reached kernel 1: {d}"
    assert set(owners.values()) == {0}, owners
    assert not problems, "\n".join(problems)
    # No TCP flow at all was ever processed on two kernels.
    split = {k: v for k, v in tcp_split.items() if sum(1 for n in v if n) > 1}
    assert not split, split
    after = stats(board)
    assert delta(during, after, "k1.tcp.segs_in") == 0, "TCP reached kernel 1 at the end"
    assert_board_healthy(board)


# -- 5. random early discard ----------------------------------------------------------------


def red_drops(s: dict[str, int]) -> int:
    """Frames dropped early at random: the dispatcher's count, else the kernels'."""
    if "disp.drop_red" in s:
        return s["disp.drop_red"]
    return sum(s.get(f"k{k}.drop_red", 0) for k in range(KERNELS))


@pytest.mark.timeout(150)
def test_random_early_discard_triggers_under_a_flood_and_the_board_survives(board):
    ping = board.ns_run("ping", "-c", "1", "-W", scaled_arg(2), board.board_ip)
    assert ping.returncode == 0, ping.stdout
    mac = board.mac()
    # Below the thresholds nothing is dropped: light traffic on both kernels first.
    quiet = stats(board)
    light = board.ns_run("ping", "-c", "20", "-i", scaled_arg(0.05), "-W", scaled_arg(2),
                         board.board_ip, timeout=20)
    assert " 0% packet loss" in light.stdout, light.stdout
    for sport in (44000, 44001, 44002, 44003):
        assert peer(board, "udp-echo", board.board_ip, "--sport", str(sport), "--size",
                    "1000", "--count", "5", "--timeout", scaled_arg(2.0))["ok"]
    before = stats(board)
    assert red_drops(before) == red_drops(quiet), ("early discard under light load",
                                                   red_drops(quiet), red_drops(before))
    bursts = []
    for _ in range(4):
        raw = [Background(board, "raw-burst", "--ifname", board.peer_iface,
                          "--dst-mac", mac, "--src-ip", board.peer_ip,
                          "--dst-ip", board.board_ip, "--flows", str(RED_RAW_FLOWS),
                          "--seconds", "2", "--first-sport", str(30000 + 100 * i))
               for i in range(2)]
        udp = Background(board, "flood-udp", board.board_ip, "--senders",
                         str(RED_UDP_SENDERS), "--seconds", "2", "--first-sport", "43000")
        bursts.append({"raw": [b.result(20) for b in raw], "udp": udp.result(20)})
        if red_drops(stats(board)) > red_drops(before):
            break
    after = stats(board)
    interesting = {k: v for k, v in after.items()
                   if any(w in k for w in ("red", "ring", "drop", "thresh", "redirect"))
                   and not k.startswith(("tcp.", "k0.tcp.", "k1.tcp."))}
    print(f"\nRED: {len(bursts)} burst(s) {bursts}; counters {interesting}")
    assert red_drops(after) > red_drops(before), interesting
    hwm = [after.get(f"k{k}.ring_hwm", 0) for k in range(KERNELS)]
    assert max(hwm) > 0, interesting
    # The dispatcher never blocked: the board answers as before.
    assert_board_healthy(board)


# -- 6. a new hash program at run time ------------------------------------------------------


@pytest.mark.timeout(240)
def test_new_hash_program_moves_new_flows_and_leaves_open_connections(board, session):
    with pytest.raises(OSError):
        configure(board, indirection=",".join(["0", str(KERNELS)]))   # no such kernel
    with pytest.raises(OSError):
        configure(board, hash="no-such-hash")
    # 6 + 3 open at once on the simulated board; on an attached board, as many as one
    # kernel holds (a phase may put the new ones and every old one on the same kernel).
    fit = concurrent_connections(board, HASH_OLD_CONNS + HASH_NEW_CONNS, per_kernel=True)
    old_conns = max(KERNELS, fit - HASH_NEW_CONNS)
    with session() as sess:
        old = sess.open(old_conns)
        sess.echo(4096)
        table = tcp_flows(flows(board), board)
        assert not check_single_kernel(table, old["ports"]), table
        owner = {p: table[p]["owner"] for p in old["ports"]}
        phases: list[dict[str, Any]] = [{"table": "default", "owners": Counter(owner.values())}]

        for target in (1, 0):
            # Every old flow owned by the other kernel now hashes to ``target``.
            configure(board, indirection=str(target))
            new = sess.open(HASH_NEW_CONNS)
            sess.echo(4096, 0, new["group"])       # more data on the old ones and the new
            table = tcp_flows(flows(board), board)
            problems = check_single_kernel(table, list(owner), owner)
            problems += check_single_kernel(table, new["ports"])
            new_owners = {p: table[p]["owner"] for p in new["ports"] if p in table}
            phases.append({"table": str(target), "new_owners": Counter(new_owners.values())})
            assert not problems, (phases, "\n".join(problems))
            assert set(new_owners.values()) == {target}, phases
            sess.shut(new["group"])

        # The other hash (symmetric Toeplitz) over both kernels: new flows keep to one
        # kernel each, old ones stay.
        configure(board, hash="toeplitz", indirection="0,1")
        new = sess.open(HASH_NEW_CONNS)
        sess.echo(4096, 0, new["group"])
        table = tcp_flows(flows(board), board)
        problems = check_single_kernel(table, list(owner), owner)
        problems += check_single_kernel(table, new["ports"])
        phases.append({"table": "toeplitz 0,1",
                       "new_owners": Counter(table[p]["owner"] for p in new["ports"]
                                             if p in table)})
        assert not problems, (phases, "\n".join(problems))
    print(f"\nhash program changes: {phases}")
    assert_board_healthy(board)


# -- 7. the default board: two kernels in the RP2040-sized heap -----------------------------

# The RP2040's targets, which the simulated board's calibrated heap shows too
# (test_sim_lifecycle's calibration points): with the echo service on, the RP2040 boots with
# 27.8 KB free and the simulated board within 10 % below (25.9 KB). Every pool is made at
# boot, so a connection takes no heap.
DEFAULT_BOARD_CONNS = 16
BOOT_HEAP_FREE_MIN = 25 * 1024
OPEN_HEAP_FREE_MIN = 23 * 1024


@pytest.mark.timeout(120)
def test_default_board_runs_two_kernels_in_the_rp2040_heap_and_serves_concurrent_echo(
        board_under_test):
    """No --kernels, no --heap: the board boots two kernels in boards/sim.py's HEAP_BYTES
    and keeps several connections to the echo service open at once on both. (An attached
    board is an RP2040's heap already, or what it is: the heap floors, measured on the
    simulated board at boot, are checked there only.)"""
    require_netns_privileges()
    board = board_under_test(args=["--no-log-frames"], kernels=KERNELS)
    need_exactly_two_kernels(board)
    boot = stats(board)
    assert boot["kernels"] == 2, boot
    if board.kind == "sim":
        assert need(boot, "heap_free") >= BOOT_HEAP_FREE_MIN, boot
    with Session(board) as sess:
        conns = concurrent_connections(board, DEFAULT_BOARD_CONNS)
        opened = sess.open(conns)
        echo = sess.echo(scaled_bytes(20_000, minimum=2_000))
        s = stats(board)           # while every connection is still open
        again = sess.echo(scaled_bytes(3_000, minimum=300))
    log.info("opened %s; echo %s, %s", opened, echo, again)
    owned = per_kernel(s, "flows_owned")
    print(f"\ndefault board: heap_free {boot['heap_free']} at boot, {s['heap_free']} with "
          f"{conns} connections open (tcp_conns {s.get('tcp_conns')}, "
          f"per kernel {per_kernel(s, 'tcp_conns')}); flows owned {owned}")
    assert s["tcp_conns"] >= conns, s
    if board.kind == "sim":
        assert s["heap_free"] >= OPEN_HEAP_FREE_MIN, s
    assert board.errors(s) == 0, [x for x in board.log_lines() if "error" in x]
    assert_board_healthy(board)
