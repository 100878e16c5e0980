# The host link: the USB CDC byte stream, framed by netkernel.proto.linkframe.
#
# Only core 0 touches USB (on rp2 only core 0 runs the USB task), so this is polled from
# core 0's loop. Garbage, cut frames and unknown kinds are counted and dropped; the framing
# resynchronises at the next delimiter. The I2O messaging unit uses the KIND_I2O_* kinds; besides
# then the link carries diagnostics: echo, raw frame transmit, counters, the TCP test client.
import struct
from time import ticks_ms

from micropython import const

from netkernel.proto import linkframe as lf
from netkernel.wire import copy

_RX_CHUNK = const(512)
_WRITE_TRIES = const(64)   # a host that does not read must never stall the board
_TEXT_PAGES_PER_TURN = const(4)


class HostLink:
    def __init__(self, stream, node):
        """``stream``: non-blocking readinto/write. ``node`` answers the diagnostics:
        wire_tx(buf, n), stats_text() (parts), flows_text() (lines),
        configure(text) -> (status, text), start_tcp_test(ip, port, nbytes, on_done)."""
        self._stream = stream
        # The stream's cheap "bytes waiting?" where it has one (rp2's CDC: a read of an
        # empty CDC costs a memoryview and a dozen calls, on every turn of core 0).
        self._any = getattr(stream, "any", None)
        self._node = node
        self._rx = bytearray(_RX_CHUNK)
        self._reply = bytearray(lf.MAX_PAYLOAD)
        self._out = bytearray(lf.encoded_size(lf.MAX_PAYLOAD))
        self._out_view = memoryview(self._out)
        # KIND_WIRE_TX frames are copied into a buffer the node lends (it has views made)
        # once its kernels exist: the link is made before them.
        self.wire_frame = None
        self.deframer = lf.Deframer(self._on_frame)
        self.unknown_kind = 0
        self.bad_request = 0
        self.tx_frames = 0
        self.tx_dropped = 0
        self.wire_tx_frames = 0
        self.msgunit = None       # the I2O messaging unit (KIND_I2O_*), set by the node
        self._pend = 0            # a frame in _out not fully written yet: its length...
        self._pend_done = 0       # ...and how much of it the host has taken
        self.tx_resumed = 0       # turns that went on with a partly written frame
        self._page = bytearray(lf.MAX_PAYLOAD)   # the text reply going out: its page,
        self._text = None         # its parts still to come,
        self._part = b""          # the part being paged
        self._part_i = 0          # and how much of it (len + 1: its separator too) is out
        self._sep = 0x20          # what follows each part: a space, or a newline (lines)
        self.replies_cut = 0      # text replies replaced by a newer request before the end
        self.rx_at = ticks_ms()   # when the host last sent bytes

    def poll(self):
        """Read what the host sent (one chunk) and act on every complete frame in it; send
        more of a text reply in progress."""
        any_ = self._any
        n = self._stream.readinto(self._rx) if any_ is None or any_() else 0
        if n:
            self.rx_at = ticks_ms()
            self.deframer.feed(self._rx, n)
        if self._text is not None:
            self.pump_text()
        return n

    def _on_frame(self, buf, n):
        # The I2O kinds first; the others in methods of their own, so that this frame, on
        # every host message, stays within 11 words (a larger one comes from the heap).
        kind = buf[0]
        mu = self.msgunit
        if kind == lf.KIND_I2O_POST and mu is not None:
            mu.on_post(buf, n)
        elif kind == lf.KIND_I2O_FLUSH and mu is not None:
            mu.on_flush(buf, n)
        elif kind == lf.KIND_I2O_INIT and mu is not None:
            mu.on_init(buf, n)
        elif kind == lf.KIND_ECHO_REQUEST:
            self._echo(buf, n)
        elif kind == lf.KIND_WIRE_TX:
            self._wire_tx(buf, n)
        elif kind == lf.KIND_STATS_REQUEST:
            self.send_text(lf.KIND_STATS_REPLY, self._node.stats_text())
        elif kind == lf.KIND_FLOWS_REQUEST:
            self.send_text(lf.KIND_FLOWS_REPLY, self._node.flows_text(), 0x0A)
        elif kind == lf.KIND_CONFIG:
            self._configure(buf, n)
        elif kind == lf.KIND_TCP_TEST and n == 11:
            self._tcp_test(buf)
        elif kind == lf.KIND_TCP_TEST:
            self.bad_request += 1
        else:
            self.unknown_kind += 1

    def _echo(self, buf, n):
        r = self._reply
        r[0] = lf.KIND_ECHO_REPLY
        copy(r, 1, buf, 1, n - 1)
        self.send(r, n)

    def _wire_tx(self, buf, n):
        length = n - 1
        if length < 14 or length > 1514:
            self.bad_request += 1
            return
        f = self.wire_frame
        copy(f, 0, buf, 1, length)
        self._node.wire_tx(f, length)
        self.wire_tx_frames += 1

    def _configure(self, buf, n):
        try:
            text = bytes(buf[1:n]).decode()
        except UnicodeError:
            self.bad_request += 1
            self._config_reply(22, "settings must be ASCII")
            return
        status, msg = self._node.configure(text)
        self._config_reply(status, msg)

    def _tcp_test(self, buf):
        ip = bytes(buf[1:5])
        port, nbytes = struct.unpack_from(">HI", buf, 5)
        if not self._node.start_tcp_test(ip, port, nbytes, self._tcp_test_done):
            self._tcp_test_done(95, 0, 0, 0)      # EOPNOTSUPP: no services running

    def _config_reply(self, status, msg):
        r = self._reply
        r[0] = lf.KIND_CONFIG_REPLY
        r[1] = status & 0xFF
        data = msg.encode()[:lf.MAX_PAYLOAD - 2]
        r[2:2 + len(data)] = data
        self.send(r, 2 + len(data))

    def _tcp_test_done(self, status, sent, verified, ms):
        r = self._reply
        r[0] = lf.KIND_TCP_TEST_REPLY
        struct.pack_into(">BIII", r, 1, status, sent, verified, ms)
        self.send(r, 14)

    def send_text(self, kind, parts, sep=0x20):
        """Send text (a str, or parts joined by ``sep``, a space or a newline, e.g. from a
        generator) as frames of kind + more-flag + a piece. The pages go out over the next
        turns as the host takes them (pump_text()), so a long report never stalls core 0
        and no page of it is dropped; parts are packed as they come, so the report never
        needs one big string (on a board whose heap is nearly full that allocation is what
        fails). A new text reply replaces one still going out (counted in replies_cut); the
        page being written is finished first, so the host never sees a torn frame."""
        if self._text is not None:
            self.replies_cut += 1
        self._text = iter((parts,) if isinstance(parts, str) else parts)
        self._sep = sep
        self._page[0] = kind
        self._part = b""
        self._part_i = 1          # past the end: the next part is fetched first
        self.pump_text()

    def pump_text(self):
        """Send more pages of the text reply in progress, as many as the host takes now
        (at most _TEXT_PAGES_PER_TURN)."""
        for _ in range(_TEXT_PAGES_PER_TURN):
            if self._text is None or self.busy():
                return
            n, last = self._fill_page()
            if last:
                self._text = None
            self.send_keep(self._page, n)

    def _fill_page(self):
        """The next page of the text reply: (length, is the last page)."""
        r = self._page
        cap = lf.MAX_PAYLOAD
        n = 2
        last = False
        while True:
            data = self._part
            i = self._part_i
            if i > len(data):                 # this part and its separator are out
                try:
                    data = next(self._text).encode()
                except StopIteration:
                    last = True
                    break
                except Exception:
                    self._text = None         # a broken report ends here; core 0's loop
                    raise                     # counts the error and goes on
                self._part = data
                self._part_i = i = 0
            if n == cap:
                break                         # full, and more follows
            if i == len(data):
                r[n] = self._sep              # the separator after each part
                n += 1
                i += 1
            else:
                k = min(len(data) - i, cap - n)
                copy(r, n, data, i, k)        # a slice would allocate up to a page
                n += k
                i += k
            self._part_i = i
        r[1] = 0 if last else 1
        return n, last

    def idle(self):
        """True when no frame is partly written and no text reply is being paged."""
        return self._pend == 0 and self._text is None

    def busy(self):
        """Write more of a partly written frame; True while some of it is still left."""
        total = self._pend
        if total == 0:
            return False
        done = self._pend_done
        done += self._stream.write(self._out_view[done:total]) or 0
        if done < total:
            self._pend_done = done
            return True
        self._pend = 0
        self.tx_frames += 1
        return False

    def send_keep(self, payload, n):
        """Frame payload[:n] and write what the host takes now; the rest goes out on later
        turns (busy()), never dropped: for I2O frames, which must not be lost. False (nothing
        done) while an earlier frame is still being written."""
        if self.busy():
            return False
        total = lf.encode_into(payload, n, self._out)
        done = self._stream.write(self._out_view[:total]) or 0
        if done < total:
            self._pend = total
            self._pend_done = done
            self.tx_resumed += 1
        else:
            self.tx_frames += 1
        return True

    def send(self, payload, n):
        """Frame payload[:n] and write it; if the host stops reading, drop and count."""
        for _ in range(_WRITE_TRIES):
            if not self.busy():
                break
        if self._pend:
            self.tx_dropped += 1      # an I2O frame is still going out: it comes first
            return
        n = lf.encode_into(payload, n, self._out)    # n: the frame's length from here
        done = 0
        for _ in range(_WRITE_TRIES):
            if done == n:
                break
            # (done added last: a shallower stack keeps this frame within 11 words)
            done = (self._stream.write(self._out_view[done:n]) or 0) + done
        if done == n:
            self.tx_frames += 1
        else:
            self.tx_dropped += 1
            # A partial frame is ended by the next frame's leading delimiter on the host.
