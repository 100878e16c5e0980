"""The asyncio API on board sockets, against the fake board."""

from __future__ import annotations

import asyncio
import os

import pytest
import twinstack

from tests.host.conftest import wait_for

pytestmark = pytest.mark.timeout(20)
BOARD = "10.0.0.2"


def run(coro, timeout: float = 10.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def test_open_connection_to_the_echo_service(board):
    async def main():
        reader, writer = await twinstack.aio.open_connection(board, BOARD, 7)
        writer.write(b"hello board")
        await writer.drain()
        assert await reader.readexactly(11) == b"hello board"
        assert writer.get_extra_info("peername") == (BOARD, 7)
        assert writer.get_extra_info("iop") in (0, 1)
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()

    run(main())


def test_open_connection_refused(board):
    async def main():
        with pytest.raises(ConnectionRefusedError):
            await twinstack.aio.open_connection(board, BOARD, 4444)

    run(main())


def test_start_server_with_20_concurrent_clients(board, fake):
    async def handle(reader, writer):
        data = await reader.read()            # until the client's EOF
        writer.write(data[::-1])
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def client(i):
        reader, writer = await twinstack.aio.open_connection(board, BOARD, 8080)
        msg = os.urandom(1000 + 997 * i)
        writer.write(msg)
        await writer.drain()
        writer.write_eof()
        got = await reader.read()
        writer.close()
        await writer.wait_closed()
        return got == msg[::-1]

    async def main():
        server = await twinstack.aio.start_server(handle, board, "0.0.0.0", 8080)
        async with server:
            assert server.is_serving() and len(server.sockets) == 1
            results = await asyncio.gather(*(client(i) for i in range(20)))
        assert not server.is_serving()
        return results

    assert run(main()) == [True] * 20
    wait_for(lambda: not fake.listeners, what="listeners closed")
    assert fake.violations == []


def test_paused_reader_stops_consumed_reports(board, fake):
    credit = board.rx_credit
    data = os.urandom(120_000)
    consumed_seen = []

    async def main():
        gate = asyncio.Event()
        done = asyncio.get_running_loop().create_future()

        async def handle(reader, writer):
            await gate.wait()
            got = bytearray()
            while len(got) < len(data):
                got += await reader.read(5000)
            done.set_result(bytes(got))
            writer.close()

        server = await twinstack.aio.start_server(handle, board, port=8081, limit=4096)
        reader, writer = await twinstack.aio.open_connection(board, BOARD, 8081)
        writer.write(data)
        await writer.drain()
        # The server's StreamReader fills (2 * limit), pauses the transport, and the
        # board stops at the credit: nothing more is reported consumed.
        await asyncio.sleep(0.3)
        srv = [s for s in fake.sockets(0) + fake.sockets(1) if s.port == 8081 and
               s.kind == "tcp"][0]
        before = srv.consumed
        consumed_seen.append(before)
        assert srv.delivered - srv.consumed == credit
        assert before <= 2 * 4096 + 8192      # only what the StreamReader took
        await asyncio.sleep(0.2)
        assert srv.consumed == before
        gate.set()
        assert await asyncio.wait_for(done, 5) == data
        writer.close()
        server.close()
        await server.wait_closed()

    run(main())
    assert fake.violations == []


def test_server_serve_forever_and_close(board):
    async def main():
        server = await twinstack.aio.start_server(lambda r, w: w.close(), board, port=8082)
        task = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0.05)
        reader, writer = await twinstack.aio.open_connection(board, BOARD, 8082)
        assert await reader.read() == b""     # the handler closed it
        writer.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await twinstack.aio.open_connection(board, BOARD, 8082)

    run(main())


def test_lost_link_reaches_the_streams(board, fake):
    async def main():
        reader, writer = await twinstack.aio.open_connection(board, BOARD, 7)
        fake.drop_link()
        with pytest.raises(ConnectionResetError):
            await reader.read(10)

    run(main())
