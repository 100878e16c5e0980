# The established-connection data path allocates nothing: in-order data in, recv_into,
# send, incoming ACKs, poll (with and without timers firing), poll_at, window updates.
# Every segment the test feeds is built before the heap is locked.
import micropython
from tcp_harness import ACK, PSH, build, server_established


def u32(b, o=0):
    return (b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]


def test_established_data_path_does_not_allocate():
    st, lsn, s, p = server_established(tcp_tx_buffer=8192, tcp_rx_buffer=8192)
    tcp = st.tcp
    # Warm up: one exchange in each direction outside the lock.
    p.send(ACK | PSH, b"warm", now=1500)
    scratch = bytearray(2048)
    s.recv_into(scratch, 0, 2048)
    s.send(b"warm", 0, 4)
    tcp.poll(1500)
    p.take()
    p.send(ACK, now=1501)
    st.iface.record = False

    rounds = 40
    size = 1000
    reply = bytes(range(256)) * 2
    peer_seq = p.seq
    our_una = u32(s.seq, 0)                   # SND.UNA of the socket
    data_segs = []
    ack_segs = []
    for k in range(rounds):
        payload = bytes(((k + i) & 0xFF) for i in range(size))
        data_segs.append(build(p.ip, st.iface.ip, p.port, p.our_port,
                               (peer_seq + k * size) & 0xFFFFFFFF, our_una, ACK | PSH,
                               65535, payload))
        ack_segs.append(build(p.ip, st.iface.ip, p.port, p.our_port,
                              (peer_seq + (k + 1) * size) & 0xFFFFFFFF,
                              (our_una + (k + 1) * 500) & 0xFFFFFFFF, ACK, 65535))
    received = bytearray(rounds * size)
    before = st.iface.count
    now = 2000
    total = 0
    k = 0
    # Inline, not in a closure: calling a closure over more than 5 variables allocates.
    micropython.heap_lock()
    try:
        while k < rounds:
            buf, ip, t, n = data_segs[k]
            tcp.input(buf, ip, t, n, now)         # in-order data (delayed ACK armed)
            tcp.poll_at(now)
            tcp.poll(now)                         # nothing due
            total += s.recv_into(received, total, size)   # app reads, window update owed
            s.send(reply, 0, 500)
            tcp.poll(now + 1)                     # data + ACK + window update go out
            buf, ip, t, n = ack_segs[k]
            tcp.input(buf, ip, t, n, now + 2)     # ACK of our data
            tcp.poll(now + 60)                    # delayed-ACK timer fires if armed
            tcp.poll_at(now + 60)
            now += 100
            k += 1
    finally:
        micropython.heap_unlock()
    assert total == rounds * size
    for k in range(rounds):
        first = k * size
        assert received[first] == k & 0xFF
        assert received[first + size - 1] == (k + size - 1) & 0xFF
    assert st.iface.count - before >= rounds      # our data (carrying ACK + window) went out
    assert s.tx.used == 0 and s.state == 4


def test_retransmission_and_out_of_order_paths_do_not_allocate():
    st, lsn, s, p = server_established()
    tcp = st.tcp
    p.send(ACK, b"warm", now=1500)
    s.recv_into(bytearray(8), 0, 8)
    st.iface.record = False
    base = p.seq
    later = build(p.ip, st.iface.ip, p.port, p.our_port, base + 500, p.ack, ACK, 65535,
                  bytes(500))
    hole = build(p.ip, st.iface.ip, p.port, p.our_port, base, p.ack, ACK, 65535, bytes(500))
    sink = bytearray(1000)
    msg = b"0123456789"
    rto_at = 2000 + s.rto
    micropython.heap_lock()
    try:
        s.send(msg, 0, 10)
        tcp.poll(2000)
        tcp.poll(rto_at)                         # RTO fires: retransmission
        buf, ip, t, n = later
        tcp.input(buf, ip, t, n, 2500)           # out of order: immediate dup ACK
        buf, ip, t, n = hole
        tcp.input(buf, ip, t, n, 2501)           # fills the hole
        got = s.recv_into(sink, 0, 1000)
    finally:
        micropython.heap_unlock()
    assert got == 1000
    assert tcp.rto_timeouts == 1 and tcp.ooo_segments == 1
