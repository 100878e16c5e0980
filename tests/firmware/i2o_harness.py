# A node on the emulated chip (boardfake), a peer Stack on the other end of its wire, and a
# minimal I2O host on its USB stream: raw link frames, the host's half of the credits.
import struct
import time

import boardfake
from netkernel.node import Node
from netkernel.proto import i2o
from netkernel.proto import linkframe as lf
from netkernel.stack import Stack, StackConfig

BOARD_IP = bytes([10, 77, 0, 2])
PEER_MAC = b"\x02\x00\x0a\x4d\x00\x01"
PEER_IP = bytes([10, 77, 0, 1])
GW = bytes([10, 77, 0, 254])


def link_frame(kind, body=b""):
    payload = bytes([kind]) + body
    out = bytearray(lf.encoded_size(len(payload)))
    return bytes(out[:lf.encode_into(payload, len(payload), out)])


def message(fn, target=i2o.TID_SOCKET, payload=b"", ictx=0x11223344, tctx=0, flags=0):
    n = i2o.HEADER_BYTES + len(payload)
    b = bytearray(i2o.words(n) * 4)
    i2o.put_header(b, 0, flags, i2o.words(n), target, i2o.TID_HOST, fn)
    i2o.put_contexts(b, 0, ictx, tctx)
    b[16:16 + len(payload)] = payload
    return bytes(b)


class Reply:
    """One KIND_I2O_REPLY frame, parsed."""

    def __init__(self, body):
        self.mfa = body[0] | (body[1] << 8)
        m = body[2:]
        self.raw = m
        self.flags = i2o.flags(m, 0)
        self.fn = i2o.function(m, 0)
        self.size = i2o.size_words(m, 0) * 4
        self.ictx, self.tctx = struct.unpack_from("<II", m, 8)
        self.rs = i2o.req_status(m, 0)
        self.detail = i2o.detail(m, 0)
        self.payload = m[i2o.REPLY_PAYLOAD:]

    def __repr__(self):
        return "Reply(fn=%x flags=%x rs=%d detail=%x ictx=%x tctx=%d)" % (
            self.fn, self.flags, self.rs, self.detail, self.ictx, self.tctx)


class Rig:
    def __init__(self, kernels=1, stream=None, **cfg):
        boardfake.OVERRIDES.clear()
        boardfake.OVERRIDES["kernels"] = kernels
        boardfake.OVERRIDES["services"] = False
        # The pools these tests are written for (the node's own defaults are smaller: the
        # RP2040 budget).
        boardfake.OVERRIDES["i2o_inbound_depth"] = 8
        boardfake.OVERRIDES["i2o_outbound_max"] = 16
        boardfake.OVERRIDES.update(cfg)
        self.node = Node(boardfake)
        self.hw = self.node.hw
        self.mu = self.node.msgunit
        self.peer = Stack(self._peer_send, PEER_MAC, PEER_IP, 24, GW,
                          StackConfig(services=False))
        self.node.start()
        self.node._next_link_check = time.ticks_add(time.ticks_ms(), 1000000)
        self.deframer = lf.Deframer(self._on_frame)
        self.got = []           # every link frame from the board, in order
        self.replies = []       # KIND_I2O_REPLY frames not yet looked at
        self.free = {}          # iop -> MFAs the host holds
        self.auto_flush = True
        self.tctx = 0

    def _peer_send(self, buf, n):
        self.hw.wire.inject(bytes(buf[:n if n >= 60 else 60]))
        return True

    def _on_frame(self, buf, n):
        f = bytes(buf[:n])
        self.got.append(f)
        if f[0] == lf.KIND_I2O_FREE:
            iop, count = f[1], f[2]
            for i in range(count):
                self.free.setdefault(iop, []).append(f[3 + 2 * i] | (f[4 + 2 * i] << 8))
        elif f[0] == lf.KIND_I2O_REPLY:
            r = Reply(f[1:])
            self.replies.append(r)
            if self.auto_flush:
                self.send(lf.KIND_I2O_FLUSH, bytes([1, r.mfa & 0xFF, r.mfa >> 8]))

    def read(self):
        s = self.hw.stream
        if s.outgoing:
            data = s.outgoing
            s.outgoing = bytearray()
            self.deframer.feed(data, len(data))

    def send(self, kind, body=b""):
        self.hw.stream.incoming += link_frame(kind, body)

    def run(self, ms=100, until=None, peer=True):
        deadline = time.ticks_add(time.ticks_ms(), ms)
        while True:
            now = time.ticks_ms()
            self.node._wake = True
            self.node.turn(now)
            # Kernel 1 transmits from its own thread under the chip lock (TX_MODE "lock"):
            # the wire's list is swapped under that lock, or a frame appended between the
            # loop and the swap would be lost.
            lock = self.node.cores.lock
            lock.acquire()
            sent = self.hw.wire.sent
            self.hw.wire.sent = []
            lock.release()
            for f in sent:
                if peer:
                    self.peer.input(f, len(f), now)
            self.peer.poll(now)
            self.read()
            if until is not None and until():
                return True
            if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                return until is None
            time.sleep_ms(0)

    def init(self, grant=8, fbytes=1024, credit=0, version=i2o.PROTOCOL_VERSION):
        n = len(self.got)
        self.send(lf.KIND_I2O_INIT, struct.pack(i2o.INIT_FMT, version, grant, fbytes, credit))
        assert self.run(200, lambda: any(f[0] == lf.KIND_I2O_INIT_REPLY for f in self.got[n:]))
        f = [f for f in self.got[n:] if f[0] == lf.KIND_I2O_INIT_REPLY][0]
        r = struct.unpack_from(i2o.INIT_REPLY_FMT, f, 1)
        if r[0] == i2o.INIT_OK:
            self.free = {k: list(range(r[5])) for k in range(r[3])}
            self.replies = []
        return r

    def post(self, iop, msg, mfa=None):
        if mfa is None:
            mfa = self.free[iop].pop(0)
        self.send(lf.KIND_I2O_POST, bytes([iop, mfa & 0xFF, mfa >> 8]) + msg)
        return mfa

    def request(self, fn, payload=b"", iop=0, target=i2o.TID_SOCKET, ictx=0x11223344):
        """Post a request with a fresh transaction context; returns that context."""
        self.tctx += 1
        self.post(iop, message(fn, target, payload, ictx, self.tctx))
        return self.tctx

    def wait_reply(self, tctx, ms=500):
        found = []

        def got():
            for r in self.replies:
                if r.tctx == tctx:
                    found.append(r)
                    self.replies.remove(r)
                    return True
            return False

        assert self.run(ms, got), "no reply for %d; have %r" % (tctx, self.replies)
        return found[0]

    def call(self, fn, payload=b"", iop=0, target=i2o.TID_SOCKET, ms=500):
        return self.wait_reply(self.request(fn, payload, iop, target), ms)

    def wait_event(self, fn, ms=500):
        found = []

        def got():
            for r in self.replies:
                if r.fn == fn and r.tctx == 0:
                    found.append(r)
                    self.replies.remove(r)
                    return True
            return False

        assert self.run(ms, got), "no event %x; have %r" % (fn, self.replies)
        return found[0]

    def held(self):
        """Inbound MFAs the host does not hold (per IOP): 0 when none is lost."""
        return {k: self.mu.depth - len(v) for k, v in self.free.items()}

    def stop(self):
        self.node.stop()
        boardfake.OVERRIDES.clear()
