"""The board's side of the I2O host link, end to end, with a tiny raw host driver.

A simulated board with two kernels (or the attached board, conftest.py); this test speaks
raw link frames
(``twinstack.link.Link``) packed with ``twinstack.proto.i2o``: INIT, LISTEN on both IOPs,
a client in the peer namespace connects and sends, the host echoes it back through SEND
(with CONSUMED credit), the client half-closes, the host sees EV_FIN and CLOSEs. Not the
host library (a separate piece of work): just enough of a driver for a smoke test.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time

import pytest
from twinstack.link import Link, LinkTimeout
from twinstack.proto import i2o
from twinstack.proto import linkframe as lf

from .conftest import Board, require_netns_privileges, rp2040_budget, scaled_time

pytestmark = pytest.mark.e2e

BOARD_ARGS = ["--kernels", "2", "--heap", "2M", "--no-log-frames"]
PORT = 5555
NBYTES = 20000
CLIENT = r"""
import json, socket, sys
ip, port, n, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.create_connection((ip, port), timeout=wait)
data = bytes(i % 251 for i in range(n))
s.sendall(data)
got = b""
while len(got) < n:
    c = s.recv(65536)
    if not c:
        break
    got += c
s.shutdown(socket.SHUT_WR)
rest = s.recv(10)
print(json.dumps({"ok": got == data, "n": len(got), "eof": rest == b""}))
"""


class RawHost:
    """The host's half of the credits, and nothing more."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.free: dict[int, list[int]] = {}
        self.msgs: list[tuple[int, bytes]] = []     # (mfa, message) of every REPLY frame
        self.tctx = 0
        self.frame_bytes = 0

    def pump(self, timeout: float = 0.05) -> None:
        try:
            kind, body = self.link.recv(timeout)
        except LinkTimeout:
            return
        if kind == lf.KIND_I2O_FREE:
            iop, count = body[0], body[1]
            self.free.setdefault(iop, []).extend(
                struct.unpack_from(f"<{count}H", body, 2))
        elif kind == lf.KIND_I2O_REPLY:
            mfa = body[0] | body[1] << 8
            self.msgs.append((mfa, body[2:]))
            self.link.send(lf.KIND_I2O_FLUSH, struct.pack("<BH", 1, mfa))

    def init(self) -> tuple:
        self.link.send(lf.KIND_I2O_INIT, struct.pack(i2o.INIT_FMT, i2o.PROTOCOL_VERSION,
                                                    8, 1024, 0))
        deadline = time.monotonic() + scaled_time(10)
        while time.monotonic() < deadline:
            kind, body = self.link.recv(scaled_time(10))
            if kind == lf.KIND_I2O_INIT_REPLY:
                r = struct.unpack(i2o.INIT_REPLY_FMT, body)
                self.free = {k: list(range(r[5])) for k in range(r[3])}
                self.frame_bytes = r[6]
                return r
        raise AssertionError("no INIT_REPLY")

    def post(self, iop: int, fn: int, payload: bytes, ictx: int = 0x1000) -> int:
        deadline = time.monotonic() + scaled_time(10)
        while not self.free.get(iop):
            assert time.monotonic() < deadline, "no inbound MFA came back"
            self.pump()
        mfa = self.free[iop].pop(0)
        self.tctx += 1
        n = i2o.HEADER_BYTES + len(payload)
        msg = bytearray(i2o.words(n) * 4)
        i2o.put_header(msg, 0, 0, i2o.words(n), i2o.TID_SOCKET, i2o.TID_HOST, fn)
        i2o.put_contexts(msg, 0, ictx, self.tctx)
        msg[16:16 + len(payload)] = payload
        self.link.send(lf.KIND_I2O_POST, struct.pack("<BH", iop, mfa) + bytes(msg))
        return self.tctx

    def take(self, pred, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + scaled_time(timeout)
        while True:
            for i, (_, m) in enumerate(self.msgs):
                if pred(m):
                    del self.msgs[i]
                    return m
            if time.monotonic() > deadline:
                have = [(hex(i2o.function(m, 0)), struct.unpack_from("<I", m, 12)[0])
                        for _, m in self.msgs]
                raise AssertionError(f"timed out; have {have}")
            self.pump()

    def reply(self, tctx: int) -> bytes:
        m = self.take(lambda m: struct.unpack_from("<I", m, 12)[0] == tctx)
        assert i2o.req_status(m, 0) == i2o.RS_SUCCESS, hex(i2o.detail(m, 0))
        return m

    def event(self, fn: int) -> bytes:
        return self.take(lambda m: i2o.function(m, 0) == fn
                         and struct.unpack_from("<I", m, 12)[0] == 0)


def test_listen_on_both_iops_echo_through_the_host_and_close(board_under_test):
    require_netns_privileges()
    board: Board = board_under_test(args=BOARD_ARGS, services=False)
    before = board.stats()
    # Two on the simulated board (BOARD_ARGS); an attached one has what it has.
    kernels = 2 if board.kind == "sim" else before["kernels"]
    with Link(board.usb_path) as link:
        host = RawHost(link)
        st, proto, _, iops, _, depth, fb, used, _ = host.init()
        assert (st, proto, iops) == (0, 1, kernels)
        if board.kind == "sim":     # the frames of the RP2040's budget
            budget = rp2040_budget()
            assert (depth, fb, used) == (budget["i2o_inbound_depth"],
                                         budget["i2o_frame_bytes"],
                                         budget["i2o_outbound_max"])
        listeners = []
        for iop in range(iops):
            m = host.reply(host.post(iop, i2o.F_SOCK_LISTEN,
                                     struct.pack(i2o.LISTEN_FMT, PORT, 4, 4096), ictx=0x77))
            assert i2o.function(m, 0) == i2o.F_SOCK_LISTEN
            listeners.append(struct.unpack_from(i2o.LISTEN_REPLY_FMT, m, i2o.REPLY_PAYLOAD)[0])
        client = subprocess.Popen(
            board.peer_cmd(sys.executable, "-c", CLIENT, board.board_ip, str(PORT),
                           str(NBYTES), str(scaled_time(20))),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ev = host.event(i2o.F_EV_ACCEPTED)
            assert struct.unpack_from("<I", ev, 8)[0] == 0x77      # the listener's context
            h, iop = struct.unpack_from("<HB", ev, i2o.EV_PAYLOAD)
            got = 0
            fin = False
            sent_tc = []
            while not fin:
                ev = host.event(i2o.F_EV_DATA)
                hh, _, flags, n = struct.unpack_from(i2o.EV_DATA_FMT, ev, i2o.EV_PAYLOAD)
                assert hh == h
                data = ev[i2o.EV_PAYLOAD + 6:i2o.EV_PAYLOAD + 6 + n]
                assert data == bytes((got + i) % 251 for i in range(n))
                got += n
                fin = bool(flags & i2o.EV_FIN)
                if n:
                    host.post(iop, i2o.F_SOCK_CONSUMED, struct.pack(i2o.CONSUMED_FMT, h, 0, n))
                    room = host.frame_bytes - i2o.PAYLOAD - 4
                    for off in range(0, n, room):
                        chunk = data[off:off + room]
                        sent_tc.append(host.post(iop, i2o.F_SOCK_SEND,
                                                 struct.pack(i2o.SEND_FMT, h, len(chunk))
                                                 + chunk))
                if got == NBYTES:
                    for tc in sent_tc:
                        m = host.reply(tc)
                        assert struct.unpack_from(i2o.SEND_REPLY_FMT, m,
                                                  i2o.REPLY_PAYLOAD)[0] == h
                    sent_tc = []
            assert got == NBYTES
            host.reply(host.post(iop, i2o.F_SOCK_CLOSE, struct.pack(i2o.HANDLE_FMT, h, 0)))
            out, err = client.communicate(timeout=scaled_time(30))
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        # The listeners go too: a shared board keeps nothing of this test.
        for listener_iop, handle in enumerate(listeners):
            host.reply(host.post(listener_iop, i2o.F_SOCK_CLOSE,
                                 struct.pack(i2o.HANDLE_FMT, handle, 0)))
        result = json.loads(out.strip().splitlines()[-1])
        assert result == {"ok": True, "n": NBYTES, "eof": True}, err
        stats = link.stats(timeout=scaled_time(2))
        moved = {k: stats[k] - before[k] for k in ("i2o.posts", "ism.accepted",
                                                  "i2o.fail_bad_mfa")}
        assert moved["i2o.posts"] > 20 and moved["ism.accepted"] == 1, moved
        assert moved["i2o.fail_bad_mfa"] == 0 and board.errors(stats) == 0, (moved, stats)
