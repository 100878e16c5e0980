"""tools/bench.py without a board: merging into bench/results.json and the printed table."""

from __future__ import annotations

import json
import sys
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
