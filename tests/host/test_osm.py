"""The OSM against the fake board: codec, bring-up, credits, reply matching, loss, CLI.

CPython only, no root; every test is bounded (the fake board answers at once).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
import time

import pytest
import twinstack
from twinstack import cli
from twinstack.osm import MAX_SENDS_IN_FLIGHT
from twinstack.proto import i2o
from twinstack.proto import linkframe as lf

from tests.host.conftest import wait_for
from tests.host.fakeboard import FakeBoard

pytestmark = pytest.mark.timeout(20)


def lf_encode(payload: bytes) -> bytes:
    out = bytearray(lf.encoded_size(len(payload)))
    return bytes(out[:lf.encode_into(payload, len(payload), out)])


# -- the link codec on the host (the firmware's own file) ----------------------------------

def test_link_codec_round_trips_frames_cut_anywhere():
    payloads = [b"\x01", b"\x00", b"\x00\x00", bytes(range(256)), b"\x05" * 253,
                b"\x05" * 254, b"\x05" * 255, b"\x05" * 254 + b"\x00", b"\x00" + b"\x07" * 508,
                bytes(lf.MAX_PAYLOAD)]
    payloads += [os.urandom(n) for n in (1, 2, 3, 100, 500, 2047, 2048)]
    for p in payloads:
        assert lf.encode(p) == lf_encode(p), p[:8]
    got: list[bytes] = []
    d = lf.Deframer(lambda buf, n: got.append(bytes(buf[:n])))
    stream = b"".join(lf_encode(p) for p in payloads)
    for i in range(0, len(stream), 777):      # cut anywhere
        d.feed(stream[i:i + 777])
    assert got == payloads and d.errors == 0


def test_link_deframer_counts_garbage_like_the_firmware():
    good = lf_encode(b"\x10abc")
    bad = bytearray(good)
    bad[3] ^= 0x40
    got: list[bytes] = []
    d = lf.Deframer(lambda buf, n: got.append(bytes(buf[:n])))
    d.feed(bytes(bad) + b"\x01\x02" * 3000 + good + b"\x00\x09\x01\x00" + good)
    assert got == [b"\x10abc", b"\x10abc"]
    assert d.bad_crc == 1 and d.too_long == 1 and d.bad_cobs == 1


# -- bring-up --------------------------------------------------------------------------------

def test_bring_up_learns_the_board(board, fake):
    assert (board.iops, board.inbound_depth, board.frame_bytes, board.epoch) == (2, 4, 2040, 1)
    assert board.connected and fake.inits == 1
    assert [len(q) for q in board._free] == [4, 4]
    st = board.status()
    assert [s["iop"] for s in st["iops"]] == [0, 1]
    assert all(s["state"] == 2 for s in st["iops"])


def test_version_mismatch_is_refused_with_both_versions():
    fake = FakeBoard(version=9)
    try:
        with pytest.raises(twinstack.VersionMismatch) as e:
            twinstack.connect(fake.url, timeout=2)
        assert isinstance(e.value, ConnectionError) and isinstance(e.value, OSError)
        assert "protocol 9" in str(e.value) and f"host {i2o.PROTOCOL_VERSION}" in str(e.value)
        assert not fake.up
    finally:
        fake.close()


def test_a_board_that_does_not_answer_times_out():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            twinstack.connect(f"socket://127.0.0.1:{srv.getsockname()[1]}", timeout=0.3)
        assert time.monotonic() - start < 2
    finally:
        srv.close()


# -- credits ---------------------------------------------------------------------------------

def test_no_post_without_a_free_mfa_blocks_then_times_out(board, fake):
    fake.pause(0)
    reqs = [board._request(0, i2o.F_EXEC_STATUS_GET, b"", target=i2o.TID_EXEC, timeout=1,
                           wait=False) for _ in range(board.inbound_depth)]
    wait_for(lambda: len(fake.held[0]) == 4, what="4 held messages")
    assert not board._free[0]
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        board.status(timeout=0.3)
    assert 0.25 < time.monotonic() - start < 2
    assert fake.violations == [] and fake.max_in_use[0] == 4
    # IOP 1 has its own credits
    assert board._request(1, i2o.F_EXEC_STATUS_GET, b"", target=i2o.TID_EXEC, timeout=1)
    # A blocked poster goes on as soon as MFAs come back.
    done = []
    t = threading.Thread(target=lambda: done.append(board.stats(timeout=3)))
    t.start()
    time.sleep(0.1)
    assert not done
    fake.resume(0)
    t.join(3)
    assert done and done[0]
    wait_for(lambda: all(r.done for r in reqs), what="held requests answered")
    assert all(r.error is None for r in reqs)
    assert fake.violations == []


def test_many_threads_never_overrun_the_credits():
    fake = FakeBoard(depth=2)
    board = twinstack.connect(fake.url, timeout=3, out_frames=4)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(25):
                board.status()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    try:
        assert errors == [] and fake.violations == []
        assert max(fake.max_in_use) <= 2
        assert fake.received[i2o.F_EXEC_STATUS_GET] == 8 * 25 * 2
        # Every outbound frame comes back to the board.
        wait_for(lambda: not fake.out_sent and not fake.backlog, what="frames flushed")
        assert len(fake.out_free) == 4
    finally:
        board.close()
        fake.close()


# -- replies ---------------------------------------------------------------------------------

def test_fail_reply_resolves_the_request_it_preserves(board, fake):
    fake.pause(0)
    a = board._request(0, i2o.F_PARAMS_GET, b"", target=i2o.TID_EXEC, timeout=2, wait=False)
    b = board._request(0, i2o.F_EXEC_STATUS_GET, b"", target=i2o.TID_EXEC, timeout=2,
                       wait=False)
    c = board._request(0, i2o.F_EXEC_STATUS_GET, b"", target=i2o.TID_EXEC, timeout=2,
                       wait=False)
    fake.fail_next[i2o.F_EXEC_STATUS_GET] = i2o.FAIL_BAD_HEADER
    fake.resume(0)
    wait_for(lambda: a.done and b.done and c.done, what="three replies")
    assert a.error is None and c.error is None
    assert isinstance(b.error, OSError) and b.error.errno == errno.EIO
    assert "refused" in str(b.error) and "bad message header" in str(b.error)
    # The MFA of the refused frame came back too.
    wait_for(lambda: len(board._free[0]) == 4, what="MFAs back")
    # A FAIL for a blocking call raises in the caller.
    fake.fail_next[i2o.F_EXEC_STATUS_GET] = i2o.FAIL_FRAME_TOO_LARGE
    with pytest.raises(OSError, match="too large"):
        board.status()


def test_unknown_handle_status_raises_oserror(board):
    with pytest.raises(OSError) as e:
        board._request(0, i2o.F_SOCK_CLOSE, struct.pack(i2o.HANDLE_FMT, 0x3F7, 0), timeout=2)
    assert e.value.errno == errno.EBADF and "handle" in str(e.value)


def test_late_reply_after_a_timeout_is_dropped(board, fake):
    fake.pause(1)
    with pytest.raises(TimeoutError):
        board._request(1, i2o.F_EXEC_STATUS_GET, b"", target=i2o.TID_EXEC, timeout=0.2)
    fake.resume(1)
    wait_for(lambda: board.late_replies == 1, what="the late reply")
    assert board.status()["iops"][1]["iop"] == 1


def test_transaction_contexts_have_bit_30_and_wrap(board):
    board._next_tctx = (1 << 30) - 2
    seen = []
    for _ in range(3):
        with board._lock:
            seen.append(board._new_tctx())
    assert all(t & (1 << 30) and t < (1 << 31) for t in seen)
    assert seen[-1] == (1 << 30) | 1    # wrapped, never 0 in the counter bits
    assert board.status()


def test_stats_joins_a_multi_frame_reply(board, fake):
    stats = board.stats()
    expected = dict(item.split("=") for item in fake.params_text().split())
    assert len(fake.params_text()) > 2 * board.frame_bytes        # three frames
    assert stats == {k: int(v) for k, v in expected.items()}


def test_configure_sets_and_refuses(board, fake):
    assert "hash=toeplitz" in board.configure(hash="toeplitz", indirection=[0, 1, 1, 0])
    assert fake.config == {"hash": "toeplitz", "indirection": "0,1,1,0"}
    with pytest.raises(OSError) as e:
        board.configure(hash="md5")
    assert e.value.errno == errno.EINVAL and "bad hash md5" in str(e.value)


def test_outbound_frames_are_returned_with_a_small_grant(fake):
    board = twinstack.connect(fake.url, timeout=3, out_frames=2)
    try:
        assert board.stats()       # three reply frames through a grant of two
        for _ in range(20):
            board.status()
        wait_for(lambda: not fake.out_sent, what="frames flushed")
        assert sorted(fake.out_free) == [0, 1] and fake.violations == []
    finally:
        board.close()


# -- loss, reset, reconnect -----------------------------------------------------------------

def _pair(board):
    srv = board.socket()
    srv.bind(("", 5000))
    srv.listen()
    c = board.socket()
    c.settimeout(3)
    c.connect(("10.0.0.2", 5000))
    s, _ = srv.accept()
    return srv, c, s


def test_lost_link_resets_every_socket_then_reconnect_works(board, fake):
    srv, c, s = _pair(board)
    blocked: list[BaseException] = []

    def reader() -> None:
        try:
            s.recv(10)
        except BaseException as e:
            blocked.append(e)

    t = threading.Thread(target=reader)
    t.start()
    time.sleep(0.1)
    fake.drop_link()
    t.join(3)
    assert blocked and isinstance(blocked[0], ConnectionResetError)
    wait_for(lambda: not board.connected, what="the board down")
    with pytest.raises(ConnectionResetError):
        c.sendall(b"x")
    with pytest.raises(ConnectionResetError):
        c.recv(1)
    with pytest.raises(ConnectionResetError):
        srv.accept()
    with pytest.raises(ConnectionResetError):
        board.socket()
    with pytest.raises(ConnectionResetError):
        board.stats()
    board.reconnect()
    assert board.connected and fake.inits == 2
    srv2, c2, s2 = _pair(board)
    c2.sendall(b"again")
    assert s2.recv(10) == b"again"
    with pytest.raises(ConnectionResetError):      # the old ones stay reset
        s.recv(1)
    for x in (srv, c, s, srv2, c2, s2):
        x.close()


def test_ready_with_a_new_epoch_resets(board, fake):
    srv, c, s = _pair(board)
    fake.send_ready(1)                  # the same epoch: nothing happens
    time.sleep(0.1)
    assert board.connected
    c.sendall(b"ok")
    assert s.recv(2) == b"ok"
    fake.send_ready(7)
    wait_for(lambda: not board.connected, what="the reset seen")
    with pytest.raises(ConnectionResetError):
        s.recv(1)
    with pytest.raises(ConnectionResetError):
        c.send(b"x")
    fake.send_ready(8)                  # nothing connected: only logged
    time.sleep(0.05)
    board.reconnect()
    assert board.epoch == 8 and board.connected
    _, c2, s2 = _pair(board)
    c2.sendall(b"new")
    assert s2.recv(3) == b"new"


def test_adapter_reset_and_quiesce_reset_the_sockets(board, fake):
    srv, c, s = _pair(board)
    board.quiesce(s.iop)
    with pytest.raises(ConnectionResetError):
        s.recv(1)
    board.reset()
    for x in (srv, c):
        with pytest.raises(ConnectionResetError):
            x.recv(1) if x is c else x.accept()
    assert board.connected
    _, c2, s2 = _pair(board)
    c2.sendall(b"after reset")
    assert s2.recv(20) == b"after reset"


def test_connections_spread_over_the_iops(board):
    srv = board.socket()
    srv.bind(("", 6000))
    srv.listen()
    clients = []
    for _ in range(4):
        c = board.socket()
        c.connect(("10.0.0.2", 6000))
        clients.append(c)
    assert [c.iop for c in clients] == [0, 1, 0, 1]
    clients[0].close()
    c = board.socket()
    c.connect(("10.0.0.2", 6000))
    assert c.iop == 0                   # the IOP with the fewest connections


def test_close_and_context_manager(fake):
    with twinstack.connect(fake.url, timeout=2) as board:
        s = board.socket()
    with pytest.raises(ConnectionResetError):
        s.recv(1)
    assert not board.connected


def test_sends_in_flight_are_limited():
    # More inbound frames than one connection may use: the per-connection limit binds.
    fake = FakeBoard(depth=MAX_SENDS_IN_FLIGHT + 4)
    board = twinstack.connect(fake.url, timeout=3.0)
    try:
        _sends_in_flight_are_limited(board, fake)
    finally:
        board.close()
        fake.close()
    assert fake.violations == []


def _sends_in_flight_are_limited(board, fake):
    srv, c, s = _pair(board)
    fake.pause(c.iop)
    c.settimeout(0.3)
    with pytest.raises(TimeoutError):
        c.sendall(b"y" * (board.max_send * (MAX_SENDS_IN_FLIGHT + 2)))
    assert c.endpoint.in_flight == MAX_SENDS_IN_FLIGHT
    assert len(fake.held[c.iop]) == MAX_SENDS_IN_FLIGHT
    fake.resume(c.iop)
    wait_for(lambda: c.endpoint.in_flight == 0, what="send completions")


# -- the CLI ---------------------------------------------------------------------------------

def test_cli_status_shows_iops_and_per_core_counters(fake, capsys):
    assert cli.main(["status", fake.url]) == 0
    out = capsys.readouterr().out
    assert "2 IOPs, epoch 1" in out and "operational" in out
    header = next(line for line in out.splitlines() if line.startswith("counter"))
    assert header.split() == ["counter", "k0", "k1"]
    assert "counter2" in out and fake.violations == []


def test_cli_status_reports_an_unreachable_board(capsys):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.close()
    assert cli.main(["status", f"socket://127.0.0.1:{port}"]) == 1
    assert "twinstack status" in capsys.readouterr().err


# -- the transport on other pyserial ports ----------------------------------------------------

def test_transport_over_loop_url():
    from twinstack.transport import Transport

    got: list[tuple[int, bytes]] = []
    t = Transport("loop://", lambda kind, body: got.append((kind, body)),
                  lambda tr, exc: None)
    t.start()
    try:
        t.send(lf.KIND_ECHO_REQUEST, b"\x00abc\x00")
        t.send(lf.KIND_I2O_FLUSH, bytes(600))
        wait_for(lambda: len(got) == 2, what="frames back")
        assert got == [(lf.KIND_ECHO_REQUEST, b"\x00abc\x00"), (lf.KIND_I2O_FLUSH, bytes(600))]
    finally:
        t.close()


def test_transport_over_a_pty_reports_a_hangup():
    from twinstack.transport import Transport

    master, slave = os.openpty()
    got: list[tuple[int, bytes]] = []
    lost: list[BaseException] = []
    t = Transport(os.ttyname(slave), lambda kind, body: got.append((kind, body)),
                  lambda tr, exc: lost.append(exc))
    os.close(slave)
    t.start()
    try:
        os.write(master, b"garbage" + lf_encode(b"\x16\x01\x00\x00\x00"))
        wait_for(lambda: got, what="a frame through the pty")
        assert got == [(lf.KIND_I2O_READY, b"\x01\x00\x00\x00")] and t.errors == 1
        t.send(lf.KIND_ECHO_REQUEST, b"hi")
        assert os.read(master, 100) == lf_encode(b"\x01hi")
        os.close(master)
        wait_for(lambda: lost, what="the hangup")
        assert not t.alive
        with pytest.raises(ConnectionResetError):
            t.send(lf.KIND_ECHO_REQUEST, b"x")
    finally:
        t.close()
