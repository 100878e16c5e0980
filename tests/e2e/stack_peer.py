"""Peer-side programs for the stack's end-to-end tests, run inside a network namespace.

The tests start this file with ``ip netns exec NS python stack_peer.py COMMAND ...``: the
Linux kernel in the namespace is the board's peer, and each command is one bounded client or
server that prints one JSON line with what it saw (``echo-server`` and ``impair`` first
print a line saying they are ready, and stop when their standard input closes).

Commands:

``udp-echo``     send datagrams of the given sizes to the board's UDP echo, check each reply
                 byte for byte (retrying a lost one a few times).
``tcp-echo``     one TCP connection to the board's echo: a sender thread writes N bytes of a
                 seeded pseudo-random stream while the main thread reads the echo back and
                 compares; optional congestion control per socket (TCP_CONGESTION).
``conns``        N sequential connections: connect, echo 100 bytes, close.
``echo-server``  a threaded TCP echo server (the board's test client connects to it).
``send-frames``  raw Ethernet frames (hex, one per line on stdin) out of an interface.
``impair``       a user-space stand-in for ``netem``: a TUN device in this namespace carries
                 the client's packets, which go out of the board's peer namespace's
                 interface (AF_PACKET) with random loss, reordering and duplication;
                 the board's answers come back through the TUN device.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import heapq
import json
import logging
import os
import random
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

log = logging.getLogger("stack_peer")

TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)
TCP_INFO = getattr(socket, "TCP_INFO", 11)
CHUNK = 65536


def emit(result: dict[str, object]) -> None:
    """Print the command's result as one JSON line."""
    print(json.dumps(result), flush=True)


def pattern(nbytes: int, seed: int) -> bytes:
    """A reproducible pseudo-random byte stream (catches shifted, repeated or lost data)."""
    return random.Random(seed).randbytes(nbytes)


def tcp_retransmits(sock: socket.socket) -> int | None:
    """The kernel's count of retransmitted segments on this socket (tcpi_total_retrans)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 104)
    except OSError:
        return None
    # struct tcp_info: 8 x u8, then u32 fields; tcpi_total_retrans is the 26th u32 (offset 100).
    return struct.unpack_from("I", info, 100)[0] if len(info) >= 104 else None


# -- UDP echo -------------------------------------------------------------------------------


def udp_round_trip(s: socket.socket, data: bytes, tries: int) -> dict[str, object]:
    """Send ``data`` on connected UDP socket ``s`` until the same bytes come back (at most
    ``tries`` sends): ok, tries, got (length of the reply), error (the last one)."""
    entry: dict[str, object] = {"ok": False, "tries": 0, "got": None}
    for attempt in range(1, tries + 1):
        entry["tries"] = attempt
        s.send(data)
        try:
            got = s.recv(65535)
        except (TimeoutError, ConnectionRefusedError) as e:
            entry["error"] = repr(e)
            continue
        entry["got"] = len(got)
        entry["ok"] = got == data
        break
    return entry


def udp_echo(ip: str, port: int, sizes: Sequence[int], timeout: float, tries: int,
             seed: int) -> dict[str, object]:
    """Each size: send a datagram, wait for the same bytes back."""
    results = []
    rng = random.Random(seed)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((ip, port))
        for size in sizes:
            data = rng.randbytes(size)
            results.append({"size": size, **udp_round_trip(s, data, tries)})
    return {"ok": all(r["ok"] for r in results), "results": results}


# -- TCP echo -------------------------------------------------------------------------------


def tcp_echo(ip: str, port: int, nbytes: int, timeout: float, cc: str | None,
             seed: int, bind: str | None) -> dict[str, object]:
    """Send nbytes while reading the echo concurrently; compare byte for byte."""
    data = pattern(nbytes, seed)
    view = memoryview(data)
    result: dict[str, object] = {"nbytes": nbytes, "sent": 0, "received": 0, "ok": False,
                                 "mismatch_at": None, "cc": None, "error": None}
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if cc:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, cc.encode())
        result["cc"] = sock.getsockopt(socket.IPPROTO_TCP, TCP_CONGESTION, 16) \
            .rstrip(b"\0").decode()
        if bind:
            sock.bind((bind, 0))
        sock.settimeout(min(10.0, timeout))
        sock.connect((ip, port))
        sock.settimeout(1.0)
        send_error: list[BaseException] = []

        def sender() -> None:
            sent = 0
            try:
                while sent < nbytes and time.monotonic() < deadline:
                    try:
                        sent += sock.send(view[sent:sent + CHUNK])
                    except TimeoutError:
                        continue
                    result["sent"] = sent
                sock.shutdown(socket.SHUT_WR)
            except OSError as e:
                send_error.append(e)

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        received = 0
        buf = bytearray(CHUNK)
        while received < nbytes and time.monotonic() < deadline:
            try:
                n = sock.recv_into(buf)
            except TimeoutError:
                continue
            if n == 0:
                break
            if buf[:n] != view[received:received + n]:
                bad = next(i for i in range(n) if buf[i] != data[received + i])
                result["mismatch_at"] = received + bad
                break
            received += n
        result["received"] = received
        # After the whole echo, the board closes its side once it has seen our FIN.
        if received == nbytes and result["mismatch_at"] is None:
            try:
                result["eof"] = sock.recv(1) == b""
            except (TimeoutError, OSError) as e:
                result["eof"] = False
                result["error"] = f"waiting for FIN: {e!r}"
        thread.join(timeout=max(0.1, deadline - time.monotonic()))
        if send_error:
            result["error"] = f"send: {send_error[0]!r}"
        result["retransmits"] = tcp_retransmits(sock)
        result["ok"] = (received == nbytes and result["sent"] == nbytes
                        and result["mismatch_at"] is None)
        if not result["ok"] and result["error"] is None and time.monotonic() >= deadline:
            result["error"] = f"timed out after {timeout:g} s"
    except OSError as e:
        result["error"] = repr(e)
    finally:
        sock.close()
    result["seconds"] = round(time.monotonic() - start, 3)
    return result


# -- sequential connections -----------------------------------------------------------------


def conns(ip: str, port: int, count: int, size: int, timeout: float, seed: int,
          each_timeout: float) -> dict[str, object]:
    """count x (connect, send size bytes, read them back, close), one after another, each
    within ``each_timeout`` seconds, all within ``timeout``."""
    rng = random.Random(seed)
    failures: list[dict[str, object]] = []
    done = 0
    start = time.monotonic()
    deadline = start + timeout
    for i in range(count):
        if time.monotonic() > deadline:
            failures.append({"i": i, "error": "overall time limit"})
            break
        data = rng.randbytes(size)
        try:
            with socket.create_connection((ip, port), timeout=each_timeout) as s:
                s.sendall(data)
                got = b""
                while len(got) < size:
                    part = s.recv(size - len(got))
                    if not part:
                        break
                    got += part
                if got != data:
                    failures.append({"i": i, "error": f"echo: {len(got)} bytes, differ"})
                    continue
            done += 1
        except OSError as e:
            failures.append({"i": i, "error": repr(e)})
    return {"ok": done == count, "done": done, "failures": failures[:10],
            "seconds": round(time.monotonic() - start, 3)}


# -- echo server ----------------------------------------------------------------------------


def echo_server(bind: str, port: int, limit: float) -> dict[str, object]:
    """Echo every connection until stdin closes (or ``limit`` seconds)."""
    stats = {"connections": 0, "bytes": 0}
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((bind, port))
    lsock.listen(8)
    lsock.settimeout(0.2)

    def serve(conn: socket.socket) -> None:
        conn.settimeout(limit)
        with conn:
            try:
                while True:
                    data = conn.recv(CHUNK)
                    if not data:
                        break
                    conn.sendall(data)
                    stats["bytes"] += len(data)
            except OSError as e:
                log.warning("echo server connection: %r", e)

    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print(json.dumps({"listening": [bind, port]}), flush=True)
    end = time.monotonic() + limit
    while not stop.is_set() and time.monotonic() < end:
        try:
            conn, _ = lsock.accept()
        except TimeoutError:
            continue
        stats["connections"] += 1
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
    lsock.close()
    return stats


# -- raw frames -----------------------------------------------------------------------------


def send_frames(ifname: str, frames: Sequence[bytes], gap: float) -> dict[str, object]:
    """Send each frame as it is out of ifname."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        for f in frames:
            s.send(f)
            time.sleep(gap)
    return {"sent": len(frames)}


# -- impairment (netem stand-in) ------------------------------------------------------------

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
PACKET_OUTGOING = 4
ETH_P_IP = 0x0800


def enter_netns(name: str) -> None:
    """Move this process into the named network namespace (setns(2)); a name that starts
    with ``/`` is a namespace file, e.g. ``/proc/PID/ns/net``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(name if name.startswith("/") else f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


class Impairment:
    """netem-like loss, reordering (some packets skip the delay the others get, as with
    netem's ``reorder P delay D``; netem's correlation is not modelled) and duplication,
    with a seeded random generator."""

    def __init__(self, loss: float, reorder: float, duplicate: float, delay_s: float,
                 seed: int) -> None:
        self.loss, self.reorder, self.duplicate, self.delay = loss, reorder, duplicate, delay_s
        self.rng = random.Random(seed)
        self.counts = {"in": 0, "lost": 0, "duplicated": 0, "jumped": 0, "out": 0}

    def schedule(self, packet: bytes, now: float) -> list[tuple[float, bytes]]:
        """When each copy of the packet leaves (none if it is lost)."""
        self.counts["in"] += 1
        if self.rng.random() < self.loss:
            self.counts["lost"] += 1
            return []
        copies = 1
        if self.rng.random() < self.duplicate:
            self.counts["duplicated"] += 1
            copies = 2
        out = []
        for _ in range(copies):
            if self.rng.random() < self.reorder:
                self.counts["jumped"] += 1
                out.append((now, packet))
            else:
                out.append((now + self.delay, packet))
        return out


def impair(peer_ns: str, ifname: str, board_ip: str, board_mac: str, client_cidr: str,
           tun_name: str, impairment: Impairment, both: bool, limit: float) -> dict[str, object]:
    """Bridge a TUN device here (the client's link) to ``ifname`` in ``peer_ns``.

    Client -> board: IP packets read from the TUN device, impaired, framed for the board's
    MAC and sent with AF_PACKET. Board -> client: IP frames for the client's address seen on
    ``ifname`` are written into the TUN device (impaired too if ``both``).
    """
    client_ip = client_cidr.split("/")[0]
    tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", tun_name.encode(), IFF_TUN | IFF_NO_PI))
    for cmd in (["ip", "addr", "add", client_cidr, "dev", tun_name],
                ["ip", "link", "set", tun_name, "mtu", "1500", "up"],
                ["ip", "route", "add", board_ip + "/32", "dev", tun_name]):
        subprocess.run(cmd, check=True, timeout=10)
    enter_netns(peer_ns)
    wire = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    wire.bind((ifname, ETH_P_IP))
    wire.setblocking(False)
    our_mac = wire.getsockname()[4]    # (ifname, proto, pkttype, hatype, address)
    header = bytes.fromhex(board_mac.replace(":", "")) + our_mac + struct.pack("!H", ETH_P_IP)
    want_dst = socket.inet_aton(client_ip)
    back = Impairment(impairment.loss, impairment.reorder, impairment.duplicate,
                      impairment.delay, impairment.rng.randrange(1 << 30)) if both else None
    to_wire: list[tuple[float, int, bytes]] = []
    to_tun: list[tuple[float, int, bytes]] = []
    seq = 0
    errors = {"wire_send": 0, "tun_write": 0}
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print(json.dumps({"ready": tun_name}), flush=True)
    end = time.monotonic() + limit
    while not stop.is_set() and time.monotonic() < end:
        now = time.monotonic()
        wait = 0.1
        for q in (to_wire, to_tun):
            if q:
                wait = min(wait, max(0.0, q[0][0] - now))
        readable, _, _ = select.select([tun, wire], [], [], wait)
        now = time.monotonic()
        if tun in readable:
            for _ in range(64):
                try:
                    packet = os.read(tun, 65535)
                except BlockingIOError:
                    break
                for when, p in impairment.schedule(packet, now):
                    seq += 1
                    heapq.heappush(to_wire, (when, seq, header + p))
        if wire in readable:
            for _ in range(64):
                try:
                    frame, addr = wire.recvfrom(65535)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING or len(frame) < 34 or frame[30:34] != want_dst:
                    continue
                total = struct.unpack_from("!H", frame, 16)[0]
                packet = frame[14:14 + total]
                copies = back.schedule(packet, now) if back else [(now, packet)]
                for when, p in copies:
                    seq += 1
                    heapq.heappush(to_tun, (when, seq, p))
        now = time.monotonic()
        while to_wire and to_wire[0][0] <= now:
            try:
                wire.send(heapq.heappop(to_wire)[2])
                impairment.counts["out"] += 1
            except OSError:
                errors["wire_send"] += 1
        while to_tun and to_tun[0][0] <= now:
            try:
                os.write(tun, heapq.heappop(to_tun)[2])
            except OSError:
                errors["tun_write"] += 1
    wire.close()
    os.close(tun)
    return {"to_board": impairment.counts, "to_client": back.counts if back else None,
            "errors": errors}


# -- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    u = sub.add_parser("udp-echo")
    u.add_argument("ip")
    u.add_argument("--port", type=int, default=7)
    u.add_argument("--sizes", default="1,18,100,512,1472")
    u.add_argument("--timeout", type=float, default=2.0)
    u.add_argument("--tries", type=int, default=3)
    u.add_argument("--seed", type=int, default=1)

    t = sub.add_parser("tcp-echo")
    t.add_argument("ip")
    t.add_argument("--port", type=int, default=7)
    t.add_argument("--nbytes", type=int, default=1 << 20)
    t.add_argument("--timeout", type=float, default=60.0)
    t.add_argument("--cc", default=None)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--bind", default=None)

    c = sub.add_parser("conns")
    c.add_argument("ip")
    c.add_argument("--port", type=int, default=7)
    c.add_argument("--count", type=int, default=100)
    c.add_argument("--size", type=int, default=100)
    c.add_argument("--timeout", type=float, default=60.0)
    c.add_argument("--each-timeout", type=float, default=5.0)
    c.add_argument("--seed", type=int, default=1)

    e = sub.add_parser("echo-server")
    e.add_argument("bind")
    e.add_argument("--port", type=int, default=7007)
    e.add_argument("--limit", type=float, default=120.0)

    f = sub.add_parser("send-frames")
    f.add_argument("--ifname", default="eth0")
    f.add_argument("--gap", type=float, default=0.01)

    i = sub.add_parser("impair")
    i.add_argument("--peer-ns", required=True,
                   help="the peer's namespace: a name, or a file such as /proc/PID/ns/net")
    i.add_argument("--ifname", default="eth0")
    i.add_argument("--board-ip", required=True)
    i.add_argument("--board-mac", required=True)
    i.add_argument("--client", required=True, help="the client's address/prefix on the TUN")
    i.add_argument("--tun", default="imp0")
    i.add_argument("--loss", type=float, default=0.05)
    i.add_argument("--reorder", type=float, default=0.10)
    i.add_argument("--duplicate", type=float, default=0.01)
    i.add_argument("--delay-ms", type=float, default=1.0)
    i.add_argument("--both", action="store_true", help="impair board -> client as well")
    i.add_argument("--seed", type=int, default=1)
    i.add_argument("--limit", type=float, default=300.0)

    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="stack_peer: %(message)s")
    if a.cmd == "udp-echo":
        emit(udp_echo(a.ip, a.port, [int(x) for x in a.sizes.split(",")], a.timeout, a.tries,
                      a.seed))
    elif a.cmd == "tcp-echo":
        emit(tcp_echo(a.ip, a.port, a.nbytes, a.timeout, a.cc, a.seed, a.bind))
    elif a.cmd == "conns":
        emit(conns(a.ip, a.port, a.count, a.size, a.timeout, a.seed, a.each_timeout))
    elif a.cmd == "echo-server":
        emit(echo_server(a.bind, a.port, a.limit))
    elif a.cmd == "send-frames":
        frames = [bytes.fromhex(line.strip()) for line in sys.stdin if line.strip()]
        emit(send_frames(a.ifname, frames, a.gap))
    elif a.cmd == "impair":
        imp = Impairment(a.loss, a.reorder, a.duplicate, a.delay_ms / 1000, a.seed)
        emit(impair(a.peer_ns, a.ifname, a.board_ip, a.board_mac, a.client, a.tun, imp,
                    a.both, a.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
