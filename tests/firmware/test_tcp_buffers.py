# tcpbuf: the byte ring (also the retransmit queue) and the out-of-order assembler.
from netkernel.tcpbuf import Assembler, RingBuffer


def ranges(a):
    return [(a.starts[i], a.ends[i]) for i in range(a.count)]


def test_ring_write_read_wraps():
    r = RingBuffer(8)
    assert r.write(b"abcdef", 0, 6) == 6
    out = bytearray(8)
    assert r.read_into(out, 0, 4) == 4 and out[:4] == b"abcd"
    assert r.write(b"123456", 0, 6) == 6          # wraps around the end
    assert r.free() == 0
    assert r.write(b"x", 0, 1) == 0                # full
    assert r.read_into(out, 0, 8) == 8 and out == bytearray(b"ef123456")
    assert r.used == 0 and r.head == 4             # emptied: the head stays where it is


def test_ring_keeps_parked_data_when_the_reader_empties_it():
    r = RingBuffer(8)
    r.write(b"abc", 0, 3)
    r.write_at(2, b"XY", 0, 2)                     # out-of-order bytes after a 2-byte hole
    out = bytearray(8)
    assert r.read_into(out, 0, 8) == 3             # the reader empties the ring
    r.write_at(0, b"de", 0, 2)                     # the hole fills
    r.commit(4)
    assert r.read_into(out, 0, 8) == 4 and out[:4] == b"deXY"


def test_ring_peek_and_discard_keep_the_retransmit_queue():
    r = RingBuffer(8)
    r.write(b"abcdefgh", 0, 8)
    r.discard(6)
    r.write(b"ijklmn", 0, 6)
    out = bytearray(6)
    r.peek_into(out, 0, 1, 5)                      # offset 1 from the head, across the wrap
    assert out[:5] == b"hijkl"
    assert r.used == 8


def test_ring_write_at_then_commit():
    r = RingBuffer(8)
    r.write(b"ab", 0, 2)
    r.write_at(2, b"ef", 0, 2)                     # parked past a 2-byte hole
    assert r.used == 2
    r.write_at(0, b"cd", 0, 2)
    r.commit(4)
    out = bytearray(6)
    assert r.read_into(out, 0, 6) == 6 and out == bytearray(b"abcdef")


def test_assembler_merges_and_takes_front():
    a = Assembler(4)
    assert a.add(10, 20) and a.add(30, 40) and a.add(20, 30)   # fills the gap: one range
    assert ranges(a) == [(10, 40)]
    assert a.take_front() == 0
    assert a.add(0, 10)
    assert a.take_front() == 40 and a.count == 0


def test_assembler_bounded_ranges():
    a = Assembler(4)
    for s in (10, 30, 50, 70):
        assert a.add(s, s + 5)
    assert not a.add(90, 95)                       # a fifth hole is refused...
    assert ranges(a) == [(10, 15), (30, 35), (50, 55), (70, 75)]   # ...and changes nothing
    assert a.add(15, 30)                           # merging needs no new range
    assert ranges(a) == [(10, 35), (50, 55), (70, 75)]
    assert a.add(0, 100) and ranges(a) == [(0, 100)]


def test_assembler_overlaps_and_rebases():
    a = Assembler(4)
    a.add(5, 10)
    a.add(20, 25)
    a.add(8, 12)
    a.add(3, 6)
    assert ranges(a) == [(3, 12), (20, 25)]
    a.add(0, 3)
    assert a.take_front() == 12
    assert ranges(a) == [(8, 13)]                  # re-based on the new receive point
    a.shift(10)
    assert ranges(a) == [(0, 3)]
    assert a.held() == 3
