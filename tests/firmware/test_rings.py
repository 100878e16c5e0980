# Rings between the dispatcher and the kernels, under real parallel threads (the unix port
# has no GIL, like rp2), and the shared frame pool.
import _thread
import time
from array import array

import micropython
from netkernel.rings import EventRing, FramePool, MpscRing, SpscRing, TxQueue

TIMEOUT_S = 60


def _wait(flags, n, seconds=30):
    deadline = time.ticks_add(time.ticks_ms(), seconds * 1000)
    while sum(flags) < n:
        assert time.ticks_diff(deadline, time.ticks_ms()) > 0, "threads did not finish"
        time.sleep_ms(1)


def _produce(ring, start, count, step, done, k):
    v = start
    for _ in range(count):
        while not ring.push(v & 0xFFFF):
            pass
        v += step
    done[k] = 1


def test_spsc_basics():
    r = SpscRing(4)
    assert r.pop() == -1 and r.depth() == 0
    assert r.push(1) and r.push(2) and r.push(3) and r.push(4)
    assert not r.push(5) and r.depth() == 4 and r.hwm == 4
    assert [r.pop() for _ in range(5)] == [1, 2, 3, 4, -1]
    for i in range(70000):       # the 16-bit indices wrap many times
        assert r.push(i & 0xFFFF) and r.pop() == i & 0xFFFF
    try:
        SpscRing(6)
        raise AssertionError("capacity 6 accepted")
    except ValueError:
        pass


def test_spsc_two_threads_every_value_once_in_order():
    r = SpscRing(16)
    count = 60000
    done = array("B", [0])
    _thread.start_new_thread(_produce, (r, 0, count, 1, done, 0))
    got = 0
    expect = 0
    while got < count:
        v = r.pop()
        if v < 0:
            continue
        assert v == expect & 0xFFFF, (v, expect)
        expect += 1
        got += 1
    _wait(done, 1)
    assert r.pop() == -1 and r.hwm <= 16


def test_mpsc_two_producers_lose_nothing():
    r = MpscRing(32)
    count = 20000
    done = array("B", [0, 0])
    # Producer 0 pushes even numbers, producer 1 odd numbers (mod 2**16, so per-producer
    # order is checked on the low 15 bits' sequence).
    _thread.start_new_thread(_produce, (r, 0, count, 2, done, 0))
    _thread.start_new_thread(_produce, (r, 1, count, 2, done, 1))
    nxt = [0, 1]
    got = 0
    while got < 2 * count:
        v = r.pop()
        if v < 0:
            continue
        p = v & 1
        assert v == nxt[p] & 0xFFFF, (v, nxt[p])
        nxt[p] += 2
        got += 1
    _wait(done, 2)
    assert r.pop() == -1


def test_event_ring_records():
    e = EventRing(4)
    ip = bytes([10, 0, 0, 9])
    for i in range(4):
        assert e.push(ip, 0, 1000 + i, 50000 + i)
    assert not e.push(ip, 0, 1, 2) and e.dropped == 1
    o = e.pop()
    assert e.data[o:o + 4] == ip
    assert (e.data[o + 4] << 8 | e.data[o + 5]) == 1000
    assert (e.data[o + 6] << 8 | e.data[o + 7]) == 50000


def test_frame_pool_refcounts_and_no_allocation():
    p = FramePool(3)
    a, b, c = p.take(), p.take(), p.take()
    assert sorted([a, b, c]) == [0, 1, 2] and p.take() == -1 and p.low == 0
    p.refs[b] = 2              # an ARP frame on two cores
    p.release(b)
    assert p.nfree == 0
    p.release(b)
    assert p.nfree == 1 and p.take() == b
    r = SpscRing(8)
    before = micropython.mem_total()
    for _ in range(100):
        p.release(a)
        s = p.take()
        r.push(s)
        r.pop()
        r.depth()
    assert micropython.mem_total() == before


def test_tx_queue_ports_post_and_core0_drains():
    q = TxQueue(3, 2)
    sent = []

    def send(buf, n):
        sent.append(bytes(buf[:n]))
        return True

    p1, p2 = q.ports[1], q.ports[2]
    assert p1.send(b"a" * 60, 60) and p2.send(b"b" * 70, 70) and p1.send(b"c" * 60, 60)
    assert not p1.send(b"d" * 60, 60) and p1.no_slot == 1     # core 1's two slots in use
    assert q.drain(send, 10) == 3 and q.sent == 3
    assert sent == [b"a" * 60, b"b" * 70, b"c" * 60]
    assert p1.send(b"e" * 60, 60)                               # slots came back
