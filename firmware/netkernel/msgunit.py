# The I2O messaging unit: core 0's "USB pump" between the host link and the socket ISMs.
#
# netkernel.proto.i2o has the contract (link kinds, rules, layouts); this is the board's half:
# - Inbound, per IOP (= per net kernel): inbound_depth frame slots of frame_bytes, a state
#   byte per MFA (0 = free with the host, 1 = in use on the board), an SPSC post ring
#   (core 0 -> kernel k) and an SPSC return ring (kernel k -> core 0). A POST is checked
#   (iop, mfa range, MFA not in use, header) and copied into its slot, or answered with a
#   FAIL reply; returned MFAs go back to the host batched, one KIND_I2O_FREE per IOP per turn.
# - Outbound: the host's granted frames 0..M-1 are the outbound free queue, shared by every
#   IOP under one _thread lock (held for a few stores, never twice by one core). Each frame
#   has a staging buffer here: an ISM takes an MFA (take_out), writes its message at OUT_OFF
#   of out_bufs[mfa] and posts it (post_out, which writes its MessageSize); the pump sends
#   it as KIND_I2O_REPLY. The 3 bytes before OUT_OFF are the link envelope, so the frame is
#   encoded without a copy.
# - INIT resets: every ISM aborts its sockets on its own core at its next turn (ctl mailbox);
#   the pump waits across turns, then frees every inbound MFA, makes the new grant the
#   outbound free queue and answers. Nothing here blocks.
# - EXEC requests that need node-wide data (PARAMS_GET/SET) and ADAPTER_RESET are served
#   here on core 0, one at a time; the other EXEC functions go to the IOP's ISM.
import _thread
import os
import struct
from array import array

from micropython import const

from netkernel.proto import i2o
from netkernel.proto import linkframe as lf
from netkernel.rings import Mailbox, SpscRing, pow2_at_least
from netkernel.wire import copy

OUT_OFF = const(3)             # where a message starts in an outbound staging buffer
_IN_FREE = const(0)            # inbound MFA states
_IN_USE = const(1)
_OUT_HOST = const(0)           # outbound MFA states: with the host (or not granted)
_OUT_FREE = const(1)           # on the board's free queue
_OUT_BUSY = const(2)           # taken by an ISM (being written or posted)
_MIN_FRAME = const(64)         # smallest frame the board can work with (a FAIL reply fits)
_FAIL_SLOTS = const(8)         # FAIL replies waiting for an outbound frame
_FAIL_REC = const(24)          # reason(1) iop(1) mfa(2) nwords(1) pad(3) words(16)
_POST_BATCH = const(16)        # outbound frames the pump sends per turn
_EXEC_NONE = const(-1)
REQ_NONE = const(0)            # ctl mailboxes, core 0 -> ISM: what to do at its next turn
REQ_INIT = const(1)            # abort every socket and drop queued inbound messages
REQ_ABORT = const(2)           # abort every socket (ADAPTER_RESET)
_DEFAULT_CREDIT = const(16384)


class MsgUnit:
    def __init__(self, node, nkernels, frame_bytes=1024, inbound_depth=8, outbound_max=16):
        if not _MIN_FRAME <= frame_bytes <= i2o.MAX_FRAME_BYTES:
            raise ValueError("frame_bytes must be %d..%d" % (_MIN_FRAME, i2o.MAX_FRAME_BYTES))
        if frame_bytes & 3:
            raise ValueError("frame_bytes must be a multiple of 4 (whole words)")
        if not 1 <= inbound_depth <= 255:
            raise ValueError("inbound_depth must be 1..255")
        if not 1 <= outbound_max <= 255:
            raise ValueError("outbound_max must be 1..255")
        self.node = node
        self.link = None          # HostLink, set by the node
        self.niop = nkernels
        self.frame_max = frame_bytes
        self.fb = frame_bytes     # frame bytes in use (INIT may lower it to the host's size)
        self.depth = inbound_depth
        self.out_max = outbound_max
        self.credit = _DEFAULT_CREDIT   # per-connection host credit when a request says 0
        # Inbound, per IOP.
        self.in_bufs = [[bytearray(frame_bytes) for _ in range(inbound_depth)]
                        for _ in range(nkernels)]
        self.in_lens = [array("H", bytes(2 * inbound_depth)) for _ in range(nkernels)]
        self.in_state = [bytearray(inbound_depth) for _ in range(nkernels)]
        cap = pow2_at_least(inbound_depth)
        self.post = [SpscRing(cap) for _ in range(nkernels)]
        self.ret = [SpscRing(cap) for _ in range(nkernels)]
        self._free_n = bytearray(nkernels)                   # FREE batch being built, per IOP
        self._free_buf = [bytearray(3 + 2 * inbound_depth) for _ in range(nkernels)]
        # Requests to the ISMs (REQ_*), each carried out on the ISM's own core.
        self.ctl = [Mailbox() for _ in range(nkernels)]
        # Outbound.
        self.out_bufs = [bytearray(OUT_OFF + frame_bytes) for _ in range(outbound_max)]
        self.out_lens = array("H", bytes(2 * outbound_max))
        self.out_state = bytearray(outbound_max)
        self._ofree = array("H", bytes(2 * outbound_max))    # stack of free MFAs
        self.onfree = 0
        self.granted = 0          # M: outbound frames in use
        self.ready = 0            # 1 once INIT is done (ISMs may take frames)
        self.lock = _thread.allocate_lock()
        self.out_post = SpscRing(pow2_at_least(outbound_max))   # pushed under self.lock
        # Bring-up.
        self.epoch = os.urandom(4)
        self._ready_sent = False
        self._resetting = False
        self._init_grant = 0
        self._init_bytes = 0
        self._init_reply = bytearray(1 + struct.calcsize(i2o.INIT_REPLY_FMT))
        self._init_owed = 0       # an INIT_REPLY is due (status + 1)
        # FAIL replies waiting for a frame: a few records, then counted as lost.
        self._fails = bytearray(_FAIL_SLOTS * _FAIL_REC)
        self._fail_head = 0
        self._fail_n = 0
        # EXEC requests served on core 0 (iop << 8 | mfa), one at a time.
        self._exec = SpscRing(pow2_at_least(nkernels * inbound_depth))
        self._cur = _EXEC_NONE
        self._text = None         # PARAMS_SET: the reply text
        self._text_off = 0
        self._parts = None        # PARAMS_GET: the report's parts still to come (a generator)
        self._piece = None        # ... the part being sent, and how much of it went
        self._piece_off = 0
        self._sep = 0x20
        self._abort_wait = False  # ADAPTER_RESET: waiting for the ISMs
        self._status = 0
        # Counters (i2o.* in the node's stats).
        self.posts = 0
        self.fail_bad_mfa = 0
        self.fail_in_use = 0
        self.fail_bad_iop = 0
        self.fail_too_large = 0
        self.fail_bad_header = 0
        self.fail_not_ready = 0
        self.fails_lost = 0       # FAIL replies with no frame and no room to wait
        self.not_ready = 0        # POSTs before INIT with no frame to answer them
        self.replies = 0
        self.frees = 0
        self.flush_bad = 0
        self.out_waits = 0
        self.inits = 0
        self.init_refused = 0
        self.bad_request = 0      # malformed link bodies
        self.execs = 0

    # -- the ISMs' side (any core) -----------------------------------------------------------

    def take_out(self):
        """An outbound MFA to write a message into, or -1 (none free, or no INIT yet)."""
        lock = self.lock
        lock.acquire()
        n = self.onfree
        m = -1
        if n > 0 and self.ready:
            n -= 1
            self.onfree = n
            m = self._ofree[n]
            self.out_state[m] = _OUT_BUSY
        lock.release()
        return m

    def post_out(self, m, nbytes):
        """Send the message of nbytes at OUT_OFF of out_bufs[m] (the pump does it). It goes
        out as whole words, as its MessageSize says, written here (the writer need not): the
        pad bytes are zeroed."""
        b = self.out_bufs[m]
        while nbytes & 3:
            b[OUT_OFF + nbytes] = 0
            nbytes += 1
        b[OUT_OFF + 2] = (nbytes >> 2) & 0xFF
        b[OUT_OFF + 3] = nbytes >> 10
        self.out_lens[m] = nbytes
        lock = self.lock
        lock.acquire()
        self.out_post.push(m)     # cannot be full: it holds every outbound frame
        lock.release()

    def untake_out(self, m):
        """Give back an MFA taken but not used."""
        lock = self.lock
        lock.acquire()
        n = self.onfree
        self._ofree[n] = m
        self.onfree = n + 1
        self.out_state[m] = _OUT_FREE
        lock.release()

    def free_in(self, iop):
        """Inbound MFAs of an IOP the host holds (for EXEC_STATUS_GET)."""
        st = self.in_state[iop]
        n = 0
        for i in range(self.depth):
            if st[i] == _IN_FREE:
                n += 1
        return n

    # -- link frames from the host (core 0) --------------------------------------------------

    def on_post(self, buf, n):
        """KIND_I2O_POST: buf[0] kind, [1] iop, [2:4] mfa, message from 4. One test of
        everything a POST must pass; the refusals are told apart in _refuse_post (so this
        frame, on every POST, stays within 11 words: a larger one comes from the heap)."""
        if n < 4 + i2o.HEADER_BYTES or not self.ready:
            self._refuse_post(buf, n)
            return
        iop = buf[1]
        mfa = buf[2] | (buf[3] << 8)
        if (iop >= self.niop or mfa >= self.depth or self.in_state[iop][mfa] != _IN_FREE
                or n - 4 > self.fb or (buf[4] & 0x0F) != i2o.VERSION
                or not i2o.HEADER_BYTES <= (buf[6] | (buf[7] << 8)) * 4 <= n - 4):
            self._refuse_post(buf, n)
            return
        n = (buf[6] | (buf[7] << 8)) * 4      # from here: the message's size (MessageSize)
        copy(self.in_bufs[iop][mfa], 0, buf, 4, n)
        self.in_lens[iop][mfa] = n
        self.in_state[iop][mfa] = _IN_USE
        self.posts += 1
        if (buf[8] | ((buf[9] & 0x0F) << 8)) == i2o.TID_EXEC and (
                buf[11] == i2o.F_PARAMS_GET or buf[11] == i2o.F_PARAMS_SET
                or buf[11] == i2o.F_EXEC_ADAPTER_RESET):
            self._exec.push((iop << 8) | mfa)    # node-wide: served here on core 0
        else:
            self.post[iop].push(mfa)             # cannot be full: it holds every MFA

    def _refuse_post(self, buf, n):
        """A POST that failed on_post's test: counted and answered by what failed first."""
        if n < 4:
            self.bad_request += 1
            return
        iop = buf[1]
        mfa = buf[2] | (buf[3] << 8)
        size = n - 4
        if not self.ready:
            if self.granted == 0:
                self.not_ready += 1   # no INIT yet: no frame to answer in, nothing else to do
                return
            # Posted while an INIT is under way: answered once the new grant is in place
            # (every inbound MFA is free again after the reset anyway).
            self.fail_not_ready += 1
            self._fail(buf, 4, size, i2o.FAIL_NOT_READY, iop, mfa)
            return
        if iop >= self.niop:
            self.fail_bad_iop += 1
            self._fail(buf, 4, size, i2o.FAIL_BAD_IOP, iop, mfa)
            return
        if mfa >= self.depth:
            self.fail_bad_mfa += 1
            self._fail(buf, 4, size, i2o.FAIL_BAD_MFA, iop, mfa)
            return
        if self.in_state[iop][mfa] != _IN_FREE:
            self.fail_in_use += 1     # a duplicate: the MFA comes back once, for its first
            self._fail(buf, 4, size, i2o.FAIL_MFA_IN_USE, iop, mfa)
            return
        if size > self.fb:
            self.fail_too_large += 1
            self._refuse(buf, size, i2o.FAIL_FRAME_TOO_LARGE, iop, mfa)
            return
        # What is left: a bad header (short, version, or MessageSize).
        self.fail_bad_header += 1
        self._refuse(buf, size, i2o.FAIL_BAD_HEADER, iop, mfa)

    def _refuse(self, buf, size, reason, iop, mfa):
        # An in-range MFA that was free with the host comes straight back: none is lost.
        self.in_state[iop][mfa] = _IN_USE
        self._fail(buf, 4, size, reason, iop, mfa)
        self._return_in(iop, mfa)

    def _fail(self, buf, off, size, reason, iop, mfa):
        """Queue a FAIL reply: reason, preserved MFA, the first words of the frame."""
        if self._fail_n >= _FAIL_SLOTS:
            self.fails_lost += 1
            return
        i = (self._fail_head + self._fail_n) % _FAIL_SLOTS
        self._fail_n += 1
        r = self._fails
        o = i * _FAIL_REC
        r[o] = reason
        r[o + 1] = iop & 0xFF
        i2o.put16(r, o + 2, mfa & 0xFFFF)
        w = size >> 2
        if w > i2o.FAIL_COPY_WORDS:
            w = i2o.FAIL_COPY_WORDS
        r[o + 4] = w
        copy(r, o + 8, buf, off, w * 4)

    def _send_fails(self):
        r = self._fails
        while self._fail_n:
            m = self.take_out()
            if m < 0:
                self.out_waits += 1
                return
            o = self._fail_head * _FAIL_REC
            b = self.out_bufs[m]
            w = r[o + 4]
            nbytes = i2o.REPLY_BYTES + 4 + 4 * w
            i2o.put_header(b, OUT_OFF, i2o.FLAG_REPLY | i2o.FLAG_FAIL, i2o.words(nbytes),
                           i2o.TID_HOST, i2o.TID_EXEC, r[o + 8 + 7] if w >= 2 else 0)
            for j in range(8):        # the contexts of the refused frame (zeros if short)
                b[OUT_OFF + 8 + j] = r[o + 16 + j] if w == 4 else 0
            i2o.put_status(b, OUT_OFF, i2o.RS_ERROR_NO_DATA, r[o])
            p = OUT_OFF + i2o.REPLY_BYTES
            b[p] = r[o + 2]
            b[p + 1] = r[o + 3]
            b[p + 2] = r[o + 1]
            b[p + 3] = 0
            copy(b, p + 4, r, o + 8, 4 * w)
            self.post_out(m, nbytes)
            self._fail_head = (self._fail_head + 1) % _FAIL_SLOTS
            self._fail_n -= 1

    def on_flush(self, buf, n):
        """KIND_I2O_FLUSH: count(1) mfa(2)*count: frames back on the outbound free queue."""
        if n < 2 or n != buf[1] * 2 + 2:      # (this order: a shallower stack)
            self.bad_request += 1
            return
        lock = self.lock
        st = self.out_state
        i = 2                     # (while, not for-range: that keeps two words on the stack)
        while i < n:
            m = buf[i] | (buf[i + 1] << 8)
            lock.acquire()
            if m < self.granted and st[m] == _OUT_HOST:
                st[m] = _OUT_FREE
                self._ofree[self.onfree] = m
                self.onfree += 1
            else:
                self.flush_bad += 1   # unknown or already free: ignored
            lock.release()
            i += 2

    def on_init(self, buf, n):
        """KIND_I2O_INIT: check, then reset across turns (pump) and answer."""
        if n != 1 + struct.calcsize(i2o.INIT_FMT):
            self.bad_request += 1
            return
        version, grant, fbytes, credit = struct.unpack_from(i2o.INIT_FMT, buf, 1)
        if version != i2o.PROTOCOL_VERSION:
            self.init_refused += 1
            self._init_owed = i2o.INIT_BAD_VERSION + 1   # changes nothing
            return
        if grant == 0 or fbytes < _MIN_FRAME:
            self.init_refused += 1
            self._init_owed = i2o.INIT_BAD_GRANT + 1
            return
        self._init_grant = grant if grant < self.out_max else self.out_max
        # Whole words: messages go out padded to them (post_out).
        self._init_bytes = (fbytes if fbytes < self.frame_max else self.frame_max) & ~3
        self.credit = credit if credit else _DEFAULT_CREDIT
        self.ready = 0            # no ISM takes a frame until the reset is done
        self._resetting = True
        for k in range(self.niop):
            self.ctl[k].post(REQ_INIT)

    # -- the pump (core 0, once per turn of Node) --------------------------------------------

    def pump(self):
        if self.idle() and self.link.idle():
            return                    # (a frame partly written goes on in _send_posted)
        link = self.link
        if not self._ready_sent:
            r = self._init_reply
            r[0] = lf.KIND_I2O_READY
            for i in range(4):
                r[1 + i] = self.epoch[i]
            if not link.send_keep(r, 5):
                return
            self._ready_sent = True
        if self._resetting:
            self._finish_reset()
        if self._init_owed and not self._resetting:
            if not self._send_init_reply():
                return
        self._collect_returns()
        if not self._send_frees():
            return
        if self._fail_n:
            self._send_fails()
        if self._cur != _EXEC_NONE or self._exec.depth():
            self._serve_exec()
        self._send_posted()

    def idle(self):
        """True when nothing is owed to the host or waits for core 0: no reply, FREE,
        FAIL or bring-up step, no EXEC request, no frame an ISM gave back. (Ring depths
        read from their indices: this runs on every turn of core 0.)"""
        if (not self._ready_sent or self._resetting or self._init_owed or self._fail_n
                or self._cur != _EXEC_NONE):
            return False
        idx = self._exec.idx
        if idx[0] != idx[1]:
            return False
        idx = self.out_post.idx
        if idx[0] != idx[1]:
            return False
        return self._iops_idle()

    def _iops_idle(self):
        free_n = self._free_n
        rets = self.ret
        k = len(rets) - 1
        while k >= 0:
            idx = rets[k].idx
            if free_n[k] or idx[0] != idx[1]:
                return False
            k -= 1
        return True

    def _collect_returns(self):
        for k in range(self.niop):
            ret = self.ret[k]
            while True:
                m = ret.pop()
                if m < 0:
                    break
                self._return_in(k, m)

    def _return_in(self, k, m):
        fb = self._free_buf[k]
        c = self._free_n[k]
        i2o.put16(fb, 3 + 2 * c, m)
        self._free_n[k] = c + 1

    def _send_frees(self):
        # (while loops, not for-range: those keep two words each on the stack, which would
        # put this frame over 11 words)
        k = 0
        while k < self.niop:
            c = self._free_n[k]
            if c:
                fb = self._free_buf[k]
                fb[0] = lf.KIND_I2O_FREE
                fb[1] = k
                fb[2] = c
                if not self.link.send_keep(fb, 2 * c + 3):
                    self.out_waits += 1
                    return False
                st = self.in_state[k]
                i = 2 * c + 3             # free with the host once the FREE is on its way
                while i > 3:
                    i -= 2
                    st[fb[i]] = _IN_FREE  # (its low byte: an inbound MFA is below depth <= 255)
                self._free_n[k] = 0
                self.frees += 1
            k += 1
        return True

    def _send_posted(self):
        link = self.link
        post = self.out_post
        done = 0
        while done < _POST_BATCH:
            if link.busy():
                self.out_waits += 1      # the host is not reading: resume next turn
                return
            m = post.pop()
            if m < 0:
                return
            b = self.out_bufs[m]
            b[0] = lf.KIND_I2O_REPLY
            b[1] = m & 0xFF
            b[2] = m >> 8
            self.out_state[m] = _OUT_HOST
            link.send_keep(b, self.out_lens[m] + OUT_OFF)   # (this order: a shallower stack)
            self.replies += 1
            done += 1

    def _finish_reset(self):
        for k in range(self.niop):
            if self.ctl[k].pending():
                return                # that ISM has not had its turn yet
        self._fail_n = 0              # FAIL replies owed to the old host are void too
        self._fail_head = 0
        lock = self.lock
        lock.acquire()
        self.out_post.discard()       # pending outbound messages are void
        m = self._init_grant
        self.granted = m
        self.fb = self._init_bytes
        st = self.out_state
        for i in range(self.out_max):
            st[i] = _OUT_HOST
        for i in range(m):
            self._ofree[i] = m - 1 - i    # taken from the end: frame 0 first
            st[i] = _OUT_FREE
        self.onfree = m
        lock.release()
        for k in range(self.niop):
            self.post[k].discard()
            self.ret[k].discard()
            self._free_n[k] = 0
            st = self.in_state[k]
            for i in range(self.depth):
                st[i] = _IN_FREE
        self._exec.discard()
        self._cur = _EXEC_NONE
        self._text = None
        self._parts = None
        self._abort_wait = False
        self._resetting = False
        self._init_owed = i2o.INIT_OK + 1
        self.ready = 1
        self.inits += 1

    def _send_init_reply(self):
        r = self._init_reply
        r[0] = lf.KIND_I2O_INIT_REPLY
        status = self._init_owed - 1
        struct.pack_into("<BBHBBHHH", r, 1, status, i2o.PROTOCOL_VERSION, i2o.VERSION,
                         self.niop, 16, self.depth, self.fb, self.granted)
        for i in range(4):
            r[len(r) - 4 + i] = self.epoch[i]
        if not self.link.send_keep(r, len(r)):
            self.out_waits += 1
            return False
        self._init_owed = 0
        return True

    # -- EXEC requests served on core 0 ------------------------------------------------------

    def _serve_exec(self):
        if self._cur == _EXEC_NONE:
            self._cur = self._exec.pop()
            self._text = None
            self._abort_wait = False
        cur = self._cur
        iop = cur >> 8
        mfa = cur & 0xFF
        req = self.in_bufs[iop][mfa]
        fn = i2o.function(req, 0)
        if fn == i2o.F_PARAMS_GET:
            if self._parts is None:
                self._start_report(req)
            if not self._send_report(req, iop):
                return
        elif fn == i2o.F_PARAMS_SET:
            if self._text is None:
                n = i2o.size_words(req, 0) * 4 - i2o.PAYLOAD
                try:
                    text = bytes(req[i2o.PAYLOAD:i2o.PAYLOAD + n]).rstrip(b"\x00").decode()
                    status, msg = self.node.configure(text)
                except UnicodeError:
                    status, msg = 22, "settings must be ASCII"
                self._text = msg.encode()
                self._text_off = 0
                self._status = status
            m = self.take_out()
            if m < 0:
                self.out_waits += 1
                return
            t = self._text
            k = len(t)
            room = self.fb - i2o.REPLY_BYTES
            if k > room:
                k = room
            ok = self._status == 0
            self._reply(m, req, iop, i2o.FLAG_REPLY,
                        i2o.RS_SUCCESS if ok else i2o.RS_ERROR_NO_DATA,
                        0 if ok else i2o.DS_ERRNO + self._status, t, 0, k)
        else:   # ADAPTER_RESET: every ISM aborts all its sockets, then the reply
            if not self._abort_wait:
                for k in range(self.niop):
                    if not self.ctl[k].pending():
                        self.ctl[k].post(REQ_ABORT)
                self._abort_wait = True
            for k in range(self.niop):
                if self.ctl[k].pending():
                    return
            m = self.take_out()
            if m < 0:
                self.out_waits += 1
                return
            self._reply(m, req, iop, i2o.FLAG_REPLY, i2o.RS_SUCCESS, 0, None, 0, 0)
        self.execs += 1
        self._text = None
        self._cur = _EXEC_NONE
        self._return_in(iop, mfa)     # core 0's own return: the ring is the kernel's

    def _start_report(self, req):
        """PARAMS_GET's payload names the group: empty or "stats" (the counters, parts
        separated by spaces) or "flows" (the flow table, a line per flow)."""
        n = i2o.size_words(req, 0) * 4 - i2o.PAYLOAD
        group = bytes(req[i2o.PAYLOAD:i2o.PAYLOAD + n]).rstrip(b"\x00")
        if group == b"flows":
            self._parts = iter(self.node.cores.reader.flow_lines())
            self._sep = 0x0A
        else:
            self._parts = self.node.stats_parts()
            self._sep = 0x20
        self._piece = None
        self._piece_off = 0

    def _send_report(self, req, iop):
        """PARAMS_GET: the report in as many frames as it needs (MULTIPLE ..., LAST), built
        part by part as frames fill: the whole text of two kernels' counters would need
        one large block, which a busy board's fragmented heap may not have."""
        room = self.fb - i2o.REPLY_BYTES
        while True:
            m = self.take_out()
            if m < 0:
                self.out_waits += 1
                return False
            b = self.out_bufs[m]
            p = OUT_OFF + i2o.REPLY_BYTES
            n = 0
            last = False
            while n < room:
                piece = self._piece
                if piece is None:
                    try:
                        piece = next(self._parts).encode()
                    except StopIteration:
                        last = True
                        break
                    self._piece = piece
                    self._piece_off = 0
                o = self._piece_off
                k = len(piece) - o
                if k > room - n:
                    k = room - n
                copy(b, p + n, piece, o, k)
                n += k
                o += k
                self._piece_off = o
                if o == len(piece) and n < room:
                    b[p + n] = self._sep
                    n += 1
                    self._piece = None
            flags = i2o.FLAG_REPLY | (i2o.FLAG_LAST if last else i2o.FLAG_MULTIPLE)
            self._reply(m, req, iop, flags, i2o.RS_SUCCESS, 0, None, 0, n)
            if last:
                self._parts = None
                return True

    def _reply(self, m, req, iop, flags, rs, detail, data, off, n):
        b = self.out_bufs[m]
        i2o.put_header(b, OUT_OFF, flags, i2o.words(i2o.REPLY_BYTES + n),
                       i2o.initiator(req, 0), i2o.TID_EXEC, i2o.function(req, 0))
        i2o.copy_contexts(b, OUT_OFF, req, 0)
        i2o.put_status(b, OUT_OFF, rs, detail)
        if data is not None:       # else the caller has written the payload already
            p = OUT_OFF + i2o.REPLY_BYTES
            copy(b, p, data, off, n)
        self.post_out(m, i2o.REPLY_BYTES + n)

    def counters(self):
        """(name, value) pairs, reported as i2o.<name>."""
        return [("posts", self.posts), ("fail_bad_mfa", self.fail_bad_mfa),
                ("fail_mfa_in_use", self.fail_in_use), ("fail_bad_iop", self.fail_bad_iop),
                ("fail_too_large", self.fail_too_large),
                ("fail_bad_header", self.fail_bad_header),
                ("fail_not_ready", self.fail_not_ready), ("fails_lost", self.fails_lost),
                ("not_ready", self.not_ready), ("replies", self.replies),
                ("frees", self.frees), ("flush_bad", self.flush_bad),
                ("out_waits", self.out_waits), ("inits", self.inits),
                ("init_refused", self.init_refused), ("bad_request", self.bad_request),
                ("execs", self.execs), ("out_free", self.onfree),
                ("out_granted", self.granted)]
