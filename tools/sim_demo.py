#!/usr/bin/env python3
"""`make sim`: boot the simulated board, show frames crossing its wire both ways, stop cleanly.

1. `twinstack sim` brings up the board (namespace, veth, pty, MicroPython with the W5500
   emulator) and prints its `ready` line.
2. The Linux kernel in the namespace sends ARP and ICMP to the board: the firmware logs
   each frame it receives.
3. The host opens the board's USB (the pty) like /dev/ttyACM1, checks the link with an
   echo, and asks the board to transmit a UDP datagram: tcpdump in the namespace shows it.
4. SIGINT: the board prints its counters and everything it created is removed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def ns(name: str, *cmd: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *cmd], capture_output=True, text=True,
                          timeout=timeout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--netns", default="tsdemo")
    parser.add_argument("--board-ip", default="10.77.0.2/24")
    parser.add_argument("--peer-ip", default="10.77.0.1")
    args = parser.parse_args()
    board_ip = args.board_ip.split("/")[0]

    say("starting the simulated board: twinstack sim")
    sim = subprocess.Popen(
        [sys.executable, "-m", "twinstack", "sim", "--netns", args.netns,
         "--board-ip", args.board_ip, "--peer-ip", args.peer_ip, "--log-frames"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )
    ready: dict[str, str] = {}
    got_ready = threading.Event()

    def pump() -> None:
        assert sim.stdout is not None
        for line in sim.stdout:
            print("  board | " + line.rstrip(), flush=True)
            if line.startswith("netkernel: up "):
                ready.update(kv.split("=", 1) for kv in line.split()[2:] if "=" in kv)
            if line.startswith("ready "):
                ready.update(kv.split("=", 1) for kv in line.split()[1:])
                got_ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        if not got_ready.wait(60):
            print("the simulated board did not come up", file=sys.stderr)
            return 1
        mac = ready["mac"]
        tcpdump = subprocess.Popen(
            ["ip", "netns", "exec", args.netns, "tcpdump", "-i", "eth0", "-n", "-e", "-l",
             "-c", "1", "udp"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        time.sleep(1.0)  # tcpdump attaches its socket

        say(f"peer -> board: arping and ping {board_ip} from namespace {args.netns}")
        ns(args.netns, "arping", "-c", "2", "-w", "3", "-I", "eth0", board_ip)
        # No stack on the board yet, so no ARP reply: a static entry lets ping send its frames.
        ns(args.netns, "ip", "neigh", "replace", board_ip, "lladdr", mac, "dev", "eth0")
        ns(args.netns, "ping", "-c", "2", "-W", "1", board_ip)
        time.sleep(0.5)

        say(f"host -> board -> peer: link echo on {ready['usb']}, then a frame to transmit")
        from scapy.layers.inet import IP, UDP
        from scapy.layers.l2 import Ether
        from twinstack.link import Link

        peer_mac = ns(args.netns, "cat", "/sys/class/net/eth0/address").stdout.strip()
        frame = bytes(Ether(src=mac, dst=peer_mac) / IP(src=board_ip, dst=args.peer_ip)
                      / UDP(sport=7, dport=9) / b"hello from the simulated board")
        with Link(ready["usb"]) as link:
            print(f"  link echo round trip: {link.echo() * 1000:.2f} ms", flush=True)
            link.wire_tx(frame)
        try:
            out, _ = tcpdump.communicate(timeout=5)
            print("  tcpdump in the namespace saw:\n    " + out.strip().replace("\n", "\n    "))
        except subprocess.TimeoutExpired:
            tcpdump.kill()
            print("  tcpdump saw nothing", file=sys.stderr)
            return 1
        say("stopping the board (SIGINT)")
        return 0
    finally:
        if sim.poll() is None:
            sim.send_signal(signal.SIGINT)
            try:
                sim.wait(20)
            except subprocess.TimeoutExpired:
                sim.kill()
        reader.join(5)
        leftover = [n for n in os.listdir("/run/netns") if n.startswith(args.netns)] \
            if os.path.isdir("/run/netns") else []
        print(f"\nboard stopped (exit {sim.returncode}); namespaces left: {leftover or 'none'}")


if __name__ == "__main__":
    sys.exit(main())
