"""Board builds: every firmware file cross-compiles for the RP2040 (armv6m) and friends."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# MP_NATIVE_ARCH_* numbers in the .mpy header (py/persistentcode.h).
MPY_ARCH = {"armv6m": 4, "armv7emsp": 7, "xtensawin": 10}
sys.path.insert(0, str(ROOT / "tools"))
import build_firmware as build  # noqa: E402


def _sources() -> list[Path]:
    return sorted((ROOT / "firmware").rglob("*.py")) + sorted((ROOT / "boards").glob("*.py"))


@pytest.mark.parametrize("src", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_firmware_file_cross_compiles_for_armv6m(src: Path):
    proc = subprocess.run(
        [build.mpy_cross(), "-march=armv6m", "-o", "/dev/null", str(src)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "board,arch_flag",
    [("w5500_evb_pico", "armv6m"), ("w5500_evb_pico2", "armv7emsp"), ("esp32_w5500", "xtensawin")],
)
def test_build_board(tmp_path: Path, board: str, arch_flag: str):
    out = tmp_path / board
    files = build.build(board, out)
    mpys = [f for f in files if f.suffix == ".mpy"]
    built = {str(f.relative_to(out)) for f in mpys}
    package = {
        f"lib/{p.relative_to(ROOT / 'firmware').with_suffix('.mpy')}"
        for p in (ROOT / "firmware/netkernel").rglob("*.py")
    }
    # A board whose image has the package frozen (boards/manifest.py) gets only the rest.
    if "netkernel" in build.board_settings(board)["FROZEN"]:
        assert not package & built
    else:
        assert package <= built
    assert (out / "lib/board.mpy").exists() and (out / "main.py").exists()
    for f in mpys:
        head = f.read_bytes()[:2]
        assert head == b"M\x06", f  # MicroPython .mpy version 6
    assert build.board_settings(board)["ARCH"] == arch_flag
    # The machine code is a file on every board, compiled for the board's architecture.
    arch = (out / "lib/netkernel_native.mpy").read_bytes()[2] >> 2
    assert arch == MPY_ARCH[arch_flag]


def test_simulated_board_is_not_cross_compiled(tmp_path: Path):
    with pytest.raises(SystemExit, match="runs from source"):
        build.build("sim", tmp_path / "sim")
