#!/usr/bin/env python3
"""Traffic from the peer namespace to the board's built-in services (used by `make sim`).

    peer_client.py BOARD_IP                  UDP echo, TCP echo (1 MiB), TCP discard (20 MiB)
    peer_client.py --echo-server IP PORT     a TCP echo server for the board to connect to
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time

# One unfragmented, one in three fragments both ways. The board takes datagrams up to
# 4,068 bytes: its kernels' reassembly buffers are 4 KB (boards/rp2040.py, reasm_bytes).
UDP_SIZES = (32, 1400, 4000)


def udp_echo(ip: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        ok = 0
        for size in UDP_SIZES:
            data = os.urandom(size)
            s.sendto(data, (ip, 7))
            try:
                back = s.recvfrom(65535)[0]
            except TimeoutError:
                back = None      # lost: counted as not back
            ok += back == data
    sizes = ", ".join(str(n) for n in UDP_SIZES)
    return f"UDP echo: {ok}/{len(UDP_SIZES)} datagrams back byte-exact ({sizes} bytes)"


def tcp_echo(ip: str, size: int = 1 << 20) -> str:
    data = os.urandom(size)
    start = time.monotonic()
    with socket.create_connection((ip, 7), timeout=30) as s:
        sender = threading.Thread(target=s.sendall, args=(data,))
        sender.start()
        got = bytearray()
        while len(got) < size:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        sender.join()
    secs = time.monotonic() - start
    return (f"TCP echo: {len(got)} bytes back, byte-exact: {bytes(got) == data}, "
            f"{size / secs / 1e6:.2f} MB/s each way")


def tcp_discard(ip: str, size: int = 20 << 20) -> str:
    start = time.monotonic()
    with socket.create_connection((ip, 9), timeout=30) as s:
        s.sendall(bytes(size))
        s.shutdown(socket.SHUT_WR)
        s.recv(1)   # the board closes after reading everything
    secs = time.monotonic() - start
    return f"TCP discard: {size >> 20} MiB in {secs:.2f} s = {size / secs / 1e6:.2f} MB/s"


def echo_server(ip: str, port: int) -> None:
    with socket.create_server((ip, port)) as srv:
        print("listening", flush=True)
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)


def main() -> int:
    if sys.argv[1] == "--echo-server":
        echo_server(sys.argv[2], int(sys.argv[3]))
        return 0
    ip = sys.argv[1]
    for step in (udp_echo, tcp_echo, tcp_discard):
        print(step(ip), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
