"""The ``twinstack`` command line.

Subcommands:

``twinstack sim``
    run one simulated board in the foreground (see :mod:`twinstack.sim.launcher`).
``twinstack status URL``
    bring the board up through the OSM and show its IOPs and per-core counters.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from twinstack import __version__

log = logging.getLogger(__name__)

_SIM_DESCRIPTION = """\
Run ONE simulated TwinStack board in the foreground: the firmware in the MicroPython unix
port, its W5500 wired through a veth pair to a network namespace where the Linux kernel is
the peer, its USB CDC a pty the host opens like /dev/ttyACM1.

Creates netns NAME (the peer, eth0 = PEER/PREFIX) and NAME-board (the board, w5500),
/tmp/twinstack/NAME/ (board files, and `usb` -> the pty), forwards every line the board
prints, and prints one line once it is up:

  ready netns=NAME board=IP/PREFIX peer=IP link=up usb=/tmp/twinstack/NAME/usb

Stop it with Ctrl-C or SIGTERM: the board is stopped and everything is removed again.
Needs root; other users get a private user + network + mount namespace (unshare)."""

_SIM_EPILOG = """\
examples:
  twinstack sim                                 board 10.77.0.2/24, peer 10.77.0.1 in netns ts0
  twinstack sim --netns lab2 --board-ip 192.168.9.20/24 --peer-ip 192.168.9.1 --heap 480k
  ip netns exec ts0 ping -c 3 10.77.0.2         talk to the board from the peer namespace

environment:
  TWINSTACK_ROOT        the project tree (instead of the one this package lives in)
  TWINSTACK_SIM_ENTRY   run this file instead of <root>/firmware/main.py (for testing the
                        launcher with a stand-in firmware)"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the paragraphs of descriptions and epilogs; a little wider option help."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=92)


def _verbosity_parent() -> argparse.ArgumentParser:
    """``-v`` accepted both before and after the subcommand."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS,
        help="log more (-v: what is done, -vv: every command run)",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``twinstack`` command."""
    from twinstack.sim import launcher as sim

    verbosity = _verbosity_parent()
    parser = argparse.ArgumentParser(
        prog="twinstack",
        description="TwinStack host tools: drive a TwinStack board (a dual-core MicroPython "
        "TCP/IP offload engine with a W5500) or run a simulated one.",
        parents=[verbosity],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "sim", help="run a simulated board (MicroPython unix port + veth + pty)",
        description=_SIM_DESCRIPTION, epilog=_SIM_EPILOG, formatter_class=_Formatter,
        parents=[verbosity],
    )
    p.add_argument("--netns", metavar="NAME", default=sim.DEFAULT_NAME,
                   help="name of the peer namespace (the board's is NAME-board); "
                   "1-10 of a-z 0-9 _ - (default: %(default)s)")
    p.add_argument("--board-ip", metavar="ADDR/PREFIX", default=sim.DEFAULT_BOARD_IP,
                   help="the board's IPv4 address and prefix (default: %(default)s)")
    p.add_argument("--peer-ip", metavar="ADDR", default=sim.DEFAULT_PEER_IP,
                   help="the peer's address in namespace NAME, also the board's gateway "
                   "(default: %(default)s)")
    p.add_argument("--kernels", metavar="N", type=int, default=sim.DEFAULT_KERNELS,
                   help="net kernels on the board: 1, 2 or 4 (each with its own stack; "
                   "a real rp2 board runs 2) (default: %(default)s)")
    p.add_argument("--stack", metavar="NAME=VALUE", action="append", default=[],
                   help="override a stack setting of the board (StackConfig in "
                   "firmware/netkernel/stack.py) or an entry of its memory budget "
                   "(boards/rp2040.py), e.g. --stack tcp_max_connections=64 --stack "
                   "ring_capacity=8; repeatable")
    p.add_argument("--heap", metavar="SIZE", default=None,
                   help="MicroPython heap, e.g. 288k, 300000, 1M "
                   f"(default: HEAP_BYTES of boards/sim.py, else {sim.DEFAULT_HEAP})")
    p.add_argument("--services", action=argparse.BooleanOptionalAction, default=True,
                   help="start the board's built-in services (default: on)")
    p.add_argument("--mac", metavar="MAC", default=None,
                   help="the board's MAC (default: 02:00 + the 4 bytes of the board IP)")
    frames = p.add_argument_group("frame log (one line per frame the board receives)")
    frames.add_argument("--log-frames", dest="frame_log", action="store_const",
                        const="summary", help="log a summary line per frame (the default)")
    frames.add_argument("--no-log-frames", dest="frame_log", action="store_const",
                        const="off", help="log no frames")
    frames.add_argument("--frame-log", dest="frame_log", choices=sim.FRAME_LOG_MODES,
                        help="off, summary, or hex (the summary plus the whole frame in hex)")
    p.set_defaults(frame_log="summary")
    p.add_argument("--root", metavar="DIR", default=None,
                   help="the TwinStack project tree (default: $TWINSTACK_ROOT, else the "
                   "tree this package is installed from)")
    p.add_argument("--ready-timeout", metavar="SECONDS", type=float,
                   default=sim.READY_TIMEOUT_S,
                   help="give up if the board is not up after this long (default: %(default)s)")
    # For testing the launcher only: a stand-in for firmware/main.py (or TWINSTACK_SIM_ENTRY).
    p.add_argument("--entry", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser(
        "status", help="show a board's IOPs and per-core counters (through the OSM)",
        description="Open the board at URL, bring up its I2O messaging unit (this resets "
        "every socket the board had open) and print the state of each IOP (net kernel) "
        "and the board's counters, one column per core.",
        epilog="URL: a serial device (/dev/ttyACM1), the simulated board's usb pty "
        "(/tmp/twinstack/ts0/usb) or socket://host:port", formatter_class=_Formatter,
        parents=[verbosity],
    )
    p.add_argument("url", metavar="URL", help="the board's data port")
    p.add_argument("--timeout", metavar="SECONDS", type=float, default=5.0,
                   help="give up if the board does not answer (default: %(default)s)")
    p.set_defaults(func=cmd_status)
    return parser


_IOP_STATES = {2: "operational"}


def format_status(status: dict, stats: dict[str, int]) -> str:
    """The text ``twinstack status`` prints: the IOPs, then per-core counters (``kN.name``)
    as a table with a column per core, then the board-wide counters."""
    lines = [f"board {status['url']}: {len(status['iops'])} IOPs, epoch {status['epoch']}, "
             f"{status['inbound_depth']} inbound frames per IOP, {status['frame_bytes']}-byte "
             f"frames, {status['out_frames']} outbound frames"]
    lines.append(f"{'iop':>4} {'state':<12} {'sockets':>8} {'max':>5} {'free MFAs':>10}")
    for st in status["iops"]:
        state = _IOP_STATES.get(st["state"], str(st["state"]))
        lines.append(f"{st['iop']:>4} {state:<12} {st['sockets']:>8} {st['max_sockets']:>5} "
                     f"{st['free_mfas']:>10}")
    per: dict[str, dict[int, int]] = {}
    other: list[str] = []
    for name, value in stats.items():
        core, dot, rest = name.partition(".")
        if dot and core[:1] == "k" and core[1:].isdigit():
            per.setdefault(rest, {})[int(core[1:])] = value
        else:
            other.append(f"{name}={value}")
    if per:
        cores = sorted({k for values in per.values() for k in values})
        width = max(len(n) for n in per)
        lines.append("")
        lines.append(" ".join([f"{'counter':<{width}}"] + [f"{'k' + str(k):>10}" for k in cores]))
        for name in sorted(per):
            lines.append(" ".join([f"{name:<{width}}"] +
                                  [f"{per[name].get(k, 0):>10}" for k in cores]))
    if other:
        lines.append("")
        line = ""
        for item in other:
            if line and len(line) + 1 + len(item) > 88:
                lines.append(line)
                line = ""
            line = f"{line} {item}" if line else item
        lines.append(line)
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace, parser: argparse.ArgumentParser,
               argv: Sequence[str]) -> int:
    """``twinstack status URL``: the board's IOPs and counters through the OSM."""
    from twinstack.osm import connect

    try:
        with connect(args.url, timeout=args.timeout) as board:
            text = format_status(board.status(), board.stats())
    except (OSError, ValueError) as e:
        print(f"twinstack status: {args.url}: {e}", file=sys.stderr)
        return 1
    print(text)
    return 0


def sim_config_from_args(args: argparse.Namespace):  # -> twinstack.sim.launcher.SimConfig
    """Build and validate the simulated board's configuration (``ValueError`` if bad)."""
    from twinstack.sim.launcher import make_config

    return make_config(
        root=args.root, name=args.netns, board_ip=args.board_ip, peer_ip=args.peer_ip,
        kernels=args.kernels, heap=args.heap, services=args.services, mac=args.mac,
        log_frames=args.frame_log, entry=args.entry, ready_timeout=args.ready_timeout,
        stack=args.stack,
    )


def cmd_sim(args: argparse.Namespace, parser: argparse.ArgumentParser,
            argv: Sequence[str]) -> int:
    """``twinstack sim``: validate, become root (user namespace) if needed, run the board."""
    from twinstack.sim.launcher import reexec_in_userns, run_sim
    from twinstack.sim.netns import SimError

    try:
        cfg = sim_config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    try:
        reexec_in_userns(argv)
        return run_sim(cfg)
    except SimError as e:
        print(f"twinstack sim: {e}", file=sys.stderr)
        return 1


def setup_logging(verbose: int) -> None:
    """Log to stderr: warnings by default, -v info, -vv debug."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="twinstack: %(levelname)s: %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``twinstack`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0))
    try:
        return args.func(args, parser, argv)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
