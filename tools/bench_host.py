"""The host-link figures of `make bench` (imported by bench.py): applications on the host,
TwinStack sockets over the board's USB link, clients in the namespace.

==========================  =========  ====================================================
figure                      unit       how
==========================  =========  ====================================================
e2e.http_req_per_s          req/s      ``ab -n 400 -c 8`` (keep-alive off) in the namespace
                                       against twinstack.examples.http_server on the host,
                                       1,000-byte pages; 0 failed requests required
e2e.bulk_to_host_mbps       MB/s       20 MiB from the namespace (``bench.py client bulk``)
                                       into a host application reading a board socket, from
                                       connect until the board's FIN (sent when the host
                                       closes after the client's FIN)
e2e.bulk_from_host_mbps     MB/s       20 MiB from a host application (``sendall``) to a
                                       sink in the namespace, from connect until the sink
                                       has everything and closes
==========================  =========  ====================================================

The board is a default one (``twinstack sim`` as a user starts it).
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HTTP_REQUESTS = 400
HTTP_CONCURRENCY = 8
HTTP_PAGE = 1000
HOST_BULK_BYTES = 20 * 1024 * 1024
HOST_PORT_HTTP = 80
HOST_PORT_BULK = 6100
SINK_PORT = 6101

log = logging.getLogger("bench")


def client_sink(port: int, timeout: float) -> dict[str, Any]:
    """(namespace side) Accept one connection, read it to its end, close: bytes, seconds
    from the accept to the end."""
    import socket

    with socket.create_server(("0.0.0.0", port)) as srv:
        srv.settimeout(timeout)
        print('{"ready": true}', flush=True)
        conn, _ = srv.accept()
        start = time.monotonic()
        total = 0
        with conn:
            conn.settimeout(timeout)
            while data := conn.recv(65536):
                total += len(data)
    return {"bytes": total, "seconds": time.monotonic() - start}


def measure_http(board: Any, osm: Any) -> dict[str, Any]:
    from twinstack.examples import http_server as http

    with http.TwinHTTPServer(osm, HOST_PORT_HTTP) as server:
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        out = subprocess.run(
            ["ip", "netns", "exec", board.netns, "ab", "-q", "-n", str(HTTP_REQUESTS), "-c",
             str(HTTP_CONCURRENCY), "-s", "30", f"http://{board.ip}/page/{HTTP_PAGE}"],
            capture_output=True, text=True, timeout=300).stdout
        server.shutdown()
        t.join(10)
    rate = re.search(r"Requests per second:\s+([\d.]+)", out)
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    complete = re.search(r"Complete requests:\s+(\d+)", out)
    if not rate or not failed or not complete:
        raise RuntimeError("ab printed no figures:\n" + out)
    if int(failed[1]) or int(complete[1]) != HTTP_REQUESTS:
        raise RuntimeError(f"ab: {complete[1]} complete, {failed[1]} failed")
    return {"value": round(float(rate[1]), 1), "unit": "req/s", "requests": HTTP_REQUESTS,
            "concurrency": HTTP_CONCURRENCY, "page_bytes": HTTP_PAGE, "keepalive": False}


def measure_bulk_to_host(board: Any, osm: Any, ns_client: Callable[..., dict]) -> dict:
    lsn = osm.socket()
    lsn.bind(("0.0.0.0", HOST_PORT_BULK))
    lsn.listen(1)
    lsn.settimeout(60)
    got = [0]

    def app() -> None:
        conn, _ = lsn.accept()
        with conn:
            conn.settimeout(120)
            while data := conn.recv(65536):
                got[0] += len(data)

    t = threading.Thread(target=app, daemon=True)
    t.start()
    try:
        r = ns_client(board, "bulk", board.ip, "--port", str(HOST_PORT_BULK), "--nbytes",
                      str(HOST_BULK_BYTES), timeout=300)
    finally:
        t.join(30)
        lsn.close()
    if got[0] != HOST_BULK_BYTES or not r.get("eof"):
        raise RuntimeError(f"host app got {got[0]} of {HOST_BULK_BYTES} bytes ({r})")
    return {"value": round(r["bytes"] / r["seconds"] / 1e6, 3), "unit": "MB/s",
            "bytes": r["bytes"], "seconds": round(r["seconds"], 2)}


def measure_bulk_from_host(board: Any, osm: Any) -> dict:
    sink = subprocess.Popen(
        ["ip", "netns", "exec", board.netns, sys.executable, str(Path(__file__).resolve()),
         "sink", str(SINK_PORT)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        if "ready" not in sink.stdout.readline():
            raise RuntimeError("the sink did not start")
        chunk = bytes(i % 251 for i in range(65536))
        start = time.monotonic()
        with osm.socket() as s:
            s.settimeout(120)
            s.connect((board.fields["peer"], SINK_PORT))
            sent = 0
            while sent < HOST_BULK_BYTES:
                n = min(len(chunk), HOST_BULK_BYTES - sent)
                s.sendall(chunk[:n])
                sent += n
            s.shutdown(1)
            s.recv(1)          # the sink closes once it has read everything
        seconds = time.monotonic() - start
        out, _ = sink.communicate(timeout=60)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.communicate(timeout=5)
    import json

    res = json.loads(out.strip().splitlines()[-1])
    if res["bytes"] != HOST_BULK_BYTES:
        raise RuntimeError(f"the sink got {res['bytes']} of {HOST_BULK_BYTES} bytes")
    return {"value": round(HOST_BULK_BYTES / seconds / 1e6, 3), "unit": "MB/s",
            "bytes": HOST_BULK_BYTES, "seconds": round(seconds, 2)}


E2E_FIGURES = ("e2e.http_req_per_s", "e2e.bulk_to_host_mbps", "e2e.bulk_from_host_mbps")


def run_host(board: Any, ns_client: Callable[..., dict],
             only: tuple[str, ...] | list[str] = ()) -> tuple[dict[str, dict], list[str]]:
    """The e2e figures on a ready board (bench.Board): (figures, names that failed)."""
    import twinstack

    todo = [n for n in E2E_FIGURES if not only or n in only]
    figures: dict[str, dict] = {}
    failed: list[str] = []
    if not todo:
        return figures, failed
    with twinstack.connect(board.fields["usb"], timeout=10.0) as osm:
        for name in todo:
            log.info("measuring %s", name)
            start = time.monotonic()
            try:
                if name == "e2e.http_req_per_s":
                    figures[name] = measure_http(board, osm)
                elif name == "e2e.bulk_to_host_mbps":
                    figures[name] = measure_bulk_to_host(board, osm, ns_client)
                else:
                    figures[name] = measure_bulk_from_host(board, osm)
                figures[name]["kernels"] = osm.iops
            except (RuntimeError, OSError, subprocess.SubprocessError, KeyError,
                    ValueError) as e:
                log.error("%s failed: %s", name, e)
                failed.append(name)
                continue
            log.info("%s = %s (%.1f s)", name, figures[name], time.monotonic() - start)
    return figures, failed


if __name__ == "__main__":
    if sys.argv[1:2] == ["sink"]:
        import json

        print(json.dumps(client_sink(int(sys.argv[2]), 120.0)), flush=True)
