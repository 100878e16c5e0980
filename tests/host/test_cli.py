"""The ``twinstack`` command line and the pure parts of the simulated board launcher.

CPython only, no root, no namespaces.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from twinstack import __version__, cli
from twinstack.sim import launcher, netns
from twinstack.sim.launcher import (
    BOARD_PY,
    DEFAULT_HEAP,
    SimBoard,
    mac_from_ip,
    make_config,
    normalize_mac,
    parse_size,
    read_board_heap,
    ready_line,
    render_sim_config,
)
from twinstack.sim.netns import UndoStack, validate_name

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project tree without boards/sim.py; no TWINSTACK_* variables from outside."""
    for var in ("TWINSTACK_ROOT", "TWINSTACK_SIM_ENTRY", "TWINSTACK_USERNS"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "boards").mkdir()
    return tmp_path


# -- help and parsing ---------------------------------------------------------------------


def test_top_level_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: twinstack" in out and "sim" in out and "--verbose" in out


def test_sim_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["sim", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for option in ("--netns", "--board-ip", "--peer-ip", "--kernels", "--heap", "--services",
                   "--no-services", "--mac", "--log-frames", "--no-log-frames", "--root"):
        assert option in out
    assert "ready netns=NAME" in out and "TWINSTACK_SIM_ENTRY" in out
    assert "--entry" not in out  # hidden: for testing the launcher only


def test_version(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_python_dash_m_twinstack():
    proc = subprocess.run([sys.executable, "-m", "twinstack", "sim", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--board-ip" in proc.stdout


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2


def test_sim_defaults(root):
    args = cli.build_parser().parse_args(["sim", "--root", str(root)])
    assert (args.netns, args.board_ip, args.peer_ip) == ("ts0", "10.77.0.2/24", "10.77.0.1")
    assert args.kernels == 2 and args.heap is None and args.mac is None
    assert args.services is True and args.frame_log == "summary"
    cfg = cli.sim_config_from_args(args)
    assert cfg.name == "ts0" and cfg.board_ns == "ts0-board"
    assert str(cfg.board_ip) == "10.77.0.2/24" and cfg.peer_ip == IPv4Address("10.77.0.1")
    assert cfg.heap == DEFAULT_HEAP and cfg.mac == "02:00:0a:4d:00:02"
    assert cfg.root == root.resolve() and cfg.entry is None
    assert cfg.entry_path == root.resolve() / "firmware" / "main.py"
    assert cfg.runtime_dir == Path("/tmp/twinstack/ts0")


def test_sim_options(root):
    args = cli.build_parser().parse_args([
        "sim", "--root", str(root), "--netns", "lab_2", "--board-ip", "192.168.9.20/16",
        "--peer-ip", "192.168.0.1", "--heap", "480k", "--no-services", "--no-log-frames",
        "--mac", "02-AA-bb-00-00-01",
    ])
    cfg = cli.sim_config_from_args(args)
    assert cfg.name == "lab_2" and cfg.board_ip.network.prefixlen == 16
    assert cfg.heap == 480 * 1024 and not cfg.services and not cfg.log_frames
    assert cfg.mac == "02:aa:bb:00:00:01"


@pytest.mark.parametrize("argv, value", [
    ([], True),
    (["--log-frames"], True),
    (["--no-log-frames"], False),
    (["--frame-log", "off"], False),
    (["--frame-log", "summary"], True),
    (["--frame-log", "hex"], "hex"),
    (["--frame-log", "hex", "--no-log-frames"], False),  # the last one wins
])
def test_frame_log_options(argv, value, root):
    args = cli.build_parser().parse_args(["sim", "--root", str(root), *argv])
    cfg = cli.sim_config_from_args(args)
    assert cfg.log_frames == value
    config: dict = {}
    exec(render_sim_config(cfg, usb_fd=5), config)
    assert config["LOG_FRAMES"] == value and type(config["LOG_FRAMES"]) is type(value)


def test_frame_log_bad_mode(root, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["sim", "--root", str(root), "--frame-log", "loud"])
    assert e.value.code == 2


@pytest.mark.parametrize("argv", [["-v", "sim"], ["sim", "-v"], ["-vv", "sim"]])
def test_verbose_before_or_after_the_command(argv, root):
    args = cli.build_parser().parse_args([*argv, "--root", str(root)])
    assert args.verbose >= 1


def test_no_verbose_flag_means_zero(root):
    args = cli.build_parser().parse_args(["sim"])
    assert getattr(args, "verbose", 0) == 0


@pytest.mark.parametrize("kernels", ["1", "2", "4"])
def test_kernels_1_2_4_are_accepted(kernels, root):
    args = cli.build_parser().parse_args(["sim", "--root", str(root), "--kernels", kernels])
    cfg = make_config(root=root, kernels=args.kernels)
    assert cfg.kernels == int(kernels)


@pytest.mark.parametrize("kernels", ["0", "3", "5"])
def test_kernels_out_of_range(kernels, root, capsys, monkeypatch):
    # Refused before any root/namespace work: the user-namespace re-exec is never reached.
    monkeypatch.setattr(launcher, "reexec_in_userns",
                        lambda argv: pytest.fail("must not get this far"))
    with pytest.raises(SystemExit) as e:
        cli.main(["sim", "--root", str(root), "--kernels", kernels])
    assert e.value.code == 2
    assert "runs 1, 2 or 4 net kernels" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, message", [
    ("--netns", "Bad", "invalid netns name"),
    ("--netns", "waytoolongname", "invalid netns name"),
    ("--board-ip", "10.77.0.2", "ADDR/PREFIX"),
    ("--board-ip", "10.77.0.0/24", "network or broadcast"),
    ("--board-ip", "10.77.0.2/31", "room for a peer"),
    ("--board-ip", "10.77.0.300/24", "--board-ip"),
    ("--peer-ip", "10.99.0.1", "must be a host address in 10.77.0.0/24"),
    ("--peer-ip", "10.77.0.2", "other than the board's"),
    ("--peer-ip", "nope", "--peer-ip"),
    ("--heap", "12x", "invalid size"),
    ("--heap", "1k", "too small"),
    ("--mac", "01:00:5e:00:00:01", "multicast"),
    ("--mac", "02:00:0a", "six hex bytes"),
])
def test_bad_options_are_refused(option, value, message, root, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["sim", "--root", str(root), option, value])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


# -- sizes, names, MACs, heap ------------------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ("300000", 300000), ("288k", 288 * 1024), ("288K", 294912), ("1M", 1048576),
    ("1m", 1048576), (" 64k ", 65536), (4096, 4096),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "k", "1.5M", "-1", "12 kb", "1G", "0x100"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("name", ["ts0", "a", "lab_2", "x-y", "abcdefghij", "0123456789"])
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "TS0", "abcdefghijk", "a b", "a/b", "a.b", "ts0\n"])
def test_invalid_names(name):
    with pytest.raises(ValueError):
        validate_name(name)


def test_mac_from_ip():
    assert mac_from_ip("10.77.0.2") == "02:00:0a:4d:00:02"
    assert mac_from_ip(IPv4Address("192.168.255.1")) == "02:00:c0:a8:ff:01"


def test_normalize_mac():
    assert normalize_mac("02:AA:bb:CC:00:01") == "02:aa:bb:cc:00:01"
    assert normalize_mac("02-00-00-00-00-01") == "02:00:00:00:00:01"
    for bad in ("02:00:00:00:00", "02:00-00:00:00:01", "zz:00:00:00:00:01",
                "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"):
        with pytest.raises(ValueError):
            normalize_mac(bad)


@pytest.mark.parametrize("source, value", [
    ("HEAP_BYTES = 300000\n", 300000),
    ("from micropython import const\nHEAP_BYTES = const(311296)\n", 311296),
    ("HEAP_BYTES = const(288 * 1024)\n", 294912),
    ("HEAP_BYTES: int = 123456\n", 123456),
    ("X = 1\nHEAP_BYTES = 1\nHEAP_BYTES = 2\n", 2),
    ("FIRMWARE_HEAP_BYTES = const(5)\nHEAP_BYTES = const(7)\n", 7),
    ("NAME = 'sim'\n", None),
    ("HEAP_BYTES = compute()\n", None),
    ("HEAP_BYTES = True\n", None),
    ("def broken(:\n", None),
])
def test_read_board_heap(tmp_path, source, value):
    path = tmp_path / "sim.py"
    path.write_text(source)
    assert read_board_heap(path) == value


def test_read_board_heap_missing_file(tmp_path):
    assert read_board_heap(tmp_path / "nope.py") is None


def test_default_heap_comes_from_boards_sim(root):
    assert make_config(root=root).heap == DEFAULT_HEAP
    (root / "boards" / "sim.py").write_text("HEAP_BYTES = const(311296)\n")
    assert make_config(root=root).heap == 311296
    assert make_config(root=root, heap="1M").heap == 1048576


def test_the_real_board_file_parses():
    assert read_board_heap(ROOT / "boards" / "sim.py") is not None


# -- project root, entry, MICROPYPATH ---------------------------------------------------


def test_project_root_from_package(monkeypatch):
    monkeypatch.delenv("TWINSTACK_ROOT", raising=False)
    assert launcher.find_project_root() == ROOT


def test_project_root_env_and_explicit(tmp_path, monkeypatch):
    monkeypatch.setenv("TWINSTACK_ROOT", str(tmp_path))
    assert launcher.find_project_root() == tmp_path.resolve()
    other = tmp_path / "other"
    other.mkdir()
    assert launcher.find_project_root(other) == other.resolve()
    with pytest.raises(ValueError):
        launcher.find_project_root(tmp_path / "missing")


def test_entry_override(root, monkeypatch, tmp_path):
    fake = tmp_path / "fake_main.py"
    monkeypatch.setenv("TWINSTACK_SIM_ENTRY", str(fake))
    assert make_config(root=root).entry_path == fake.resolve()
    assert make_config(root=root, entry=str(root / "x.py")).entry_path == root / "x.py"


def test_micropypath(root):
    cfg = make_config(root=root, name="ab")
    r = str(root.resolve())
    assert cfg.micropypath == (
        f"/tmp/twinstack/ab:/tmp/twinstack/ab/lib:{r}/firmware:{r}/boards:{r}/tools:.frozen")


# -- generated files and the ready line ---------------------------------------------------


def test_precompile_makes_bytecode_for_every_firmware_module(tmp_path):
    import platform

    from twinstack.sim.launcher import precompile

    root = Path(__file__).resolve().parents[2]
    if not precompile(root, tmp_path):
        pytest.skip(f"mpy-cross has no native target for {platform.machine()}")
    made = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.mpy")}
    assert {"netkernel/tcp.mpy", "netkernel/proto/linkframe.mpy", "sim.mpy",
            "simhw/w5500_emulator.mpy"} <= made
    assert all((tmp_path / m).read_bytes()[:2] == b"M\x06" for m in made)


def test_board_py_is_exact():
    assert BOARD_PY == "from sim import *  # the simulated board (boards/sim.py)\n"


def test_render_sim_config(root):
    cfg = make_config(root=root, heap="288k")
    text = render_sim_config(cfg, usb_fd=7, wake_fds=(8, 9), phy_rx_fd=12)
    values: dict = {}
    exec(compile(text, "sim_config.py", "exec"), values)
    values.pop("__builtins__")
    assert values == {
        "NETIF": "w5500", "USB_FD": 7, "WAKE_FDS": (8, 9), "PHY_RX_FD": 12,
        "IP": "10.77.0.2", "PREFIX": 24, "PEER": "10.77.0.1",
        "GATEWAY": "10.77.0.1", "MAC": "02:00:0a:4d:00:02", "KERNELS": 2, "SERVICES": True,
        "LOG_FRAMES": True, "HEAP": 294912, "HEAP_HELD_BACK": 0,
        "NAME": "ts0", "STACK": {},
    }
    assert 'NETIF = "w5500"\n' in text and "USB_FD = 7\n" in text and "SERVICES = True\n" in text


def test_render_sim_config_options(root):
    cfg = make_config(root=root, name="x1", board_ip="192.168.5.9/28", peer_ip="192.168.5.1",
                      services=False, log_frames=False, mac="02:11:22:33:44:55")
    values: dict = {}
    exec(render_sim_config(cfg, usb_fd=3), values)
    assert (values["IP"], values["PREFIX"], values["PEER"], values["GATEWAY"]) == (
        "192.168.5.9", 28, "192.168.5.1", "192.168.5.1")
    assert values["SERVICES"] is False and values["LOG_FRAMES"] is False
    assert values["MAC"] == "02:11:22:33:44:55" and values["NAME"] == "x1"


def test_ready_line(root):
    cfg = make_config(root=root)
    assert ready_line(cfg, "up") == (
        "ready netns=ts0 board=10.77.0.2/24 peer=10.77.0.1 link=up usb=/tmp/twinstack/ts0/usb")


def test_board_output_is_forwarded_and_up_detected(root):
    """Lines from the board pipe are forwarded as they come; `netkernel: up` sets the link."""
    out = io.StringIO()
    board = SimBoard(make_config(root=root), out=out, err=io.StringIO())
    r, w = os.pipe()
    os.set_blocking(r, False)
    board._pipe = r
    try:
        os.write(w, b"booting\r\nnetkernel: up mac=02:00:0a:4d:00:02 ip=10.77.0.2/24 lin")
        board._read_output(1.0)
        assert out.getvalue() == "booting\n" and not board.up
        os.write(w, b"k=down kernels=1\nnetkernel: rx \xff\n")
        board._read_output(1.0)
        assert board.up and board.link == "down"
        os.write(w, b"no newline at the end")
        os.close(w)
        w = -1
        board._read_output(1.0)
        assert board._pipe == -1  # EOF seen
        lines = out.getvalue().splitlines()
        assert lines[1].startswith("netkernel: up ") and lines[2] == "netkernel: rx \ufffd"
        assert lines[3] == "no newline at the end"
    finally:
        if w >= 0:
            os.close(w)
        os.close(r)


# -- the undo stack -----------------------------------------------------------------------


def test_undo_stack_runs_newest_first_and_survives_errors():
    done: list[str] = []
    undo = UndoStack()
    undo.push("a", lambda: done.append("a"))

    def boom() -> None:
        done.append("b")
        raise RuntimeError("cannot")

    undo.push("b", boom)
    undo.push("c", lambda: done.append("c"))
    errors = undo.unwind()
    assert done == ["c", "b", "a"]
    assert errors == ["b: cannot"]
    assert len(undo) == 0 and undo.unwind() == []


def test_exists_message_names_the_fix():
    msg = netns.exists_message("ts0")
    assert msg.startswith("netns ts0 exists: another twinstack sim with this name is running")
    assert "ip netns del ts0" in msg


def test_missing_tool_names_the_package(monkeypatch):
    monkeypatch.setattr(netns.shutil, "which", lambda name, path=None: None)
    with pytest.raises(netns.SimError, match="apt-get install ethtool"):
        netns.find_tool("ethtool")


def test_stack_settings_reach_sim_config(root):
    cfg = make_config(root=root, name="ab", stack=["tcp_max_connections=48", "tcp_nagle=false"])
    text = render_sim_config(cfg, 5)
    assert "STACK = {'tcp_max_connections': 48, 'tcp_nagle': False}" in text
    with pytest.raises(ValueError, match="NAME=VALUE"):
        make_config(root=root, name="ab", stack=["oops"])
    with pytest.raises(ValueError, match="integer"):
        make_config(root=root, name="ab", stack=["tcp_rx_buffer=big"])
