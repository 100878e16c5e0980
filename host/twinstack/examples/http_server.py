"""An HTTP server on TwinStack sockets: the host serves, the board does the TCP/IP.

The standard library's :mod:`http.server` request handlers run unchanged over a
:class:`twinstack.socket.Socket` (it has ``makefile``); this file only supplies the accept loop
(``socketserver`` would want a ``fileno()`` to select on) and a page handler:

* ``GET /`` a short index page;
* ``GET /page/N`` N bytes of a fixed pattern (:func:`page_body`), so a client can check every
  byte it got;

HTTP/1.0, one request per connection (keep-alive off). Run it against a board::

    python -m twinstack.examples.http_server /tmp/twinstack/ts/usb --port 80
    ip netns exec ts curl http://10.77.0.2/page/100000 | md5sum
"""

from __future__ import annotations

import argparse
import logging
import re
import threading
from http.server import BaseHTTPRequestHandler

import twinstack

log = logging.getLogger(__name__)

_PATTERN = bytes(range(32, 127)) + b"\n"


def page_body(n: int) -> bytes:
    """The body of ``/page/N``: printable bytes, line after line, cut to ``n`` bytes."""
    reps = n // len(_PATTERN) + 1
    return (_PATTERN * reps)[:n]


class PageHandler(BaseHTTPRequestHandler):
    """``/`` and ``/page/N`` (N ≤ 16 MiB)."""

    server_version = "TwinStackHTTP/1.0"
    protocol_version = "HTTP/1.0"
    max_page = 16 << 20

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's naming)
        m = re.fullmatch(r"/page/(\d+)", self.path)
        if self.path == "/":
            body = b"<html><body><h1>TwinStack</h1><p>TCP/IP on the board.</p></body></html>\n"
            ctype = "text/html"
        elif m and int(m[1]) <= self.max_page:
            body = page_body(int(m[1]))
            ctype = "text/plain"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("%s %s", self.client_address[0], format % args)


class TwinHTTPServer:
    """Accept on a board's listening socket; one thread per connection."""

    def __init__(self, board: twinstack.Board, port: int = 80,
                 handler: type[BaseHTTPRequestHandler] = PageHandler, backlog: int = 16,
                 request_timeout: float = 30.0) -> None:
        self.board = board
        self.handler = handler
        self.request_timeout = request_timeout
        self.sock = board.socket()
        self.sock.bind(("0.0.0.0", port))
        self.sock.listen(backlog)
        self.sock.settimeout(0.2)       # so serve_forever sees its stop event
        self.served = 0
        self.errors = 0
        self._stop = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()

    def serve_forever(self) -> None:
        """Accept and serve until :meth:`shutdown`."""
        while not self._stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if self._stop.is_set():
                    break
                raise e
            t = threading.Thread(target=self._serve_one, args=(conn, addr), daemon=True)
            with self._lock:            # shutdown() joins only threads that have started
                self._threads.add(t)
                t.start()

    def _serve_one(self, conn: twinstack.socket.Socket, addr: tuple[str, int]) -> None:
        try:
            with conn:
                conn.settimeout(self.request_timeout)
                self.handler(conn, addr, self)      # type: ignore[arg-type]
                conn.shutdown(twinstack.socket.SHUT_WR)
            with self._lock:
                self.served += 1
        except OSError as e:
            log.warning("request from %s:%d failed: %s", addr[0], addr[1], e)
            with self._lock:
                self.errors += 1
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting, wait (bounded) for requests in progress, close the listener."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout)
        self.sock.close()

    def __enter__(self) -> TwinHTTPServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the board: a serial device, pty or pyserial URL")
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    with twinstack.connect(args.url) as board, TwinHTTPServer(board, args.port) as server:
        log.info("serving http on port %d of the board (%d IOPs); Ctrl-C stops",
                 args.port, board.iops)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
