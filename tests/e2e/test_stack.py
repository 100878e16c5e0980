"""The board's TCP/IPv4 stack, judged by the Linux kernel in the namespace as its peer.

Every test starts its own simulated board (services on: TCP/UDP echo on 7, TCP discard on 9)
without the per-frame log, or runs on the attached board with its services switched on
(conftest.py); runs the peer side on the board's LAN (``ping``, ``arping``, ``tcpdump`` and
the clients and servers of ``stack_peer.py``) and reads the board's counters over its USB
link. All traffic stays on that LAN; every step is bounded in time.

The lossy transfer needs ``netem``. Where the kernel has no ``sch_netem`` (as on the project's
machines), ``stack_peer.py impair`` stands in for it: the client runs in a namespace of its
own behind a TUN device, and a user-space bridge applies the same loss, reordering and
duplication to what the client sends (netem on the namespace's ``eth0`` egress). On a LAN
that is an interface of the test host, the stand-in is always used (netem there would delay
the host's own traffic too).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from twinstack.link import Link

from .conftest import (
    Board,
    Capture,
    SimOnly,
    require_netns_privileges,
    rp2040_budget,
    run_peer_script,
    scaled_arg,
    scaled_bytes,
    scaled_time,
    unique_name,
    wait_until,
)

pytestmark = pytest.mark.e2e

log = logging.getLogger(__name__)

PEER_SCRIPT = Path(__file__).with_name("stack_peer.py")
BOARD_ARGS = ["--no-log-frames"]
ECHO_PORT = 7
NETEM = "loss 5% reorder 10% 50% duplicate 1% delay 1ms"
LOSSY_BYTES = 10_000_000
TIME_WAIT_S = 2.0          # StackConfig.tcp_time_wait_ms


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture
def board(board_under_test) -> Board:
    """One simulated board with services, no frame log (or the attached board)."""
    require_netns_privileges()
    return board_under_test(args=BOARD_ARGS)


def peer(board: Board, *args: str, timeout: float = 30.0,
         netns: str | None = None) -> dict[str, Any]:
    """Run ``stack_peer.py ARGS`` on the peer; its JSON result (fail with its output)."""
    return run_peer_script(board, PEER_SCRIPT, *args, timeout=timeout, netns=netns)


class PeerProcess:
    """A long-running ``stack_peer.py`` command (server, impairer) on the board's peer (or in
    namespace ``netns``): started, waited for until it prints its first JSON line, stopped
    by closing its standard input."""

    def __init__(self, board: Board, *args: str, netns: str | None = None,
                 ready_timeout: float = 10.0) -> None:
        self.args = args
        cmd = (sys.executable, str(PEER_SCRIPT), *args)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *cmd] if netns else board.peer_cmd(*cmd),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + scaled_time(ready_timeout)
        self.ready: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            # It prints whole lines and flushes: once readable, a line (or EOF) is there.
            if not select.select([self.proc.stdout], [], [], deadline - time.monotonic())[0]:
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                self.ready = json.loads(line)
                break
        if self.ready is None:
            out = self.stop()
            pytest.fail(f"stack_peer {' '.join(args)} did not start: {out}")

    def stop(self, timeout: float = 10.0) -> dict[str, Any] | str:
        """Close stdin, wait (scaled); the final JSON result (or the raw output if none)."""
        if self.proc.poll() is None:
            try:
                out, err = self.proc.communicate(input="", timeout=scaled_time(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate(timeout=5)
        else:
            out, err = self.proc.communicate(timeout=5)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else f"exit {self.proc.returncode}: {out}{err}"


def stats(board: Board) -> dict[str, int]:
    """The board's counters, over its USB link."""
    return board.stats(timeout=5)


def drops(s: dict[str, int]) -> dict[str, int]:
    """The board's counters of frames and datagrams lost on the way in or out (non-zero)."""
    lossy = ("drop", "dropped", "overflow", "no_room", "timeouts", "tx_failed", "errors",
             "evicted", "no_space", "rx_lost")
    return {k: v for k, v in s.items()     # the board's sums, not each kernel's share
            if v and any(part in k for part in lossy) and not re.match(r"k\d+\.", k)}


def assert_board_healthy(board: Board) -> None:
    """The board answers ping and a TCP echo, and has counted no internal error."""
    ping = board.ns_run("ping", "-c", "3", "-i", scaled_arg(0.2),
                        "-W", scaled_arg(2), board.board_ip,
                        timeout=15)
    assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
    echo = peer(board, "tcp-echo", board.board_ip, "--nbytes", "20000",
                "--timeout", scaled_arg(20))
    assert echo["ok"], json.dumps(echo)
    s = stats(board)
    assert board.errors(s) == 0, s
    assert "error in kernel turn" not in "\n".join(board.log_lines())


# -- 1. ping --------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_ping_56_bytes_without_loss(board):
    out = board.ns_run("ping", "-c", "20", "-i", scaled_arg(0.05),
                       "-W", scaled_arg(2), board.board_ip,
                       timeout=30).stdout
    log.info("%s", out)
    assert "20 packets transmitted, 20 received, 0% packet loss" in out, out
    assert out.count(f"64 bytes from {board.board_ip}") == 20, out
    assert "wrong data" not in out and "DUP!" not in out, out


@pytest.mark.timeout(90)
def test_ping_3000_bytes_is_fragmented_both_ways(board, tmp_path):
    # 3,008 bytes of ICMP = 3 fragments per direction on a 1500-byte MTU.
    cap = Capture(board, tmp_path / "frags.pcap",
                  f"src host {board.board_ip} and (ip[6:2] & 0x3fff) != 0", 9)
    out = board.ns_run("ping", "-c", "3", "-i", scaled_arg(0.3), "-s", "3000", "-M", "dont",
                       "-W", scaled_arg(3), board.board_ip, timeout=30).stdout
    log.info("%s", out)
    assert "3 packets transmitted, 3 received, 0% packet loss" in out, out
    assert out.count(f"3008 bytes from {board.board_ip}") == 3, out
    assert "wrong data" not in out, out
    frags = [Ether(p) for p in cap.frames()]
    assert len(frags) == 9, f"{len(frags)} fragments from the board: {frags}"
    replies: dict[int, list[Any]] = {}
    for f in frags:
        replies.setdefault(f[IP].id, []).append(f)
    assert len(replies) == 3, [f.summary() for f in frags]
    for reply in replies.values():
        offsets = sorted(f[IP].frag * 8 for f in reply)
        assert offsets == [0, 1480, 2960], [f.summary() for f in reply]
        assert sum(len(f[IP].payload) for f in reply) == 3008
        assert sum(1 for f in reply if f[IP].flags.MF) == 2
    s = stats(board)
    assert board.errors(s) == 0, s


# -- 2. arping ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_arping_gets_replies_with_the_boards_mac(board):
    mac = board.mac()
    out = board.ns_run("arping", "-c", "3", "-w", scaled_arg(5), "-I", board.peer_iface,
                       board.board_ip, timeout=15).stdout
    log.info("%s", out)
    replies = re.findall(r"reply from (\S+) \[([0-9A-Fa-f:]+)\]", out)
    assert len(replies) == 3, out
    assert all(ip == board.board_ip and m.lower() == mac for ip, m in replies), (mac, out)


# -- 3. UDP echo ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_udp_echo_small_and_fragmented_datagrams_byte_exact(board):
    # 1472 is the largest unfragmented payload; 1473 and more need fragments both ways, up
    # to the largest datagram the RP2040's reassembly buffer takes.
    largest = rp2040_budget()["reasm_bytes"] - 28
    sizes = f"1,18,100,512,1472,1473,3000,{largest}"
    result = peer(board, "udp-echo", board.board_ip, "--sizes", sizes,
                  "--timeout", scaled_arg(2.0))
    log.info("%s", result)
    assert result["ok"], json.dumps(result)
    s = stats(board)
    # A datagram that needed another try was lost somewhere: say where the board counted it.
    assert all(r["tries"] == 1 for r in result["results"]), (result, drops(s))
    assert board.errors(s) == 0, s


# -- 4. TCP echo of 1 MiB -------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_tcp_echo_of_1_mib_is_byte_exact(board):
    result = peer(board, "tcp-echo", board.board_ip, "--nbytes", str(scaled_bytes(1 << 20)),
                  "--timeout", scaled_arg(100), timeout=120)
    log.info("1 MiB echo: %s", result)
    assert result["ok"], json.dumps(result)
    assert result.get("eof"), result
    s = stats(board)
    assert board.errors(s) == 0, s


@pytest.mark.timeout(150)
@pytest.mark.sim_only(SimOnly.CONSOLE)
def test_the_phy_puts_every_frame_on_the_wire_under_traffic_both_ways(sim_board):
    # The emulated PHY writes each frame the chip was told to SEND to the veth at once
    # (simhw/wire.py): under real traffic both ways every frame must leave, and the
    # hardware counters the board prints when it stops count no send error.
    require_netns_privileges()
    board = sim_board(args=BOARD_ARGS)
    out = board.ns_run("ping", "-c", "20", "-i", "0.05", "-W", "2", board.board_ip,
                       timeout=30).stdout
    assert "20 packets transmitted, 20 received, 0% packet loss" in out, out
    result = peer(board, "tcp-echo", board.board_ip, "--nbytes", str(256 << 10),
                  "--timeout", "100", timeout=120)
    assert result["ok"] and result.get("eof"), json.dumps(result)
    assert stats(board)["errors"] == 0
    board.stop()
    line = next((x for x in board.log_lines() if x.startswith("netkernel: hw ")), None)
    assert line is not None, "\n".join(board.log_lines()[-40:])
    hw = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    assert hw["wire_tx"] > 200, hw
    assert hw["wire_tx_errors"] == 0, hw


# -- 5. 100 sequential connections ----------------------------------------------------------


@pytest.mark.timeout(120)
def test_100_sequential_connections_leave_no_state_behind(board):
    # A shared board may still hold connections of the tests before (in TIME-WAIT).
    before = stats(board)["tcp_conns"]
    result = peer(board, "conns", board.board_ip, "--count", "100", "--size", "100",
                  "--timeout", scaled_arg(60), "--each-timeout", scaled_arg(5), timeout=80)
    log.info("100 connections: %s", result)
    assert result["ok"], json.dumps(result)
    # Every connection ends in CLOSED once TIME-WAIT (2 s) has run out.
    seen: list[int] = []

    def no_conns() -> bool:
        seen.append(stats(board)["tcp_conns"])
        return seen[-1] <= before

    assert wait_until(no_conns, TIME_WAIT_S + 8, step=0.5), \
        f"tcp_conns over time: {seen} (before: {before})"
    s = stats(board)
    assert board.errors(s) == 0, s


# -- 6. 10 MB through loss, reordering and duplication ------------------------------------


def netem_available(board: Board) -> bool:
    """Try netem on the peer namespace's interface; True (and installed) if the kernel has
    it. Never on an interface of the test host itself."""
    if board.netns is None:
        log.info("the board's LAN is this host's %s: using the user-space impairer",
                 board.peer_iface)
        return False
    r = board.ns_run("tc", "qdisc", "add", "dev", board.peer_iface, "root", "netem",
                     *NETEM.split())
    if r.returncode == 0:
        return True
    log.info("netem unavailable (%s): using the user-space impairer", r.stderr.strip())
    return False


@pytest.fixture
def lossy_path(board: Board) -> Iterator[dict[str, Any]]:
    """A path to the board with 5% loss, 10% reordering (1 ms delay for the others), 1%
    duplication on what the client sends: netem, or the user-space stand-in."""
    if netem_available(board):
        try:
            yield {"netns": board.netns, "how": f"netem {NETEM}"}
        finally:
            board.ns_run("tc", "qdisc", "del", "dev", board.peer_iface, "root")
        return
    # Resolve the board's MAC on the peer (and make sure the board is up).
    ping = board.ns_run("ping", "-c", "1", "-W", scaled_arg(2), board.board_ip)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    client_ns = unique_name("c")
    subprocess.run(["ip", "netns", "add", client_ns], check=True, timeout=10)
    imp = None
    try:
        # The peer is a namespace, or this process's own (the test host's).
        imp = PeerProcess(board, "impair",
                          "--peer-ns", board.netns or f"/proc/{os.getpid()}/ns/net",
                          "--ifname", board.peer_iface,
                          "--board-ip", board.board_ip, "--board-mac", board.mac(),
                          "--client", client_cidr(board), "--seed", "3",
                          "--limit", scaled_arg(240), netns=client_ns)
        yield {"netns": client_ns, "impairer": imp,
               "how": "user-space impairer: loss 5% reorder 10% duplicate 1% delay 1ms"}
    finally:
        if imp is not None:
            log.info("impairer: %s", imp.stop())
        subprocess.run(["ip", "netns", "del", client_ns], timeout=10)


def client_cidr(board: Board) -> str:
    """The impaired client's address: on a subnet of its own, off the board's LAN (the board
    answers it through its gateway, the peer, where the impairer takes the frames)."""
    board_ip = ipaddress.IPv4Address(board.board_ip)
    for cidr in ("10.78.0.2/24", "10.79.0.2/24"):
        if board_ip not in ipaddress.IPv4Interface(cidr).network:
            return cidr
    raise AssertionError("unreachable")


def require_congestion_control(name: str) -> None:
    """Skip unless the kernel offers congestion control ``name`` (loading its module if
    that is possible here)."""
    path = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")
    if name in path.read_text().split():
        return
    if shutil.which("modprobe"):
        subprocess.run(["modprobe", f"tcp_{name}"], capture_output=True, timeout=20)
        if name in path.read_text().split():
            return
    pytest.skip(f"congestion control is not available and cannot be loaded: {name} "
                f"(available: {path.read_text().strip()})")


@pytest.fixture(params=["bbr", "cubic"])
def cc(request) -> str:
    """The client's congestion control (set per socket with TCP_CONGESTION)."""
    require_congestion_control(request.param)
    return request.param


@pytest.mark.timeout(240)
def test_10_mb_byte_exact_through_loss_reordering_and_duplication(cc, board, lossy_path):
    start = time.monotonic()
    nbytes = scaled_bytes(LOSSY_BYTES)
    result = peer(board, "tcp-echo", board.board_ip, "--nbytes", str(nbytes),
                  "--cc", cc, "--timeout", scaled_arg(150), "--seed", "7", timeout=180,
                  netns=lossy_path["netns"])
    elapsed = time.monotonic() - start
    s = stats(board)
    imp = lossy_path.get("impairer")
    note = imp.stop() if imp is not None else lossy_path["how"]
    log.info("%d B echo, %s sender, %s: %.1f s: %s; impairment: %s; board tcp: %s", nbytes,
             cc, lossy_path["how"], elapsed, result, note,
             {k: v for k, v in s.items() if k.startswith("tcp.")})
    board_tcp = {k[4:]: s[k] for k in ("tcp.retransmits", "tcp.rto_timeouts",
                                        "tcp.fast_retransmits", "tcp.ooo_segments",
                                        "tcp.drop_out_of_window") if k in s}
    print(f"\n{nbytes / 1e6:g} MB echo with {cc} through {lossy_path['how']}: {elapsed:.1f} s, "
          f"client retransmits {result.get('retransmits')}, board {board_tcp}, "
          f"impairment {note}")
    assert result["cc"] == cc, result
    assert result["ok"], (result, note)
    assert board.errors(s) == 0, s


# -- 7. the board opens a connection --------------------------------------------------------


@pytest.mark.timeout(120)
def test_board_connects_to_an_echo_server_in_the_namespace(board):
    nbytes = scaled_bytes(200_000)
    server = PeerProcess(board, "echo-server", board.peer_ip, "--port", "7007",
                         "--limit", scaled_arg(100))
    try:
        with Link(board.usb_path) as link:
            status, sent, verified, ms = link.tcp_test(board.peer_ip, 7007, nbytes,
                                                       timeout=scaled_time(90))
        log.info("tcp_test: status=%d sent=%d verified=%d ms=%d", status, sent, verified, ms)
    finally:
        served = server.stop()
    assert (status, sent, verified) == (0, nbytes, nbytes), (status, sent, verified, served)
    assert isinstance(served, dict) and served["connections"] == 1, served
    assert served["bytes"] == nbytes, served
    s = stats(board)
    assert board.errors(s) == 0, s


# -- 8. malformed frames --------------------------------------------------------------------


def _ip_checksum(header: bytes) -> int:
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def malformed_frames(board: Board) -> dict[str, tuple[list[str], list[bytes]]]:
    """Each case: (the counters, as fnmatch patterns, one of which counts every frame of it;
    its frames). With several kernels the dispatcher's classifier already drops what it
    cannot parse (``disp.*``); what it passes on, the stack's layers count."""
    mac, src = board.mac(), board.peer_mac()
    eth = Ether(dst=mac, src=src)
    ip = IP(src=board.peer_ip, dst=board.board_ip)

    def ip_patched(pkt, **patch: int) -> bytes:
        """Serialize, overwrite IPv4 header fields, recompute the header checksum."""
        raw = bytearray(bytes(eth / pkt))
        if "ihl" in patch:
            raw[14] = 0x40 | patch["ihl"]
        if "total_length" in patch:
            raw[16:18] = patch["total_length"].to_bytes(2, "big")
        raw[24:26] = b"\0\0"
        raw[24:26] = _ip_checksum(bytes(raw[14:34])).to_bytes(2, "big")
        return bytes(raw)

    bad_ip_sum = bytearray(bytes(eth / ip / ICMP(id=0x77, seq=1) / Raw(b"x" * 32)))
    bad_ip_sum[24] ^= 0x5A
    bad_tcp_sum = bytearray(bytes(eth / ip / TCP(sport=40000, dport=ECHO_PORT, flags="S",
                                                 seq=1000)))
    bad_tcp_sum[14 + 20 + 16] ^= 0x5A       # the TCP checksum field
    bad_options = [
        # option length 0 (a naive parser never moves on), length 1, and a window-scale
        # option whose length runs past the end of the header
        _tcp_with_raw_options(eth, ip, opts)
        for opts in (b"\x02\x00\x05\xb4", b"\x08\x01\x00\x00", b"\x01\x01\x03\x09")
    ]
    # UDP length beyond the datagram, and below the 8-byte header (checksum 0: none).
    udp_long = bytes(eth / ip / UDP(sport=40003, dport=ECHO_PORT, len=200, chksum=0)
                     / Raw(b"y" * 20))
    udp_short = bytes(eth / ip / UDP(sport=40004, dport=ECHO_PORT, len=4, chksum=0)
                      / Raw(b"y" * 20))
    # An ARP request for the board with an 8-byte hardware address length.
    arp = bytes.fromhex("0001080008040001") + bytes.fromhex(src.replace(":", "")) + b"\0\0"
    arp += bytes(int(x) for x in board.peer_ip.split("."))
    arp += bytes(8) + bytes(int(x) for x in board.board_ip.split("."))
    arp_frame = bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=src, type=0x0806) / Raw(arp))
    unknown_type = bytes(Ether(dst=mac, src=src, type=0x88B5) / Raw(b"?" * 46))

    return {
        "ip_bad_checksum": (["ip.bad_checksum"], [bytes(bad_ip_sum)]),
        "ip_truncated": (["ip.truncated", "ip.bad_length", "disp.drop_malformed"],
                         [ip_patched(ip / ICMP() / Raw(b"z" * 20), total_length=1000)]),
        "ip_ihl_below_5": (["ip.bad_ihl", "disp.drop_malformed"],
                           [ip_patched(ip / ICMP() / Raw(b"z" * 20), ihl=4)]),
        "tcp_bad_checksum": (["ip.tcp_bad_checksum", "tcp.*checksum*"], [bytes(bad_tcp_sum)]),
        "tcp_bad_option_length": (["tcp.*option*"], bad_options),
        "udp_bad_length": (["udp.rx_bad_length", "udp.rx_too_short"], [udp_long, udp_short]),
        "arp_wrong_hlen": (["arp.bad_hlen"], [arp_frame]),
        "eth_unknown_ethertype": (["eth.unknown_type", "disp.drop_other"], [unknown_type]),
    }


def _tcp_with_raw_options(eth, ip, options: bytes) -> bytes:
    """A SYN to the echo port whose option bytes are exactly ``options`` (checksum right):
    scapy puts the Raw right after the 20-byte header, where the options are, and sums it."""
    seg = TCP(sport=40002, dport=ECHO_PORT, flags="S", seq=1000,
              dataofs=5 + len(options) // 4) / Raw(options)
    return bytes(eth / ip / seg)


def counters_up(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Layer counters (``layer.name``) that went up, and by how much."""
    return {k: after[k] - before.get(k, 0) for k in after
            if "." in k and after[k] > before.get(k, 0)}


@pytest.mark.timeout(120)
def test_malformed_frames_are_counted_dropped_and_survived(board):
    cases = malformed_frames(board)
    # ARP resolved both ways first, so only the frames under test move counters.
    ping = board.ns_run("ping", "-c", "2", "-i", scaled_arg(0.2),
                        "-W", scaled_arg(2), board.board_ip)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    failures: list[str] = []
    seen: dict[str, dict[str, int]] = {}
    for name, (patterns, frames) in cases.items():
        before = stats(board)
        assert send_frames(board, frames)["sent"] == len(frames)

        def counted(before: dict[str, int] = before, patterns: list[str] = patterns) -> int:
            up = counters_up(before, stats(board))
            return sum(v for k, v in up.items() if any(fnmatch(k, p) for p in patterns))

        wait_until(lambda frames=frames, counted=counted: counted() >= len(frames), 3,
                   step=0.2)
        after = stats(board)
        up = counters_up(before, after)
        seen[name] = {k: v for k, v in up.items() if not k.endswith((".rx", "rx_frames"))}
        got = sum(v for k, v in up.items() if any(fnmatch(k, p) for p in patterns))
        if got < len(frames):
            failures.append(f"{name}: {len(frames)} frame(s), {patterns} went up by {got}; "
                            f"counters that went up: {up}")
        if board.errors(after) != 0:
            failures.append(f"{name}: errors={board.errors(after)}")
    print("\nmalformed frames -> counters that went up:")
    for name, up in seen.items():
        print(f"  {name}: {up}")
    assert_board_healthy(board)
    assert not failures, "\n".join(failures)


def send_frames(board: Board, frames: list[bytes]) -> dict[str, Any]:
    """Send raw frames out of the peer's interface (AF_PACKET, on the peer)."""
    proc = subprocess.run(
        board.peer_cmd(sys.executable, str(PEER_SCRIPT), "send-frames",
                       "--ifname", board.peer_iface),
        input="".join(f.hex() + "\n" for f in frames),
        capture_output=True, text=True, timeout=scaled_time(20))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])
