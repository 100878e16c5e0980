# tcpbuf: the byte ring (also the retransmit queue) and the out-of-order assembler.
from netkernel.tcpbuf import CHUNK, Assembler, ChunkPool, ChunkRing


def ranges(a):
    return [(a.starts[i], a.ends[i]) for i in range(a.count)]


def ring(size=8, chunks=4, chunk=None):
    """A ring of ``size`` bytes over a pool of ``chunks`` chunks (CHUNK bytes each); small
    sizes round up to one chunk, so the byte-level cases use CHUNK-sized rings."""
    pool = ChunkPool(chunks)
    return ChunkRing(pool, size), pool


def test_ring_write_read_wraps():
    r, pool = ring(2 * CHUNK, 4)
    n = 2 * CHUNK
    data = bytes(i % 251 for i in range(n))
    assert r.write(data, 0, n - 100) == n - 100
    out = bytearray(n)
    assert r.read_into(out, 0, 300) == 300 and out[:300] == data[:300]
    assert r.write(data, 0, 400) == 400           # wraps around the end
    assert r.free() == 0
    assert r.write(b"x", 0, 1) == 0                # full
    assert r.read_into(out, 0, n) == n
    assert out == data[300:n - 100] + data[:400]
    assert r.used == 0 and r.head == 300           # emptied: the head stays where it is...
    r.drop_unused()                                 # ...until nothing is parked past it
    assert r.head == 0 and pool.nfree == 4 and r.chunks() == 0


def test_ring_keeps_parked_data_when_the_reader_empties_it():
    r, pool = ring()
    r.write(b"abc", 0, 3)
    assert r.write_at(2, b"XY", 0, 2)              # out-of-order bytes after a 2-byte hole
    out = bytearray(8)
    assert r.read_into(out, 0, 8) == 3             # the reader empties the ring
    assert r.write_at(0, b"de", 0, 2)              # the hole fills
    r.commit(4)
    assert r.read_into(out, 0, 8) == 4 and out[:4] == b"deXY"


def test_parked_data_just_behind_the_head_survives_a_read():
    # Two chunks (positions 0..1023), the head at 612: the free space runs round to just
    # behind the head, into the head's own chunk, where out-of-order data may be parked.
    r, pool = ring(2 * CHUNK, 4)
    out = bytearray(2 * CHUNK)
    r.write(bytes(612), 0, 612)
    r.read_into(out, 0, 612)
    r.write(b"a" * 500, 0, 500)                    # 612..1023 and 0..87
    assert r.write_at(424, b"PARKED", 0, 6)        # at 512..517: behind the head, chunk 1
    assert r.read_into(out, 0, 500, True) == 500   # the head moves on to 88, in chunk 0
    for _ in range(pool.nfree):                    # every free chunk is reused, scribbled
        c = pool.take()
        pool.mem[c * CHUNK:(c + 1) * CHUNK] = b"\xee" * CHUNK
    r.peek_into(out, 0, 424, 6)
    assert bytes(out[:6]) == b"PARKED", bytes(out[:6])


def test_ring_peek_and_discard_keep_the_retransmit_queue():
    r, pool = ring(CHUNK, 2)
    data = bytes(i % 251 for i in range(CHUNK))
    r.write(data, 0, CHUNK)
    r.discard(CHUNK - 2)
    r.write(b"ijklmn", 0, 6)
    out = bytearray(6)
    r.peek_into(out, 0, 1, 5)                      # offset 1 from the head, across the wrap
    assert out[:5] == data[CHUNK - 1:] + b"ijkl"
    assert r.used == 8


def test_ring_write_at_then_commit():
    r, pool = ring()
    r.write(b"ab", 0, 2)
    assert r.write_at(2, b"ef", 0, 2)              # parked past a 2-byte hole
    assert r.used == 2
    assert r.write_at(0, b"cd", 0, 2)
    r.commit(4)
    out = bytearray(6)
    assert r.read_into(out, 0, 6) == 6 and out == bytearray(b"abcdef")


def test_chunks_are_taken_as_data_arrives_and_given_back_as_it_goes():
    r, pool = ring(4 * CHUNK, 8)
    assert r.chunks() == 0 and pool.nfree == 8     # a ring costs nothing while empty
    data = bytes(3 * CHUNK)
    assert r.write(data, 0, CHUNK + 10) == CHUNK + 10
    assert r.chunks() == 2 and pool.nfree == 6
    r.discard(CHUNK)                               # the first chunk is behind the head now
    assert r.chunks() == 1 and pool.nfree == 7
    r.discard(10)                                  # empty: the chunk under the head stays
    assert r.chunks() == 1
    r.drop_unused()
    assert r.chunks() == 0 and pool.nfree == 8 and pool.low == 6


def test_a_pool_that_runs_out_refuses_what_it_cannot_hold():
    a, pool = ring(4 * CHUNK, 3)
    b = ChunkRing(pool, 4 * CHUNK)
    data = bytes(4 * CHUNK)
    assert a.write(data, 0, 2 * CHUNK) == 2 * CHUNK
    assert b.writable() == CHUNK
    assert b.write(data, 0, 2 * CHUNK) == CHUNK    # the pool's last chunk, no more
    assert pool.nfree == 0 and pool.short == 1
    assert not a.write_at(100, data, 0, 10)        # parking needs a chunk too
    assert pool.short == 2
    a.clear()
    assert pool.nfree == 2 and b.write(data, 0, CHUNK) == CHUNK


def test_parking_leaves_the_reserve_to_in_order_data():
    a, pool = ring(8 * CHUNK, 6)
    b = ChunkRing(pool, 8 * CHUNK)
    data = bytes(8 * CHUNK)
    assert a.write_at(CHUNK, data, 0, 2 * CHUNK, 4)     # 2 chunks, 4 left
    assert not b.write_at(CHUNK, data, 0, 10, 4)        # a 3rd would cut into the reserve
    assert not b.write_at(CHUNK, data, 0, 10, 8)        # a reserve over what is free
    assert pool.nfree == 4 and pool.short == 2
    assert b.write(data, 0, 4 * CHUNK) == 4 * CHUNK     # in-order data may use all of it
    assert pool.nfree == 0


def test_ring_against_a_model_with_parking_wraps_and_a_small_pool():
    # Random in-order and parked writes, reads, discards over a pool two rings share:
    # every byte read is the byte written at that stream offset.
    import random
    random.seed(7)
    pool = ChunkPool(5)
    rings = [ChunkRing(pool, 4 * CHUNK), ChunkRing(pool, 2 * CHUNK)]
    wrote = [0, 0]
    read = [0, 0]
    src = bytearray(3 * CHUNK)
    out = bytearray(3 * CHUNK)
    for step in range(3000):
        k = step & 1
        r = rings[k]
        n = random.getrandbits(10) % (r.free() + 1)
        if n and random.getrandbits(2) == 0:
            # in two pieces: the later one parked first, then the first, then committed
            a = n // 2
            for i in range(n):
                src[i] = (wrote[k] + i) % 251
            if r.write_at(a, src, a, n - a) and r.write_at(0, src, 0, a):
                r.commit(n)
                wrote[k] += n
        elif n:
            for i in range(n):
                src[i] = (wrote[k] + i) % 251
            wrote[k] += r.write(src, 0, n)
        m = random.getrandbits(10)
        got = r.read_into(out, 0, m)
        for i in range(got):
            assert out[i] == (read[k] + i) % 251, (step, k, read[k] + i)
        read[k] += got
        if random.getrandbits(3) == 0:
            r.drop_unused()
    assert sum(wrote) > 20000 and wrote == [read[0] + rings[0].used, read[1] + rings[1].used]
    for r in rings:
        r.clear()
    assert pool.nfree == 5


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
