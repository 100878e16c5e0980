# Test harness for the interface layer (iface, arp, reasm, udp), run inside MicroPython.
#
# A fake NIC that records what is sent, a fake stack around a real Interface and Udp (with a
# fake TCP), and frame builders written independently of the firmware (plain Python, their
# own checksum), so a test never checks the firmware against itself. Golden frames made with
# scapy live in the test modules that use them.
from netkernel import wire
from netkernel.iface import Interface
from netkernel.udp import Udp

OUR_MAC = bytes.fromhex("020000000001")
PEER_MAC = bytes.fromhex("020000000002")
OTHER_MAC = bytes.fromhex("020000000003")
GW_MAC = bytes.fromhex("0200000000fe")
BCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
OUR_IP = bytes([192, 168, 7, 1])
PEER_IP = bytes([192, 168, 7, 2])
OTHER_IP = bytes([192, 168, 7, 3])
GATEWAY = bytes([192, 168, 7, 254])
SUBNET_BCAST = bytes([192, 168, 7, 255])
LIMITED_BCAST = b"\xff" * 4
FAR_IP = bytes([10, 1, 2, 3])
ZERO_IP = b"\x00" * 4

ICMP = 1
TCP = 6
UDP = 17


class Config:
    """The StackConfig fields the interface layer reads, with the same defaults."""

    def __init__(self, **overrides):
        self.arp_lifetime_ms = 60000
        self.arp_retry_ms = 1000
        self.reasm_timeout_ms = 15000
        self.reasm_max_datagrams = 4
        self.reasm_max_bytes = 16384
        self.icmp_rate_per_s = 50
        for name in overrides:
            setattr(self, name, overrides[name])


class Nic:
    """Records every frame handed to send(); `accept = False` makes it refuse."""

    def __init__(self):
        self.sent = []
        self.accept = True

    def send(self, buf, n):
        if not self.accept:
            return False
        self.sent.append(bytes(buf[:n]))
        return True

    def take(self):
        out = self.sent
        self.sent = []
        return out


class QuietNic:
    """A NIC that allocates nothing: counts frames and keeps a copy of the last one."""

    def __init__(self):
        self.frames = 0
        self.last = bytearray(1536)
        self.last_len = 0

    def send(self, buf, n):
        wire.copy(self.last, 0, buf, 0, n)
        self.last_len = n
        self.frames += 1
        return True


class FakeTcp:
    def __init__(self):
        self.segments = []

    def input(self, buf, ip_off, tcp_off, tcp_len, now):
        self.segments.append((bytes(buf[ip_off + 12:ip_off + 16]),
                              bytes(buf[tcp_off:tcp_off + tcp_len])))


class CountingTcp:
    def __init__(self):
        self.segments = 0

    def input(self, buf, ip_off, tcp_off, tcp_len, now):
        self.segments += 1


class FakeStack:
    def __init__(self, nic, config, prefix=24, gateway=GATEWAY, ip=OUR_IP, mac=OUR_MAC):
        self.config = config
        self.iface = Interface(self, nic.send, mac, ip, prefix, gateway)
        self.tcp = FakeTcp()
        self.udp = Udp(self)


def make(nic=None, prefix=24, gateway=GATEWAY, ip=OUR_IP, mac=OUR_MAC, **overrides):
    """(stack, iface, nic): an interface at 192.168.7.1/24, gateway .254, IP ID 0x4242."""
    nic = nic or Nic()
    stack = FakeStack(nic, Config(**overrides), prefix, gateway, ip, mac)
    stack.iface.ip_id = 0x4242
    return stack, stack.iface, nic


def make_peer(**overrides):
    """The other end: 192.168.7.2 with PEER_MAC, knowing our MAC."""
    stack, iface, nic = make(ip=PEER_IP, mac=PEER_MAC, **overrides)
    learn(iface, OUR_IP, OUR_MAC)
    return stack, iface, nic


def learn(iface, ip=PEER_IP, mac=PEER_MAC, now=0):
    iface.arp.update(ip, 0, mac, 0, now, True)


def feed(iface, frame, now=0):
    """input() a frame from a full-size receive buffer, as the kernel does."""
    buf = bytearray(1536)
    buf[:len(frame)] = frame
    iface.input(buf, len(frame), now)


# -- independent builders ---------------------------------------------------------------------

def csum(data):
    if len(data) & 1:
        data = data + b"\x00"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def be16(v):
    return bytes([(v >> 8) & 0xFF, v & 0xFF])


def eth(payload, dst=OUR_MAC, src=PEER_MAC, ethertype=0x0800):
    return dst + src + be16(ethertype) + payload


def ipv4(payload, src=PEER_IP, dst=OUR_IP, proto=ICMP, ident=0x77, flags=0, offset=0,
         ttl=64, options=b"", total=None, fix_checksum=True, version=4, ihl=None):
    hlen = 20 + len(options)
    if ihl is None:
        ihl = hlen // 4
    if total is None:
        total = hlen + len(payload)
    hdr = bytearray(bytes([(version << 4) | ihl, 0]) + be16(total) + be16(ident)
                    + be16(flags | (offset >> 3)) + bytes([ttl, proto, 0, 0]) + src + dst
                    + options)
    if fix_checksum:
        hdr[10:12] = be16(csum(bytes(hdr)))
    return bytes(hdr) + payload


def icmp(kind, code, rest, data=b""):
    body = bytearray(bytes([kind, code, 0, 0]) + rest + data)
    body[2:4] = be16(csum(bytes(body)))
    return bytes(body)


def echo_request(ident, seq, data):
    return icmp(8, 0, be16(ident) + be16(seq), data)


def pseudo(src, dst, proto, length):
    return src + dst + bytes([0, proto]) + be16(length)


def udp(payload, sport=40000, dport=7, src=PEER_IP, dst=OUR_IP, with_checksum=True,
        length=None):
    if length is None:
        length = 8 + len(payload)
    seg = bytearray(be16(sport) + be16(dport) + be16(length) + b"\x00\x00" + payload)
    if with_checksum:
        c = csum(pseudo(src, dst, UDP, len(seg)) + bytes(seg))
        seg[6:8] = be16(c or 0xFFFF)
    return bytes(seg)


def tcp(payload=b"", sport=40000, dport=80, src=PEER_IP, dst=OUR_IP, flags=0x02):
    seg = bytearray(be16(sport) + be16(dport) + b"\x00\x00\x00\x01" + b"\x00\x00\x00\x00"
                    + bytes([0x50, flags]) + be16(8192) + b"\x00\x00\x00\x00" + payload)
    seg[16:18] = be16(csum(pseudo(src, dst, TCP, len(seg)) + bytes(seg)))
    return bytes(seg)


def arp(oper, sha, spa, tha, tpa, dst=BCAST_MAC, src=None, htype=1, ptype=0x0800, hlen=6,
        plen=4):
    body = (be16(htype) + be16(ptype) + bytes([hlen, plen]) + be16(oper) + sha + spa + tha
            + tpa)
    return eth(body, dst=dst, src=src or sha, ethertype=0x0806)


def fragment(packet, size):
    """RFC 791 fragments of an IPv4 packet (no options), `size` payload bytes each."""
    ihl = (packet[0] & 0x0F) * 4
    hdr = packet[:ihl]
    data = packet[ihl:]
    out = []
    pos = 0
    while pos < len(data):
        part = data[pos:pos + size]
        more = 0x2000 if pos + len(part) < len(data) else 0
        h = bytearray(hdr)
        h[2:4] = be16(ihl + len(part))
        h[6:8] = be16(more | (pos >> 3))
        h[10:12] = b"\x00\x00"
        h[10:12] = be16(csum(bytes(h)))
        out.append(bytes(h) + part)
        pos += len(part)
    return out


def reassemble(packets):
    """Reference reassembly of IPv4 fragments (checks them on the way): (header, payload)."""
    parts = {}
    last_end = None
    first = None
    for p in packets:
        ihl = (p[0] & 0x0F) * 4
        assert csum(p[:ihl]) == 0, "bad IPv4 header checksum"
        total = (p[2] << 8) | p[3]
        assert total == len(p)
        frag = (p[6] << 8) | p[7]
        off = (frag & 0x1FFF) * 8
        if frag & 0x2000:
            assert (total - ihl) % 8 == 0
        else:
            last_end = off + total - ihl
        if off == 0:
            first = p[:ihl]
        parts[off] = p[ihl:]
    data = b""
    for off in sorted(parts):
        assert off == len(data), "gap or overlap at %d" % off
        data += parts[off]
    assert last_end == len(data)
    return first, data


def ip_of(frame):
    """The IPv4 packet inside an Ethernet frame."""
    return frame[14:]


def field16(b, off):
    return (b[off] << 8) | b[off + 1]
