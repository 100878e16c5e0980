# netkernel.wire: checksum, 32-bit sequence arithmetic without big ints, copies.
import micropython
from netkernel import wire


def be32(v):
    return bytearray([(v >> 24) & 0xFF, (v >> 16) & 0xFF, (v >> 8) & 0xFF, v & 0xFF])


def test_checksum_matches_rfc1071_example():
    data = bytes([0x00, 0x01, 0xF2, 0x03, 0xF4, 0xF5, 0xF6, 0xF7])
    assert wire.checksum(data, 0, 8, 0) == 0xDDF2
    assert wire.checksum(b"\x12", 0, 1, 0) == 0x1200          # odd length pads with zero


def test_ipv4_header_checksum_verifies_to_ffff():
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    s = wire.checksum(hdr, 0, 20, 0)
    hdr = bytearray(hdr)
    wire.put16(hdr, 10, ~s & 0xFFFF)
    assert wire.get16(hdr, 10) == 0xB861
    assert wire.checksum(hdr, 0, 20, 0) == 0xFFFF


def test_seq_delta_wraps_and_clamps():
    cases = [(0x10, 0xFFFFFFF0, 32), (0xFFFFFFF0, 0x10, -32), (5, 5, 0),
             (0x7FFFFFFF, 0, 0x3FFFFFFF), (0x80000000, 0, -0x40000000),
             (0x12345678, 0x12340000, 0x5678)]
    for a, b, want in cases:
        assert wire.seq_delta(be32(a), 0, be32(b), 0) == want, (a, b)


def test_seq_put_and_add():
    base = be32(0xFFFFFFFE)
    out = bytearray(4)
    wire.seq_put(out, 0, base, 0, 3)
    assert out == be32(1)
    wire.seq_put(out, 0, base, 0, -0xFFFF)
    assert out == be32(0xFFFF0000 - 1)
    wire.seq_add(base, 0, 70000)
    assert base == be32((0xFFFFFFFE + 70000) & 0xFFFFFFFF)
    wire.seq_add(base, 0, -70000)
    assert base == be32(0xFFFFFFFE)


def test_copy_overlapping_and_equal():
    b = bytearray(b"abcdefgh")
    wire.copy(b, 2, b, 0, 6)
    assert b == bytearray(b"ababcdef")
    assert wire.equal(b"xyz1", 0, b"_xyz", 1, 3)
    assert not wire.equal(b"xyz1", 0, b"_xyw", 1, 3)


def test_helpers_do_not_allocate():
    a, q, buf = be32(7), be32(0xFFFFFFFF), bytearray(64)
    micropython.heap_lock()
    try:
        d = wire.seq_delta(a, 0, q, 0)
        wire.seq_add(q, 0, 100)
        wire.seq_put(buf, 0, q, 0, d)
        s = wire.checksum(buf, 0, 64, 0)
        wire.copy(buf, 10, buf, 0, 8)
    finally:
        micropython.heap_unlock()
    assert d == 8 and s >= 0
