#!/usr/bin/env python3
"""`make bench`: measure the stack of one simulated board, with the client in the namespace.

Starts one simulated board as a user would (``python -m twinstack sim --netns NAME
--no-log-frames``), waits for its ``ready`` line, and measures with the load generator (this
file, ``bench.py client ...``) running inside the peer namespace:

==========================  =========  ====================================================
figure                      unit       how
==========================  =========  ====================================================
stack.bulk_mbps             MB/s       20 MiB into TCP discard (port 9); 1 MB = 10^6 bytes;
                                       from connect until the board's FIN after ours
stack.conn_per_s            conn/s     200 sequential connections to echo (port 7):
                                       connect, 100 bytes, read them back, close
stack.ping_ms_p50           ms         median RTT of ``ping -c 50 -i 0.05`` (56 bytes)
stack.heap_bytes_per_conn   bytes      8 established echo connections: the board's
                                       ``heap_alloc`` (gc.mem_alloc()) with them open minus
                                       without, divided by 8 (each the lowest reading of
                                       150 samples, i.e. live memory; median of 5 rounds)
==========================  =========  ====================================================

The figures are merged into ``bench/results.json`` (keys of other benchmarks are kept) and
printed as a table. The board is stopped with SIGINT at the end, on errors too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
ECHO_PORT = 7
DISCARD_PORT = 9

BULK_BYTES = 20 * 1024 * 1024
CONNS = 200
CONN_BYTES = 100
PINGS = 50
HOLD_CONNS = 8
HEAP_SAMPLES = 150
HEAP_ROUNDS = 5

log = logging.getLogger("bench")

Figures = dict[str, dict[str, Any]]


# -- results file ---------------------------------------------------------------------------


def figure(value: float, unit: str, **details: Any) -> dict[str, Any]:
    """One measurement: its value, its unit and optional details (how it was obtained)."""
    return {"value": value, "unit": unit, **details}


def split_figure(measured: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the figure as the results file has it: value and unit only, the details)."""
    core = {"value": measured["value"], "unit": measured["unit"]}
    return core, {k: v for k, v in measured.items() if k not in core}


def _merged(old: Any, new: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(old) if isinstance(old, Mapping) else {}
    out.update(new)
    return dict(sorted(out.items()))


def merge_results(existing: Mapping[str, Any] | None, figures: Figures, date: str,
                  machine: Mapping[str, Any],
                  details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The results file with ``figures`` written in: other keys (and other benchmarks'
    figures) are kept, ours replaced; ``date`` and ``machine`` describe the latest run.
    ``details`` (per figure: how it was measured) go to a ``details`` map merged alike."""
    out: dict[str, Any] = dict(existing) if isinstance(existing, Mapping) else {}
    out["date"] = date
    out["machine"] = dict(machine)
    out["figures"] = _merged(out.get("figures"), figures)
    if details:
        out["details"] = _merged(out.get("details"), details)
    return out


def load_results(path: Path) -> dict[str, Any] | None:
    """The existing results file, or None if it is missing or not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable %s: %s", path, e)
        return None
    return data if isinstance(data, dict) else None


def write_results(path: Path, data: Mapping[str, Any]) -> None:
    """Write the results atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def format_value(value: Any) -> str:
    """A figure's value for the table: 3 significant-ish digits, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if value else "0"
    return str(value)


def format_table(figures: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table of figures, sorted by name."""
    rows = [("figure", "value", "unit")]
    for name in sorted(figures):
        f = figures[name]
        rows.append((name, format_value(f.get("value")), str(f.get("unit", ""))))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for i, (name, value, unit) in enumerate(rows):
        lines.append(f"{name:<{widths[0]}}  {value:>{widths[1]}}  {unit}".rstrip())
        if i == 0:
            lines.append("-" * (widths[0] + widths[1] + widths[2] + 4))
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
                            "arch": platform.machine(), "python": platform.python_version()}
    mp = Path(sys.executable).with_name("micropython")
    try:
        out = subprocess.run([str(mp), "-c", "import sys; print(sys.version)"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        if out:
            info["micropython"] = out
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# -- load generator (runs inside the namespace) ---------------------------------------------


def client_bulk(ip: str, port: int, nbytes: int, timeout: float) -> dict[str, Any]:
    """Send nbytes into discard, half-close, wait for the board's FIN: bytes and seconds."""
    chunk = bytes(i % 251 for i in range(65536))
    view = memoryview(chunk)
    start = time.monotonic()
    with socket.create_connection((ip, port), timeout=min(10.0, timeout)) as s:
        s.settimeout(timeout)
        sent = 0
        while sent < nbytes:
            n = s.send(view[:min(len(chunk), nbytes - sent)])
            sent += n
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"bulk: {sent} of {nbytes} bytes after {timeout} s")
        s.shutdown(socket.SHUT_WR)
        eof = s.recv(1) == b""
    return {"bytes": sent, "seconds": time.monotonic() - start, "eof": eof}


def client_conns(ip: str, port: int, count: int, size: int, timeout: float) -> dict[str, Any]:
    """count x (connect, send size bytes, read them back, close), sequentially."""
    data = bytes(i % 251 for i in range(size))
    done, errors = 0, []
    start = time.monotonic()
    for i in range(count):
        if time.monotonic() - start > timeout:
            errors.append(f"stopped at {i}: over {timeout} s")
            break
        try:
            with socket.create_connection((ip, port), timeout=5) as s:
                s.sendall(data)
                got = b""
                while len(got) < size:
                    part = s.recv(size - len(got))
                    if not part:
                        break
                    got += part
            if got == data:
                done += 1
            else:
                errors.append(f"{i}: echo of {len(got)} bytes differs")
        except OSError as e:
            errors.append(f"{i}: {e!r}")
    return {"done": done, "count": count, "seconds": time.monotonic() - start,
            "errors": errors[:5]}


def client_hold(ip: str, port: int, count: int, limit: float) -> dict[str, Any]:
    """Open count echo connections (each checked with a 1-byte echo), say so, keep them open
    until stdin has a line (or ``limit`` s), then close them."""
    socks = []
    try:
        for _ in range(count):
            s = socket.create_connection((ip, port), timeout=5)
            socks.append(s)
            s.sendall(b"!")
            if s.recv(1) != b"!":
                raise OSError("echo check failed")
        print(json.dumps({"open": len(socks)}), flush=True)
        done = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
        done.wait(limit)
    finally:
        for s in socks:
            s.close()
    return {"closed": len(socks)}


def run_client(argv: Sequence[str]) -> int:
    """``bench.py client KIND ...``: one load-generator run; prints its JSON result."""
    p = argparse.ArgumentParser(prog="bench.py client")
    p.add_argument("kind", choices=["bulk", "conns", "hold"])
    p.add_argument("ip")
    p.add_argument("--port", type=int, default=ECHO_PORT)
    p.add_argument("--nbytes", type=int, default=BULK_BYTES)
    p.add_argument("--count", type=int, default=CONNS)
    p.add_argument("--size", type=int, default=CONN_BYTES)
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args(argv)
    if a.kind == "bulk":
        result = client_bulk(a.ip, a.port, a.nbytes, a.timeout)
    elif a.kind == "conns":
        result = client_conns(a.ip, a.port, a.count, a.size, a.timeout)
    else:
        result = client_hold(a.ip, a.port, a.count, a.timeout)
    print(json.dumps(result), flush=True)
    return 0


# -- the board ------------------------------------------------------------------------------


class Board:
    """One ``twinstack sim`` run: started, waited for, stopped with SIGINT."""

    def __init__(self, netns: str, extra: Sequence[str] = ()) -> None:
        self.netns = netns
        self.fields: dict[str, str] = {}
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "twinstack", "sim", "--netns", netns, "--no-log-frames",
             *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, cwd=ROOT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            log.debug("board | %s", line)
            if line.startswith("ready "):
                self.fields.update(re.findall(r"(\w+)=(\S+)", line))
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        if not self._ready.wait(timeout) or "usb" not in self.fields:
            raise RuntimeError("the simulated board did not come up:\n" + "\n".join(self.lines))
        log.info("board ready: %s", " ".join(f"{k}={v}" for k, v in self.fields.items()))

    @property
    def ip(self) -> str:
        return self.fields["board"].split("/")[0]

    def stop(self) -> int | None:
        """SIGINT, wait; SIGTERM, then SIGKILL if it will not stop. The exit status."""
        for sig, wait in ((signal.SIGINT, STOP_TIMEOUT_S), (signal.SIGTERM, 10.0)):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                log.warning("board did not stop on %s", sig.name)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode


def ns_client(board: Board, *args: str, timeout: float) -> dict[str, Any]:
    """Run ``bench.py client ARGS`` in the board's namespace; its JSON result."""
    proc = subprocess.run(["ip", "netns", "exec", board.netns, sys.executable,
                           str(Path(__file__).resolve()), "client", *args],
                          capture_output=True, text=True, timeout=timeout)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"client {' '.join(args)}: exit {proc.returncode}\n"
                           f"{proc.stdout}{proc.stderr}")
    return json.loads(lines[-1])


# -- the measurements -----------------------------------------------------------------------


def measure_ping(board: Board) -> dict[str, Any]:
    """Median RTT of 50 pings (56 bytes) after one warm-up ping (ARP)."""
    subprocess.run(["ip", "netns", "exec", board.netns, "ping", "-c", "1", "-W", "2",
                    board.ip], capture_output=True, timeout=10)
    out = subprocess.run(["ip", "netns", "exec", board.netns, "ping", "-c", str(PINGS),
                          "-i", "0.05", "-W", "2", board.ip],
                         capture_output=True, text=True, timeout=60).stdout
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out)]
    if not rtts:
        raise RuntimeError("no ping replies:\n" + out)
    return figure(round(statistics.median(rtts), 3), "ms", replies=len(rtts), sent=PINGS,
                  min=min(rtts), max=max(rtts))


def measure_bulk(board: Board) -> dict[str, Any]:
    r = ns_client(board, "bulk", board.ip, "--port", str(DISCARD_PORT), "--nbytes",
                  str(BULK_BYTES), "--timeout", "150", timeout=180)
    if not r["eof"]:
        raise RuntimeError(f"bulk: the board did not close after the data: {r}")
    return figure(round(r["bytes"] / 1e6 / r["seconds"], 3), "MB/s", bytes=r["bytes"],
                  seconds=round(r["seconds"], 2))


def measure_conns(board: Board) -> dict[str, Any]:
    r = ns_client(board, "conns", board.ip, "--port", str(ECHO_PORT), "--count", str(CONNS),
                  "--size", str(CONN_BYTES), "--timeout", "120", timeout=150)
    if r["done"] != r["count"]:
        log.warning("connections: %d of %d worked: %s", r["done"], r["count"], r["errors"])
    return figure(round(r["done"] / r["seconds"], 1), "conn/s", done=r["done"],
                  count=r["count"], seconds=round(r["seconds"], 2))


def heap_floor(stats: Callable[[], dict[str, int]], samples: int) -> int:
    """The lowest heap_alloc over ``samples`` stats requests: each request leaves garbage, so
    the board collects now and then and the lowest reading is live memory."""
    return min(stats()["heap_alloc"] for _ in range(samples))


def measure_heap(board: Board) -> dict[str, Any]:
    """Heap per established connection: (floor with N open - floor with none) / N, the
    median over a few rounds.

    A floor is the lowest ``heap_alloc`` over many samples: every stats request leaves
    garbage, so the board collects several times meanwhile and the lowest reading is live
    memory. MicroPython's collector is conservative, so a floor is now and then a few KB off
    (a stale pointer keeps a freed buffer alive): the median of the rounds is taken."""
    from twinstack.link import Link

    bases: list[int] = []
    loads: list[int] = []
    conns: list[int] = []
    with Link(board.fields["usb"]) as link:
        def stats() -> dict[str, int]:
            return link.stats(timeout=5)

        for _ in range(HEAP_ROUNDS):
            wait_conns(stats, 0)
            bases.append(heap_floor(stats, HEAP_SAMPLES))
            loaded, n = hold_and_measure(board, stats)
            loads.append(loaded)
            conns.append(n)
        wait_conns(stats, 0)
    if any(n != HOLD_CONNS for n in conns):
        raise RuntimeError(f"expected {HOLD_CONNS} connections on the board, saw {conns}")
    per_conn = statistics.median((lo - b) / HOLD_CONNS for lo, b in zip(loads, bases, strict=True))
    return figure(round(per_conn), "bytes", connections=HOLD_CONNS, heap_empty=bases,
                  heap_loaded=loads)


def hold_and_measure(board: Board, stats: Callable[[], dict[str, int]]) -> tuple[int, int]:
    """Open HOLD_CONNS echo connections from the namespace; (heap floor, tcp_conns) while
    they are open. They are closed again before this returns."""
    holder = subprocess.Popen(
        ["ip", "netns", "exec", board.netns, sys.executable, str(Path(__file__).resolve()),
         "client", "hold", board.ip, "--count", str(HOLD_CONNS), "--timeout", "60"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        line = holder.stdout.readline()
        if not line.startswith("{"):
            err = holder.stderr.read() if holder.stderr else ""
            raise RuntimeError(f"hold: {line}{err}")
        conns = stats()["tcp_conns"]
        loaded = heap_floor(stats, HEAP_SAMPLES)
        holder.stdin.write("close\n")
        holder.stdin.flush()
        holder.wait(15)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(5)
    return loaded, conns


def wait_conns(stats: Callable[[], dict[str, int]], want: int, timeout: float = 10.0) -> int:
    """Poll until the board has ``want`` TCP connections (TIME-WAIT runs out), bounded."""
    deadline = time.monotonic() + timeout
    n = stats()["tcp_conns"]
    while n != want and time.monotonic() < deadline:
        time.sleep(0.25)
        n = stats()["tcp_conns"]
    if n != want:
        log.warning("board still has %d TCP connections (wanted %d)", n, want)
    return n


MEASUREMENTS: list[tuple[str, Callable[[Board], dict[str, Any]]]] = [
    ("stack.ping_ms_p50", measure_ping),
    ("stack.bulk_mbps", measure_bulk),
    ("stack.conn_per_s", measure_conns),
    ("stack.heap_bytes_per_conn", measure_heap),
]


def run_bench(netns: str, results: Path, only: Sequence[str] = ()) -> int:
    """Start a board, measure, stop it, merge and print. Exit status 0 if all worked."""
    board = Board(netns)
    figures: Figures = {}
    details: dict[str, Any] = {}
    failed: list[str] = []
    try:
        board.wait_ready()
        for name, measure in MEASUREMENTS:
            if only and name not in only:
                continue
            log.info("measuring %s", name)
            start = time.monotonic()
            try:
                figures[name], details[name] = split_figure(measure(board))
            except (RuntimeError, OSError, subprocess.SubprocessError, KeyError,
                    ValueError) as e:
                log.error("%s failed: %s", name, e)
                failed.append(name)
                continue
            log.info("%s = %s %s %s (%.1f s)", name, figures[name]["value"],
                     figures[name]["unit"], details[name], time.monotonic() - start)
    finally:
        status = board.stop()
        log.info("board stopped (exit %s)", status)
    for line in board.lines:
        if line.startswith("netkernel: stats"):
            log.debug("%s", line)
            m = re.search(r" errors=(\d+)", line)
            if m and m.group(1) != "0":
                log.error("the board counted %s internal errors", m.group(1))
                failed.append("board errors")
    if figures:
        data = merge_results(load_results(results), figures,
                             dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             machine_info(), details)
        write_results(results, data)
        print(format_table(figures))
        print(f"written to {results}")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed or not figures else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["client"]:
        return run_client(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--netns", default=None, help="peer namespace name (default: random)")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--only", action="append", default=[], help="measure only this figure")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="bench: %(message)s")
    if os.geteuid() != 0:
        print("bench: needs root (make bench provides a namespace)", file=sys.stderr)
        return 2
    netns = a.netns or f"bn{secrets.token_hex(3)}"
    try:
        return run_bench(netns, a.results, a.only)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
