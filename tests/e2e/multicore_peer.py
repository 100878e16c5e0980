"""Peer-side programs for the multi-kernel end-to-end tests, run inside the peer namespace.

The tests start this file with ``ip netns exec NS python multicore_peer.py COMMAND ...``; every
command is bounded in time and prints JSON lines with what it saw.

Commands:

``session``     a stdin-driven set of concurrent TCP connections to the board's echo. One
                command per line, one JSON answer per command:
                ``open N`` opens N more connections (a new group, all left open),
                ``echo SIZE [GROUP ...]`` sends SIZE fresh pseudo-random bytes on every
                connection of the groups (all groups if none is named) in parallel and
                checks each echo byte for byte, ``shut GROUP`` closes one group,
                ``close`` closes everything and ends.
                It prints ``{"ready": true}`` first; end of input also closes.
``udp-echo``    datagrams of one size from a chosen source port to the UDP echo, each
                checked byte for byte (a lost one is retried).
``bulk``        C parallel TCP connections into discard for S seconds (or N bytes each),
                then half-close and wait for the board's FIN.
``flood-udp``   as many UDP datagrams as it can from many source ports (many senders) to
                the echo port for S seconds; counts what came back.
``raw-burst``   UDP frames built by hand, sent back to back out of an interface with
                AF_PACKET for S seconds (no socket layer in the way).
"""

from __future__ import annotations

import argparse
import json
import random
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from stack_peer import udp_round_trip  # a sibling file: both run as scripts from tests/e2e

CHUNK = 65536


def emit(result: dict[str, Any]) -> None:
    """Print one JSON line and flush it."""
    print(json.dumps(result), flush=True)


def payload(seed: int, nbytes: int) -> bytes:
    """Reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(nbytes)


# -- session: concurrent TCP connections ----------------------------------------------------


class Conn:
    """One open connection of a session."""

    def __init__(self, sock: socket.socket, group: int) -> None:
        self.sock = sock
        self.group = group
        self.port = sock.getsockname()[1]
        self.rounds = 0
        self.moved = 0


class Session:
    """Groups of concurrently open TCP connections to one echo server."""

    def __init__(self, ip: str, port: int, timeout: float) -> None:
        self.ip, self.port, self.timeout = ip, port, timeout
        self.groups: list[list[Conn]] = []

    def open(self, count: int, parallel: int = 16) -> dict[str, Any]:
        """Open ``count`` connections (``parallel`` connecting at once); a new group."""
        group = len(self.groups)
        conns: list[Conn] = []
        errors: list[str] = []
        lock = threading.Lock()
        todo = list(range(count))

        def worker() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    todo.pop()
                try:
                    s = socket.create_connection((self.ip, self.port), timeout=self.timeout)
                    s.settimeout(self.timeout)
                    with lock:
                        conns.append(Conn(s, group))
                except OSError as e:
                    with lock:
                        errors.append(repr(e))

        threads = [threading.Thread(target=worker, daemon=True)
                   for _ in range(min(parallel, count))]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.timeout * 3)
        self.groups.append(conns)
        return {"group": group, "opened": len(conns), "wanted": count,
                "ports": sorted(c.port for c in conns), "errors": errors[:5],
                "seconds": round(time.monotonic() - start, 3)}

    def echo(self, size: int, groups: Sequence[int] = ()) -> dict[str, Any]:
        """SIZE bytes on every connection of ``groups`` at once, each echo checked."""
        chosen = [c for g, conns in enumerate(self.groups) if not groups or g in groups
                  for c in conns]
        results: dict[int, dict[str, Any]] = {}

        def one(c: Conn) -> None:
            c.rounds += 1
            data = payload(c.port * 1000 + c.rounds, size)
            r: dict[str, Any] = {"ok": False, "received": 0, "error": None}
            results[c.port] = r
            send_error: list[OSError] = []

            def send() -> None:
                try:
                    c.sock.sendall(data)
                except OSError as e:
                    send_error.append(e)

            try:
                sender = threading.Thread(target=send, daemon=True)
                sender.start()
                got = bytearray()
                while len(got) < size:
                    part = c.sock.recv(min(CHUNK, size - len(got)))
                    if not part:
                        r["error"] = "EOF before the whole echo"
                        break
                    got += part
                sender.join(self.timeout)
                r["received"] = len(got)
                r["ok"] = bytes(got) == data
                if send_error and r["error"] is None:
                    r["error"] = f"send: {send_error[0]!r}"
                if not r["ok"] and r["error"] is None:
                    bad = next((i for i in range(len(got)) if got[i] != data[i]), len(got))
                    r["error"] = f"echo differs at byte {bad}"
                c.moved += len(got)
            except OSError as e:
                r["error"] = repr(e)

        start = time.monotonic()
        threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in chosen]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.timeout * 2)
        bad = {p: r for p, r in results.items() if not r["ok"]}
        return {"ok": len(chosen) > 0 and not bad and len(results) == len(chosen),
                "connections": len(chosen), "bytes_each": size, "failed": len(bad),
                "failures": dict(list(bad.items())[:5]),
                "seconds": round(time.monotonic() - start, 3)}

    def shut(self, group: int) -> dict[str, Any]:
        """Close the connections of one group (the group stays, empty)."""
        conns, self.groups[group] = self.groups[group], []
        for c in conns:
            c.sock.close()
        return {"group": group, "closed": len(conns)}

    def close(self) -> dict[str, Any]:
        """Close every connection."""
        n = 0
        for conns in self.groups:
            for c in conns:
                c.sock.close()
                n += 1
        return {"closed": n, "moved": sum(c.moved for g in self.groups for c in g)}


def session(ip: str, port: int, timeout: float, limit: float) -> None:
    """Serve commands from stdin until ``close``, end of input or ``limit`` seconds."""
    s = Session(ip, port, timeout)
    emit({"ready": True})
    end = time.monotonic() + limit
    try:
        while time.monotonic() < end:
            if not select.select([sys.stdin], [], [], max(0.0, end - time.monotonic()))[0]:
                break
            line = sys.stdin.readline()
            if not line:
                break
            words = line.split()
            if not words:
                continue
            cmd, args = words[0], [int(w) for w in words[1:]]
            if cmd == "open":
                emit(s.open(args[0]))
            elif cmd == "echo":
                emit(s.echo(args[0], args[1:]))
            elif cmd == "shut":
                emit(s.shut(args[0]))
            elif cmd == "close":
                break
            else:
                emit({"error": f"unknown command {cmd!r}"})
    finally:
        emit(s.close())


# -- UDP echo from a chosen source port -----------------------------------------------------


def udp_echo(ip: str, port: int, sport: int, size: int, count: int, timeout: float,
             tries: int) -> dict[str, Any]:
    """``count`` datagrams of ``size`` bytes from ``sport``, each echo checked."""
    results = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", sport))
        s.settimeout(timeout)
        s.connect((ip, port))
        for i in range(count):
            data = payload(sport * 100 + i, size)
            results.append(udp_round_trip(s, data, tries))
    return {"ok": all(r["ok"] for r in results), "sport": sport, "size": size,
            "results": results}


# -- bulk into discard ----------------------------------------------------------------------


def bulk(ip: str, port: int, conns: int, seconds: float, nbytes: int,
         timeout: float) -> dict[str, Any]:
    """``conns`` parallel connections into discard: each sends for ``seconds`` (or
    ``nbytes``), half-closes and waits for the board's FIN."""
    chunk = memoryview(bytes(i % 251 for i in range(CHUNK)))
    results: list[dict[str, Any]] = []
    start = time.monotonic()

    def one() -> None:
        r: dict[str, Any] = {"bytes": 0, "eof": False, "error": None, "port": None}
        results.append(r)
        try:
            with socket.create_connection((ip, port), timeout=10) as s:
                r["port"] = s.getsockname()[1]
                s.settimeout(timeout)
                end = time.monotonic() + seconds
                while (nbytes and r["bytes"] < nbytes) or (not nbytes
                                                           and time.monotonic() < end):
                    want = min(CHUNK, nbytes - r["bytes"]) if nbytes else CHUNK
                    r["bytes"] += s.send(chunk[:want])
                s.shutdown(socket.SHUT_WR)
                r["eof"] = s.recv(1) == b""
        except OSError as e:
            r["error"] = repr(e)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + timeout + 10)
    return {"ok": all(r["eof"] and r["error"] is None for r in results)
            and len(results) == conns, "bytes": sum(r["bytes"] for r in results),
            "ports": [r["port"] for r in results],
            "errors": [r["error"] for r in results if r["error"]][:5],
            "seconds": round(time.monotonic() - start, 3)}


# -- UDP flood ------------------------------------------------------------------------------


def flood_udp(ip: str, port: int, senders: int, seconds: float, size: int,
              first_sport: int) -> dict[str, Any]:
    """Round-robin over ``senders`` non-blocking sockets, each its own source port, sending
    ``size``-byte datagrams as fast as the socket layer takes them."""
    socks = []
    for i in range(senders):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", first_sport + i if first_sport else 0))
        s.connect((ip, port))
        s.setblocking(False)
        socks.append(s)
    data = bytes(size)
    sent = received = refused = blocked = 0
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            for s in socks:
                try:
                    s.send(data)
                    sent += 1
                except BlockingIOError:
                    blocked += 1
                except ConnectionRefusedError:
                    refused += 1
                try:
                    while s.recv(65535):
                        received += 1
                except (BlockingIOError, ConnectionRefusedError):
                    pass
    finally:
        for s in socks:
            s.close()
    return {"sent": sent, "received": received, "refused": refused, "blocked": blocked,
            "senders": senders, "seconds": seconds}


# -- raw frames -----------------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(dst_mac: bytes, src_mac: bytes, src_ip: bytes, dst_ip: bytes, sport: int,
              dport: int, body: bytes, ip_id: int) -> bytes:
    """An Ethernet/IPv4/UDP frame (UDP checksum 0: none)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ip_id, 0, 64, 17, 0,
                     src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + udp


def raw_burst(ifname: str, dst_mac: str, src_ip: str, dst_ip: str, dport: int, flows: int,
              size: int, seconds: float, first_sport: int) -> dict[str, Any]:
    """Frames of ``flows`` UDP flows to ``dst_ip:dport`` back to back for ``seconds``."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((ifname, 0))
        src_mac = s.getsockname()[4]
        frames = [udp_frame(bytes.fromhex(dst_mac.replace(":", "")), src_mac,
                            socket.inet_aton(src_ip), socket.inet_aton(dst_ip),
                            first_sport + i, dport, bytes(size), i + 1)
                  for i in range(flows)]
        sent = failed = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for f in frames:
                try:
                    s.send(f)
                    sent += 1
                except OSError:
                    failed += 1
    return {"sent": sent, "failed": failed, "flows": flows, "seconds": seconds}


# -- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("session")
    s.add_argument("ip")
    s.add_argument("--port", type=int, default=7)
    s.add_argument("--timeout", type=float, default=20.0, help="per socket operation")
    s.add_argument("--limit", type=float, default=300.0, help="the whole session")

    u = sub.add_parser("udp-echo")
    u.add_argument("ip")
    u.add_argument("--port", type=int, default=7)
    u.add_argument("--sport", type=int, required=True)
    u.add_argument("--size", type=int, default=8000)
    u.add_argument("--count", type=int, default=1)
    u.add_argument("--timeout", type=float, default=2.0)
    u.add_argument("--tries", type=int, default=3)

    b = sub.add_parser("bulk")
    b.add_argument("ip")
    b.add_argument("--port", type=int, default=9)
    b.add_argument("--conns", type=int, default=4)
    b.add_argument("--seconds", type=float, default=5.0)
    b.add_argument("--nbytes", type=int, default=0, help="per connection (0: by time)")
    b.add_argument("--timeout", type=float, default=30.0)

    f = sub.add_parser("flood-udp")
    f.add_argument("ip")
    f.add_argument("--port", type=int, default=7)
    f.add_argument("--senders", type=int, default=32)
    f.add_argument("--seconds", type=float, default=3.0)
    f.add_argument("--size", type=int, default=64)
    f.add_argument("--first-sport", type=int, default=0)

    r = sub.add_parser("raw-burst")
    r.add_argument("--ifname", default="eth0")
    r.add_argument("--dst-mac", required=True)
    r.add_argument("--src-ip", required=True)
    r.add_argument("--dst-ip", required=True)
    r.add_argument("--dport", type=int, default=7)
    r.add_argument("--flows", type=int, default=64)
    r.add_argument("--size", type=int, default=64)
    r.add_argument("--seconds", type=float, default=2.0)
    r.add_argument("--first-sport", type=int, default=30000)

    a = p.parse_args(argv)
    if a.cmd == "session":
        session(a.ip, a.port, a.timeout, a.limit)
    elif a.cmd == "udp-echo":
        emit(udp_echo(a.ip, a.port, a.sport, a.size, a.count, a.timeout, a.tries))
    elif a.cmd == "bulk":
        emit(bulk(a.ip, a.port, a.conns, a.seconds, a.nbytes, a.timeout))
    elif a.cmd == "flood-udp":
        emit(flood_udp(a.ip, a.port, a.senders, a.seconds, a.size, a.first_sport))
    elif a.cmd == "raw-burst":
        emit(raw_burst(a.ifname, a.dst_mac, a.src_ip, a.dst_ip, a.dport, a.flows, a.size,
                       a.seconds, a.first_sport))
    return 0


if __name__ == "__main__":
    sys.exit(main())
