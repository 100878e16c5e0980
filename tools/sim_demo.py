#!/usr/bin/env python3
"""`make sim`: boot the simulated board and serve real traffic from the Linux kernel, then stop.

1. `twinstack sim` brings up the board (namespace, veth, pty, MicroPython with the W5500
   emulator and the firmware's TCP/IPv4 stack) and prints its `ready` line.
2. From the namespace, the Linux kernel pings the board (also with 3,000-byte pings that are
   fragmented both ways), uses its UDP echo, and sends data through its TCP echo and
   discard services.
3. The host opens the board's USB (the pty) like /dev/ttyACM1, reads the board's counters,
   and has the board open a TCP connection to a server in the namespace.
4. A host application serves HTTP on TwinStack sockets (twinstack.examples.http_server: the
   OSM brings up the board's I2O queues, the listening socket is replicated to every net
   kernel); curl and ab in the namespace fetch pages through the board; the board's per-core
   counters show which kernels accepted the connections.
5. SIGINT: the board prints its counters and everything it created is removed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def ns(name: str, *cmd: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *cmd], capture_output=True, text=True,
                          timeout=timeout)


def serve_http(usb: str, netns: str, board_ip: str) -> None:
    import twinstack
    from twinstack.examples import http_server as http

    with twinstack.connect(usb) as board, http.TwinHTTPServer(board, 80) as server:
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        out = ns(netns, "curl", "-sS", "--max-time", "20", f"http://{board_ip}/page/100000",
                 timeout=30)
        ok = out.stdout.encode() == http.page_body(100_000)
        print(f"  curl http://{board_ip}/page/100000: {len(out.stdout)} bytes, "
              f"{'byte-exact' if ok else 'WRONG'}", flush=True)
        ab = ns(netns, "ab", "-q", "-n", "100", "-c", "4", f"http://{board_ip}/page/1000",
                timeout=120).stdout
        for line in ab.splitlines():
            if line.startswith(("Complete requests", "Failed requests", "Requests per")):
                print("  ab: " + line, flush=True)
        server.shutdown()
        t.join(10)
        stats = board.stats()
        per_core = ", ".join(f"kernel {k}: {stats.get(f'k{k}.ism.accepted', 0)}"
                             for k in range(board.iops))
        print(f"  connections accepted per core: {per_core}", flush=True)


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
         "--board-ip", args.board_ip, "--peer-ip", args.peer_ip, "--no-log-frames"],
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
        say(f"peer -> board: ping {board_ip} from namespace {args.netns}")
        for size in ("56", "3000"):
            out = ns(args.netns, "ping", "-c", "3", "-i", "0.2", "-s", size, board_ip).stdout
            print("  " + "\n  ".join(out.strip().splitlines()[-2:]), flush=True)

        say("peer -> board: UDP echo, TCP echo (1 MiB), TCP discard (20 MiB)")
        out = ns(args.netns, sys.executable, str(ROOT / "tools" / "peer_client.py"), board_ip,
                 timeout=120)
        print("  " + "\n  ".join((out.stdout + out.stderr).strip().splitlines()), flush=True)

        say(f"host: the board's counters over {ready['usb']}, then an active open")
        from twinstack.link import Link

        server = subprocess.Popen(
            ["ip", "netns", "exec", args.netns, sys.executable,
             str(ROOT / "tools" / "peer_client.py"), "--echo-server", args.peer_ip, "7777"],
            stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        server.stdout.readline()   # "listening"
        with Link(ready["usb"]) as link:
            stats = link.stats()
            print(f"  heap free {stats['heap_free']} B, tcp connections {stats['tcp_conns']}, "
                  f"frames in {stats['rx_frames']}", flush=True)
            status, sent, verified, ms = link.tcp_test(args.peer_ip, 7777, 100_000)
            print(f"  board -> {args.peer_ip}:7777: status {status}, sent {sent}, "
                  f"verified {verified} in {ms} ms", flush=True)
        server.terminate()
        server.wait(5)

        say("host: an HTTP server on TwinStack sockets; curl and ab in the namespace")
        serve_http(ready["usb"], args.netns, board_ip)
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
