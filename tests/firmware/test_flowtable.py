# The flow table: stable flow numbers, lookup/insert/remove, eviction of the entry idle the
# longest when full, idle expiry (TCP kept longer), tick wrap-around, counters.
import micropython
from netkernel.dispatcher.flowtable import F_PINNED, FlowTable


def key(i):
    k = bytearray(13)
    k[0] = 10
    k[3] = i & 0xFF
    k[8] = i >> 8
    k[9] = i & 0xFF
    k[12] = 6
    return k


def test_insert_lookup_remove_keep_flow_numbers():
    ft = FlowTable(16)
    slots = [ft.insert(key(i), 0, i & 1, 0, 100) for i in range(10)]
    assert sorted(slots) == list(range(10))
    for i in range(10):
        assert ft.lookup(key(i), 0) == slots[i]
        assert ft.owner[slots[i]] == i & 1
    ft.remove(slots[3])
    assert ft.lookup(key(3), 0) == -1
    for i in (0, 1, 2, 4, 5, 9):                    # the others did not move
        assert ft.lookup(key(i), 0) == slots[i]
    assert ft.count() == 9
    ft.remove(slots[3])                             # twice: harmless
    ft.remove(-1)
    ft.remove(99)
    assert ft.count() == 9
    assert ft.insert(key(3), 0, 1, 0, 200) == slots[3]     # the freed slot is reused


def test_lookup_at_an_offset_and_colliding_buckets():
    ft = FlowTable(64)
    buf = bytearray(20)
    buf[7:20] = key(5)
    s = ft.insert(buf, 7, 0, 0, 0)
    assert ft.lookup(key(5), 0) == s
    # more keys than buckets would hold singly: chains work
    for i in range(6, 64):
        ft.insert(key(i), 0, 0, 0, 0)
    for i in range(5, 64):
        assert ft.lookup(key(i), 0) >= 0
    assert ft.count() == 59


def test_full_table_evicts_the_oldest_idle_entry():
    ft = FlowTable(4)
    for i in range(4):
        ft.insert(key(i), 0, 0, 0, 1000 + i)
    ft.touch(ft.lookup(key(0), 0), 60, 0x44, 2000)  # key 0 is busy: key 1 is the oldest
    s = ft.insert(key(9), 0, 1, 0, 2001)
    assert ft.lookup(key(1), 0) == -1
    assert ft.lookup(key(9), 0) == s
    assert ft.lookup(key(0), 0) >= 0
    st = ft.stats()
    assert st["evictions"] == 1 and st["flows"] == 4, st


def test_eviction_spares_connections_while_there_is_a_connectionless_entry():
    ft = FlowTable(4)
    ft.insert(key(0), 0, 1, F_PINNED, 1000)        # the oldest, but a connection
    ft.insert(key(1), 0, 0, 0, 1500)               # a UDP flow
    ft.insert(key(2), 0, 1, F_PINNED, 1100)
    ft.insert(key(3), 0, 0, F_PINNED, 1200)
    assert list(ft.pinned[:2]) == [1, 2]
    ft.insert(key(4), 0, 0, F_PINNED, 2000)
    assert ft.lookup(key(1), 0) == -1 and ft.lookup(key(0), 0) >= 0
    assert list(ft.pinned[:2]) == [2, 2]
    # only connections left: the one idle the longest goes, and its owner's count with it
    ft.insert(key(5), 0, 0, 0, 2100)
    assert ft.lookup(key(0), 0) == -1
    assert list(ft.pinned[:2]) == [2, 1] and ft.stats()["evictions"] == 2
    # a new owner takes the count along; removal gives it back
    s = ft.lookup(key(2), 0)
    ft.set_owner(s, 0)
    assert list(ft.pinned[:2]) == [3, 0] and ft.owner[s] == 0
    ft.set_owner(ft.lookup(key(5), 0), 1)          # not a connection: not counted
    assert list(ft.pinned[:2]) == [3, 0]
    ft.remove(s)
    ft.clear()
    assert list(ft.pinned[:2]) == [0, 0]


def test_counters_and_entries():
    ft = FlowTable(8)
    s = ft.insert(key(1), 0, 1, F_PINNED, 5)
    for _ in range(3):
        ft.touch(s, 1500, 0x524, 6)
    (num, text, owner, packets, nbytes, last_op), = ft.entries()
    assert (num, owner, packets, nbytes, last_op) == (s, 1, 3, 4500, 0x524)
    assert text == "6 10.0.0.1:1 > 0.0.0.0:0", text


def test_byte_counter_wraps_without_heap_ints():
    ft = FlowTable(2)
    s = ft.insert(key(1), 0, 0, 0, 0)
    ft.nbytes[s] = 0xFFFFFF00
    micropython.heap_lock()
    try:
        ft.touch(s, 0x200, 0, 1)
    finally:
        micropython.heap_unlock()
    assert ft.nbytes[s] == 0x100


def test_expiry_udp_then_tcp():
    ft = FlowTable(8, idle_ms=1000, tcp_idle_ms=10000)
    ft.insert(key(1), 0, 0, 0, 0)               # connectionless
    ft.insert(key(2), 0, 0, F_PINNED, 0)        # a connection
    ft.expire_step(900, 8)
    assert ft.count() == 2
    ft.expire_step(1500, 8)
    assert ft.lookup(key(1), 0) == -1 and ft.lookup(key(2), 0) >= 0
    ft.expire_step(10001, 3)                    # the cursor goes round in small steps
    ft.expire_step(10001, 5)
    assert ft.count() == 0
    assert ft.stats()["expired"] == 2


def test_ages_survive_the_ticks_wrap():
    ft = FlowTable(4, idle_ms=1000)
    near_wrap = (1 << 30) - 100
    ft.insert(key(1), 0, 0, 0, near_wrap)
    ft.expire_step(400, 4)                      # 500 ms later, after the wrap
    assert ft.count() == 1
    ft.expire_step(1000, 4)                     # 1100 ms later
    assert ft.count() == 0


def test_a_clock_reading_older_than_the_last_touch_expires_nothing():
    # Two cores take turns at dispatching, each with its own ticks_ms() reading: an entry
    # touched at 5000 by one may be looked at with 4990 by the other. That is age 0, not an
    # age of almost 2**30 ms (the connection would lose its entry and its core).
    ft = FlowTable(4, idle_ms=1000, tcp_idle_ms=1000)
    ft.insert(key(1), 0, 1, F_PINNED, 5000)
    ft.insert(key(2), 0, 1, 0, 5000)
    ft.expire_step(4990, 4)
    assert ft.count() == 2
    ft.insert(key(3), 0, 0, 0, 4000)
    ft.insert(key(4), 0, 0, 0, 4500)
    assert ft.lookup(key(3), 0) == ft._oldest(4990)
    ft.expire_step(6001, 4)
    assert ft.count() == 0


def test_clear():
    ft = FlowTable(8)
    for i in range(8):
        ft.insert(key(i), 0, 0, 0, 0)
    ft.clear()
    assert ft.count() == 0 and ft.entries() == []
    assert ft.insert(key(1), 0, 0, 0, 0) >= 0
