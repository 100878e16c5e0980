# Frames for the dispatcher tests (no tests here). The hex frames were made with scapy
# (CPython); the builders make many flows cheaply inside MicroPython (checksums are not
# looked at by the dispatcher, so they stay zero).
from binascii import unhexlify

OUR_IP = bytes((10, 0, 0, 1))
PEER_IP = bytes((10, 0, 0, 2))

# 10.0.0.2:40000 > 10.0.0.1:80, SYN with an MSS option
TCP_SYN = unhexlify(
    "02000000000102000000000208004500002c00010000400666c90a0000020a0000019c400050000003e8"
    "0000000060022000c3ab0000020405b4")
# same flow, PSH|ACK with b"hello"
TCP_DATA = unhexlify(
    "02000000000102000000000208004500002d00020000400666c70a0000020a0000019c400050000003e9"
    "00000005501820009774000068656c6c6f")
# 10.0.0.2:5353 > 10.0.0.1:7, b"ping"
UDP = unhexlify(
    "02000000000102000000000208004500002000030000401166c80a0000020a00000114e90007000cf812"
    "70696e67")
# echo request id 7 seq 1, 8 bytes of data
ICMP_ECHO = unhexlify(
    "02000000000102000000000208004500002400040000400166d30a0000020a000001"
    "08006662000700016162636465666768")
# who-has 10.0.0.1 tell 10.0.0.2, Ethernet broadcast
ARP_REQ = unhexlify(
    "ffffffffffff020000000002080600010800060400010200000000020a0000020000000000000a000001")
# IHL 6 (a 4-byte option), UDP 1234 > 7, no payload
IP_OPTS_UDP = unhexlify(
    "02000000000102000000000208004600002000050000401163c50a0000020a0000010101010004d20007"
    "0008e702")
# one UDP datagram (5000 > 7, 100 bytes) in three fragments, IP ID 0x4242
FRAG0 = unhexlify(
    "02000000000102000000000208004500004442422000401104650a0000020a00000113880007006c4ffd"
    "78787878787878787878787878787878787878787878787878787878787878787878787878787878")
FRAG1 = unhexlify(
    "020000000001020000000002080045000044424220064011045f0a0000020a0000017878787878787878"
    "7878787878787878787878787878787878787878787878787878787878787878787878787878787878")
FRAG2 = unhexlify(
    "0200000000010200000000020800450000204242000c4011247d0a0000020a000001787878787878787878"
    "787878")

SYN = 0x02
ACK = 0x10
PSH = 0x08


def frame_buffer(frame):
    """A frame in a 1536-byte buffer, as the driver leaves it: (buf, n)."""
    buf = bytearray(1536)
    buf[0:len(frame)] = frame
    return buf, len(frame)


def ipv4(src, dst, proto, l4, ident=1, frag=0):
    total = 20 + len(l4)
    eth = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00"
    ip = bytes((0x45, 0, total >> 8, total & 0xFF, ident >> 8, ident & 0xFF, frag >> 8,
                frag & 0xFF, 64, proto, 0, 0)) + bytes(src) + bytes(dst)
    return eth + ip + l4


def tcp(src, dst, sport, dport, flags, payload=b""):
    hdr = bytes((sport >> 8, sport & 0xFF, dport >> 8, dport & 0xFF, 0, 0, 0, 1, 0, 0, 0, 0,
                 0x50, flags, 0xFF, 0xFF, 0, 0, 0, 0))
    return ipv4(src, dst, 6, hdr + payload)


def udp(src, dst, sport, dport, payload=b""):
    n = 8 + len(payload)
    hdr = bytes((sport >> 8, sport & 0xFF, dport >> 8, dport & 0xFF, n >> 8, n & 0xFF, 0, 0))
    return ipv4(src, dst, 17, hdr + payload)


def icmp(src, dst, icmp_type, payload=b"abcd"):
    return ipv4(src, dst, 1, bytes((icmp_type, 0, 0, 0, 0, 7, 0, 1)) + payload)


def peer(i):
    """A different remote address per i (10.1.x.y)."""
    return bytes((10, 1, (i >> 8) & 0xFF, i & 0xFF))
