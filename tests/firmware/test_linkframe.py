# Link framing (netkernel.proto.linkframe) under MicroPython; tests/host/test_linkframe.py runs
# the same definition under CPython against the host's view of it.
import micropython
from netkernel.proto import linkframe as lf


def _frames_of(stream):
    got = []
    d = lf.Deframer(lambda buf, n: got.append(bytes(buf[:n])))
    d.feed(stream, len(stream))
    return d, got


def _encode(payload):
    out = bytearray(lf.encoded_size(len(payload)))
    n = lf.encode_into(payload, len(payload), out)
    return bytes(out[:n])


def test_crc_check_value():
    assert lf.crc16(b"123456789", 9) == 0x29B1


def test_round_trip_sizes_and_zeros():
    for payload in (b"\x01", b"\x10" + bytes(300), b"\x01" + bytes(range(256)) * 3,
                    b"\x02" + b"\xff" * 600, bytes([0x10]) + bytes(253)):
        enc = _encode(payload)
        assert enc[0] == 0 and enc[-1] == 0 and 0 not in enc[1:-1]
        assert len(enc) <= lf.encoded_size(len(payload))
        d, got = _frames_of(enc)
        assert got == [payload] and d.errors == 0


def test_garbage_and_cut_frames_resync():
    good = _encode(b"\x01hello")
    stream = b"\x13\x37garbage\x00\xff\xfe" + good[:5] + good + b"\x00\x00" + good
    d, got = _frames_of(stream)
    assert got == [b"\x01hello", b"\x01hello"]
    assert d.errors >= 1


def test_corrupted_byte_counted_as_bad_crc():
    enc = bytearray(_encode(b"\x10abcdef"))
    enc[4] ^= 0x01
    d, got = _frames_of(bytes(enc))
    assert got == [] and d.bad_crc == 1


def test_overlong_garbage_counted():
    d, got = _frames_of(b"\x00" + b"\x41" * (lf.MAX_PAYLOAD + 10) + b"\x00" + _encode(b"\x01x"))
    assert d.too_long == 1 and got == [b"\x01x"]


def test_encode_and_decode_do_not_allocate():
    payload = bytearray(b"\x10" + bytes(range(200)))
    out = bytearray(lf.encoded_size(len(payload)))
    seen = [0]

    def handler(buf, n):
        seen[0] += n

    d = lf.Deframer(handler)
    micropython.heap_lock()
    try:
        n = lf.encode_into(payload, len(payload), out)
        d.feed(out, n)
    finally:
        micropython.heap_unlock()
    assert seen[0] == len(payload)


def test_golden_vectors_match_the_viper_encoder_and_deframer():
    # Made by the plain-Python encoder under CPython (tests/linkframe_vectors.py).
    from linkframe_vectors import VECTORS, payload

    for seed, n, frame_hex in VECTORS:
        p = payload(seed, n)
        frame = bytes.fromhex(frame_hex)
        assert _encode(p) == frame, (seed, n)
        d, got = _frames_of(frame)
        assert got == [p] and d.errors == 0


def test_split_feeding_keeps_state_between_calls():
    from linkframe_vectors import VECTORS, payload

    stream = b"".join(bytes.fromhex(h) for _, _, h in VECTORS)
    got = []
    d = lf.Deframer(lambda buf, n: got.append(bytes(buf[:n])))
    for step in (1, 7, 255):
        got.clear()
        for i in range(0, len(stream), step):
            chunk = stream[i:i + step]
            d.feed(chunk, len(chunk))
        assert got == [payload(seed, n) for seed, n, _ in VECTORS], step
    assert d.errors == 0
