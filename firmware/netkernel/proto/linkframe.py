# Link framing for the USB CDC byte stream between the board and the host.
#
# This file is the one definition both sides use: the firmware imports it as
# netkernel.proto.linkframe, the host package as twinstack.proto.linkframe (host/twinstack/proto
# is a link to this folder). It therefore runs on MicroPython and on CPython.
#
# A frame on the byte stream is  00 | COBS(kind, body..., crc_hi, crc_lo) | 00
#   - COBS removes every 00 from the frame, so 00 only ever delimits: after garbage or a cut
#     frame the receiver is back in step at the next 00;
#   - the CRC is CRC-16/CCITT-FALSE over kind + body, so corruption is caught;
#   - the leading 00 ends whatever garbage came before, so only that garbage is lost.
# Empty frames (00 00) are idle fill and are ignored without counting.
# On MicroPython the byte loops (CRC, COBS encode, the deframer's feed) are viper code: the
# board frames every host-link message, and byte-by-byte bytecode costs ~3x more than the
# USB transfer itself. CPython (the host) works with slices, split() and binascii.crc_hqx;
# both give the same bytes (tests/host/test_linkframe.py checks golden vectors on each).
try:
    from micropython import const

    # The byte loops are machine code, kept outside the package (netkernel_native says why).
    from netkernel_native import cobs_encode, cobs_feed
    from netkernel_native import crc16 as _crc16_v
    _VIPER = True
except ImportError:  # CPython
    _VIPER = False

    def const(x):
        return x

from array import array

MAX_PAYLOAD = const(2048)   # kind + body, without CRC
KIND_ECHO_REQUEST = const(0x01)  # link liveness: the board answers with the same body
KIND_ECHO_REPLY = const(0x02)
KIND_WIRE_TX = const(0x03)       # host -> board: put this Ethernet frame on the wire
KIND_STATS_REQUEST = const(0x04) # host -> board: counters, please
KIND_STATS_REPLY = const(0x05)   # board -> host: more(1) + "name=value ..." (ASCII); more=1:
                                 # the text goes on in the next KIND_STATS_REPLY
KIND_TCP_TEST = const(0x06)      # host -> board: ip(4) port(2) nbytes(4): the built-in test
                                 # client connects, sends a pattern, checks the echo, closes
KIND_TCP_TEST_REPLY = const(0x07)  # board -> host: status(1) sent(4) verified(4) ms(4)
KIND_FLOWS_REQUEST = const(0x08)  # host -> board: the dispatcher's flow table, please
KIND_FLOWS_REPLY = const(0x09)   # board -> host: more(1) + text, one flow per line:
                                 # n=<flow> key=<src>:<sport>><dst>:<dport>/<proto> owner=<core>
                                 # pkts=<n> bytes=<n> k0=<frames on kernel 0> k1=... (paged
                                 # like KIND_STATS_REPLY)
KIND_CONFIG = const(0x0A)        # host -> board: ASCII name=value pairs (hash=fold|toeplitz,
                                 # indirection=0,1,..., balance=flows|hash, mask=<hex>,
                                 # rule=<key hex>:<core>)
KIND_CONFIG_REPLY = const(0x0B)  # board -> host: status(1) (0 ok, else errno) + ASCII text
# The I2O messaging unit (netkernel.proto.i2o has the layouts and the rules):
KIND_I2O_POST = const(0x10)      # host -> board: iop(1) mfa(2) message (inbound post)
KIND_I2O_FREE = const(0x11)      # board -> host: iop(1) count(1) mfa(2)*count (inbound free)
KIND_I2O_REPLY = const(0x12)     # board -> host: mfa(2) message (outbound post)
KIND_I2O_FLUSH = const(0x13)     # host -> board: count(1) mfa(2)*count (outbound free)
KIND_I2O_INIT = const(0x14)      # host -> board: bring-up / reset (i2o.INIT_FMT)
KIND_I2O_INIT_REPLY = const(0x15)  # board -> host: i2o.INIT_REPLY_FMT
KIND_I2O_READY = const(0x16)     # board -> host: epoch(4), once at boot

USB_PACKET = const(64)           # full-speed bulk packet: the board's USB transfers are a
                                 # whole number of them and end early on a short packet


def usb_fill(total, n):
    """How many 00 bytes (idle fill) a writer appends to n bytes after ``total`` bytes so
    that neither this write nor the stream ends on a USB packet boundary: the board reads
    in transfers of several packets, and a transfer ends at a short packet or when full."""
    k = 0
    while (n + k) % USB_PACKET == 0 or (total + n + k) % USB_PACKET == 0:
        k += 1
    return k


def with_usb_fill(total, data):
    """``data`` (bytes to write after ``total`` bytes) with usb_fill's 00s appended."""
    k = usb_fill(total, len(data))
    return bytes(data) + bytes(k) if k else data


# Worst case encoded size of a payload of n bytes: delimiters, CRC, one code byte per 254.
def encoded_size(n):
    return n + 2 + (n + 2) // 254 + 1 + 2


_MAX_ENCODED = encoded_size(MAX_PAYLOAD)   # more bytes without a 00 are garbage


def _crc_table():
    t = array("H", bytes(512))
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
        t[i] = c & 0xFFFF
    return t


_CRC_TABLE = _crc_table() if _VIPER else None


if _VIPER:
    def crc16(buf, n, crc=0xFFFF):
        """CRC-16/CCITT-FALSE of buf[:n] (check value of b"123456789": 0x29B1)."""
        return _crc16_v(buf, n, crc, _CRC_TABLE)

    def encode_into(payload, n, out):
        """Frame payload[:n] into ``out``; return the number of bytes to send.

        ``out`` must hold encoded_size(n) bytes. Nothing is allocated.
        """
        if n < 1 or n > MAX_PAYLOAD:
            raise ValueError("link payload must be 1..%d bytes" % MAX_PAYLOAD)
        if len(out) < encoded_size(n):
            raise ValueError("link frame buffer too small")   # viper does not check
        return cobs_encode(payload, n, out, _crc16_v(payload, n, 0xFFFF, _CRC_TABLE))
else:
    # CPython (the host): slices and binascii.crc_hqx (CRC-16/CCITT-FALSE given 0xFFFF),
    # many times faster than byte-by-byte bytecode; the same bytes as the board's.
    import binascii

    def crc16(buf, n, crc=0xFFFF):
        """CRC-16/CCITT-FALSE of buf[:n] (check value of b"123456789": 0x29B1)."""
        return binascii.crc_hqx(bytes(buf[:n]), crc)

    def encode_into(payload, n, out):
        """Frame payload[:n] into ``out``; return the number of bytes to send.

        ``out`` must hold encoded_size(n) bytes.
        """
        if n < 1 or n > MAX_PAYLOAD:
            raise ValueError("link payload must be 1..%d bytes" % MAX_PAYLOAD)
        data = bytes(payload[:n])
        crc = binascii.crc_hqx(data, 0xFFFF)
        o = 0
        out[o] = 0
        o += 1
        for piece in (data + bytes((crc >> 8, crc & 0xFF))).split(b"\x00"):
            # A block holds at most 254 data bytes; a full block (code 0xFF) stands for no 00.
            while len(piece) >= 254:
                out[o] = 0xFF
                out[o + 1:o + 255] = piece[:254]
                o += 255
                piece = piece[254:]
            out[o] = len(piece) + 1
            out[o + 1:o + 1 + len(piece)] = piece
            o += 1 + len(piece)
        out[o] = 0
        return o + 1


def encode(payload):
    """One whole link frame (leading and trailing 00) for payload = kind + body, as new
    bytes (for hosts and tests; the board uses encode_into with its own buffer)."""
    out = bytearray(encoded_size(len(payload)))
    return bytes(out[:encode_into(payload, len(payload), out)])


class Deframer:
    """Streaming decoder: feed it bytes as they arrive, get whole checked frames back.

    ``handler(buf, n)`` is called for each good frame with the payload (kind + body) in
    ``buf[:n]``; ``buf`` is reused for the next frame. Bad input is counted, never raised:
    ``bad_crc`` (corrupted or merged frames), ``bad_cobs`` (a frame cut inside a COBS block),
    ``too_long`` (no delimiter within MAX_PAYLOAD + 2 bytes: garbage).
    """

    def __init__(self, handler, max_payload=MAX_PAYLOAD):
        self._handler = handler
        self._buf = bytearray(max_payload + 2)
        self._cap = max_payload + 2
        self.frames = 0
        self.bad_crc = 0
        self.bad_cobs = 0
        self.too_long = 0
        self.bytes_in = 0
        self._reset()

    def _reset(self):
        if not _VIPER:
            self._pending = bytearray()   # CPython: encoded bytes before the next 00
        self._len = 0
        self._left = 0        # bytes left in the current COBS block
        self._zero = False    # a 00 is due before the next block
        self._overflow = False

    def reset(self):
        """Forget any partial frame (e.g. after the link was lost)."""
        self._reset()

    def feed(self, data, n=None):
        """Decode data[:n] (all of data if n is None); return the number of good frames
        delivered."""
        if n is None or n > len(data):
            n = len(data)         # viper does not check bounds
        self.bytes_in += n
        if _VIPER:
            return self._feed_v(data, n)
        return self._feed_split(bytes(data[:n]))

    def _feed_split(self, data):
        # CPython: cut at the delimiters with split() and decode each frame with slices.
        pieces = data.split(b"\x00")
        got = 0
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            if i == last:
                # No delimiter after it yet: kept for the next feed (or garbage skipped).
                if not self._overflow:
                    self._pending += piece
                    if len(self._pending) > _MAX_ENCODED:
                        self.too_long += 1
                        self._pending = bytearray()
                        self._overflow = True
                continue
            if self._overflow:
                self._overflow = False      # the garbage ends at this delimiter
                continue
            if self._pending:
                piece = bytes(self._pending) + piece
                self._pending = bytearray()
            if piece:
                got += self._frame_split(piece)
        return got

    def _frame_split(self, enc):
        if len(enc) > _MAX_ENCODED:
            self.too_long += 1
            return 0
        out = bytearray()
        i = 0
        n = len(enc)
        while i < n:
            code = enc[i]
            end = i + code
            if end > n:
                self.bad_cobs += 1
                return 0
            out += enc[i + 1:end]
            i = end
            if code != 0xFF and i < n:
                out.append(0)
        m = len(out)
        if m > self._cap:
            self.too_long += 1
            return 0
        if m < 3 or crc16(out, m - 2) != (out[m - 2] << 8) | out[m - 1]:
            self.bad_crc += 1
            return 0
        self.frames += 1
        self._handler(bytes(out), m - 2)
        return 1

    if _VIPER:
        _feed_v = cobs_feed     # feed()'s loop (machine code, netkernel_native)

    def _end(self):
        n = self._len
        ok = 0
        if self._overflow:
            self.too_long += 1
        elif self._left != 0:
            self.bad_cobs += 1
        elif n == 0:
            pass  # idle fill or a leading delimiter
        elif n < 3 or crc16(self._buf, n - 2) != (self._buf[n - 2] << 8) | self._buf[n - 1]:
            self.bad_crc += 1
        else:
            self.frames += 1
            ok = 1
        self._reset()     # first: a handler that raises must not leave a stale frame
        if ok:
            self._handler(self._buf, n - 2)
        return ok

    @property
    def errors(self):
        return self.bad_crc + self.bad_cobs + self.too_long
