"""Frames across the virtual wire, with the Linux kernel in the namespace as the peer.

Peer -> board: a frame the kernel sends (arping, ping) arrives in the firmware through the
emulator and the driver, byte for byte (the firmware logs it in hex). Board -> peer: a frame
the host hands the firmware over the virtual USB is transmitted through driver and emulator
and captured by tcpdump in the namespace, byte for byte. Bad input on the wire and on the USB
link is counted and dropped while the board keeps working.

On an attached board (conftest.py) the board's side of the wire cannot be seen (no frame log)
nor changed: what is judged from the peer and the board's counters runs there too.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from twinstack.link import Link

from .conftest import (
    Board,
    Capture,
    SimOnly,
    require_netns_privileges,
    scaled_time,
    wait_until,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def board(board_under_test) -> Board:
    require_netns_privileges()
    return board_under_test(args=["--frame-log", "hex"], services=False)


def logged_frames(board, start: int = 0) -> list[bytes]:
    frames = []
    for line in board.log_lines()[start:]:
        m = re.search(r"netkernel: rx .* data=([0-9a-f]+)", line)
        if m:
            frames.append(bytes.fromhex(m.group(1)))
    return frames


def padded(frame: bytes) -> bytes:
    return frame + bytes(max(0, 60 - len(frame)))


@pytest.mark.sim_only(SimOnly.CONSOLE)
def test_arping_frames_arrive_in_the_firmware_byte_for_byte(board, tmp_path):
    cap = Capture(board, tmp_path, f"arp and ether src {board.peer_mac()}", 2)
    start = len(board.log_lines())
    board.ns_run("arping", "-c", "2", "-w", "3", "-I", "eth0", board.board_ip)
    sent = cap.frames()
    assert len(sent) == 2 and all(len(f) == 42 for f in sent)
    # The kernel sends 42-byte ARP requests; the wire delivers them padded to 60.
    assert wait_until(lambda: len(logged_frames(board, start)) >= 2)
    assert logged_frames(board, start)[:2] == [padded(f) for f in sent]


@pytest.mark.sim_only(SimOnly.CONSOLE)
def test_ping_frames_arrive_in_the_firmware_byte_for_byte(board, tmp_path):
    # A static neighbour entry keeps ARP out of the frames compared below.
    board.ns_run("ip", "neigh", "replace", board.board_ip, "lladdr", board.mac(),
                 "dev", "eth0")
    cap = Capture(board, tmp_path, f"icmp and ether src {board.peer_mac()}", 3)
    start = len(board.log_lines())
    board.ns_run("ping", "-c", "3", "-i", "0.2", "-s", "1000", "-W", "1", board.board_ip)
    sent = cap.frames()
    assert len(sent) == 3 and all(len(f) == 1042 for f in sent)
    assert wait_until(lambda: len(logged_frames(board, start)) >= 3)
    assert logged_frames(board, start)[:3] == sent


def test_frames_the_firmware_transmits_are_seen_in_the_namespace_byte_for_byte(board, tmp_path):
    mac, peer = board.mac(), board.peer_mac()
    frames = [
        bytes(Ether(src=mac, dst=peer) / IP(src=board.board_ip, dst=board.peer_ip)
              / UDP(sport=7, dport=9) / bytes(i % 256 for i in range(n)))
        for n in (18, 200, 1400)
    ]
    frames.append(bytes(Ether(src=mac, dst=peer, type=0x88B5) / (bytes(range(256)) * 6))[:1514])
    # Only these frames: a shared board may still send for earlier tests (a late FIN).
    cap = Capture(board, tmp_path, f"ether src {mac} and not arp and "
                  "((udp src port 7 and udp dst port 9) or ether proto 0x88b5)", len(frames))
    with Link(board.usb_path) as link:
        link.echo(timeout=scaled_time(2))
        for f in frames:
            link.wire_tx(f)
        link.echo(timeout=scaled_time(2))  # the board has handled everything before this
    seen = cap.frames()
    # The board pads frames shorter than 60 bytes with zeros (never with stale memory).
    assert seen == [padded(f) for f in frames]


@pytest.mark.sim_only(SimOnly.WIRE)
def test_oversize_and_short_frames_on_the_wire_are_counted_and_dropped(board):
    mac = board.mac()
    # Raise the MTU on both ends so the kernel lets a 1600-byte frame onto the veth.
    board.ns_run("ip", "link", "set", "eth0", "mtu", "2000")
    subprocess.run(["ip", "netns", "exec", board.board_ns, "ip", "link", "set", "w5500",
                    "mtu", "2000"], check=True, timeout=10)
    # Changing the MTU may take the veth down for a moment: wait until it carries again.
    assert wait_until(lambda: board.ns_run("cat", "/sys/class/net/eth0/operstate").stdout
                      .strip() == "up")
    time.sleep(0.5)
    dst = bytes.fromhex(mac.replace(":", ""))
    script = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW); s.bind(('eth0',0))\n"
        f"dst={dst!r}\n"
        "src=bytes.fromhex(open('/sys/class/net/eth0/address').read().strip().replace(':',''))\n"
        "for n in (1600, 1515, 1999): s.send(dst+src+b'\\x88\\xb5'+bytes(n-14))\n"
        "s.send(dst+src+b'\\x88\\xb5'+b'runt')\n"          # 18 bytes: padded to 60
        "s.send(dst+src+b'\\x88\\xb5'+bytes(86))\n"        # a good 100-byte frame
    )
    start = len(board.log_lines())
    proc = board.ns_run("python3", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert wait_until(lambda: len(logged_frames(board, start)) >= 2), board.log_lines()
    lengths = [len(f) for f in logged_frames(board, start)]
    assert lengths == [60, 100]
    out = board.stop()
    assert int(re.search(r"rx_dropped_oversize=(\d+)", out).group(1)) == 3
    assert "netkernel: down" in out


def link_noise(s: dict[str, int]) -> int:
    return s["link_bad_crc"] + s["link_bad_cobs"] + s["link_too_long"]


def test_garbage_on_the_usb_link_is_counted_and_the_link_resyncs(board):
    before = board.stats()
    with Link(board.usb_path) as link:
        for _ in range(5):
            link.send_raw(os.urandom(3000))
            link.send_raw(b"\x00\x05\x01\x02\x00")        # a cut COBS block
        link.send_raw(b"\x00")
        assert link.echo(b"still here", timeout=scaled_time(5)) > 0
    # The counters, over the same link: it carries a paged reply again.
    after = board.stats()
    assert link_noise(after) - link_noise(before) >= 5, (before, after)
    assert board.errors(after) == 0
    if board.kind == "sim":
        # ... and the board says so as it stops, as it did before this test existed.
        out = board.stop()
        stats = dict(re.findall(r"(\w+)=(\d+)", out[out.index("netkernel: stats"):]))
        assert link_noise({k: int(v) for k, v in stats.items() if k.startswith("link_")}) >= 5
        assert int(stats["errors"]) == 0
        assert "netkernel: down" in out
