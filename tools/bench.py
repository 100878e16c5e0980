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
scale.bulk16_mbps_1k        MB/s       a board started with ``--kernels 1``: 16 parallel
                                       connections into discard, 2 MiB each, all bytes
                                       over the time from the first connect to the last
                                       FIN from the board; median of 5 rounds
scale.bulk16_mbps_2k        MB/s       the same on a board started with ``--kernels 2``
scale.ratio_2k_1k           x          the median over 5 pairs of rounds of the 2-kernel
                                       round over the 1-kernel round next to it (target
                                       1.85, the limit is 2.0); its details give the
                                       pairs, the medians' ratio, the share of the
                                       1-kernel run's busy time spent on chip I/O
                                       (serial: one SPI bus) and the bound that puts on
                                       the ratio at host speed (Amdahl: 1 / (s + (1 - s)
                                       / 2))
scale.conn_per_s_2k         conn/s     ``--kernels 2``: 400 connections to echo, 8 clients
                                       in parallel each connecting, echoing 100 bytes and
                                       closing one after another
==========================  =========  ====================================================

and the counted yardstick (no board, no namespace: the MicroPython unix port under valgrind,
tools/segment_cost.py), the same on every run and every machine:

==========================  =========  ====================================================
count.stack_instr_per_seg   instr      instructions per 1,460-byte TCP segment into the
                                       discard service through one kernel's stack
                                       (frame in, ACK out, the service's read), counted
count.kernel_instr_per_seg  instr      the same frames through a one-kernel board's path:
                                       a NIC that reads them from the recording (no SPI
                                       bus), the dispatcher, the rings, the kernel's turn
==========================  =========  ====================================================

plus the host-link figures ``e2e.http_req_per_s``, ``e2e.bulk_to_host_mbps`` and
``e2e.bulk_from_host_mbps`` (host applications on TwinStack sockets: tools/bench_host.py says
how each is measured).

The ``stack.*`` figures come from one board started as a user would (the default number of
kernels, recorded in each figure's details), the ``e2e.*`` figures from one with a larger
heap (``HOST_BOARD_ARGS``); the ``scale.*`` figures from a board per round, started with
``--kernels 1`` and ``--kernels 2`` in turns (1, 2, 2, 1, ...). For every scale
measurement the details say how much CPU each party used over the run, as a share of one
core (``cpu_share``): the load generator (``os.times()`` inside it), the board's process
(``/proc/PID/stat``, its threads separately: kernels, dispatcher, emulator) and the whole
machine (``/proc/stat``), so a figure limited by the load generator or by a machine with
too few cores shows as such. They are printed under the table too.

The figures are merged into ``bench/results.json`` (keys of other benchmarks are kept) and
printed as a table. Every board is stopped with SIGINT at the end, on errors too.
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
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench_host import E2E_FIGURES, run_host  # a sibling file (tools/ is on sys.path)

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
SCALE_CONNS = 16
SCALE_BYTES_EACH = 2 * 1024 * 1024
SCALE_CONN_COUNT = 400
SCALE_CONN_PARALLEL = 8
SCALE_TARGET = 1.85
RUNTIME_BASE = Path("/tmp/twinstack")

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


def cpu_seconds() -> float:
    """CPU time (user + system) this process has used so far, all its threads."""
    t = os.times()
    return t.user + t.system


def client_conns(ip: str, port: int, count: int, size: int, timeout: float,
                 parallel: int = 1) -> dict[str, Any]:
    """count x (connect, send size bytes, read them back, close): ``parallel`` clients,
    each one connection after another (1: strictly sequential)."""
    data = bytes(i % 251 for i in range(size))
    done, errors = [0], []
    lock = threading.Lock()
    todo = iter(range(count))
    start = time.monotonic()
    cpu0 = cpu_seconds()

    def worker() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            if time.monotonic() - start > timeout:
                with lock:
                    errors.append(f"stopped at {i}: over {timeout} s")
                return
            try:
                with socket.create_connection((ip, port), timeout=5) as s:
                    s.sendall(data)
                    got = b""
                    while len(got) < size:
                        part = s.recv(size - len(got))
                        if not part:
                            break
                        got += part
                with lock:
                    if got == data:
                        done[0] += 1
                    else:
                        errors.append(f"{i}: echo of {len(got)} bytes differs")
            except OSError as e:
                with lock:
                    errors.append(f"{i}: {e!r}")

    if parallel <= 1:
        worker()
    else:
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(parallel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout + 10)
    seconds = time.monotonic() - start
    return {"done": done[0], "count": count, "parallel": parallel, "seconds": seconds,
            "cpu_seconds": cpu_seconds() - cpu0, "errors": errors[:5]}


def client_bulk_parallel(ip: str, port: int, conns: int, nbytes: int,
                         timeout: float) -> dict[str, Any]:
    """``conns`` connections into discard at once, ``nbytes`` each: each sends, half-closes
    and waits for the board's FIN. Bytes, seconds from the first connect to the last FIN,
    each connection's seconds, and the CPU time this process used meanwhile."""
    chunk = memoryview(bytes(i % 251 for i in range(65536)))
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    start = time.monotonic()
    cpu0 = cpu_seconds()

    def one() -> None:
        r: dict[str, Any] = {"bytes": 0, "eof": False, "error": None}
        t0 = time.monotonic()
        try:
            with socket.create_connection((ip, port), timeout=min(10.0, timeout)) as s:
                s.settimeout(timeout)
                while r["bytes"] < nbytes:
                    r["bytes"] += s.send(chunk[:min(len(chunk), nbytes - r["bytes"])])
                    if time.monotonic() - start > timeout:
                        raise TimeoutError(f"{r['bytes']} of {nbytes} bytes after {timeout} s")
                s.shutdown(socket.SHUT_WR)
                r["eof"] = s.recv(1) == b""
        except OSError as e:
            r["error"] = repr(e)
        r["seconds"] = round(time.monotonic() - t0, 3)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=one, daemon=True) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 15)
    seconds = time.monotonic() - start
    return {"bytes": sum(r["bytes"] for r in results), "conns": conns,
            "finished": sum(1 for r in results if r["eof"] and r["error"] is None),
            "seconds": seconds, "conn_seconds": sorted(r["seconds"] for r in results),
            "cpu_seconds": cpu_seconds() - cpu0,
            "errors": [r["error"] for r in results if r["error"]][:5]}


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
    p.add_argument("kind", choices=["bulk", "bulkn", "conns", "hold"])
    p.add_argument("ip")
    p.add_argument("--port", type=int, default=ECHO_PORT)
    p.add_argument("--nbytes", type=int, default=BULK_BYTES, help="(bulkn: per connection)")
    p.add_argument("--conns", type=int, default=SCALE_CONNS, help="bulkn: connections")
    p.add_argument("--count", type=int, default=CONNS)
    p.add_argument("--size", type=int, default=CONN_BYTES)
    p.add_argument("--parallel", type=int, default=1, help="conns: clients at once")
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args(argv)
    if a.kind == "bulk":
        result = client_bulk(a.ip, a.port, a.nbytes, a.timeout)
    elif a.kind == "bulkn":
        result = client_bulk_parallel(a.ip, a.port, a.conns, a.nbytes, a.timeout)
    elif a.kind == "conns":
        result = client_conns(a.ip, a.port, a.count, a.size, a.timeout, a.parallel)
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
        self.up_fields: dict[str, str] = {}
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
            if line.startswith("netkernel: up "):
                self.up_fields.update(re.findall(r"(\w+)=(\S+)", line))
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

    @property
    def kernels(self) -> int | None:
        """How many net kernels the firmware says it runs (its ``netkernel: up`` line)."""
        k = self.up_fields.get("kernels")
        return int(k) if k and k.isdigit() else None

    @property
    def pid(self) -> int | None:
        """The board's own process (MicroPython: kernels, dispatcher and emulator)."""
        try:
            return int((RUNTIME_BASE / self.netns / "board.pid").read_text())
        except (OSError, ValueError):
            return None

    def errors(self) -> list[str]:
        """The board's own error reports in its output (stats lines with errors != 0)."""
        found = []
        for line in self.lines:
            if line.startswith("netkernel: stats"):
                m = re.search(r" errors=(\d+)", line)
                if m and m.group(1) != "0":
                    found.append(m.group(1))
        return found

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


# -- the counted yardstick -------------------------------------------------------------------

COUNT_STACK = "count.stack_instr_per_seg"
COUNT_KERNEL = "count.kernel_instr_per_seg"
COUNT_FIGURES = (COUNT_STACK, COUNT_KERNEL)
COUNT_HEAP = "2m"          # the unix port's heap for the replay (the receiver alone fits)


def micropython_path() -> str:
    """The MicroPython unix port, found as ``twinstack sim`` finds it."""
    from twinstack.sim.launcher import find_micropython

    return find_micropython(ROOT)


def valgrind_instructions(args: Sequence[str]) -> tuple[int, str]:
    """Instructions a MicroPython run executes (valgrind's "I refs"), and its output."""
    env = dict(os.environ, MICROPYPATH="firmware")
    r = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no",
                        "--cachegrind-out-file=/dev/null", micropython_path(),
                        "-X", f"heapsize={COUNT_HEAP}", "tools/segment_cost.py", *args],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    m = re.search(r"I\s+refs:\s+([\d,]+)", r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"segment_cost {' '.join(args)}: {r.stdout}{r.stderr[-2000:]}")
    return int(m.group(1).replace(",", "")), r.stdout


def run_count(only: Sequence[str] = ()) -> tuple[Figures, list[str]]:
    """The counted yardstick: record a bulk transfer once, replay it under valgrind with the
    handshake only and whole; the difference over the data segments is their cost."""
    todo = [n for n in COUNT_FIGURES if not only or n in only]
    if not todo:
        return {}, []
    if shutil.which("valgrind") is None:
        log.warning("count.*: valgrind is not installed (apt-get install valgrind)")
        return {}, list(todo)
    out: Figures = {}
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        rec = str(Path(tmp) / "bulk.rec")
        env = dict(os.environ, MICROPYPATH="firmware")
        subprocess.run([micropython_path(), "tools/segment_cost.py", "record", rec],
                       cwd=ROOT, env=env, check=True, timeout=300)
        for name in todo:
            path = ["kernel"] if name == COUNT_KERNEL else []
            try:
                base, _ = valgrind_instructions(["handshake", rec, *path])
                whole, text = valgrind_instructions(["all", rec, *path])
                segments = int(re.search(r"segments=(\d+)", text).group(1))
                out[name] = figure(round((whole - base) / segments), "instr",
                                   segments=segments, port="unix", tool="valgrind")
            except (RuntimeError, AttributeError, subprocess.SubprocessError) as e:
                log.warning("%s: %s", name, e)
                failed.append(name)
    return out, failed


MEASUREMENTS: list[tuple[str, Callable[[Board], dict[str, Any]]]] = [
    ("stack.ping_ms_p50", measure_ping),
    ("stack.bulk_mbps", measure_bulk),
    ("stack.conn_per_s", measure_conns),
    ("stack.heap_bytes_per_conn", measure_heap),
]


# -- scaling: 1 kernel against 2 ------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# A flow table key: <src>:<sport>><dst>:<dport>/<proto>
FLOW_KEY_RE = re.compile(r"^(?P<a>[\d.]+):(?P<ap>\d+)>(?P<b>[\d.]+):(?P<bp>\d+)/(?P<proto>\w+)$")
SCALE_BULK_1K = "scale.bulk16_mbps_1k"
SCALE_BULK_2K = "scale.bulk16_mbps_2k"
SCALE_RATIO = "scale.ratio_2k_1k"
SCALE_CONNS_2K = "scale.conn_per_s_2k"
SCALE_FIGURES = (SCALE_BULK_1K, SCALE_BULK_2K, SCALE_RATIO, SCALE_CONNS_2K)
# Both scale boards get the same, larger heap: 16 connections at once plus their TIME-WAIT
# successors need more than the RP2040-sized budget holds (~8-12 connections), and these
# figures measure CPU scaling, not memory.
SCALE_BOARD_ARGS = ("--heap", "2M", "--stack", "tcp_max_connections=32")
HOST_BOARD_ARGS = ("--heap", "2M")
# Bulk rounds per kernel count, the median kept: a run ends with its last connection, and
# one connection whose SYN or first segments were lost waits 1 s or more for its timer
# (measured: a single run of the same board gave 6.1 to 11.2 MB/s). Each round runs on a
# board of its own, and the 1- and 2-kernel rounds take turns (1, 2, 2, 1, 1, 2, ...):
# this machine's speed drifts by 10 to 30 % within a minute, more than the effect
# measured, and rounds taken in turns see the same drift. The ratio is the median of the
# pairs' ratios (measured: three 1-kernel rounds followed by three 2-kernel rounds gave
# ratios up to 18 % apart from run to run; single pairs still vary by +-10 %, hence 5).
SCALE_ROUNDS = 5

# What each scale figure needs measured, per number of kernels.
SCALE_NEEDS: dict[str, dict[int, tuple[str, ...]]] = {
    SCALE_BULK_1K: {1: ("bulk",)},
    SCALE_BULK_2K: {2: ("bulk",)},
    SCALE_RATIO: {1: ("bulk",), 2: ("bulk",)},
    SCALE_CONNS_2K: {2: ("conns",)},
}


def thread_ticks(pid: int) -> dict[int, int]:
    """CPU clock ticks (utime + stime) of each thread of process ``pid`` so far."""
    out: dict[int, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(tid)] = int(fields[11]) + int(fields[12])   # utime, stime (fields 14, 15)
    return out


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs so far, from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0, 0
    values = [int(x) for x in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)     # idle + iowait
    total = sum(values[:8])                                       # guest time is in user
    return total - idle, total


class CpuMeter:
    """CPU used by the board's process (per thread) and by the whole machine while it runs:
    ``with CpuMeter(pid) as m: ...`` then ``m.shares()``."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self._threads0: dict[int, int] = {}
        self._threads1: dict[int, int] = {}
        self._machine0 = self._machine1 = (0, 0)
        self._t0 = self._t1 = 0.0

    def __enter__(self) -> CpuMeter:
        self._threads0 = thread_ticks(self.pid) if self.pid else {}
        self._machine0 = machine_ticks()
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self._t1 = time.monotonic()
        self._threads1 = thread_ticks(self.pid) if self.pid else {}
        self._machine1 = machine_ticks()

    def shares(self) -> dict[str, Any]:
        """Shares of one core over the measured time: ``board_cpu_share``,
        ``board_threads_cpu_share`` (busiest first), ``machine_busy_cores`` (of
        ``machine_cores``)."""
        wall = max(self._t1 - self._t0, 1e-9)
        per_thread = sorted(((self._threads1[t] - self._threads0.get(t, 0)) / CLK_TCK / wall
                             for t in self._threads1), reverse=True)
        busy = self._machine1[0] - self._machine0[0]
        total = self._machine1[1] - self._machine0[1]
        cores = os.cpu_count() or 1
        return {"board_cpu_share": round(sum(per_thread), 3),
                "board_threads_cpu_share": [round(x, 3) for x in per_thread if x >= 0.005],
                "machine_busy_cores": round(cores * busy / total, 3) if total else None,
                "machine_cores": cores}


def board_counters(board: Board) -> dict[str, int]:
    """The board's counters (empty if the link does not answer)."""
    from twinstack.link import Link

    try:
        with Link(board.fields["usb"]) as link:
            return link.stats(timeout=5)
    except (OSError, TimeoutError, KeyError) as e:
        log.warning("no counters from the board: %s", e)
        return {}


def flow_owners(board: Board, port: int) -> dict[str, int] | None:
    """How many TCP flows to ``port`` each kernel owns, from the board's flow table (None
    if the board cannot say)."""
    from twinstack.link import Link

    try:
        with Link(board.fields["usb"]) as link:
            table = link.flows()
    except (AttributeError, OSError, TimeoutError, KeyError, ValueError) as e:
        log.debug("no flow table: %s", e)
        return None
    return owners_of(table, port)


class OwnerWatch:
    """Reads the board's flow table once a second while a measurement runs (a closed
    connection leaves the table): the most flows to ``port`` seen at once, per owner."""

    def __init__(self, board: Board, port: int, period: float = 1.0) -> None:
        self.board, self.port, self.period = board, port, period
        self.best: dict[str, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            got = flow_owners(self.board, self.port)
            if got is not None and sum(got.values()) > sum((self.best or {}).values()):
                self.best = got

    def __enter__(self) -> OwnerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def owners_of(table: Sequence[Mapping[str, Any]], port: int) -> dict[str, int]:
    """How many TCP flows to or from ``port`` each kernel owns in a flow table."""
    owners: dict[str, int] = {}
    for f in table:
        m = FLOW_KEY_RE.match(str(f.get("key", "")))
        if m and m["proto"].lower() in ("tcp", "6") and port in (int(m["ap"]), int(m["bp"])):
            k = f"k{f.get('owner')}"
            owners[k] = owners.get(k, 0) + 1
    return dict(sorted(owners.items()))


def drops(counters: Mapping[str, int]) -> dict[str, int]:
    """The board's non-zero drop and error counters (sums over kernels, and the
    dispatcher's), with its free heap: what to show when a measurement fails."""
    return {k: v for k, v in counters.items() if v and ("drop" in k or k in (
        "errors", "heap_free", "tcp.rst_sent", "tcp.resets")) and not k.startswith("k")}


def kernel_split(before: Mapping[str, int], after: Mapping[str, int],
                 kernels: int) -> dict[str, Any]:
    """What each kernel did in between: frames received, its busy share and ring high-water
    mark (where the board reports them)."""
    out: dict[str, Any] = {}
    for k in range(kernels):
        rx = f"k{k}.rx_frames"
        if rx in after:
            out[f"k{k}.rx_frames"] = after[rx] - before.get(rx, 0)
        for name in ("busy_pct", "ring_hwm"):
            if f"k{k}.{name}" in after:
                out[f"k{k}.{name}"] = after[f"k{k}.{name}"]
    for name in ("disp.drop_red", "disp.redirects"):
        if name in after:
            out[name] = after[name] - before.get(name, 0)
    # Shares of the run's wall time (the board reports them since its previous report,
    # which is `before`): the dispatcher, the chip's SPI I/O of every core, core 0 idle.
    for name in ("disp.busy_pct", "nic.io_pct", "core0.idle_pct"):
        if name in after:
            out[name] = after[name]
    return out


def measure_bulk16(board: Board, kernels: int,
                   nbytes: int = SCALE_BYTES_EACH) -> dict[str, Any]:
    """SCALE_CONNS parallel connections into discard, ``nbytes`` each; MB/s over all of
    them, with the CPU shares of the load generator, the board and the machine."""
    ping_once(board)
    before = board_counters(board)
    with OwnerWatch(board, DISCARD_PORT) as watch, CpuMeter(board.pid) as meter:
        r = ns_client(board, "bulkn", board.ip, "--port", str(DISCARD_PORT), "--conns",
                      str(SCALE_CONNS), "--nbytes", str(nbytes), "--timeout", "240",
                      timeout=300)
    after = board_counters(board)
    if r["finished"] != SCALE_CONNS:
        raise RuntimeError(f"bulk16 on {kernels} kernel(s): {r['finished']} of "
                           f"{SCALE_CONNS} connections finished: {r['errors']}; the board's "
                           f"drop counters: {drops(after)}")
    cpu = meter.shares()
    return figure(round(r["bytes"] / 1e6 / r["seconds"], 3), "MB/s", kernels=kernels,
                  board_kernels=board.kernels, conns=SCALE_CONNS, bytes=r["bytes"],
                  seconds=round(r["seconds"], 2),
                  conn_seconds_min_max=[r["conn_seconds"][0], r["conn_seconds"][-1]],
                  loadgen_cpu_share=round(r["cpu_seconds"] / r["seconds"], 3), **cpu,
                  per_kernel=kernel_split(before, after, kernels),
                  flow_owners=watch.best)


def median_round(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median value, with every round's value in ``rounds``."""
    ranked = sorted(rounds, key=lambda f: f["value"])
    out = dict(ranked[(len(ranked) - 1) // 2])
    out["rounds"] = [f["value"] for f in rounds]
    return out


def measure_conns_parallel(board: Board, kernels: int) -> dict[str, Any]:
    """SCALE_CONN_COUNT echo connections, SCALE_CONN_PARALLEL clients at once: conn/s."""
    ping_once(board)
    with CpuMeter(board.pid) as meter:
        r = ns_client(board, "conns", board.ip, "--port", str(ECHO_PORT), "--count",
                      str(SCALE_CONN_COUNT), "--size", str(CONN_BYTES), "--parallel",
                      str(SCALE_CONN_PARALLEL), "--timeout", "120", timeout=150)
    if r["done"] < SCALE_CONN_COUNT * 0.95:
        raise RuntimeError(f"only {r['done']} of {r['count']} connections worked: "
                           f"{r['errors']}; the board's drop counters: "
                           f"{drops(board_counters(board))}")
    if r["done"] != r["count"]:
        log.warning("connections: %d of %d worked: %s", r["done"], r["count"], r["errors"])
    return figure(round(r["done"] / r["seconds"], 1), "conn/s", kernels=kernels,
                  board_kernels=board.kernels, done=r["done"], count=r["count"],
                  parallel=r["parallel"], seconds=round(r["seconds"], 2),
                  loadgen_cpu_share=round(r["cpu_seconds"] / r["seconds"], 3),
                  **meter.shares())


def ping_once(board: Board) -> None:
    """One ping (resolves ARP both ways before a measurement)."""
    subprocess.run(["ip", "netns", "exec", board.netns, "ping", "-c", "1", "-W", "2",
                    board.ip], capture_output=True, timeout=10)


def scale_plan(only: Sequence[str]) -> dict[int, set[str]]:
    """What to measure on a board of each kernel count for the selected scale figures."""
    plan: dict[int, set[str]] = {}
    for name, needs in SCALE_NEEDS.items():
        if only and name not in only:
            continue
        for kernels, what in needs.items():
            plan.setdefault(kernels, set()).update(what)
    return dict(sorted(plan.items()))


def scale_figures(measured: Mapping[int, Mapping[str, dict[str, Any]]],
                  only: Sequence[str] = ()) -> Figures:
    """The scale figures from the measurements per kernel count (``{1: {"bulk": fig},
    2: {"bulk": fig, "conns": fig}}``): those selected and measured, the ratio when both
    bulk figures are there."""
    out: Figures = {}

    def want(name: str) -> bool:
        return not only or name in only

    one, two = measured.get(1, {}), measured.get(2, {})
    if want(SCALE_BULK_1K) and "bulk" in one:
        out[SCALE_BULK_1K] = one["bulk"]
    if want(SCALE_BULK_2K) and "bulk" in two:
        out[SCALE_BULK_2K] = two["bulk"]
    if want(SCALE_CONNS_2K) and "conns" in two:
        c = dict(two["conns"])
        if "conns" in one:
            c["conn_per_s_1k"] = one["conns"]["value"]
        out[SCALE_CONNS_2K] = c
    if want(SCALE_RATIO) and "bulk" in one and "bulk" in two and one["bulk"]["value"]:
        a, b = one["bulk"], two["bulk"]
        pairs = round_pair_ratios(a.get("rounds"), b.get("rounds"))
        value = statistics.median(pairs) if pairs else b["value"] / a["value"]
        out[SCALE_RATIO] = figure(
            round(value, 3), "x", target=SCALE_TARGET, limit=2.0,
            pair_ratios=pairs or None, ratio_of_medians=round(b["value"] / a["value"], 3),
            bulk16_mbps_1k=a["value"], bulk16_mbps_2k=b["value"],
            loadgen_cpu_share_1k=a.get("loadgen_cpu_share"),
            loadgen_cpu_share_2k=b.get("loadgen_cpu_share"),
            board_cpu_share_1k=a.get("board_cpu_share"),
            board_cpu_share_2k=b.get("board_cpu_share"),
            machine_busy_cores_1k=a.get("machine_busy_cores"),
            machine_busy_cores_2k=b.get("machine_busy_cores"),
            **serial_limit(a.get("per_kernel") or {}))
    return out


def round_pair_ratios(one: Sequence[float | None] | None,
                      two: Sequence[float | None] | None) -> list[float]:
    """The 2-kernel round over the 1-kernel round taken next to it (scale_schedule()), for
    each pair whose rounds both succeeded; empty unless both lists have one entry per
    pair."""
    if not one or not two or len(one) != len(two):
        return []
    return [round(b / a, 3) for a, b in zip(one, two, strict=True) if a and b]


def serial_limit(one_kernel: Mapping[str, Any]) -> dict[str, Any]:
    """Amdahl's bound on the 2-kernel ratio from the 1-kernel run: the share of core 0's
    busy time spent on the chip's SPI I/O (one chip, one bus: it cannot run on two cores at
    once) and 1 / (s + (1 - s) / 2). Empty if the board did not report the shares."""
    io, idle = one_kernel.get("nic.io_pct"), one_kernel.get("core0.idle_pct")
    if io is None or idle is None or idle >= 100:
        return {}
    share = min(1.0, io / (100 - idle))
    return {"chip_io_share_1k": round(share, 3),
            "serial_limit_2k": round(1 / (share + (1 - share) / 2), 3)}


def scale_schedule(plan: Mapping[int, set[str]],
                   rounds: int = SCALE_ROUNDS) -> list[tuple[int, tuple[str, ...]]]:
    """The boards to start, in order, for a scale plan (scale_plan()): each as (kernels,
    what to measure on it). Every bulk round gets a board of its own; with both kernel
    counts the rounds take turns in pairs, 1-2, 2-1, 1-2, so that the i-th rounds of the
    two are neighbours in time. The connection rate is measured on the last board of its
    kernel count (a board of its own if that count has no bulk rounds)."""
    bulk = [k for k, what in plan.items() if "bulk" in what]
    order: list[int] = []
    for i in range(rounds):
        order.extend(bulk if i % 2 == 0 else reversed(bulk))
    boards: list[list[Any]] = [[k, ["bulk"]] for k in order]
    for kernels, what in plan.items():
        if "conns" not in what:
            continue
        last = [b for b in boards if b[0] == kernels]
        if last:
            last[-1][1].append("conns")
        else:
            boards.append([kernels, ["conns"]])
    return [(k, tuple(kinds)) for k, kinds in boards]


def run_scale(netns: str, only: Sequence[str] = ()) -> tuple[Figures, list[str]]:
    """Boards with 1 and 2 kernels, their rounds in turns (scale_schedule()): the scale
    figures (with their details still in them) and the names of what failed."""
    bulk_rounds: dict[int, list[dict[str, Any] | None]] = {}   # None: not measured
    measured: dict[int, dict[str, dict[str, Any]]] = {}
    failed: list[str] = []
    for n, (kernels, what) in enumerate(scale_schedule(scale_plan(only), SCALE_ROUNDS)):
        board = Board(f"{netns[:6]}k{kernels}{n:x}",   # a netns name: at most 10
                      ["--kernels", str(kernels), *SCALE_BOARD_ARGS])
        if "bulk" in what:        # a place for this round, kept empty if it fails
            bulk_rounds.setdefault(kernels, []).append(None)
        try:
            board.wait_ready()
            if board.kernels not in (None, kernels):
                raise RuntimeError(f"asked for {kernels} kernels, the board runs "
                                   f"{board.kernels}")
            for kind in what:
                log.info("measuring %s on %d kernel(s)", kind, kernels)
                start = time.monotonic()
                try:
                    if kind == "bulk":
                        got = bulk_rounds[kernels][-1] = measure_bulk16(board, kernels)
                    else:
                        got = measure_conns_parallel(board, kernels)
                        measured.setdefault(kernels, {})[kind] = got
                except (RuntimeError, OSError, subprocess.SubprocessError, KeyError,
                        ValueError) as e:
                    log.error("%s on %d kernel(s) failed: %s", kind, kernels, e)
                    failed.append(f"scale {kind} {kernels}k")
                    continue
                log.info("%s on %d kernel(s): %s (%.1f s)", kind, kernels, got,
                         time.monotonic() - start)
        except RuntimeError as e:
            log.error("board with %d kernel(s): %s", kernels, e)
            failed.append(f"scale board {kernels}k")
        finally:
            status = board.stop()
            log.info("board with %d kernel(s) stopped (exit %s)", kernels, status)
        if status:
            tail = [x for x in board.lines if not x.startswith("netkernel: stats")][-25:]
            log.error("the %d-kernel board exited with %s; its last lines:\n%s", kernels,
                      status, "\n".join(tail))
            failed.append(f"board exit ({kernels}k)")
        if board.errors():
            log.error("the %d-kernel board counted internal errors: %s", kernels,
                      board.errors())
            failed.append(f"board errors ({kernels}k)")
    for kernels, rounds in bulk_rounds.items():
        done = [r for r in rounds if r is not None]
        if done:
            bulk = measured.setdefault(kernels, {})["bulk"] = median_round(done)
            bulk["rounds"] = [r and r["value"] for r in rounds]   # None: the round failed
    return scale_figures(measured, only), list(dict.fromkeys(failed))   # each once


def format_cpu(figures: Mapping[str, Mapping[str, Any]],
               details: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per scale measurement: the CPU shares that explain it."""
    lines = []
    for name in sorted(figures):
        d = details.get(name, {})
        if "loadgen_cpu_share" not in d:
            continue
        threads = ", ".join(f"{x:.2f}" for x in d.get("board_threads_cpu_share", []))
        lines.append(f"{name}: load generator {d['loadgen_cpu_share']:.2f} core, board "
                     f"{d.get('board_cpu_share', 0):.2f} cores (threads {threads}), machine "
                     f"{d.get('machine_busy_cores')} of {d.get('machine_cores')} cores busy")
    return "\n".join(lines)


def run_stack(netns: str, only: Sequence[str] = ()) -> tuple[Figures, list[str]]:
    """The stack figures from one board started as a user would (with details in them)."""
    todo = [(n, m) for n, m in MEASUREMENTS if not only or n in only]
    if not todo:
        return {}, []
    board = Board(netns)
    figures: Figures = {}
    failed: list[str] = []
    try:
        board.wait_ready()
        for name, measure in todo:
            log.info("measuring %s", name)
            start = time.monotonic()
            try:
                figures[name] = measure(board)
                if board.kernels is not None:
                    figures[name]["kernels"] = board.kernels
            except (RuntimeError, OSError, subprocess.SubprocessError, KeyError,
                    ValueError) as e:
                log.error("%s failed: %s", name, e)
                failed.append(name)
                continue
            log.info("%s = %s (%.1f s)", name, figures[name], time.monotonic() - start)
    finally:
        status = board.stop()
        log.info("board stopped (exit %s)", status)
    if board.errors():
        log.error("the board counted internal errors: %s", board.errors())
        failed.append("board errors")
    return figures, failed


ALL_FIGURES = (tuple(n for n, _ in MEASUREMENTS) + E2E_FIGURES + SCALE_FIGURES
               + COUNT_FIGURES)


def run_e2e(netns: str, only: Sequence[str] = ()) -> tuple[Figures, list[str]]:
    """The host-link figures, from a board with the scale boards' larger heap: 8 HTTP
    clients at full speed keep ~48 connections (most in TIME-WAIT) and their sockets in
    the heap, which the RP2040-sized budget does not hold without dropping SYNs."""
    todo = [n for n in E2E_FIGURES if not only or n in only]
    if not todo:
        return {}, []
    board = Board(f"{netns[:8]}h", HOST_BOARD_ARGS)
    figures: Figures = {}
    failed: list[str] = []
    try:
        board.wait_ready()
        figures, failed = run_host(board, ns_client, todo)
        for f in figures.values():
            f["board_args"] = " ".join(HOST_BOARD_ARGS)
    except RuntimeError as e:
        log.error("host-link board: %s", e)
        failed.append("e2e board")
    finally:
        status = board.stop()
        log.info("host-link board stopped (exit %s)", status)
    if board.errors():
        failed.append("board errors (e2e)")
    return figures, failed


def run_bench(netns: str, results: Path, only: Sequence[str] = ()) -> int:
    """Start the boards, measure, stop them, merge and print. Exit status 0 if all worked."""
    measured, failed = run_count(only)
    staged, stack_failed = run_stack(netns, only)
    measured.update(staged)
    failed += stack_failed
    hosted, host_failed = run_e2e(netns, only)
    measured.update(hosted)
    failed += host_failed
    scaled, scale_failed = run_scale(netns, only)
    measured.update(scaled)
    failed += scale_failed
    figures: Figures = {}
    details: dict[str, Any] = {}
    for name, m in measured.items():
        figures[name], details[name] = split_figure(m)
    if figures:
        data = merge_results(load_results(results), figures,
                             dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                             machine_info(), details)
        write_results(results, data)
        print(format_table(figures))
        cpu = format_cpu(figures, details)
        if cpu:
            print("CPU, as shares of one core over each run:\n" + cpu)
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
    p.add_argument("--only", action="append", default=[],
                   help="measure only this figure (repeatable): " + ", ".join(ALL_FIGURES))
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="bench: %(message)s")
    unknown = [n for n in a.only if n not in ALL_FIGURES]
    if unknown:
        p.error(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(ALL_FIGURES)}")
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
