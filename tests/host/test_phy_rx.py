"""tools/simhw/phy_rx.py, the simulated wire's receiver, without a network: a datagram
socket pair stands in for the packet socket, a pipe is the board's end."""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from simhw import phy_rx  # noqa: E402
from simhw.wire import REC_HDR  # noqa: E402


def read_record(fd: int) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = os.read(fd, n - len(data))
            assert chunk, "the pipe ended inside a record"
            data += chunk
        return data

    (n,) = struct.unpack(">H", exactly(REC_HDR))
    return exactly(n)


def test_each_frame_is_one_record_and_the_receiver_ends_with_its_reader() -> None:
    wire, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r, w = os.pipe()
    ended: list[BaseException | None] = []

    def run() -> None:
        try:
            phy_rx.relay(ours, w)
        except BaseException as e:  # noqa: BLE001 (the test reads what ended it)
            ended.append(e)

    relay = threading.Thread(target=run, daemon=True)
    relay.start()
    # A frame above PIPE_BUF goes on the pipe in pieces, still one record.
    frames = [bytes(range(60)), bytes(i & 0xFF for i in range(1514)), b"\x5a" * 9000]
    try:
        for frame in frames:
            wire.send(frame)
            assert read_record(r) == frame
        os.close(r)
        wire.send(frames[0])               # nobody reads the pipe any more
        relay.join(timeout=5)
        assert not relay.is_alive()
        assert len(ended) == 1 and isinstance(ended[0], BrokenPipeError)
    finally:
        os.close(w)
        wire.close()
        ours.close()
