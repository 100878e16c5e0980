"""Peer-side programs for the host-socket end-to-end tests, run inside the peer namespace.

The tests start this file with ``ip netns exec NS python host_peer.py COMMAND ...``; every
command is bounded in time and prints one JSON line with what it saw (servers print
``{"ready": true}`` first, once they listen).

``echo-clients HOST PORT N SIZE``  N concurrent TCP clients, each sends SIZE pseudo-random
                                    bytes to an echo server and checks the echo byte for byte.
``serve-echo PORT SECONDS``        a TCP echo server (for the host's outgoing connections).
``serve-stream PORT NBYTES``       sends NBYTES of :func:`stream_bytes` to the first client,
                                    then closes.
``serve-discard PORT``             reads one connection to its end; reports bytes and time.
``send-stream HOST PORT NBYTES``   connects and sends NBYTES of :func:`stream_bytes`.
``serve-udp-echo PORT SECONDS``   a UDP echo server.
``udp-ask HOST PORT N``            N UDP requests; each answer must be the request upper-cased.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import threading
import time
from typing import Any

_BLOCK = random.Random(20261121).randbytes(1 << 16)


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def stream_bytes(offset: int, n: int) -> bytes:
    """Bytes [offset, offset + n) of an endless stream built from one 64 KiB random block
    (the host side checks what it received against the same function)."""
    out = bytearray()
    size = len(_BLOCK)
    while n > 0:
        i = offset % size
        k = min(n, size - i)
        out += _BLOCK[i:i + k]
        offset += k
        n -= k
    return bytes(out)


def echo_clients(host: str, port: int, n: int, size: int, timeout: float) -> None:
    results: list[str] = ["pending"] * n

    def one(i: int) -> None:
        data = random.Random(i).randbytes(size)
        stage = "connect"
        got = bytearray()
        try:
            with socket.create_connection((host, port), timeout=timeout) as s:
                s.settimeout(timeout)
                stage = "send"
                s.sendall(data)
                stage = "receive"
                while len(got) < size:
                    chunk = s.recv(size - len(got))
                    if not chunk:
                        break
                    got += chunk
                results[i] = "ok" if got == data else f"mismatch ({len(got)} bytes)"
        except OSError as e:
            results[i] = f"error in {stage} ({len(got)} of {size} bytes back): {e}"

    start = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    bad = [f"{i}: {r}" for i, r in enumerate(results) if r != "ok"]
    emit({"ok": n - len(bad), "failed": bad[:10], "seconds": time.monotonic() - start})


def _listener(port: int) -> socket.socket:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(64)
    emit({"ready": True})
    return srv


def serve_echo(port: int, seconds: float) -> None:
    srv = _listener(port)
    srv.settimeout(0.2)
    deadline = time.monotonic() + seconds
    served = 0

    def echo(c: socket.socket) -> None:
        with c:
            c.settimeout(seconds)
            try:
                while data := c.recv(65536):
                    c.sendall(data)
            except OSError:
                pass

    while time.monotonic() < deadline:
        try:
            c, _ = srv.accept()
        except TimeoutError:
            continue
        served += 1
        threading.Thread(target=echo, args=(c,), daemon=True).start()
    emit({"served": served})


def serve_stream(port: int, nbytes: int, timeout: float) -> None:
    srv = _listener(port)
    srv.settimeout(timeout)
    c, _ = srv.accept()
    start = time.monotonic()
    sent = 0
    with c:
        c.settimeout(timeout)
        while sent < nbytes:
            chunk = stream_bytes(sent, min(65536, nbytes - sent))
            c.sendall(chunk)
            sent += len(chunk)
    emit({"sent": sent, "seconds": time.monotonic() - start})


def serve_discard(port: int, timeout: float) -> None:
    srv = _listener(port)
    srv.settimeout(timeout)
    c, _ = srv.accept()
    start = time.monotonic()
    total = 0
    ok = True
    with c:
        c.settimeout(timeout)
        while True:
            data = c.recv(65536)
            if not data:
                break
            if data != stream_bytes(total, len(data)):
                ok = False
            total += len(data)
    emit({"received": total, "exact": ok, "seconds": time.monotonic() - start})


def send_stream(host: str, port: int, nbytes: int, timeout: float) -> None:
    start = time.monotonic()
    sent = 0
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        while sent < nbytes:
            chunk = stream_bytes(sent, min(65536, nbytes - sent))
            s.sendall(chunk)
            sent += len(chunk)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)          # the host app closes once it has everything
    emit({"sent": sent, "seconds": time.monotonic() - start})


def serve_udp_echo(port: int, seconds: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", port))
        s.settimeout(0.2)
        emit({"ready": True})
        deadline = time.monotonic() + seconds
        echoed = 0
        while time.monotonic() < deadline:
            try:
                data, addr = s.recvfrom(65536)
            except TimeoutError:
                continue
            s.sendto(data, addr)
            echoed += 1
    emit({"echoed": echoed})


def udp_ask(host: str, port: int, n: int, timeout: float) -> None:
    answered = 0
    wrong = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        for i in range(n):
            req = f"request {i} {'x' * (i * 37 % 900)}".encode()
            for _ in range(5):          # UDP: a lost datagram is asked again
                s.sendto(req, (host, port))
                try:
                    got, _ = s.recvfrom(65536)
                except TimeoutError:
                    continue
                if got == req.upper():
                    answered += 1
                else:
                    wrong += 1
                break
    emit({"asked": n, "answered": answered, "wrong": wrong})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--timeout", type=float, default=60.0)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("echo-clients")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("n", type=int)
    c.add_argument("size", type=int)
    c = sub.add_parser("serve-echo")
    c.add_argument("port", type=int)
    c.add_argument("seconds", type=float)
    c = sub.add_parser("serve-stream")
    c.add_argument("port", type=int)
    c.add_argument("nbytes", type=int)
    c = sub.add_parser("serve-discard")
    c.add_argument("port", type=int)
    c = sub.add_parser("send-stream")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("nbytes", type=int)
    c = sub.add_parser("serve-udp-echo")
    c.add_argument("port", type=int)
    c.add_argument("seconds", type=float)
    c = sub.add_parser("udp-ask")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("n", type=int)
    a = p.parse_args()
    if a.cmd == "echo-clients":
        echo_clients(a.host, a.port, a.n, a.size, a.timeout)
    elif a.cmd == "serve-echo":
        serve_echo(a.port, a.seconds)
    elif a.cmd == "serve-stream":
        serve_stream(a.port, a.nbytes, a.timeout)
    elif a.cmd == "serve-discard":
        serve_discard(a.port, a.timeout)
    elif a.cmd == "send-stream":
        send_stream(a.host, a.port, a.nbytes, a.timeout)
    elif a.cmd == "serve-udp-echo":
        serve_udp_echo(a.port, a.seconds)
    else:
        udp_ask(a.host, a.port, a.n, a.timeout)


if __name__ == "__main__":
    main()
