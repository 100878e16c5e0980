"""The simulated PHY's receiver: a CPython process, started by ``twinstack sim`` in the
board's network namespace, that takes every frame off the board's end of the veth and
passes it on a pipe to the board process, where the PHY thread (simhw/wire.py PacketWire)
hands it to the emulated W5500.

Why outside the board: MicroPython's unix port cannot receive one datagram into a buffer of
its own (``recv()`` allocates a new one per call, ``readinto()`` on a non-blocking socket
reads on into the next datagram), and the simulated board's heap is sized like the
RP2040's, which has no room for a 2 KB allocation per frame: on an RP2040 the frames wait
in the chip's memory, not in the heap. On a pipe the board reads whole records into one
buffer made at boot.

A record is ``REC_HDR`` bytes of length (big-endian), then the frame. A record of length 0
says the wire's socket reported an error (the interface went down, say): the board counts
it. Frames longer than the chip takes are passed whole; the board drops and counts them.

Usage (as ``twinstack sim`` runs it)::

    ip netns exec NS python -m simhw.phy_rx IFNAME FD

prints ``ready`` once the socket is bound, and runs until it is killed (the launcher holds
the pipe's read end too) or every reader of the pipe is gone.
"""

import errno
import os
import socket
import sys
import time

from simhw.wire import REC_HDR

ETH_P_ALL = 0x0003          # every protocol
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
_MAX_RECORD = 0xFFFF        # the length field's limit; larger is more than any veth sends
_ERROR_PAUSE_S = 0.01


def open_wire(ifname: str) -> socket.socket:
    """A packet socket taking every frame that arrives on ``ifname`` (none it sends)."""
    # Protocol 0 until bound: created with ETH_P_ALL, it would take the frames of every
    # interface in the namespace until bind() narrows it to one.
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        # The board transmits on this interface from a socket of its own: not looped back.
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        s.bind((ifname, ETH_P_ALL))
    except OSError:
        s.close()
        raise
    return s


def write_all(fd: int, data: memoryview) -> None:
    """The whole of ``data`` on ``fd`` (a record above PIPE_BUF may go in pieces)."""
    while data:
        data = data[os.write(fd, data):]


def relay(sock: socket.socket, fd: int) -> None:
    """Frames from ``sock`` as records on ``fd`` until the reader is gone."""
    buf = bytearray(REC_HDR + _MAX_RECORD)
    view = memoryview(buf)
    frame = view[REC_HDR:]
    error = bytes(REC_HDR)
    while True:
        try:
            n = sock.recv_into(frame)
        except InterruptedError:
            continue
        except OSError as e:
            # e.g. ENETDOWN while the interface is reconfigured: a PHY keeps listening.
            write_all(fd, memoryview(error))
            if e.errno not in (errno.ENETDOWN, errno.ENXIO, errno.EAGAIN):
                print(f"phy_rx: {e}", file=sys.stderr, flush=True)
            time.sleep(_ERROR_PAUSE_S)
            continue
        if n == 0:
            continue
        buf[:REC_HDR] = n.to_bytes(REC_HDR, "big")
        write_all(fd, view[:REC_HDR + n])


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    ifname, fd = argv[1], int(argv[2])
    try:
        sock = open_wire(ifname)
    except OSError as e:
        print(f"phy_rx: cannot open {ifname}: {e}", file=sys.stderr, flush=True)
        return 1
    print("ready", flush=True)
    try:
        relay(sock, fd)
    except BrokenPipeError:
        return 0        # the board is gone
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
