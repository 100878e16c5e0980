"""The link framing as the host sees it: the same file as the firmware's, run by CPython."""

import os
import time
from pathlib import Path

import pytest
from twinstack.proto import linkframe as lf

ROOT = Path(__file__).resolve().parents[2]


encode = lf.encode


def decode(stream: bytes) -> tuple[lf.Deframer, list[bytes]]:
    got: list[bytes] = []
    d = lf.Deframer(lambda buf, n: got.append(bytes(buf[:n])))
    d.feed(stream, len(stream))
    return d, got


def test_host_and_firmware_share_one_definition():
    host = Path(lf.__file__).resolve()
    assert host == (ROOT / "firmware/netkernel/proto/linkframe.py").resolve()
    assert os.path.islink(ROOT / "host/twinstack/proto")


@pytest.mark.parametrize("size", [1, 2, 253, 254, 255, 508, 1000, lf.MAX_PAYLOAD])
def test_round_trip(size: int):
    payload = bytes([lf.KIND_I2O_POST]) + bytes((i * 7) % 256 for i in range(size - 1))
    enc = encode(payload)
    assert 0 not in enc[1:-1]
    d, got = decode(enc)
    assert got == [payload] and d.errors == 0


def test_split_feeding_matches_whole():
    payloads = [bytes([1]) + os.urandom(n) for n in (5, 300, 900)]
    stream = b"".join(encode(p) for p in payloads)
    got: list[bytes] = []
    d = lf.Deframer(lambda buf, n: got.append(bytes(buf[:n])))
    for i in range(0, len(stream), 7):
        chunk = stream[i : i + 7]
        d.feed(chunk, len(chunk))
    assert got == payloads


def test_random_garbage_never_raises_and_resyncs():
    garbage = os.urandom(20000)
    d, got = decode(garbage + encode(b"\x01ok"))
    assert got[-1] == b"\x01ok"


def test_payload_limits():
    with pytest.raises(ValueError):
        lf.encode_into(b"", 0, bytearray(8))
    with pytest.raises(ValueError):
        lf.encode_into(bytes(lf.MAX_PAYLOAD + 1), lf.MAX_PAYLOAD + 1, bytearray(4096))


def test_link_over_loop_url_echoes_its_own_frames():
    # loop:// returns what is written: a frame sent comes back whole, garbage is skipped.
    from twinstack.link import Link, LinkTimeout

    with Link("loop://") as link:
        link.send_raw(b"\x17garbage\x00")
        link.send(lf.KIND_ECHO_REQUEST, b"abc")
        assert link.recv(1.0) == (lf.KIND_ECHO_REQUEST, b"abc")
        assert link.errors == 1
        with pytest.raises(LinkTimeout):
            link.recv(0.1)


def test_usb_fill_keeps_writes_and_stream_off_packet_boundaries():
    # The board reads in USB transfers of several packets, which end at a short packet:
    # a write (or the stream) ending on a full packet would wait there for the next one.
    for total in range(0, 3 * lf.USB_PACKET):
        for n in range(1, 3 * lf.USB_PACKET):
            k = lf.usb_fill(total, n)
            assert 0 <= k <= 2
            assert (n + k) % lf.USB_PACKET and (total + n + k) % lf.USB_PACKET
    assert lf.usb_fill(0, 5) == 0


def test_frames_sent_never_end_on_a_usb_packet_boundary():
    # Link and Transport append idle fill (00s, which the deframer skips) where needed.
    from twinstack.link import Link
    from twinstack.transport import Transport

    with Link("loop://") as link:
        for size in range(1, 200):
            link.send(lf.KIND_ECHO_REQUEST, bytes(size))
            assert link._bytes_out % lf.USB_PACKET, size
            assert link.recv(1.0) == (lf.KIND_ECHO_REQUEST, bytes(size))
        assert link.errors == 0
    got: list[tuple[int, bytes]] = []
    t = Transport("loop://", lambda kind, body: got.append((kind, body)), lambda t, e: None)
    t.start()                 # its reader drains loop://, whose queue is bounded
    try:
        for size in range(1, 130):
            t.send(lf.KIND_ECHO_REQUEST, bytes(size))
            assert t.bytes_out % lf.USB_PACKET
        deadline = time.monotonic() + 5
        while len(got) < 129 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert got == [(lf.KIND_ECHO_REQUEST, bytes(size)) for size in range(1, 130)]
        assert t.errors == 0
    finally:
        t.close()


def test_paged_reply_skips_frames_of_other_kinds():
    # loop:// plays the board: the request comes back first (skipped: wrong kind), then the
    # pieces of a paged stats reply with an unrelated frame in between.
    from twinstack.link import Link

    with Link("loop://") as link:
        out = bytearray(lf.encoded_size(lf.MAX_PAYLOAD))
        for payload in (bytes([lf.KIND_STATS_REPLY, 1]) + b"a=1 b=2 ",
                        bytes([lf.KIND_TCP_TEST_REPLY]) + bytes(13),
                        bytes([lf.KIND_STATS_REPLY, 0]) + b"c=3"):
            n = lf.encode_into(payload, len(payload), out)
            link.port.write(out[:n])
        assert link.stats(timeout=1.0) == {"a": 1, "b": 2, "c": 3}


def test_golden_vectors_match_the_plain_python_encoder():
    """The same vectors pass on the board's viper code (tests/firmware/test_linkframe.py)."""
    from tests.linkframe_vectors import VECTORS, payload

    assert len(VECTORS) >= 16
    for seed, n, frame_hex in VECTORS:
        p = payload(seed, n)
        frame = bytes.fromhex(frame_hex)
        assert encode(p) == frame, (seed, n)
        d, got = decode(frame)
        assert got == [p] and d.errors == 0


def test_random_payloads_encode_the_same_in_micropython_and_cpython(tmp_path):
    """Random payloads (not only the golden ones) through the board's encoder, run by the
    MicroPython unix port, against this CPython's plain-Python encoder."""
    import random
    import shutil
    import subprocess
    import sys

    mp = Path(sys.executable).parent / "micropython"
    if not mp.exists():
        mp = shutil.which("micropython")
        if mp is None:
            pytest.skip("the MicroPython unix port is not installed (`make venv` installs it)")
    rng = random.Random(4)
    payloads = [bytes(rng.choice((0, 0, 255, rng.randrange(256))) for _ in range(n))
                for n in [1, 2, 254, 255, 509, lf.MAX_PAYLOAD] + rng.sample(range(3, 900), 24)]
    (tmp_path / "in.txt").write_text("\n".join(p.hex() for p in payloads))
    script = tmp_path / "enc.py"
    script.write_text(
        "from netkernel.proto import linkframe as lf\n"
        f"for line in open({str(tmp_path / 'in.txt')!r}):\n"
        "    p = bytes.fromhex(line.strip())\n"
        "    out = bytearray(lf.encoded_size(len(p)))\n"
        "    print(bytes(out[:lf.encode_into(p, len(p), out)]).hex())\n")
    env = dict(os.environ, MICROPYPATH=str(ROOT / "firmware"))
    proc = subprocess.run([str(mp), str(script)], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    board = proc.stdout.split()
    assert board == [encode(p).hex() for p in payloads]
