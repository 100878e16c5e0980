"""The dispatcher's decision logic: classify a frame, hash its flow, pick a core.

Per frame, the reader (reader.py) calls ``op = d.classify(buf, n)``, sets ``d.now`` and
``d.free_slots`` (``d.ring_idx`` are its rings' indices, given once), then
``core = d.steer(buf, n, op)``, and puts the frame on that core's ring (all rings for
ALL_CORES; nowhere for DROP), tagged with ``op`` and ``d.flow``. Neither call allocates,
raises or blocks.

Operation code (what the kernel needs without parsing the headers again)
-----------------------------------------------------------------------
bits 0..3  protocol: OP_OTHER, OP_ARP, OP_ICMP, OP_UDP, OP_TCP, OP_IPV4 (other IP protocol)
0x10       OP_FRAGMENT  IPv4 fragment (MF set or offset != 0), first fragment included
0x20       OP_PAYLOAD   transport payload present (for a fragment: it carries IP payload)
0x40       OP_SYN       TCP SYN without ACK
0x80       OP_BCAST     Ethernet group (broadcast/multicast) destination
bits 8..13 IPv4 header length in 4-byte words (IHL), 0 for non-IP

Flow key (``self.key``, 13 bytes)
---------------------------------
TCP/UDP:        src IP(4) dst IP(4) src port(2) dst port(2) proto(1)
fragment:       src IP(4) dst IP(4) IP ID(2)    0 0         proto(1)
ICMP/other IP:  src IP(4) dst IP(4) 0 0         0 0         proto(1)
ARP:            sender IP(4) target IP(4) 0...0

Classifier program
------------------
A program is bytes of 4-byte instructions ``[code, a, b, c]`` (``imm`` = b << 8 | c),
run by a viper interpreter over the frame with an accumulator A, a register X, the op code
(starts 0) and the key (zeroed first). Offsets are from the Ethernet header, or from the
transport header when the code has the L4 bit (0x80) set - only after IHL has run; before
that any L4-relative access fails. Every access is checked against the frame length ``n``:
reading past it makes the frame malformed (classify returns OP_OTHER and counts it).

  LD8     a=off imm=mask     A = buf[off] & mask                      (L4 bit allowed)
  LD16    a=off imm=mask     A = big-endian 16 bits at off & mask     (L4 bit allowed)
  AND     imm                A &= imm
  SHR/SHL a=bits (<= 15)     A >>= bits / A = (A << bits) & 0xFFFF
  TAX                        X = A
  SUBX                       A = X - A (may go negative)
  L4LEN                      A = IPv4 total length - header length (needs IHL first)
  JEQ/JNE/JGT/JLE a=skip imm if A ==/!=/>/<= imm: skip `skip` instructions (signed compare)
  JSET/JCLR a=skip imm       if A & imm != 0 / == 0: skip `skip` instructions
  JA      a=skip             skip `skip` instructions
  EXTRACT a=off b=len c=pos  key[pos:pos+len] = buf[off:off+len]      (L4 bit allowed)
  KEYSET  a=pos c=value      key[pos] = value
  KEYZERO a=pos b=len        key[pos:pos+len] = 0
  SETOP   imm (<= 0xFF)      op |= imm
  IHL                        check IPv4 header (IHL >= 5, header and total length inside
                             the frame, total length >= header), set the L4 base and
                             op bits 8..13; malformed otherwise
  NEED    a=off              malformed unless off <= n                (L4 bit allowed)
  RET                        return op (falling off the end does the same)
  FAIL                       malformed

Jumps go forward only (skip is unsigned) and must land inside the program or just past its
end, and a program is at most MAX_PROGRAM bytes: every program terminates after at most
MAX_PROGRAM / 4 steps. set_program() validates and refuses (ValueError) anything else.
assemble() turns a list of tuples and label strings into program bytes (see
default_program() for an example); it runs on CPython too, for the host.

Steering rules (steer())
------------------------
- ARP: ALL_CORES (each core keeps its own ARP cache).
- IPv4 fragments: hash of (src, dst, IP ID, proto) through the indirection table, so all
  fragments of a datagram meet on one core; no flow entry.
- TCP/UDP: the flow table first (an entry keeps its owner, whatever the hash program or the
  indirection table became since); a new flow's owner is a host rule for its exact key, or
  indirection[hash(key) & (len - 1)]; recorded. TCP entries are pinned (connections).
- A new TCP connection from the network (a SYN) under balance "flows" (the default): the
  hash's core, unless that core holds more than its share of the open connections (a
  core's share is its part of the indirection table: equal in the default table); then
  the core furthest below its share. Connections that all open at once (a burst of SYNs)
  are spread by the shares instead of by chance.
- ICMP and other IP protocols: by hash, not recorded.
- Overload (seed 004 Fig. 12B): an ICMP echo request or a UDP datagram whose target ring is
  at or above `overload` goes to the least loaded core if that is less loaded. UDP flow
  entries record the hash owner but are connectionless, so each datagram may be moved;
  TCP never is.
- Random early discard (seed 002 claim 28): ring depth >= ring_capacity drops
  (ring_full); depth in [red_min, red_max) drops with probability
  (depth - red_min) / (red_max - red_min), certainly at >= red_max (red). Packet memory:
  free_slots <= free_min drops (no_buffer); free_slots < free_low drops with probability
  (free_low - free_slots) / (free_low - free_min) (red). Malformed frames and other
  Ethernet types are dropped (malformed, other).
"""
import array

from micropython import const

from netkernel.dispatcher.flowtable import FlowTable
# The classifier's interpreter, the hashes and the key helpers are machine code (netkernel_native
# says why), and the instruction codes are defined with the interpreter.
from netkernel_native import (  # noqa: F401 - the codes are re-exported for assemble()'s users
    AND, EXTRACT, FAIL, IHL, JA, JCLR, JEQ, JGT, JLE, JNE, JSET, KEY_LEN, KEYSET, KEYZERO, L4,
    L4LEN, LD8, LD16, NEED, OP_IHL_SHIFT, RET, SETOP, SHL, SHR, SUBX, TAX, find_key, fold_hash,
    inc32, put_key, run_program, toeplitz_hash, xorshift16)

_F_PINNED = const(0x02)      # flowtable.F_PINNED

OP_PROTO_MASK = const(0x0F)
OP_OTHER = const(0)
OP_ARP = const(1)
OP_ICMP = const(2)
OP_UDP = const(3)
OP_TCP = const(4)
OP_IPV4 = const(5)
OP_FRAGMENT = const(0x10)
OP_PAYLOAD = const(0x20)
OP_SYN = const(0x40)
OP_BCAST = const(0x80)

ALL_CORES = const(-1)
DROP = const(-2)

MAX_PROGRAM = const(512)

# Packet layout: copies of wire's (const() inlines only within a module).
_ETH_DST = const(0)
_ETH_TYPE = const(12)
_ETH_HLEN = const(14)
_ETHERTYPE_IPV4 = const(0x0800)
_ETHERTYPE_ARP = const(0x0806)
_ARP_SPA = const(14)
_ARP_TPA = const(24)
_ARP_LEN = const(28)
_IP_VIHL = const(0)
_IP_ID = const(4)
_IP_FRAG = const(6)
_IP_PROTO = const(9)
_IP_SRC = const(12)
_IP_MF = const(0x2000)
_IP_OFFSET_MASK = const(0x1FFF)
_PROTO_ICMP = const(1)
_PROTO_TCP = const(6)
_PROTO_UDP = const(17)
_ICMP_HLEN = const(8)
_ICMP_ECHO_REQUEST = const(8)
_UDP_SPORT = const(0)
_UDP_HLEN = const(8)
_TCP_SPORT = const(0)
_TCP_OFF = const(12)
_TCP_FLAGS = const(13)
_TCP_HLEN = const(20)
_TCP_SYN = const(0x02)
_TCP_ACK_FLAG = const(0x10)
_IP = const(_ETH_HLEN)     # where the IPv4 header and the ARP packet sit in a frame
_ARP = const(_ETH_HLEN)

_WRAP = const(0xFFFF)          # rings.SpscRing's index wrap

_ALGO_FOLD = const(0)
_ALGO_TOEPLITZ = const(1)

# counter indices (array 'I'); per-core frame counts follow at _C_CORE + core
_C_FRAMES = const(0)
_C_MALFORMED = const(1)
_C_DROP_MALFORMED = const(2)
_C_DROP_OTHER = const(3)
_C_DROP_RED = const(4)
_C_DROP_RING_FULL = const(5)
_C_DROP_NO_BUFFER = const(6)
_C_REDIRECTS = const(7)
_C_ALL_CORES = const(8)
_C_FRAGMENTS = const(9)
_C_NEW_FLOWS = const(10)
_C_RULE_HITS = const(11)
_C_BALANCED = const(12)
_C_CORE = const(13)
_COUNTER_NAMES = ("frames", "malformed", "drop_malformed", "drop_other", "drop_red",
                  "drop_ring_full", "drop_no_buffer", "redirects", "all_cores", "fragments",
                  "new_flows", "rule_hits", "balanced")

BALANCE_HASH = const(0)      # new connections go where the hash points
BALANCE_FLOWS = const(1)     # ...unless that core holds more than its share of connections
_BALANCE_NAMES = ("hash", "flows")

# Microsoft's RSS verification key, and the symmetric one (0x6d5a repeated: swapping source
# and destination, addresses and ports together, gives the same hash).
RSS_KEY = bytes((0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d,
                 0x43, 0xa3, 0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4,
                 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b,
                 0xbe, 0xac, 0x01, 0xfa))
SYMMETRIC_RSS_KEY = b"\x6d\x5a" * 20


# ---------------------------------------------------------------------------------------
# classifier program: assembler, validator, interpreter

def assemble(items):
    """Program bytes from a list of instruction tuples and label strings.

    Tuples: (code,), (code, a), (code, a, imm16) or (code, a, b, c); a jump's `a` may be a
    label (a string that appears later in the list)."""
    labels = {}
    index = 0
    for it in items:
        if isinstance(it, str):
            labels[it] = index
        else:
            index += 1
    out = bytearray()
    index = 0
    for it in items:
        if isinstance(it, str):
            continue
        code = it[0]
        a = it[1] if len(it) > 1 else 0
        if isinstance(a, str):
            a = labels[a] - index - 1
        if len(it) == 4:
            b, c = it[2], it[3]
        else:
            imm = it[2] if len(it) == 3 else 0
            b, c = (imm >> 8) & 0xFF, imm & 0xFF
        out.extend(bytes((code, a, b, c)))
        index += 1
    return bytes(out)


def default_program():
    """Ethernet / ARP / IPv4 (fragments, ICMP, UDP, TCP) with the key layout above."""
    return assemble([
        (LD8, _ETH_DST, 0x01), (JEQ, "unicast", 0), (SETOP, 0, OP_BCAST), "unicast",
        (LD16, _ETH_TYPE, 0xFFFF), (JEQ, "arp", _ETHERTYPE_ARP),
        (JNE, "end", _ETHERTYPE_IPV4),
        (LD8, _IP + _IP_VIHL, 0xF0), (JNE, "bad", 0x40),
        (IHL,), (EXTRACT, _IP + _IP_SRC, 8, 0), (EXTRACT, _IP + _IP_PROTO, 1, 12),
        # protocol bits first, so fragments carry them too
        (LD8, _IP + _IP_PROTO, 0xFF),
        (JNE, "not_tcp", _PROTO_TCP), (SETOP, 0, OP_TCP), (JA, "frag"), "not_tcp",
        (JNE, "not_udp", _PROTO_UDP), (SETOP, 0, OP_UDP), (JA, "frag"), "not_udp",
        (JNE, "not_icmp", _PROTO_ICMP), (SETOP, 0, OP_ICMP), (JA, "frag"), "not_icmp",
        (SETOP, 0, OP_IPV4),
        "frag", (LD16, _IP + _IP_FRAG, _IP_MF | _IP_OFFSET_MASK), (JEQ, "whole", 0),
        # any fragment (the first one too) is keyed by the IP ID: no ports in non-first ones
        (SETOP, 0, OP_FRAGMENT), (EXTRACT, _IP + _IP_ID, 2, 8), (L4LEN,), (JLE, "end", 0),
        (SETOP, 0, OP_PAYLOAD), (JA, "end"),
        "whole", (LD8, _IP + _IP_PROTO, 0xFF), (JEQ, "tcp", _PROTO_TCP),
        (JEQ, "udp", _PROTO_UDP), (JNE, "ip_other", _PROTO_ICMP),
        (NEED | L4, _ICMP_HLEN), (L4LEN,), (JLE, "end", _ICMP_HLEN), (SETOP, 0, OP_PAYLOAD),
        (JA, "end"),
        "ip_other", (L4LEN,), (JLE, "end", 0), (SETOP, 0, OP_PAYLOAD), (JA, "end"),
        "tcp", (NEED | L4, _TCP_HLEN), (EXTRACT | L4, _TCP_SPORT, 4, 8),
        (LD8 | L4, _TCP_FLAGS, _TCP_SYN | _TCP_ACK_FLAG), (JNE, "tcp_data", _TCP_SYN),
        (SETOP, 0, OP_SYN), "tcp_data",
        (L4LEN,), (TAX,), (LD8 | L4, _TCP_OFF, 0xF0), (SHR, 2), (SUBX,), (JLE, "end", 0),
        (SETOP, 0, OP_PAYLOAD), (JA, "end"),
        "udp", (NEED | L4, _UDP_HLEN), (EXTRACT | L4, _UDP_SPORT, 4, 8), (L4LEN,),
        (JLE, "end", _UDP_HLEN), (SETOP, 0, OP_PAYLOAD), (JA, "end"),
        "arp", (NEED, _ARP + _ARP_LEN), (SETOP, 0, OP_ARP), (EXTRACT, _ARP + _ARP_SPA, 4, 0),
        (EXTRACT, _ARP + _ARP_TPA, 4, 4), (JA, "end"),
        "bad", (FAIL,),
        "end",
    ])


def validate_program(program):
    """Raise ValueError unless the program is well formed (see the module docstring)."""
    n = len(program)
    if n == 0 or n > MAX_PROGRAM or n & 3:
        raise ValueError("program length")
    count = n >> 2
    for i in range(count):
        code, a, b, c = program[4 * i], program[4 * i + 1], program[4 * i + 2], program[4 * i + 3]
        base = code & 0x7F
        if base < LD8 or base > FAIL:
            raise ValueError("bad code at %d" % i)
        if code & L4 and base not in (LD8, LD16, EXTRACT, NEED):
            raise ValueError("L4 base not allowed at %d" % i)
        if JEQ <= base <= JA and i + 1 + a > count:
            raise ValueError("jump out of program at %d" % i)
        if base in (SHR, SHL) and a > 15:
            raise ValueError("shift at %d" % i)
        if base == EXTRACT and (b == 0 or c + b > KEY_LEN):
            raise ValueError("extract at %d" % i)
        if base == KEYSET and a >= KEY_LEN:
            raise ValueError("keyset at %d" % i)
        if base == KEYZERO and a + b > KEY_LEN:
            raise ValueError("keyzero at %d" % i)
        if base == SETOP and b:
            raise ValueError("setop bits at %d" % i)


def default_red_min(ring_capacity):
    """The ring depth where random early discard starts, unless set otherwise."""
    return ring_capacity * 3 // 4


def default_free_low(ring_capacity, free_min=0):
    """The free frame slots below which random early discard starts, unless set
    otherwise."""
    return max(free_min + 1, ring_capacity // 4)


class Dispatcher:
    def __init__(self, ncores, ip, flow_capacity=256, ring_capacity=32, red_min=None,
                 red_max=None, overload=None, free_low=None, free_min=0, max_rules=16,
                 seed=0xACE1, idle_ms=300000, tcp_idle_ms=7200000, balance="flows"):
        if ncores < 1 or ncores > 255:
            raise ValueError("ncores")
        self.ncores = ncores
        self.ip = bytearray(ip)
        self.ring_capacity = ring_capacity
        self.red_min = default_red_min(ring_capacity) if red_min is None else red_min
        self.red_max = ring_capacity * 15 // 16 if red_max is None else red_max
        if self.red_max <= self.red_min:
            self.red_max = self.red_min + 1
        # redirect before random early discard starts: move load rather than drop it
        self.overload = ring_capacity // 2 if overload is None else overload
        self.free_min = free_min
        self.free_low = default_free_low(ring_capacity, free_min) if free_low is None \
            else max(free_low, free_min + 1)
        self.key = bytearray(KEY_LEN)
        self.flow = -1
        self.flow_new = False
        # steer()'s inputs besides the frame, set by the reader: the time (per batch), the
        # pool's free slots (per frame), and each kernel's ring's indices ([head, tail], the
        # reader's rings once it has them: a depth is read only where steer() needs it).
        self.now = 0
        self.free_slots = 0
        self.ring_idx = [array.array("I", [0, 0]) for _ in range(ncores)]
        self.flows_table = FlowTable(flow_capacity, idle_ms, tcp_idle_ms)
        self.counters_ = array.array("I", bytes(4 * (_C_CORE + ncores)))
        self._rng = array.array("H", [(seed & 0xFFFF) or 1])
        self._bad = 0
        self._qkey = bytearray(KEY_LEN)       # scratch key for core_for()/owner_of()/...
        self._hout = bytearray(4)             # last Toeplitz result (big-endian)
        self._rules = bytearray(max_rules * KEY_LEN)
        self._rule_cores = bytearray(max_rules)
        self._nrules = 0
        self._algo = _ALGO_FOLD
        self._mask = bytearray(b"\xff" * KEY_LEN)
        self._tkey = bytes(SYMMETRIC_RSS_KEY)
        self._shares = array.array("H", bytes(2 * ncores))   # indirection entries per core
        self.set_indirection(bytearray(i % ncores for i in range(64)))
        self._balance = BALANCE_HASH
        self.set_balance(balance)
        self.program = default_program()

    # -- configuration (allocates; not per frame) -------------------------------------

    def set_hash(self, mask=None, algorithm=None, toeplitz_key=None):
        """mask: 13 bytes ANDed over the key before hashing (Toeplitz uses the first 12);
        algorithm: "fold" or "toeplitz"; toeplitz_key: >= 16 bytes (default: symmetric)."""
        if mask is not None:
            if len(mask) != KEY_LEN:
                raise ValueError("mask must be %d bytes" % KEY_LEN)
            self._mask = bytearray(mask)
        if toeplitz_key is not None:
            if len(toeplitz_key) < 16:
                raise ValueError("toeplitz key too short")
            self._tkey = bytes(toeplitz_key)
        if algorithm is not None:
            if algorithm == "fold":
                self._algo = _ALGO_FOLD
            elif algorithm == "toeplitz":
                self._algo = _ALGO_TOEPLITZ
            else:
                raise ValueError("algorithm")

    def set_indirection(self, table):
        n = len(table)
        if n < 1 or n > 256 or n & (n - 1):
            raise ValueError("indirection length must be a power of two <= 256")
        shares = array.array("H", bytes(2 * self.ncores))
        for c in table:
            if c < 0 or c >= self.ncores:
                raise ValueError("core %d" % c)
            shares[c] += 1
        # The shares go first: a connection placed in between sees new shares and the old
        # table, both valid. Each is one attribute swap: steer sees old or new.
        self._shares = shares
        self.indirection = bytearray(table)

    def set_balance(self, name):
        """How a new TCP connection from the network (a SYN) finds its core:
        "hash": indirection[hash(key)], like every other new flow;
        "flows": the same, unless that core already holds more than its share of the
        connections (its entries in the indirection table, as a fraction of the table):
        then the core furthest below its share. Host rules go first either way."""
        if name not in _BALANCE_NAMES:
            raise ValueError("balance must be hash or flows")
        self._balance = _BALANCE_NAMES.index(name)

    def balance(self):
        return _BALANCE_NAMES[self._balance]

    def set_program(self, program):
        program = bytes(program)
        validate_program(program)
        self.program = program

    def add_rule(self, key_bytes, core):
        if len(key_bytes) != KEY_LEN or core < 0 or core >= self.ncores:
            raise ValueError("rule")
        r = find_key(self._rules, self._nrules, key_bytes)
        if r < 0:
            if self._nrules * KEY_LEN >= len(self._rules):
                raise ValueError("rule table full")
            r = self._nrules
            self._rules[r * KEY_LEN:(r + 1) * KEY_LEN] = key_bytes
            self._nrules = r + 1
        self._rule_cores[r] = core

    def remove_rule(self, key_bytes):
        r = find_key(self._rules, self._nrules, key_bytes)
        if r < 0:
            return False
        last = self._nrules - 1
        self._rules[r * KEY_LEN:(r + 1) * KEY_LEN] = \
            self._rules[last * KEY_LEN:(last + 1) * KEY_LEN]
        self._rule_cores[r] = self._rule_cores[last]
        self._nrules = last
        return True

    # -- reports (allocate) -------------------------------------------------------------

    def counters(self):
        c = self.counters_
        out = {}
        for i in range(len(_COUNTER_NAMES)):
            out[_COUNTER_NAMES[i]] = c[i]
        out["per_core"] = [c[_C_CORE + k] for k in range(self.ncores)]
        out.update(self.flows_table.stats())
        return out

    def flows(self):
        return self.flows_table.entries()

    # -- per frame (no allocation) ------------------------------------------------------

    def classify(self, buf, n):
        """Run the classifier program; fills self.key; returns the op code."""
        inc32(self.counters_, _C_FRAMES)
        program = self.program
        op = run_program(program, len(program), buf, n, self.key)
        if op < 0:
            self._bad = 1
            inc32(self.counters_, _C_MALFORMED)
            return OP_OTHER
        self._bad = 0
        return op

    def hash_core(self, key):
        """indirection[hash(key) & (len - 1)] under the current hash settings."""
        if self._algo == _ALGO_TOEPLITZ:
            h = toeplitz_hash(key, self._mask, self._tkey, self._hout)
        else:
            h = fold_hash(key, self._mask)
        table = self.indirection
        return table[h & (len(table) - 1)]

    def new_owner(self, key):
        """A host rule for exactly this key, else the hash through the indirection table.
        Counts nothing and writes only _hout, so a kernel may call it for a query (with its
        own scratch key) from either core."""
        if self._nrules:
            r = find_key(self._rules, self._nrules, key)
            if r >= 0:
                return self._rule_cores[r]
        return self.hash_core(key)

    def _rule_hit(self, key):
        """The core of a host rule for exactly this key (the hit counted), or -1."""
        if self._nrules:
            r = find_key(self._rules, self._nrules, key)
            if r >= 0:
                inc32(self.counters_, _C_RULE_HITS)
                return self._rule_cores[r]
        return -1

    def _assign(self, key):
        """new_owner() for a frame being steered: a rule hit is counted."""
        core = self._rule_hit(key)
        if core >= 0:
            return core
        return self.hash_core(key)

    def _place(self, key):
        """The core for a new connection from the network: _assign() under "hash"; under
        "flows" the core whose connections are furthest below its share once this one is
        added, the hash's own core when it is one of those (counted when it is not)."""
        core = self._rule_hit(key)
        if core >= 0:
            return core
        core = self.hash_core(key)
        if self._balance == BALANCE_HASH:
            return core
        pinned = self.flows_table.pinned
        shares = self._shares
        best = core
        # compare (n + 1) / share across cores without division
        best_n = pinned[core] + 1
        best_s = shares[core]
        k = 0
        while k < self.ncores:
            s = shares[k]
            if s and (pinned[k] + 1) * best_s < best_n * s:
                best = k
                best_n = pinned[k] + 1
                best_s = s
            k += 1
        if best != core:
            inc32(self.counters_, _C_BALANCED)
        return best

    def _chance(self, num, den):
        """True with probability num/den (0 <= num <= den), from the xorshift PRNG."""
        return (xorshift16(self._rng) - 1) * den < (num << 16)

    def depth(self, core):
        """Frames waiting on ``core``'s ring."""
        idx = self.ring_idx[core]
        return (idx[0] - idx[1]) & _WRAP

    def _least_loaded(self):
        best = 0
        low = self.depth(0)
        k = 1
        while k < self.ncores:
            d = self.depth(k)
            if d < low:
                best = k
                low = d
            k += 1
        return best

    def _drop(self, reason):
        inc32(self.counters_, reason)
        return DROP

    def steer(self, buf, n, op):
        """The core for this frame, ALL_CORES or DROP (counted by reason), as of the
        inputs the reader set: ``now`` (ticks_ms), ``ring_idx`` (each ring's indices) and
        ``free_slots`` (the pool's free slots, the frame's own counted as free).
        (Split in steps, each frame within 11 words: a bytecode function with a larger one
        takes it from the heap on every call, thousands of instructions on the RP2040.)"""
        self.flow = -1
        self.flow_new = False    # True when this frame opened a flow-table slot
        self.flows_table.expire_step(self.now, 1)
        proto = op & OP_PROTO_MASK
        if (proto == OP_TCP or proto == OP_UDP) and not op & OP_FRAGMENT and \
                self.free_slots >= self.free_low:
            return self._steer_flow(n, op)
        return self._steer_other(buf, n, op, proto)

    def _steer_other(self, buf, n, op, proto):
        if proto == OP_OTHER:
            if self._bad:
                return self._drop(_C_DROP_MALFORMED)
            return self._drop(_C_DROP_OTHER)
        # packet memory pressure applies to everything, ARP included
        if self.free_slots < self.free_low and self._short_of_slots():
            return DROP
        if proto == OP_ARP:
            inc32(self.counters_, _C_ALL_CORES)
            return ALL_CORES
        if op & OP_FRAGMENT:
            inc32(self.counters_, _C_FRAGMENTS)
            return self._admit(self.hash_core(self.key), False)
        if proto == OP_TCP or proto == OP_UDP:
            return self._steer_flow(n, op)
        if proto == OP_ICMP:
            return self._steer_icmp(buf, n, op)
        return self._admit(self._assign(self.key), False)

    def _short_of_slots(self):
        """(free_slots < free_low) True if the frame is dropped for want of packet
        memory: always at or below free_min, else with a chance that grows as it nears."""
        free = self.free_slots
        if free <= self.free_min:
            self._drop(_C_DROP_NO_BUFFER)
            return True
        if self._chance(self.free_low - free, self.free_low - self.free_min):
            self._drop(_C_DROP_RED)
            return True
        return False

    def _steer_icmp(self, buf, n, op):
        # An echo request may be moved to a less loaded core (overload), other ICMP not.
        l4 = _ETH_HLEN + ((op >> OP_IHL_SHIFT) & 0x3F) * 4
        return self._admit(self._assign(self.key), l4 < n and buf[l4] == _ICMP_ECHO_REQUEST)

    def _steer_flow(self, n, op):
        """A TCP segment or UDP datagram (no fragment): its flow's owner, a new flow's
        recorded first."""
        slot = self.flows_table.lookup(self.key, 0)
        if slot < 0:
            slot = self._new_flow(op)
        self.flow = slot
        core = self._admit(self.flows_table.owner[slot], op & OP_PROTO_MASK == OP_UDP)
        if core >= 0:
            self.flows_table.touch(slot, n, op, self.now)
        return core

    def _new_flow(self, op):
        inc32(self.counters_, _C_NEW_FLOWS)
        key = self.key
        if op & OP_PROTO_MASK == OP_TCP:
            # only a SYN opens a connection here; a SYN-ACK answers one of ours, whose port
            # was picked to hash to its core
            owner = self._place(key) if op & OP_SYN else self._assign(key)
            slot = self.flows_table.insert(key, 0, owner, _F_PINNED, self.now)
        else:
            slot = self.flows_table.insert(key, 0, self._assign(key), 0, self.now)
        self.flow_new = slot >= 0
        return slot

    def _admit(self, core, movable):
        """``core`` for the frame, unless its ring is crowded (see _crowded())."""
        idx = self.ring_idx[core]
        depth = (idx[0] - idx[1]) & _WRAP
        if depth < self.red_min and depth < self.ring_capacity and \
                (not movable or depth < self.overload):
            inc32(self.counters_, _C_CORE + core)
            return core
        return self._crowded(core, movable)

    def _crowded(self, core, movable):
        """Overload (seed 004 Fig. 12B): a ``movable`` frame (ICMP echo request, UDP) at or
        above `overload` goes to the least loaded core if that is less loaded; then random
        early discard, and a full ring drops."""
        depth = self.depth(core)
        if movable and depth >= self.overload:
            k = self._least_loaded()
            if self.depth(k) < depth:
                core = k
                depth = self.depth(k)
                inc32(self.counters_, _C_REDIRECTS)
        if depth >= self.ring_capacity:
            return self._drop(_C_DROP_RING_FULL)
        if depth >= self.red_min and self._chance(depth - self.red_min,
                                                  self.red_max - self.red_min):
            return self._drop(_C_DROP_RED)
        inc32(self.counters_, _C_CORE + core)
        return core

    def owner_of(self, src, src_off, dst, dst_off, proto, sport, dport):
        """The flow table's owner of this 5-tuple (wire direction), or -1."""
        put_key(self._qkey, src, src_off, dst, dst_off, proto, sport, dport)
        slot = self.flows_table.lookup(self._qkey, 0)
        if slot < 0:
            return -1
        return self.flows_table.owner[slot]

    def core_for(self, src, src_off, dst, dst_off, proto, sport, dport):
        """The core this 5-tuple (wire direction: src = remote) goes to: its owner if it has
        one, else where steer() would put it as a new flow now."""
        put_key(self._qkey, src, src_off, dst, dst_off, proto, sport, dport)
        return self.core_for_key(self._qkey)

    def core_for_key(self, key):
        """core_for() of a 13-byte key the caller built (a DispatchPort, with its kernel's
        own scratch key: the dispatcher's is core 0's). Reads the dispatcher's state only."""
        slot = self.flows_table.lookup(key, 0)
        if slot >= 0:
            return self.flows_table.owner[slot]
        return self.new_owner(key)

    def flow_closed(self, proto, src, src_off, dst, dst_off, sport, dport):
        """A kernel finished with this flow: forget it (either direction is accepted)."""
        ft = self.flows_table
        put_key(self._qkey, src, src_off, dst, dst_off, proto, sport, dport)
        slot = ft.lookup(self._qkey, 0)
        if slot < 0:
            put_key(self._qkey, dst, dst_off, src, src_off, proto, dport, sport)
            slot = ft.lookup(self._qkey, 0)
        if slot >= 0:
            ft.remove(slot)
