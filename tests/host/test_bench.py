"""tools/bench.py without a board: merging into bench/results.json and the printed table."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import bench  # noqa: E402

MACHINE = {"cpu": "Test CPU", "cores": 2, "kernel": "6.0"}
OURS = {
    "stack.bulk_mbps": bench.figure(1.234, "MB/s"),
    "stack.conn_per_s": bench.figure(56.7, "conn/s"),
    "stack.ping_ms_p50": bench.figure(0.812, "ms"),
    "stack.heap_bytes_per_conn": bench.figure(1520, "bytes"),
}


def test_merge_into_nothing_gives_the_documented_shape():
    data = bench.merge_results(None, OURS, "2025-01-02T03:04:05+00:00", MACHINE)
    assert data == {"date": "2025-01-02T03:04:05+00:00", "machine": MACHINE, "figures": OURS}
    assert data["figures"]["stack.bulk_mbps"] == {"value": 1.234, "unit": "MB/s"}


def test_merge_keeps_other_benchmarks_and_other_keys_and_replaces_ours():
    existing = {
        "date": "old", "machine": {"cpu": "old"}, "notes": "kept",
        "figures": {
            "dispatch.flows_per_s": {"value": 9.0, "unit": "flows/s"},
            "stack.bulk_mbps": {"value": 0.1, "unit": "MB/s"},
        },
    }
    data = bench.merge_results(existing, OURS, "new", MACHINE)
    assert data["notes"] == "kept"
    assert data["date"] == "new" and data["machine"] == MACHINE
    assert data["figures"]["dispatch.flows_per_s"] == {"value": 9.0, "unit": "flows/s"}
    assert data["figures"]["stack.bulk_mbps"]["value"] == 1.234
    assert set(data["figures"]) == set(OURS) | {"dispatch.flows_per_s"}
    assert list(data["figures"]) == sorted(data["figures"])
    # The input is not modified.
    assert existing["figures"]["stack.bulk_mbps"]["value"] == 0.1


def test_merge_tolerates_a_broken_figures_entry():
    data = bench.merge_results({"figures": "garbage"}, OURS, "d", MACHINE)
    assert data["figures"] == dict(sorted(OURS.items()))


def test_partial_run_keeps_earlier_figures_of_our_own():
    first = bench.merge_results(None, OURS, "d1", MACHINE)
    second = bench.merge_results(first, {"stack.ping_ms_p50": bench.figure(0.5, "ms")},
                                 "d2", MACHINE)
    assert second["figures"]["stack.ping_ms_p50"]["value"] == 0.5
    assert second["figures"]["stack.bulk_mbps"]["value"] == 1.234


def test_details_are_kept_apart_from_the_figures_and_merged_alike():
    measured = bench.figure(2.5, "MB/s", bytes=100, seconds=0.04)
    core, details = bench.split_figure(measured)
    assert core == {"value": 2.5, "unit": "MB/s"}
    assert details == {"bytes": 100, "seconds": 0.04}
    existing = {"figures": {}, "details": {"other.x": {"n": 1}, "stack.bulk_mbps": {"old": 1}}}
    data = bench.merge_results(existing, {"stack.bulk_mbps": core}, "d", MACHINE,
                               {"stack.bulk_mbps": details})
    assert data["figures"] == {"stack.bulk_mbps": {"value": 2.5, "unit": "MB/s"}}
    assert data["details"] == {"other.x": {"n": 1}, "stack.bulk_mbps": details}


def test_load_and_write_round_trip(tmp_path):
    path = tmp_path / "bench" / "results.json"
    assert bench.load_results(path) is None
    data = bench.merge_results(None, OURS, "d", MACHINE)
    bench.write_results(path, data)
    assert json.loads(path.read_text()) == data
    assert bench.load_results(path) == data
    assert not list(path.parent.glob("*.tmp"))


def test_unreadable_or_non_object_results_are_ignored(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{not json")
    assert bench.load_results(path) is None
    path.write_text("[1, 2]")
    assert bench.load_results(path) is None


def test_table_lists_every_figure_with_value_and_unit():
    table = bench.format_table(OURS)
    lines = table.splitlines()
    assert lines[0].split() == ["figure", "value", "unit"]
    assert set(lines[1]) == {"-"}
    body = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert body == {
        "stack.bulk_mbps": ["1.23", "MB/s"],
        "stack.conn_per_s": ["56.7", "conn/s"],
        "stack.heap_bytes_per_conn": ["1520", "bytes"],
        "stack.ping_ms_p50": ["0.812", "ms"],
    }


def test_format_value():
    assert bench.format_value(None) == "-"
    assert bench.format_value(0.0) == "0"
    assert bench.format_value(1234.56) == "1235"
    assert bench.format_value(12.345) == "12.3"
    assert bench.format_value(7) == "7"


def test_machine_info_names_cpu_cores_and_kernel():
    info = bench.machine_info()
    assert info["cores"] >= 1 and info["cpu"] and info["kernel"]
    json.dumps(info)


# -- scale figures: 1 kernel against 2 ------------------------------------------------------


def _bulk(value: float, kernels: int, loadgen: float = 0.2, board: float = 1.1,
          machine: float = 1.9) -> dict:
    return bench.figure(value, "MB/s", kernels=kernels, loadgen_cpu_share=loadgen,
                        board_cpu_share=board, board_threads_cpu_share=[0.6, 0.5],
                        machine_busy_cores=machine, machine_cores=2)


def test_scale_plan_measures_only_what_the_selected_figures_need():
    assert bench.scale_plan(()) == {1: {"bulk"}, 2: {"bulk", "conns"}}
    assert bench.scale_plan(["scale.conn_per_s_2k"]) == {2: {"conns"}}
    assert bench.scale_plan(["scale.ratio_2k_1k"]) == {1: {"bulk"}, 2: {"bulk"}}
    assert bench.scale_plan(["scale.bulk16_mbps_1k"]) == {1: {"bulk"}}
    assert bench.scale_plan(["stack.bulk_mbps"]) == {}


def test_scale_figures_give_both_bulk_figures_their_ratio_and_conn_rate():
    conns2 = bench.figure(900.0, "conn/s", kernels=2, loadgen_cpu_share=0.4)
    conns1 = bench.figure(500.0, "conn/s", kernels=1)
    out = bench.scale_figures({1: {"bulk": _bulk(2.0, 1)},
                               2: {"bulk": _bulk(3.7, 2, loadgen=0.3), "conns": conns2}})
    assert set(out) == set(bench.SCALE_FIGURES)
    assert out["scale.bulk16_mbps_1k"]["value"] == 2.0
    assert out["scale.bulk16_mbps_2k"]["value"] == 3.7
    ratio = out["scale.ratio_2k_1k"]
    assert ratio["value"] == 1.85 and ratio["unit"] == "x"
    assert ratio["target"] == 1.85 and ratio["limit"] == 2.0
    assert ratio["loadgen_cpu_share_2k"] == 0.3 and ratio["board_cpu_share_1k"] == 1.1
    assert out["scale.conn_per_s_2k"] == conns2
    # A 1-kernel connection rate, if measured, goes into the details of the 2-kernel one.
    with_1k = bench.scale_figures({1: {"conns": conns1}, 2: {"conns": conns2}})
    assert with_1k["scale.conn_per_s_2k"]["conn_per_s_1k"] == 500.0
    assert "conn_per_s_1k" not in conns2


def test_scale_figures_without_both_boards_have_no_ratio_and_respect_only():
    only_2k = bench.scale_figures({2: {"bulk": _bulk(3.0, 2)}})
    assert set(only_2k) == {"scale.bulk16_mbps_2k"}
    zero = bench.scale_figures({1: {"bulk": _bulk(0.0, 1)}, 2: {"bulk": _bulk(3.0, 2)}})
    assert "scale.ratio_2k_1k" not in zero
    picked = bench.scale_figures({1: {"bulk": _bulk(2.0, 1)}, 2: {"bulk": _bulk(3.0, 2)}},
                                 only=["scale.ratio_2k_1k"])
    assert set(picked) == {"scale.ratio_2k_1k"}
    assert picked["scale.ratio_2k_1k"]["value"] == 1.5


def test_scale_figures_split_into_results_with_the_cpu_shares_in_details():
    out = bench.scale_figures({1: {"bulk": _bulk(2.0, 1)}, 2: {"bulk": _bulk(3.0, 2)}})
    figures, details = {}, {}
    for name, m in out.items():
        figures[name], details[name] = bench.split_figure(m)
    data = bench.merge_results(None, figures, "d", MACHINE, details)
    assert data["figures"]["scale.bulk16_mbps_2k"] == {"value": 3.0, "unit": "MB/s"}
    assert data["figures"]["scale.ratio_2k_1k"] == {"value": 1.5, "unit": "x"}
    assert data["details"]["scale.bulk16_mbps_1k"]["loadgen_cpu_share"] == 0.2
    assert data["details"]["scale.bulk16_mbps_1k"]["board_cpu_share"] == 1.1
    json.dumps(data)
    cpu = bench.format_cpu(figures, details)
    lines = cpu.splitlines()
    assert len(lines) == 2      # the two bulk runs; the ratio has no run of its own
    assert lines[0].startswith("scale.bulk16_mbps_1k: load generator 0.20 core, board 1.10")
    assert "machine 1.9 of 2 cores busy" in lines[0]


def test_every_figure_is_selectable_and_unknown_ones_are_refused(capsys):
    assert set(bench.SCALE_FIGURES) <= set(bench.ALL_FIGURES)
    assert "stack.bulk_mbps" in bench.ALL_FIGURES
    try:
        bench.main(["--only", "scale.nonsense"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("an unknown figure was accepted")
    assert "unknown figure" in capsys.readouterr().err


def test_cpu_meter_sees_this_process_work():
    assert bench.thread_ticks(os.getpid())
    busy, total = bench.machine_ticks()
    assert 0 < busy <= total
    with bench.CpuMeter(os.getpid()) as meter:
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            pass
    shares = meter.shares()
    assert 0.5 < shares["board_cpu_share"] < 1.5, shares
    assert shares["board_threads_cpu_share"][0] > 0.5, shares
    assert shares["machine_cores"] == os.cpu_count()
    assert shares["machine_busy_cores"] is not None and shares["machine_busy_cores"] > 0.3


def test_cpu_meter_of_a_vanished_process_is_zero():
    with bench.CpuMeter(None) as meter:
        pass
    assert meter.shares()["board_cpu_share"] == 0


# -- the load generator, against local servers ---------------------------------------------


class _Server:
    """A threaded local TCP server: echo, or discard (close after the client's FIN)."""

    def __init__(self, echo: bool) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.lock = threading.Lock()
        self.echo = echo
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                with self.lock:
                    self.received += len(data)
                if self.echo:
                    conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def test_parallel_bulk_client_moves_every_byte_and_reports_its_cpu():
    server = _Server(echo=False)
    try:
        r = bench.client_bulk_parallel("127.0.0.1", server.port, 4, 300_000, timeout=20)
    finally:
        server.close()
    assert r["finished"] == 4 and r["bytes"] == 1_200_000, r
    assert server.received == 1_200_000
    assert len(r["conn_seconds"]) == 4 and r["seconds"] > 0
    assert 0 <= r["cpu_seconds"] < 20
    json.dumps(r)


def test_parallel_connection_client_counts_every_connection():
    server = _Server(echo=True)
    try:
        r = bench.client_conns("127.0.0.1", server.port, 40, 100, timeout=20, parallel=4)
        seq = bench.client_conns("127.0.0.1", server.port, 5, 100, timeout=20)
    finally:
        server.close()
    assert (r["done"], r["count"], r["parallel"]) == (40, 40, 4), r
    assert (seq["done"], seq["parallel"]) == (5, 1), seq
    assert r["cpu_seconds"] >= 0 and not r["errors"]


def test_owners_of_counts_tcp_flows_of_a_port_by_owner_either_way_round():
    table = [
        {"key": "10.77.0.1:40000>10.77.0.2:9/6", "owner": 0},
        {"key": "10.77.0.1:40001>10.77.0.2:9/tcp", "owner": 1},
        {"key": "10.77.0.2:9>10.77.0.1:40002/6", "owner": 1},
        {"key": "10.77.0.1:40003>10.77.0.2:9/17", "owner": 0},     # UDP
        {"key": "10.77.0.1:40004>10.77.0.2:7/6", "owner": 0},      # another port
        {"key": "garbage", "owner": 0},
    ]
    assert bench.owners_of(table, 9) == {"k0": 1, "k1": 2}
    assert bench.owners_of([], 9) == {}


def test_the_ratio_carries_the_serial_bound_of_the_chip_io_measured_on_one_kernel():
    one = _bulk(2.0, 1)
    one["per_kernel"] = {"nic.io_pct": 49, "core0.idle_pct": 2, "disp.busy_pct": 20}
    ratio = bench.scale_figures({1: {"bulk": one}, 2: {"bulk": _bulk(2.6, 2)}})[
        "scale.ratio_2k_1k"]
    assert ratio["chip_io_share_1k"] == 0.5                 # 49 of 98 busy
    assert ratio["serial_limit_2k"] == round(1 / 0.75, 3)   # 1 / (0.5 + 0.5 / 2)
    # Without the shares (an older board) there is no bound, and no error.
    plain = bench.scale_figures({1: {"bulk": _bulk(2.0, 1)}, 2: {"bulk": _bulk(2.6, 2)}})
    assert "serial_limit_2k" not in plain["scale.ratio_2k_1k"]
    assert bench.serial_limit({"nic.io_pct": 10, "core0.idle_pct": 100}) == {}


def test_the_median_round_is_kept_with_every_round_value():
    rounds = [_bulk(6.1, 1), _bulk(11.2, 1), _bulk(9.9, 1)]
    out = bench.median_round(rounds)
    assert out["value"] == 9.9 and out["rounds"] == [6.1, 11.2, 9.9]
    assert bench.median_round([_bulk(3.0, 2)])["value"] == 3.0


def test_scale_rounds_take_turns_each_on_a_board_of_its_own():
    plan = bench.scale_plan(())
    sched = bench.scale_schedule(plan, rounds=3)
    assert [k for k, _ in sched] == [1, 2, 2, 1, 1, 2]
    # The connection rate rides on the last 2-kernel board; every board has a bulk round.
    assert sched[-1] == (2, ("bulk", "conns"))
    assert all(what[0] == "bulk" for _, what in sched)
    # The i-th rounds of each kernel count are neighbours in time.
    for i in range(3):
        ones = [n for n, (k, _) in enumerate(sched) if k == 1]
        twos = [n for n, (k, _) in enumerate(sched) if k == 2]
        assert abs(ones[i] - twos[i]) == 1
    # One kernel count alone: its rounds; the connection rate alone: one board.
    assert bench.scale_schedule({1: {"bulk"}}, rounds=2) == [(1, ("bulk",)), (1, ("bulk",))]
    assert bench.scale_schedule({2: {"conns"}}, rounds=3) == [(2, ("conns",))]


def test_the_ratio_is_the_median_of_the_round_pairs_and_skips_failed_rounds():
    one = dict(_bulk(3.0, 1), rounds=[3.0, 2.0, 4.0, None, 3.0])
    two = dict(_bulk(6.3, 2), rounds=[6.3, 4.6, 7.2, 6.0, None])
    ratio = bench.scale_figures({1: {"bulk": one}, 2: {"bulk": two}})["scale.ratio_2k_1k"]
    # Pairs 2.1, 2.3 and 1.8 (the 4th and 5th have a failed round): median 2.1, where the
    # medians' ratio would mix rounds taken at different times.
    assert ratio["pair_ratios"] == [2.1, 2.3, 1.8]
    assert ratio["value"] == 2.1
    assert ratio["ratio_of_medians"] == 2.1
    # Round lists that do not pair up (an older results file): the medians' ratio.
    assert bench.round_pair_ratios([3.0, 2.0], [6.0]) == []
    assert bench.round_pair_ratios(None, [6.0]) == []


def test_the_scale_run_gives_each_round_a_board_and_pairs_the_rounds(monkeypatch):
    started: list[tuple[str, list[str]]] = []
    values = {1: iter([3.0, 2.0, 3.2]), 2: iter([6.0, 6.1])}

    class FakeBoard:
        def __init__(self, netns, extra):
            started.append((netns, list(extra)))
            self.kernels = int(extra[extra.index("--kernels") + 1])
            self.lines: list[str] = []

        def wait_ready(self):
            pass

        def stop(self):
            return 0

        def errors(self):
            return []

    def fake_bulk(board, kernels):
        if len(started) == 3:        # the second 2-kernel round (the third board)
            raise RuntimeError("a round failed")
        return _bulk(next(values[kernels]), kernels)

    monkeypatch.setattr(bench, "Board", FakeBoard)
    monkeypatch.setattr(bench, "measure_bulk16", fake_bulk)
    monkeypatch.setattr(bench, "SCALE_ROUNDS", 3)
    figures, failed = bench.run_scale("abcdefgh", [bench.SCALE_RATIO])
    names = [n for n, _ in started]
    assert len(set(names)) == 6 and all(len(n) <= 10 for n in names)   # netns names
    assert all(extra[2:] == list(bench.SCALE_BOARD_ARGS) for _, extra in started)
    assert failed == ["scale bulk 2k"]
    ratio = figures[bench.SCALE_RATIO]
    # Rounds 1k: 3.0, 2.0, 3.2; 2k: 6.0, (failed), 6.1: the pairs 2.0 and 1.906.
    assert ratio["pair_ratios"] == [2.0, 1.906]
    assert ratio["value"] == round((2.0 + 1.906) / 2, 3)

    # A board that does not come up keeps its round's place: the first 1-kernel board
    # fails, and the rounds still pair with their neighbours.
    started.clear()
    values = {1: iter([2.0, 3.2]), 2: iter([6.0, 5.0, 6.1])}

    def not_ready(self):
        if len(started) == 1:
            raise RuntimeError("the simulated board did not come up")

    monkeypatch.setattr(FakeBoard, "wait_ready", not_ready)
    monkeypatch.setattr(bench, "measure_bulk16",
                        lambda board, kernels: _bulk(next(values[kernels]), kernels))
    figures, failed = bench.run_scale("abcdefgh", [bench.SCALE_RATIO, bench.SCALE_BULK_1K])
    assert failed == ["scale board 1k"]
    assert figures[bench.SCALE_BULK_1K]["rounds"] == [None, 2.0, 3.2]
    assert figures[bench.SCALE_RATIO]["pair_ratios"] == [2.5, 1.906]


def _segment_cost(*args: str) -> str:
    import subprocess

    r = subprocess.run([bench.micropython_path(), "tools/segment_cost.py", *args],
                       cwd=ROOT, env=dict(os.environ, MICROPYPATH="firmware"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_the_counted_yardstick_replays_what_it_recorded(tmp_path):
    """The replay behind count.*_instr_per_seg takes the recorded frames the recorder's
    way, through the stack and through the kernel path (the TCP counters are compared
    inside; a replay that went another way exits non-zero)."""
    rec = str(tmp_path / "bulk.rec")
    _segment_cost("record", rec)
    for path in ((), ("kernel",)):
        out = _segment_cost("all", rec, *path)
        segments = int(out.split("segments=")[1].split()[0])
        assert segments >= 400
        calls = out.split("calls=")[1].split()[0]
        assert f"replayed={calls}" in out
    assert "replayed=" in _segment_cost("handshake", rec)
