# The firmware's machine code: every viper function of the netkernel package lives here.
#
# Why a module of its own, outside the package: on a board the `netkernel` package is frozen
# into the MicroPython image (boards/manifest.py) and runs as bytecode from flash, while this
# module stays a file on the board's filesystem (`make deploy` copies it to /lib). Loaded
# from a file, its machine code goes to the heap, where blocks start on 16-byte boundaries;
# frozen, MicroPython v1.28's freezer places armv6m code on 2-byte boundaries only, and the
# Cortex-M0+ faults on the word reads that native code needs at its start
# (docs/frozen-native-alignment.md). A frozen package cannot import a submodule from the
# filesystem, hence the top-level module.
#
# What is here is byte work and the table walks of the per-frame path: the Internet
# checksum, copies and compares, 32-bit sequence arithmetic (wire.py re-exports these), the
# classifier program's interpreter and the flow hashes (dispatcher/steering.py), the flow table's
# probes (dispatcher/flowtable.py binds them as its methods: a viper function binds `self` like a
# method), and the link's CRC and COBS (proto/linkframe.py). Callers keep their names;
# nothing here keeps state.
import micropython
from micropython import const

# Packet layout: copies of wire's (const() inlines only within a module).
_ETH_SRC = const(6)
_ETH_TYPE = const(12)
_ETH_HLEN = const(14)
_ETHERTYPE_IPV4 = const(0x0800)
_IP_VIHL = const(0)
_IP_LEN = const(2)
_IP_FRAG = const(6)
_IP_PROTO = const(9)
_IP_SRC = const(12)
_IP_DST = const(16)
_IP_HLEN = const(20)     # without options
_IP_VIHL_NOOPT = const(0x45)   # version 4, IHL 5
_IP_MF = const(0x2000)
_IP_OFFSET_MASK = const(0x1FFF)
_PROTO_TCP = const(6)
_TCP_HLEN = const(20)

# ---------------------------------------------------------------------------------------
# Flow key and classifier program (the layout and the instruction set are described in
# dispatcher/steering.py, which re-exports these names).

KEY_LEN = const(13)
OP_IHL_SHIFT = const(8)
L4 = const(0x80)
LD8 = const(1)
LD16 = const(2)
AND = const(3)
SHR = const(4)
SHL = const(5)
TAX = const(6)
SUBX = const(7)
L4LEN = const(8)
JEQ = const(9)
JNE = const(10)
JGT = const(11)
JLE = const(12)
JSET = const(13)
JCLR = const(14)
JA = const(15)
EXTRACT = const(16)
KEYSET = const(17)
KEYZERO = const(18)
SETOP = const(19)
IHL = const(20)
NEED = const(21)
RET = const(22)
FAIL = const(23)
_FAR = const(0x10000)       # L4 base before IHL: every L4-relative access is out of bounds

# Flow table layout (dispatcher/flowtable.py re-exports the public names).
NIL = const(0xFFFF)
F_USED = const(0x01)
F_PINNED = const(0x02)       # a connection (TCP): the owner is binding, never redirected
_TICKS_MASK = const(0x3FFFFFFF)
_TICKS_HALF = const(0x20000000)
# indices into FlowTable.state (array 'I')
S_FREE = const(0)           # first free slot (NIL when full)
S_COUNT = const(1)
S_EVICTIONS = const(2)
S_EXPIRED = const(3)
S_CURSOR = const(4)         # next slot flow_expire_step() looks at
S_LEN = const(5)


# ---------------------------------------------------------------------------------------
# wire: sums, copies, compares, sequence numbers

@micropython.viper
def checksum(buf: ptr8, off: int, n: int, acc: int) -> int:
    """Internet checksum sum of buf[off:off+n] added to acc, folded to 16 bits (not inverted).

    Summed as the machine's little-endian halfwords, a word at a time where the bytes are
    word aligned (RFC 1071: the sum does not depend on byte order), then swapped into
    network order: about a tenth of the instructions of a byte-pair loop on the
    Cortex-M0+. From an odd address the halfwords pair the bytes the other way round,
    which is network order already: the first byte goes in high and nothing is swapped."""
    a = uint(buf) + uint(off)
    end = a + uint(n)
    odd = a & 1
    s = uint(0)
    if odd and a < end:
        s = uint(ptr8(a)[0]) << 8
        a += 1
    if a + 2 <= end and a & 2 != uint(0):
        s += uint(ptr16(a)[0])
        a += 2
    w = ptr32(a)
    i = 0
    words = int((end - a) >> 2) if a < end else 0
    while i < words:
        v = uint(w[i])        # unsigned: >> must not carry the sign bit in (32-bit ints)
        s += (v & 0xFFFF) + (v >> 16)
        i += 1
    a += uint(words << 2)
    if a + 2 <= end:
        s += uint(ptr16(a)[0])
        a += 2
    if a < end:
        s += uint(ptr8(a)[0])
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    if not odd:
        s = ((s & 0xFF) << 8) | (s >> 8)
    r = uint(acc) + s
    while r >> 16:
        r = (r & 0xFFFF) + (r >> 16)
    return int(r)


@micropython.viper
def pseudo_header_sum(buf: ptr8, ip_off: int, proto: int, length: int) -> int:
    """Sum of the IPv4 pseudo header (addresses from the IPv4 header at ip_off)."""
    acc = proto + length
    i = ip_off + _IP_SRC
    while i < ip_off + (_IP_DST + 4):
        acc += (buf[i] << 8) | buf[i + 1]
        i += 2
    while acc >> 16:
        acc = (acc & 0xFFFF) + (acc >> 16)
    return acc


@micropython.viper
def copy(dst: ptr8, doff: int, src: ptr8, soff: int, n: int):
    """dst[doff:doff+n] = src[soff:soff+n] without making slices (which allocate): words
    where both sides are word aligned alike, halfwords where they are even alike."""
    d = uint(dst) + uint(doff)
    s = uint(src) + uint(soff)
    if d > s and d < s + uint(n):
        i = n - 1                 # overlapping, forward: from the end
        while i >= 0:
            dst[doff + i] = src[soff + i]
            i -= 1
        return
    if (d ^ s) & 3 == uint(0) and n >= 8:
        while d & 3:
            ptr8(d)[0] = ptr8(s)[0]
            d += 1
            s += 1
            n -= 1
        dw = ptr32(d)
        sw = ptr32(s)
        words = n >> 2
        i = 0
        while i < words:
            dw[i] = sw[i]
            i += 1
        k = words << 2
        d += uint(k)
        s += uint(k)
        n -= k
    elif (d ^ s) & 1 == uint(0) and n >= 4:
        if d & 1:
            ptr8(d)[0] = ptr8(s)[0]
            d += 1
            s += 1
            n -= 1
        dh = ptr16(d)
        sh = ptr16(s)
        halves = n >> 1
        i = 0
        while i < halves:
            dh[i] = sh[i]
            i += 1
        k = halves << 1
        d += uint(k)
        s += uint(k)
        n -= k
    db = ptr8(d)
    sb = ptr8(s)
    i = 0
    while i < n:
        db[i] = sb[i]
        i += 1


@micropython.viper
def fill(dst: ptr8, off: int, n: int, value: int):
    i = off
    end = off + n
    while i < end:
        dst[i] = value
        i += 1


@micropython.viper
def equal(a: ptr8, aoff: int, b: ptr8, boff: int, n: int) -> bool:
    i = 0
    while i < n:
        if a[aoff + i] != b[boff + i]:
            return False
        i += 1
    return True


@micropython.viper
def tcp_frame_check(buf: ptr8, n: int, mac: ptr8, ip: ptr8, bcast: ptr8) -> int:
    """The TCP length of an Ethernet frame that is surely a plain TCP segment for us
    (our MAC, IPv4 without options or fragmentation, our address, a unicast source
    that is not us or the subnet's broadcast, both checksums right), else -1: then the
    interface's full path looks at it and counts what is wrong."""
    if (n < _ETH_HLEN + _IP_HLEN + _TCP_HLEN or buf[_ETH_SRC] & 1
            or buf[_ETH_TYPE] != _ETHERTYPE_IPV4 >> 8
            or buf[_ETH_TYPE + 1] != (_ETHERTYPE_IPV4 & 0xFF)
            or buf[_ETH_HLEN + _IP_VIHL] != _IP_VIHL_NOOPT):
        return -1
    if (buf[_ETH_HLEN + _IP_PROTO] != _PROTO_TCP
            or (buf[_ETH_HLEN + _IP_FRAG] & ((_IP_MF | _IP_OFFSET_MASK) >> 8))
            or buf[_ETH_HLEN + _IP_FRAG + 1]):
        return -1
    total = (buf[_ETH_HLEN + _IP_LEN] << 8) | buf[_ETH_HLEN + _IP_LEN + 1]
    if total < _IP_HLEN + _TCP_HLEN or total > n - _ETH_HLEN:
        return -1
    b0 = buf[_ETH_HLEN + _IP_SRC]
    if b0 == 0 or b0 == 127 or b0 >= 224:
        return -1
    i = 0
    same_ip = 0
    same_bcast = 0
    while i < 6:
        if buf[i] != mac[i]:
            return -1
        if i < 4:
            if buf[(_ETH_HLEN + _IP_DST) + i] != ip[i]:
                return -1
            same_ip += int(buf[(_ETH_HLEN + _IP_SRC) + i] == ip[i])
            same_bcast += int(buf[(_ETH_HLEN + _IP_SRC) + i] == bcast[i])
        i += 1
    if (same_ip == 4 or same_bcast == 4
            or int(checksum(buf, _ETH_HLEN, _IP_HLEN, 0)) != 0xFFFF):
        return -1
    l4 = total - _IP_HLEN
    acc = int(pseudo_header_sum(buf, _ETH_HLEN, _PROTO_TCP, l4))
    if int(checksum(buf, _ETH_HLEN + _IP_HLEN, l4, acc)) != 0xFFFF:
        return -1
    return l4


@micropython.viper
def masked_equal(a: ptr8, aoff: int, b: ptr8, boff: int, mask: ptr8) -> bool:
    """a[aoff:aoff+4] and b[boff:boff+4] alike in every bit of mask[0:4] (same subnet)."""
    i = 0
    while i < 4:
        if (a[aoff + i] ^ b[boff + i]) & mask[i]:
            return False
        i += 1
    return True


@micropython.viper
def find4(table: ptr8, used: ptr8, n: int, b: ptr8, boff: int) -> int:
    """The first i < n with used[i] != 0 and table[4*i:4*i+4] == b[boff:boff+4], or -1."""
    i = 0
    while i < n:
        if used[i]:
            o = i << 2
            if (table[o] == b[boff] and table[o + 1] == b[boff + 1]
                    and table[o + 2] == b[boff + 2] and table[o + 3] == b[boff + 3]):
                return i
        i += 1
    return -1


@micropython.viper
def get16(buf: ptr8, off: int) -> int:
    return (buf[off] << 8) | buf[off + 1]


@micropython.viper
def put16(buf: ptr8, off: int, value: int):
    buf[off] = (value >> 8) & 0xFF
    buf[off + 1] = value & 0xFF


@micropython.viper
def seq_delta(p: ptr8, poff: int, q: ptr8, qoff: int) -> int:
    """(p - q) mod 2**32 as a signed value, for 32-bit big-endian numbers at p[poff], q[qoff].

    Clamped to [-2**30, 2**30 - 1] so the result is always a small int: anything that far
    apart is simply "far outside any window".
    """
    hi = ((p[poff] << 8) | p[poff + 1]) - ((q[qoff] << 8) | q[qoff + 1])
    lo = ((p[poff + 2] << 8) | p[poff + 3]) - ((q[qoff + 2] << 8) | q[qoff + 3])
    if lo < 0:
        lo += 65536
        hi -= 1
    hi &= 0xFFFF
    if hi >= 0x8000:
        hi -= 0x10000
    if hi >= 0x4000:
        return 0x3FFFFFFF
    if hi < -0x4000:
        return -0x40000000
    return hi * 65536 + lo


@micropython.viper
def seq_put(dst: ptr8, doff: int, q: ptr8, qoff: int, delta: int):
    """dst[doff:doff+4] = (q[qoff:qoff+4] + delta) mod 2**32, big-endian (delta may be < 0)."""
    lo = ((q[qoff + 2] << 8) | q[qoff + 3]) + (delta & 0xFFFF)
    hi = ((q[qoff] << 8) | q[qoff + 1]) + ((delta >> 16) & 0xFFFF) + (lo >> 16)
    dst[doff] = (hi >> 8) & 0xFF
    dst[doff + 1] = hi & 0xFF
    dst[doff + 2] = (lo >> 8) & 0xFF
    dst[doff + 3] = lo & 0xFF


@micropython.viper
def seq_add(q: ptr8, qoff: int, delta: int):
    """q[qoff:qoff+4] += delta (mod 2**32), in place."""
    lo = ((q[qoff + 2] << 8) | q[qoff + 3]) + (delta & 0xFFFF)
    hi = ((q[qoff] << 8) | q[qoff + 1]) + ((delta >> 16) & 0xFFFF) + (lo >> 16)
    q[qoff] = (hi >> 8) & 0xFF
    q[qoff + 1] = hi & 0xFF
    q[qoff + 2] = (lo >> 8) & 0xFF
    q[qoff + 3] = lo & 0xFF


# ---------------------------------------------------------------------------------------
# the classifier program and the flow hashes (results below 2**30: small ints on the RP2040)

@micropython.viper
def run_program(prog: ptr8, plen: int, buf: ptr8, n: int, key: ptr8) -> int:
    """Run a validated program over buf[0:n]; the op code, or -1 for a malformed frame."""
    i = 0
    while i < KEY_LEN:
        key[i] = 0
        i += 1
    pc = 0
    op = 0
    a = 0
    x = 0
    l4 = _FAR
    l4len = 0
    while pc < plen:
        code = prog[pc]
        arg = prog[pc + 1]
        b = prog[pc + 2]
        c = prog[pc + 3]
        imm = (b << 8) | c
        pc += 4
        o = arg
        if code & L4:
            code &= 0x7F
            o = l4 + arg
        if code == LD8:
            if o >= n:
                return -1
            a = buf[o] & imm
        elif code == LD16:
            if o + 2 > n:
                return -1
            a = ((buf[o] << 8) | buf[o + 1]) & imm
        elif code == AND:
            a &= imm
        elif code == SHR:
            a >>= arg
        elif code == SHL:
            a = (a << arg) & 0xFFFF
        elif code == TAX:
            x = a
        elif code == SUBX:
            a = x - a
        elif code == L4LEN:
            if l4 == _FAR:
                return -1
            a = l4len
        elif code >= JEQ and code <= JA:
            if code == JA:
                take = True
            elif code == JEQ:
                take = a == imm
            elif code == JNE:
                take = a != imm
            elif code == JGT:
                take = a > imm
            elif code == JLE:
                take = a <= imm
            elif code == JSET:
                take = (a & imm) != 0
            else:
                take = (a & imm) == 0
            if take:
                pc += arg << 2
        elif code == EXTRACT:
            if o + b > n:
                return -1
            i = 0
            while i < b:
                key[c + i] = buf[o + i]
                i += 1
        elif code == KEYSET:
            key[arg] = c
        elif code == KEYZERO:
            i = 0
            while i < b:
                key[arg + i] = 0
                i += 1
        elif code == SETOP:
            op |= imm
        elif code == IHL:
            if n < _ETH_HLEN + _IP_HLEN:
                return -1
            ihl = buf[_ETH_HLEN + _IP_VIHL] & 0x0F
            hl = ihl << 2
            total = (buf[_ETH_HLEN + _IP_LEN] << 8) | buf[_ETH_HLEN + _IP_LEN + 1]
            # a frame may be longer than the datagram (Ethernet padding), never shorter
            if ihl < _IP_HLEN >> 2 or _ETH_HLEN + hl > n or total < hl or _ETH_HLEN + total > n:
                return -1
            l4 = _ETH_HLEN + hl
            l4len = total - hl
            op |= ihl << OP_IHL_SHIFT
        elif code == NEED:
            if o > n:
                return -1
        elif code == RET:
            return op
        else:
            return -1           # FAIL (and anything a validated program cannot contain)
    return op


@micropython.viper
def fold_hash(key: ptr8, mask: ptr8) -> int:
    """XOR fold of the masked key: symmetric (src/dst and ports swapped give the same value).

    The address fold is mixed before the ports join it, so address and port bits that vary
    together (10.1.0.i:30000+i) cannot cancel; a final mix spreads the low bits that index
    the indirection table. Bits 8..23 of a product are exact even where a 32-bit viper int
    overflows."""
    s = 0
    i = 0
    while i < 4:                        # src ^ dst, as two 16-bit words folded together
        s ^= ((key[i] & mask[i]) ^ (key[i + 4] & mask[i + 4])) << (8 - ((i & 1) << 3))
        i += 1
    s = ((s * 40503) >> 8) & 0xFFFF
    s ^= ((key[8] & mask[8]) ^ (key[10] & mask[10])) << 8        # sport ^ dport
    s ^= (key[9] & mask[9]) ^ (key[11] & mask[11])
    s ^= key[12] & mask[12]
    return ((s * 40503) >> 8) & 0xFFFF


@micropython.viper
def toeplitz_hash(data: ptr8, mask: ptr8, tkey: ptr8, out: ptr8) -> int:
    """RSS Toeplitz hash of the first 12 masked bytes of the key (addresses and ports);
    the 32-bit result goes to out[0:4] big-endian, the low 30 bits are returned."""
    hi = (tkey[0] << 8) | tkey[1]        # the 32-bit key window as two 16-bit halves
    lo = (tkey[2] << 8) | tkey[3]
    rh = 0
    rl = 0
    kbit = 32
    i = 0
    while i < 12:
        byte = data[i] & mask[i]
        bit = 7
        while bit >= 0:
            if (byte >> bit) & 1:
                rh ^= hi
                rl ^= lo
            nb = (tkey[kbit >> 3] >> (7 - (kbit & 7))) & 1
            hi = ((hi << 1) | (lo >> 15)) & 0xFFFF
            lo = ((lo << 1) | nb) & 0xFFFF
            kbit += 1
            bit -= 1
        i += 1
    out[0] = rh >> 8
    out[1] = rh & 0xFF
    out[2] = rl >> 8
    out[3] = rl & 0xFF
    return ((rh & 0x3FFF) << 16) | rl


@micropython.viper
def find_key(table: ptr8, count: int, key: ptr8) -> int:
    r = 0
    while r < count:
        k = r * KEY_LEN
        i = 0
        while i < KEY_LEN:
            if table[k + i] != key[i]:
                break
            i += 1
        if i == KEY_LEN:
            return r
        r += 1
    return -1


@micropython.viper
def inc32(counters: ptr32, index: int):
    counters[index] += 1


@micropython.viper
def xorshift16(state: ptr16) -> int:
    x = state[0]
    x ^= (x << 7) & 0xFFFF
    x ^= x >> 9
    x ^= (x << 8) & 0xFFFF
    state[0] = x
    return x


@micropython.viper
def put_key(key: ptr8, src: ptr8, src_off: int, dst: ptr8, dst_off: int, proto: int,
             sport: int, dport: int):
    i = 0
    while i < 4:
        key[i] = src[src_off + i]
        key[4 + i] = dst[dst_off + i]
        i += 1
    key[8] = sport >> 8
    key[9] = sport & 0xFF
    key[10] = dport >> 8
    key[11] = dport & 0xFF
    key[12] = proto


# ---------------------------------------------------------------------------------------
# The node's hard IRQ handler (INTn, the doze alarm), bound as a Node method. Machine code,
# because a Ctrl-C arriving while core 0 dozes is raised in the first bytecode that runs,
# and in a hard IRQ handler that disables the handler for good (the board then neither
# wakes nor stops); machine code does not look for pending exceptions.

@micropython.viper
def node_wake_irq(node, _):
    node._wake = True
    node.irqs = (int(node.irqs) + 1) & 0x3FFFFFFF   # a small int: no heap in an IRQ
    if node._dozing:
        node._dozing = False
        node._bell.release()


# ---------------------------------------------------------------------------------------
# TCP's chunk rings (netkernel/tcpbuf.py): a ring's positions run 0..size, slot p >> 9 of its
# map names the pool chunk (512 bytes) holding position p, or 0xFF; a pool's free chunk
# numbers are a stack in ``free`` with st[0] = how many, st[1] = the fewest there were.

_CHUNK = const(512)
_CSHIFT = const(9)
_CMASK = const(511)
_NO_CHUNK = const(0xFF)


@micropython.viper
def ring_room(m: ptr8, size: int, p: int, n: int, spare: int) -> int:
    """How many of n bytes from position p the chunks held and ``spare`` more can store."""
    got = 0
    while got < n:
        if p >= size:
            p -= size
        k = _CHUNK - (p & _CMASK)
        if m[p >> _CSHIFT] == _NO_CHUNK:
            if spare <= 0:
                break
            spare -= 1
        got += k
        p += k
    if got < n:
        return got
    return n


@micropython.viper
def ring_store(m: ptr8, size: int, p: int, mem, free: ptr8, st: ptr16, src, off: int,
               n: int):
    """Copy src[off:off+n] to position p on, taking chunks from the pool where the ring
    holds none (the caller made sure with ring_room that there are enough)."""
    while n > 0:
        if p >= size:
            p -= size
        o = p & _CMASK
        k = _CHUNK - o
        if k > n:
            k = n
        s = p >> _CSHIFT
        c = m[s]
        if c == _NO_CHUNK:
            nf = st[0] - 1
            st[0] = nf
            if nf < st[1]:
                st[1] = nf
            c = free[nf]
            m[s] = c
        copy(mem, (c << _CSHIFT) + o, src, off, k)
        p += k
        off += k
        n -= k


@micropython.viper
def ring_peek(m: ptr8, size: int, p: int, mem, dst, doff: int, n: int):
    """Copy n bytes from position p on into dst[doff:]."""
    while n > 0:
        if p >= size:
            p -= size
        o = p & _CMASK
        k = _CHUNK - o
        if k > n:
            k = n
        copy(dst, doff, mem, (m[p >> _CSHIFT] << _CSHIFT) + o, k)
        p += k
        doff += k
        n -= k


@micropython.viper
def ring_discard(m: ptr8, slots: int, head: int, n: int, left: int, parked: int,
                 free: ptr8, st: ptr16) -> int:
    """Drop n bytes at ``head`` (``left`` stay after them), giving back the chunks left
    behind (tcpbuf.ChunkRing.discard says which stay); returns the new head."""
    size = slots << _CSHIFT
    end = head + n
    new_head = end - size if end >= size else end
    s = head >> _CSHIFT
    if parked and (head & _CMASK):
        s += 1
    last = end >> _CSHIFT
    while s < last:
        j = s if s < slots else s - slots
        c = m[j]
        d = (j << _CSHIFT) - new_head
        if d < 0:
            d += size
        if c != _NO_CHUNK and left <= d and d <= size - _CHUNK:
            nf = st[0]
            free[nf] = c
            st[0] = nf + 1
            m[j] = _NO_CHUNK
        s += 1
    return new_head


@micropython.viper
def ring_drop_unused(m: ptr8, slots: int, head: int, used: int, free: ptr8, st: ptr16):
    """Give back every chunk holding none of the ``used`` bytes from ``head``."""
    first = 0
    span = 0
    if used:
        first = head >> _CSHIFT
        span = ((head + used - 1) >> _CSHIFT) - first + 1
    j = 0
    while j < slots:
        d = j - first
        if d < 0:
            d += slots
        if d >= span:
            c = m[j]
            if c != _NO_CHUNK:
                nf = st[0]
                free[nf] = c
                st[0] = nf + 1
                m[j] = _NO_CHUNK
        j += 1


# ---------------------------------------------------------------------------------------
# the flow table's probes, bound as FlowTable methods (``table`` is the FlowTable)

@micropython.viper
def flow_bucket_of(table, key: ptr8, koff: int) -> int:
    h = 0x1505
    i = 0
    while i < KEY_LEN:
        h = ((h * 33) ^ key[koff + i]) & 0xFFFFFF
        i += 1
    h ^= h >> 11
    return h & int(table.bucket_mask)

@micropython.viper
def flow_lookup(table, key: ptr8, koff: int) -> int:
    """The flow number of key[koff:koff+13], or -1."""
    b = int(table._bucket_of(key, koff))
    head = ptr16(table.head)
    nxt = ptr16(table.nxt)
    keys = ptr8(table.keys)
    s = head[b]
    while s != NIL:
        k = s * KEY_LEN
        i = 0
        while i < KEY_LEN:
            if keys[k + i] != key[koff + i]:
                break
            i += 1
        if i == KEY_LEN:
            return s
        s = nxt[s]
    return -1

@micropython.viper
def flow_oldest(table, now: int) -> int:
    """The slot idle the longest, preferring entries that are not pinned."""
    seen = ptr32(table.seen)
    flags = ptr8(table.flags)
    best = -1
    best_age = -1
    best_pinned = 1
    i = 0
    cap = int(table.capacity)
    while i < cap:
        f = flags[i]
        if f & F_USED:
            age = (now - seen[i]) & _TICKS_MASK
            if age >= _TICKS_HALF:
                age = 0
            pinned = 1 if f & F_PINNED else 0
            if pinned < best_pinned or (pinned == best_pinned and age > best_age):
                best_age = age
                best = i
                best_pinned = pinned
        i += 1
    return best

@micropython.viper
def flow_remove(table, slot: int):
    """Forget the entry in this slot (unlink it from its bucket, free the slot)."""
    flags = ptr8(table.flags)
    if slot < 0 or slot >= int(table.capacity) or not (flags[slot] & F_USED):
        return
    head = ptr16(table.head)
    nxt = ptr16(table.nxt)
    b = ptr16(table.bucket)[slot]
    if head[b] == slot:
        head[b] = nxt[slot]
    else:
        s = head[b]
        while s != NIL:
            if nxt[s] == slot:
                nxt[s] = nxt[slot]
                break
            s = nxt[s]
    if flags[slot] & F_PINNED:
        ptr16(table.pinned)[ptr8(table.owner)[slot]] -= 1
    flags[slot] = 0
    st = ptr32(table.state)
    nxt[slot] = st[S_FREE]
    st[S_FREE] = slot
    st[S_COUNT] -= 1

@micropython.viper
def flow_insert(table, key: ptr8, koff: int, owner: int, flags: int, now: int) -> int:
    """Add key (not present) with this owner; returns its flow number. Evicts the
    entry idle the longest when the table is full."""
    st = ptr32(table.state)
    if st[S_FREE] == NIL:
        table.remove(int(table._oldest(now)))
        st[S_EVICTIONS] += 1
    nxt = ptr16(table.nxt)
    slot = int(st[S_FREE])
    st[S_FREE] = nxt[slot]
    st[S_COUNT] += 1
    keys = ptr8(table.keys)
    k = slot * KEY_LEN
    i = 0
    while i < KEY_LEN:
        keys[k + i] = key[koff + i]
        i += 1
    b = int(table._bucket_of(key, koff))
    head = ptr16(table.head)
    nxt[slot] = head[b]
    head[b] = slot
    ptr16(table.bucket)[slot] = b
    ptr8(table.owner)[slot] = owner
    ptr8(table.flags)[slot] = F_USED | flags
    if flags & F_PINNED:
        ptr16(table.pinned)[owner] += 1
    ptr32(table.packets)[slot] = 0
    ptr32(table.nbytes)[slot] = 0
    ptr16(table.last_op)[slot] = 0
    ptr32(table.seen)[slot] = now
    return slot

@micropython.viper
def flow_set_owner(table, slot: int, owner: int):
    """Give the entry in this slot a new owner (its pinned count moves with it)."""
    o = ptr8(table.owner)
    if ptr8(table.flags)[slot] & F_PINNED:
        pinned = ptr16(table.pinned)
        pinned[o[slot]] -= 1
        pinned[owner] += 1
    o[slot] = owner

@micropython.viper
def flow_touch(table, slot: int, nbytes: int, op: int, now: int):
    """Count one frame of this flow (wrapping 32-bit counters, no heap ints)."""
    ptr32(table.packets)[slot] += 1
    ptr32(table.nbytes)[slot] += nbytes
    ptr16(table.last_op)[slot] = op
    ptr32(table.seen)[slot] = now

@micropython.viper
def flow_expire_step(table, now: int, count: int):
    """Look at the next `count` slots and drop those idle past their timeout."""
    st = ptr32(table.state)
    flags = ptr8(table.flags)
    seen = ptr32(table.seen)
    cap = int(table.capacity)
    idle = int(table.idle_ms)
    tcp_idle = int(table.tcp_idle_ms)
    c = int(st[S_CURSOR])
    while count > 0:
        f = flags[c]
        if f & F_USED:
            limit = tcp_idle if f & F_PINNED else idle
            age = (now - seen[c]) & _TICKS_MASK
            if age > limit and age < _TICKS_HALF:
                table.remove(c)
                st[S_EXPIRED] += 1
        c += 1
        if c >= cap:
            c = 0
        count -= 1
    st[S_CURSOR] = c


# ---------------------------------------------------------------------------------------
# the host link: CRC-16/CCITT-FALSE, COBS encoding with the CRC appended, the deframer

@micropython.viper
def crc16(buf: ptr8, n: int, crc: int, table: ptr16) -> int:
    i = 0
    while i < n:
        crc = ((crc << 8) & 0xFF00) ^ table[((crc >> 8) ^ buf[i]) & 0xFF]
        i += 1
    return crc

@micropython.viper
def cobs_encode(payload: ptr8, n: int, out: ptr8, crc: int) -> int:
    # COBS with the CRC appended: a code byte counts the bytes up to the next 00.
    out[0] = 0
    code_at = 1
    o = 2
    code = 1
    end = n + 2
    i = 0
    while i < end:
        if i < n:
            b = int(payload[i])
        elif i == n:
            b = (crc >> 8) & 0xFF
        else:
            b = crc & 0xFF
        i += 1
        if b == 0:
            out[code_at] = code
            code_at = o
            o += 1
            code = 1
        else:
            out[o] = b
            o += 1
            code += 1
            if code == 0xFF:
                out[code_at] = code
                code_at = o
                o += 1
                code = 1
    out[code_at] = code
    out[o] = 0
    return o + 1


@micropython.viper
def cobs_feed(deframer, data: ptr8, n: int) -> int:
    # feed()'s loop with the state in locals, stored back around each frame end
    # (_end() and the handler see it as the Python version leaves it).
    buf = ptr8(deframer._buf)
    cap = int(deframer._cap)
    ln = int(deframer._len)
    left = int(deframer._left)
    zero = int(deframer._zero)
    over = int(deframer._overflow)
    got = 0
    i = 0
    while i < n:
        b = int(data[i])
        i += 1
        if b == 0:
            deframer._len = ln
            deframer._left = left
            deframer._zero = zero
            deframer._overflow = over
            got += int(deframer._end())
            ln = int(deframer._len)
            left = int(deframer._left)
            zero = int(deframer._zero)
            over = int(deframer._overflow)
            continue
        if over:
            continue
        if left == 0:
            # A code byte: the previous block (if short) stood for a 00.
            if zero:
                if ln >= cap:
                    over = 1
                    continue
                buf[ln] = 0
                ln += 1
            left = b - 1
            zero = 1
            if b == 0xFF:
                zero = 0
        else:
            if ln >= cap:
                over = 1
                continue
            buf[ln] = b
            ln += 1
            left -= 1
    deframer._len = ln
    deframer._left = left
    deframer._zero = zero
    deframer._overflow = over
    return got
