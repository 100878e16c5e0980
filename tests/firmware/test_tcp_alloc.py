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


def _iss(sock):
    return u32(sock.seq, 8)          # _ISS


def test_a_connection_from_syn_to_release_allocates_nothing_but_its_isn():
    # Sockets, their rings and assemblers are made at boot (TcpSocket): a connection's
    # whole life, handshake, accept, data, close, release, takes nothing from the heap,
    # but for the few short-lived objects of its ISN's hash (RFC 6528), made for the SYN.
    st, lsn, s0, p0 = server_established(tcp_max_connections=3)
    tcp = st.tcp
    s0.close()                       # warm up: the accept queue's list has grown once
    s0.release()
    tcp.poll(1100)
    st.iface.record = False
    for i in range(6):
        port = 42000 + i
        isn = 7000 * (i + 1)
        now = 2000 + 300 * i
        syn = build(p0.ip, st.iface.ip, port, 80, isn, 0, 0x02, 65535)
        tcp.input(syn[0], syn[1], syn[2], syn[3], now)
        tcp.poll(now)
        sock = tcp.conns[-1]
        ack = build(p0.ip, st.iface.ip, port, 80, isn + 1, (_iss(sock) + 1) & 0xFFFFFFFF,
                    ACK | PSH, 65535, b"hello")
        fin = build(p0.ip, st.iface.ip, port, 80, isn + 6, (_iss(sock) + 1) & 0xFFFFFFFF,
                    ACK | 0x01, 65535)
        got = bytearray(8)
        micropython.heap_lock()
        try:
            tcp.input(ack[0], ack[1], ack[2], ack[3], now + 1)
            a = lsn.accept()
            n = a.recv_into(got, 0, 8)
            tcp.input(fin[0], fin[1], fin[2], fin[3], now + 2)
            a.abort()                # ends at once (no TIME-WAIT to wait out)
            a.release()
            tcp.poll(now + 3)
        finally:
            micropython.heap_unlock()
        assert a is sock and n == 5 and got[:5] == b"hello"
        assert tcp.connection_count() == 1       # the warm-up's, still closing
    assert tcp.passive_opens == 7 and tcp.drop_max_connections == 0
    assert tcp.rx_pool.nfree == tcp.rx_pool.size and tcp.tx_pool.nfree == tcp.tx_pool.size
