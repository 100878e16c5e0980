# SACK (RFC 2018), receiver side: offered on our SYN, echoed on the SYN-ACK only when the peer
# offered it, and carried on ACKs while out-of-order data is held.
from tcp_harness import ACK, PEER_IP, SYN, FakeStack, Peer, drain, mss_option, server

SACK_OK = b"\x01\x01\x04\x02"
DATA = bytes((i * 11 + 5) & 0xFF for i in range(6000))


def sack_blocks(seg):
    o = seg.options
    i = 0
    while i < len(o):
        if o[i] == 1:
            i += 1
            continue
        if o[i] == 5:
            n = o[i + 1]
            blocks = []
            for k in range(i + 2, i + n, 8):
                blocks.append((int.from_bytes(o[k:k + 4], "big"),
                               int.from_bytes(o[k + 4:k + 8], "big")))
            return blocks
        if o[i] == 0:
            break
        i += o[i + 1]
    return []


def sack_server(offer=True):
    st, lsn, p = server()
    p.send(SYN, now=1000, options=mss_option(1460) + (SACK_OK if offer else b""))
    synack = p.one()
    p.send(ACK, now=1001)
    sock = lsn.accept()
    p.none()
    return st, sock, p, synack


def test_our_syn_offers_sack():
    st = FakeStack()
    peer = Peer(st, port=80, our_port=0, isn=5000)
    st.tcp.connect(PEER_IP, 0, 80, 1000, local_port=50000)
    syn = peer.one()
    assert syn.options == mss_option(1460) + SACK_OK


def test_syn_ack_echoes_sack_only_when_offered():
    assert sack_server(True)[3].options == mss_option(1460) + SACK_OK
    assert sack_server(False)[3].options == mss_option(1460)


def test_acks_for_out_of_order_data_carry_blocks_latest_first():
    st, sock, p, _ = sack_server()
    base = p.seq
    p.send(ACK, DATA[1000:2000], now=2000, seq=base + 1000)
    a = p.one()
    assert a.ack == base and sack_blocks(a) == [(base + 1000, base + 2000)]
    p.send(ACK, DATA[3000:3500], now=2001, seq=base + 3000)
    a = p.one()
    assert sack_blocks(a) == [(base + 3000, base + 3500), (base + 1000, base + 2000)]
    p.send(ACK, DATA[1500:2500], now=2002, seq=base + 1500)    # extends the first block
    a = p.one()
    assert sack_blocks(a) == [(base + 1000, base + 2500), (base + 3000, base + 3500)]
    p.send(ACK, DATA[0:1000], now=2003, seq=base)              # fills the front hole
    a = p.one()
    assert a.ack == base + 2500 and sack_blocks(a) == [(base + 3000, base + 3500)]
    p.send(ACK, DATA[2500:3000], now=2004, seq=base + 2500)
    a = p.one()
    assert a.ack == base + 3500 and sack_blocks(a) == []
    assert drain(sock) == DATA[:3500]


def test_no_blocks_without_sack_permitted():
    st, sock, p, _ = sack_server(offer=False)
    base = p.seq
    p.send(ACK, DATA[1000:2000], now=2000, seq=base + 1000)
    a = p.one()
    assert a.ack == base and a.hlen == 20
