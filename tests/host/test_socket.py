"""The socket API and TwinSelector on board sockets, against the fake board."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest
from twinstack import socket as tsocket
from twinstack.selectors import EVENT_READ, EVENT_WRITE, TwinSelector

from tests.host.conftest import wait_for

pytestmark = pytest.mark.timeout(20)
BOARD = "10.0.0.2"


@pytest.fixture
def listener(board):
    srv = board.socket()
    srv.bind(("", 7000))
    srv.listen(8)
    srv.settimeout(3)
    yield srv
    srv.close()


def connected(board, listener):
    c = board.socket()
    c.settimeout(3)
    c.connect((BOARD, 7000))
    s, addr = listener.accept()
    s.settimeout(3)
    return c, s, addr


def fake_sock(fake, sock):
    ep = sock.endpoint
    return fake._lookup(ep.iop, ep.ism)


def test_accept_and_talk_both_ways(board, listener):
    c, s, addr = connected(board, listener)
    assert addr == (BOARD, c.getsockname()[1]) and addr[1] >= 40000
    assert c.getpeername() == (BOARD, 7000) and s.getsockname()[1] == 7000
    assert {c.iop, s.iop} <= {0, 1}
    data = os.urandom(50_000)
    c.sendall(data)
    got = bytearray()
    while len(got) < len(data):
        got += s.recv(65536)
    assert got == data
    assert s.send(b"pong") == 4
    buf = bytearray(10)
    assert c.recv_into(buf) == 4 and buf[:4] == b"pong"
    c.close()
    s.close()


def test_connect_refused(board):
    c = board.socket()
    with pytest.raises(ConnectionRefusedError):
        c.connect((BOARD, 4444))
    assert c.connect_ex((BOARD, 4444)) == errno.ECONNREFUSED


def test_recv_eof_after_the_peer_closes_then_broken_pipe(board, listener):
    c, s, _ = connected(board, listener)
    c.sendall(b"last words")
    c.close()
    assert s.recv(100) == b"last words"
    assert s.recv(100) == b""
    assert s.recv(100) == b""
    s.shutdown(tsocket.SHUT_WR)       # FIN both ways: the board's handle is gone
    wait_for(lambda: s.endpoint.dead, what="EV_CLOSED")
    with pytest.raises(BrokenPipeError):
        s.send(b"x")


def test_shutdown_write_keeps_reading(board, listener):
    c, s, _ = connected(board, listener)
    c.shutdown(tsocket.SHUT_WR)
    assert s.recv(10) == b""
    with pytest.raises(BrokenPipeError):
        c.sendall(b"late")
    s.sendall(b"still here")
    assert c.recv(20) == b"still here"


def test_peer_abort_raises_connection_reset(board, listener):
    c, s, _ = connected(board, listener)
    c.abort()
    with pytest.raises(ConnectionResetError):
        s.recv(10)


def test_timeouts(board, listener):
    c, s, _ = connected(board, listener)
    s.settimeout(0.2)
    assert s.gettimeout() == 0.2
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        s.recv(10)
    with pytest.raises(tsocket.timeout):
        s.recv(10)
    listener.settimeout(0.1)
    with pytest.raises(TimeoutError):
        listener.accept()
    assert time.monotonic() - start < 2
    c.sendall(b"late")
    assert s.recv(10) == b"late"          # a timeout does not break the socket


def test_non_blocking(board, listener):
    c, s, _ = connected(board, listener)
    s.setblocking(False)
    assert not s.getblocking() and s.gettimeout() == 0.0
    with pytest.raises(BlockingIOError):
        s.recv(10)
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()
    n = board.socket()
    n.setblocking(False)
    with pytest.raises(BlockingIOError) as e:
        n.connect((BOARD, 7000))
    assert e.value.errno == errno.EINPROGRESS
    sel = TwinSelector()
    sel.register(n, EVENT_WRITE)
    assert sel.select(2)
    assert n.connect_ex((BOARD, 7000)) == errno.EISCONN
    assert n.getsockopt(tsocket.SOL_SOCKET, tsocket.SO_ERROR) == 0
    wait_for(lambda: listener.endpoint.accept_q, what="the accepted connection")
    a, _ = listener.accept()
    a.setblocking(False)
    assert n.send(b"nb") == 2
    wait_for(lambda: a.endpoint.rx, what="data")
    assert a.recv(10) == b"nb"
    # A refused non-blocking connect reports its error through SO_ERROR / connect_ex.
    r = board.socket()
    r.setblocking(False)
    assert r.connect_ex((BOARD, 4444)) == errno.EINPROGRESS
    sel.register(r, EVENT_READ | EVENT_WRITE)
    wait_for(lambda: r.endpoint.state == 0, what="the refusal")
    assert r.getsockopt(tsocket.SOL_SOCKET, tsocket.SO_ERROR) == errno.ECONNREFUSED
    sel.close()


def test_closed_socket_raises_ebadf(board, listener):
    c, s, _ = connected(board, listener)
    c.close()
    c.close()                                   # twice is fine
    for op in (lambda: c.recv(1), lambda: c.send(b"x"), lambda: c.getsockname(),
               lambda: c.shutdown(tsocket.SHUT_RDWR)):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.EBADF
    listener.close()
    with pytest.raises(OSError) as e:
        listener.accept()
    assert e.value.errno == errno.EBADF


def test_address_in_use_comes_from_the_board(board, listener):
    other = board.socket()
    other.bind(("", 7000))
    with pytest.raises(OSError) as e:
        other.listen()
    assert e.value.errno == errno.EADDRINUSE
    u1 = board.socket(type=tsocket.SOCK_DGRAM)
    u1.bind(("", 9000))
    u2 = board.socket(type=tsocket.SOCK_DGRAM)
    with pytest.raises(OSError) as e:
        u2.bind(("", 9000))
    assert e.value.errno == errno.EADDRINUSE


def test_udp_sendto_recvfrom(board, fake):
    a = board.socket(type=tsocket.SOCK_DGRAM)
    a.bind(("", 9001))
    a.settimeout(2)
    b = board.socket(type=tsocket.SOCK_DGRAM)
    b.settimeout(2)
    assert b.sendto(b"hello", (BOARD, 9001)) == 5      # implicit bind
    data, addr = a.recvfrom(100)
    assert data == b"hello" and addr == (BOARD, b.getsockname()[1])
    a.sendto(b"reply", addr)
    assert b.recvfrom(100) == (b"reply", (BOARD, 9001))
    b.sendto(b"echo me", (BOARD, 7))
    assert b.recvfrom(3) == (b"ech", (BOARD, 7))      # truncated like UDP
    a.settimeout(0.1)
    with pytest.raises(TimeoutError):
        a.recvfrom(10)
    with pytest.raises(OSError) as e:
        a.sendto(b"x" * 3000, (BOARD, 9001))
    assert e.value.errno == errno.EMSGSIZE
    a.close()
    b.close()
    wait_for(lambda: not fake.udp, what="UDP handles closed on every IOP")


def test_slow_reader_reports_consumed_only_as_it_reads(board, listener, fake):
    c, s, _ = connected(board, listener)
    credit = board.rx_credit
    data = os.urandom(100_000)
    c.sendall(data)
    fs = fake_sock(fake, s)
    wait_for(lambda: fs.delivered == credit, what="a full window")
    time.sleep(0.1)
    assert fs.delivered == credit and fs.consumed == 0 and len(fs.pending) > 0
    got = bytearray()
    reports = []
    while len(got) < len(data):
        got += s.recv(1000)
        with fake.lock:
            assert fs.delivered - fs.consumed <= credit
            assert fs.consumed <= len(got)             # never reported before it was read
            assert len(got) - fs.consumed <= credit // 4 + 1000 + credit
        if fs.consumed not in reports:
            reports.append(fs.consumed)
    assert got == data
    sizes = [b - a for a, b in zip(reports, reports[1:], strict=False)]
    assert sizes and all(size >= credit // 4 for size in sizes)
    assert fake.violations == []


def test_many_connections_in_threads(board, listener):
    results = []

    def client(i: int) -> None:
        c = board.socket()
        c.settimeout(5)
        c.connect((BOARD, 7))                          # the fake's echo service
        msg = bytes([i]) * (3000 + i)
        c.sendall(msg)
        c.shutdown(tsocket.SHUT_WR)
        got = bytearray()
        while chunk := c.recv(4096):
            got += chunk
        results.append(got == msg)
        c.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [True] * 12


# -- selectors -------------------------------------------------------------------------------

def test_selector_readiness(board, listener):
    c, s, _ = connected(board, listener)
    sel = TwinSelector()
    sel.register(s, EVENT_READ, "server side")
    sel.register(c, EVENT_READ | EVENT_WRITE, "client side")
    sel.register(listener, EVENT_READ, "listener")
    ready = {key.data: ev for key, ev in sel.select(0)}
    assert ready == {"client side": EVENT_WRITE}
    start = time.monotonic()
    sel.modify(c, EVENT_READ, "client side")
    assert sel.select(0.2) == []
    assert 0.15 < time.monotonic() - start < 2
    threading.Timer(0.1, lambda: c.sendall(b"wake")).start()
    ready = {key.data: ev for key, ev in sel.select(3)}
    assert ready == {"server side": EVENT_READ}
    assert s.recv(10) == b"wake"
    other = board.socket()
    other.connect((BOARD, 7000))
    ready = {key.data: ev for key, ev in sel.select(3)}
    assert ready == {"listener": EVENT_READ}
    assert sel.get_key(s).data == "server side" and len(sel.get_map()) == 3
    sel.unregister(s)
    with pytest.raises(KeyError):
        sel.get_key(s)
    with pytest.raises(ValueError):
        sel.register(object(), EVENT_READ)
    sel.close()


def test_selector_echo_server_loop(board, listener):
    listener.setblocking(False)
    sel = TwinSelector()
    sel.register(listener, EVENT_READ)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            for key, _ in sel.select(0.1):
                if key.fileobj is listener:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    sel.register(conn, EVENT_READ)
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(4096)
                except BlockingIOError:
                    continue
                if data:
                    conn.sendall(data)
                else:
                    sel.unregister(conn)
                    conn.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        for i in range(5):
            c = board.socket()
            c.settimeout(3)
            c.connect((BOARD, 7000))
            c.sendall(b"msg %d" % i)
            assert c.recv(100) == b"msg %d" % i
            c.close()
    finally:
        stop.set()
        t.join(3)


def test_a_connect_that_timed_out_is_aborted_when_the_board_answers(board, listener, fake):
    fake.pause(0)
    fake.pause(1)
    c = board.socket()
    c.settimeout(0.2)
    with pytest.raises(TimeoutError):
        c.connect((BOARD, 7000))
    fake.resume(0)
    fake.resume(1)
    wait_for(lambda: fake.received[0x65] == 1, what="the ABORT of the late connection")
    c.settimeout(3)
    c.connect((BOARD, 7000))               # the socket can try again


def test_a_forgotten_socket_is_closed_on_the_board(board, listener, fake):
    import gc

    c, s, _ = connected(board, listener)
    handle = c.endpoint.handle
    del c
    gc.collect()
    assert handle not in board._eps
    assert s.recv(10) == b""               # the board sent FIN
