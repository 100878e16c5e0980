# WIZnet W5500 driver: socket 0 in MACRAW mode, whole 16 KB RX and TX memory, MAC filter on.
#
# It moves whole Ethernet frames between the chip and caller-owned buffers and knows no
# protocol. Facts it relies on (shared/reference/w5500.md): a 3-byte SPI header (offset,
# BSB<<3 | RWB<<2 | OM), free-running 16-bit buffer pointers that the chip maps modulo the
# buffer size, 16-bit counters that must be read until two reads agree, and a 2-byte
# receive length that counts itself.
#
# SPI transactions per frame are kept few, since the bus is shared by both cores: the driver
# is the only writer of Sn_RX_RD and Sn_TX_WR, so it keeps them instead of reading them;
# a counter read (twice, to be stable) is a lower bound until it is spent, so RSR and FSR
# are read again only when what is known runs out; the 2-byte length of the next received
# frame comes with the data of this one; received frames are released to the chip (RX_RD,
# RECV) a few at a time, not one by one; and a command is not waited for after it is
# written, only before anything that depends on it (the next command, an RSR read, or a
# TX_WR write while a SEND may still be reading TX_WR). Whether the previous SEND is done
# is one read of Sn_TX_RD, which the chip moves up to TX_WR when the frame has gone, instead
# of reading and clearing SENDOK. Receive: 1 transaction per frame in a burst plus 3 per
# release (was 4 per frame); transmit: 4 per frame (was 6).
#
# Nothing here allocates per frame: SPI headers and register values go through preallocated
# buffers, and frames are read straight into the caller's buffer. machine.SPI transfers whole
# buffers and slicing a memoryview allocates, so each frame buffer gets, once, a set of views
# of its first 128, 256, ... bytes; a transfer uses the smallest view that covers the frame.
# Reading a little past a frame is harmless (it moves no chip pointer); writing past one is
# covered by the free-space check and is never sent, because TX_WR ends at the frame.
import time

from micropython import const

from netkernel_native import fill


# Control byte pieces (w5500.md §1).
_BSB_COMMON = const(0x00)
_BSB_S0_REG = const(0x08)   # socket 0 registers: BSB 1 << 3
_BSB_S0_TX = const(0x10)    # socket 0 TX buffer: BSB 2 << 3
_BSB_S0_RX = const(0x18)    # socket 0 RX buffer: BSB 3 << 3
_WRITE = const(0x04)

# Common registers.
_MR = const(0x00)
_SHAR = const(0x09)
_IR = const(0x15)
_IMR = const(0x16)
_SIR = const(0x17)
_SIMR = const(0x18)
_PHYCFGR = const(0x2E)
_VERSIONR = const(0x39)

# Socket registers.
_SN_MR = const(0x00)
_SN_CR = const(0x01)
_SN_IR = const(0x02)
_SN_SR = const(0x03)
_SN_RXBUF_SIZE = const(0x1E)
_SN_TXBUF_SIZE = const(0x1F)
_SN_TX_FSR = const(0x20)
_SN_TX_RD = const(0x22)
_SN_TX_WR = const(0x24)
_SN_RX_RSR = const(0x26)
_SN_RX_RD = const(0x28)
_SN_IMR = const(0x2C)

_MR_RST = const(0x80)
_SN_MR_MACRAW_FILTERED = const(0x94)  # MFEN 0x80 | MIP6B 0x10 (no IPv6 here) | MACRAW 0x04
_CR_OPEN = const(0x01)
_CR_CLOSE = const(0x10)
_CR_SEND = const(0x20)
_CR_RECV = const(0x40)
_IR_RECV = const(0x04)
_SR_CLOSED = const(0x00)
_SR_MACRAW = const(0x42)
_PHY_LINK = const(0x01)
_VERSION = const(0x04)

_BUF_KB = const(16)
_BUF_SIZE = const(16384)
_MAX_FRAME = const(1514)   # MACRAW MSS: the chip neither receives nor sends longer frames
_MIN_FRAME = const(14)     # an Ethernet header
_MIN_TX = const(60)        # pad to the Ethernet minimum; whether the chip pads is unverified
_CMD_POLLS = const(1000)   # bound on waiting for Sn_CR to clear / SR to change
_SENT_POLLS = const(2000)     # bound on waiting for the previous frame to go
_VIEW_STEP = const(128)    # granularity of the per-buffer transfer views
RX_RELEASE_BYTES = const(4096)   # received bytes held from the chip before RX_RD + RECV
_COUNTER_MASK = const(0x3FFFFFFF)  # byte counters wrap as small ints (RP2040: < 2**30)
FRAME_BUFFER_SIZE = const(1536)  # smallest frame buffer: 1514 rounded up to _VIEW_STEP


class W5500Error(OSError):
    pass


def _make_views(buf):
    # Kept out of W5500.views(): a comprehension there would capture buf in a closure cell,
    # which MicroPython allocates on every call, cached or not.
    if len(buf) < FRAME_BUFFER_SIZE:
        raise ValueError("frame buffers need %d bytes" % FRAME_BUFFER_SIZE)
    whole = memoryview(buf)
    return tuple(whole[:min(end, len(buf))]
                 for end in range(_VIEW_STEP, len(buf) + _VIEW_STEP, _VIEW_STEP))


class W5500:
    """Socket 0 of a W5500 in MACRAW mode.

    ``spi`` is a ``machine.SPI``-like object (write, readinto), ``cs`` the chip-select pin
    (driven low for each SPI frame), ``rst`` the optional RSTn pin. Counters are public
    attributes so the kernel can report them.
    """

    def __init__(self, spi, cs, rst=None):
        self._spi = spi
        self._cs = cs
        self._rst = rst
        self._hdr = bytearray(3)
        self._reg = bytearray(2)
        regv = memoryview(self._reg)
        self._r1 = regv[0:1]
        self._r2 = regv[0:2]
        self._views = {}          # id(frame buffer) -> its transfer views
        self._send_pending = False  # a SEND whose frame may not have gone yet
        self._sent_wr = 0         # TX_WR of that SEND: TX_RD reaches it when the frame is out
        self._cr_pending = False  # a command written and not yet seen accepted
        self._cr_send = False     # ... and it was SEND (a finished frame proves acceptance)
        self._rx_rd = 0           # Sn_RX_RD: we alone write it (read back at each open)
        self._rx_known = 0        # bytes surely waiting from _rx_rd (RSR less what we took)
        self._rx_held = 0         # bytes read but not yet released to the chip (RX_RD, RECV)
        self._rx_next = -1        # length header of the frame at _rx_rd, if already read
        self._tx_wr = 0           # Sn_TX_WR: we alone write it
        self._tx_free = 0         # bytes surely free in TX memory (FSR less what we wrote)
        self.rx_frames = 0
        self.rx_bytes = 0
        self.tx_frames = 0
        self.tx_bytes = 0
        self.tx_no_room = 0       # frames refused because TX memory stayed full
        self.tx_timeouts = 0      # the previous frame never went (TX_RD stayed short of it)
        self.unsettled_reads = 0  # RSR/FSR changed between every two reads (a flood)
        self.rx_bad_length = 0    # desynchronised RX buffer: socket reopened
        self.reopens = 0
        cs(1)

    # -- SPI access ------------------------------------------------------------------------

    def _begin(self, addr, ctrl):
        h = self._hdr
        h[0] = addr >> 8
        h[1] = addr & 0xFF
        h[2] = ctrl
        self._cs(0)
        self._spi.write(h)

    def _read_into(self, addr, bsb, buf):
        self._begin(addr, bsb)
        self._spi.readinto(buf)
        self._cs(1)

    def _write_from(self, addr, bsb, buf):
        self._begin(addr, bsb | _WRITE)
        self._spi.write(buf)
        self._cs(1)

    def _read8(self, addr, bsb):
        self._read_into(addr, bsb, self._r1)
        return self._reg[0]

    def _write8(self, addr, bsb, value):
        self._reg[0] = value
        self._write_from(addr, bsb, self._r1)

    def _read16(self, addr, bsb):
        self._read_into(addr, bsb, self._r2)
        return (self._reg[0] << 8) | self._reg[1]

    def _write16(self, addr, bsb, value):
        self._reg[0] = (value >> 8) & 0xFF
        self._reg[1] = value & 0xFF
        self._write_from(addr, bsb, self._r2)

    def views(self, buf):
        """The transfer views of a frame buffer, made the first time the buffer is seen.

        Pools allocate their buffers at boot and call this then, so the per-frame path never
        allocates. ``views[k]`` covers the first (k + 1) * 128 bytes (the last: all of it).
        """
        v = self._views.get(id(buf))
        if v is None:
            v = self._views[id(buf)] = _make_views(buf)
        return v

    def _read16_stable(self, addr):
        # The chip updates these counters while we read them: take a value only when two
        # consecutive reads agree (datasheet p54-55). RX_RSR and TX_FSR only grow while
        # the chip works on its own (our RECV and SEND shrink them), so a reading, torn or
        # not, is never above the true value: under a flood that changes RSR between every
        # two reads, the smaller of the last two is a safe amount to go on with.
        prev = last = self._read16(addr, _BSB_S0_REG)
        for _ in range(16):
            v = self._read16(addr, _BSB_S0_REG)
            if v == last:
                return v
            prev = last
            last = v
        self.unsettled_reads += 1
        return prev if prev < last else last

    def _settle(self):
        # Wait until the chip has taken the last command (it clears Sn_CR when it has).
        for _ in range(_CMD_POLLS):
            if self._read8(_SN_CR, _BSB_S0_REG) == 0:
                self._cr_pending = False
                return
        raise W5500Error("W5500: command not accepted (Sn_CR stays set)")

    def _issue(self, cmd):
        """Write a command without waiting for it: whatever depends on it waits instead."""
        if self._cr_pending:
            self._settle()
        self._write8(_SN_CR, _BSB_S0_REG, cmd)
        self._cr_pending = True
        self._cr_send = cmd == _CR_SEND

    def _command(self, cmd):
        """A command waited for (bring-up and close: not per frame)."""
        self._issue(cmd)
        self._settle()

    def _wait_status(self, want):
        for _ in range(_CMD_POLLS):
            if self._read8(_SN_SR, _BSB_S0_REG) == want:
                return True
        return False

    # -- bring-up --------------------------------------------------------------------------

    def reset(self):
        """Hardware reset (if RSTn is wired), then software reset."""
        if self._rst is not None:
            self._rst(0)
            time.sleep_ms(1)
            self._rst(1)
            time.sleep_ms(160)  # MicroPython's own driver waits this long after RSTn
        self._write8(_MR, _BSB_COMMON, _MR_RST)
        for _ in range(_CMD_POLLS):
            if not self._read8(_MR, _BSB_COMMON) & _MR_RST:
                return
        raise W5500Error("W5500: software reset did not complete")

    def present(self):
        return self._read8(_VERSIONR, _BSB_COMMON) == _VERSION

    def set_mac(self, mac):
        """A new source MAC address (SHAR; the MAC filter of socket 0 follows it)."""
        self._write_from(_SHAR, _BSB_COMMON, mac)

    def init(self, mac):
        """Reset the chip, check it is there, set the MAC and open socket 0 in MACRAW mode."""
        self.reset()
        if not self.present():
            raise W5500Error(
                "W5500 not found: VERSIONR is 0x%02x, expected 0x04 (check SPI wiring and CS)"
                % self._read8(_VERSIONR, _BSB_COMMON))
        self._write_from(_SHAR, _BSB_COMMON, mac)
        # Whole 16 KB to socket 0; sockets 1..7 get nothing (sizes must sum to <= 16).
        for n in range(1, 8):
            bsb = (4 * n + 1) << 3
            self._write8(_SN_RXBUF_SIZE, bsb, 0)
            self._write8(_SN_TXBUF_SIZE, bsb, 0)
        self._write8(_SN_RXBUF_SIZE, _BSB_S0_REG, _BUF_KB)
        self._write8(_SN_TXBUF_SIZE, _BSB_S0_REG, _BUF_KB)
        # INTn follows socket 0's RECV only (SENDOK is never used: TX_RD says a frame went).
        self._write8(_IMR, _BSB_COMMON, 0)
        self._write8(_SN_IMR, _BSB_S0_REG, _IR_RECV)
        self._write8(_SIMR, _BSB_COMMON, 0x01)
        self._open()

    def _open(self):
        self._rx_known = 0        # nothing known until the socket is open again
        self._rx_next = -1
        self._rx_held = 0         # OPEN empties the buffer: nothing is left to release
        self._tx_free = 0
        self._command(_CR_CLOSE)
        self._wait_status(_SR_CLOSED)
        self._write8(_SN_MR, _BSB_S0_REG, _SN_MR_MACRAW_FILTERED)
        self._write8(_SN_IR, _BSB_S0_REG, 0xFF)
        self._command(_CR_OPEN)
        if not self._wait_status(_SR_MACRAW):
            raise W5500Error("W5500: socket 0 did not enter MACRAW (SR=0x%02x)"
                             % self._read8(_SN_SR, _BSB_S0_REG))
        self._send_pending = False
        self._rx_rd = self._read16(_SN_RX_RD, _BSB_S0_REG)
        self._rx_known = 0
        self._rx_next = -1
        self._tx_wr = self._read16(_SN_TX_WR, _BSB_S0_REG)
        self._tx_free = 0

    def reopen(self):
        """Close and reopen socket 0: the recovery for a desynchronised RX buffer."""
        self.reopens += 1
        self._open()

    def close(self):
        self._command(_CR_CLOSE)
        self._write8(_SIMR, _BSB_COMMON, 0)

    # -- status ----------------------------------------------------------------------------

    def link_up(self):
        return bool(self._read8(_PHYCFGR, _BSB_COMMON) & _PHY_LINK)

    def rx_waiting(self):
        """Bytes waiting in RX memory (several frames with their length headers)."""
        return self._read16_stable(_SN_RX_RSR)

    def clear_interrupt(self):
        """Acknowledge socket 0's RECV so INTn can fall again on the next frame."""
        self._write8(_SN_IR, _BSB_S0_REG, _IR_RECV)

    def interrupt_pending(self):
        return bool(self._read8(_SIR, _BSB_COMMON) & 0x01)

    # -- receive ---------------------------------------------------------------------------

    def recv_into(self, buf):
        """Read the next frame into ``buf`` (a bytearray of >= FRAME_BUFFER_SIZE bytes).

        Returns the frame length, or 0 when no frame is waiting. A length header that cannot
        be right (< 14, > 1514, or beyond what is buffered) means the buffer is out of step:
        the socket is reopened, the event counted, and 0 returned.
        """
        known = self._rx_known
        if known < 2:
            # RSR counts from the chip's RX_RD: give back what was read, and let the chip
            # take the RECV, before asking it what is waiting.
            if self._rx_held:
                self._release()
            if self._cr_pending:
                self._settle()
            known = self._read16_stable(_SN_RX_RSR)
            self._rx_next = -1
            if known < 2:
                self._rx_known = known
                return 0
        rd = self._rx_rd
        size = self._rx_next
        if size < 0:
            self._read_into(rd, _BSB_S0_RX, self._r2)
            size = (self._reg[0] << 8) | self._reg[1]   # counts its own 2 bytes
        n = size - 2
        if n < _MIN_FRAME or n > _MAX_FRAME or size > known:
            self.rx_bad_length += 1
            self.reopen()
            return 0
        known -= size
        self._rx_known = known
        self._rx_held += size
        self._rx_rd = (rd + size) & 0xFFFF
        self._rx_next = -1         # until the read below gives it (a read that raises: none)
        # The frame after its length header, and the next frame's length header when it is
        # surely there, in one read. (`size` now holds the view to read into: one local
        # more and this frame, over 11 words, would come from the heap on every call.)
        if known >= 2:
            size = self.views(buf)[(n + 1) // _VIEW_STEP]
            self._read_into((rd + 2) & 0xFFFF, _BSB_S0_RX, size)
            self._rx_next = (buf[n] << 8) | buf[n + 1]
        else:
            size = self.views(buf)[(n - 1) // _VIEW_STEP]
            self._read_into((rd + 2) & 0xFFFF, _BSB_S0_RX, size)
        self.rx_frames += 1
        self.rx_bytes = (self.rx_bytes + n) & _COUNTER_MASK
        if self._rx_held >= RX_RELEASE_BYTES:
            self._release()
        return n

    def _release(self):
        # The chip may reuse what was read: RX_RD up to our pointer, then RECV.
        self._write16(_SN_RX_RD, _BSB_S0_REG, self._rx_rd)
        self._issue(_CR_RECV)
        self._rx_held = 0

    def rx_release(self):
        """Give the frames read so far back to the chip's receive memory. The reader calls
        this when it stops reading for now (recv_into does it itself every few KB, and
        when it finds nothing more): held frames fill the chip's 16 KB."""
        if self._rx_held:
            self._release()

    def rx_holding(self):
        """True if frames were read and not yet given back (rx_release has work)."""
        return self._rx_held != 0

    # -- transmit --------------------------------------------------------------------------

    def _wait_sent(self):
        # The previous frame is out when the chip has moved TX_RD up to its TX_WR. Until
        # then TX_WR must not change: a SEND not yet started would send both frames as one.
        # Usually it went long ago, while we built this frame. One read is enough: the bytes
        # come high first, so a move between them gives (old high, new low), which equals
        # TX_WR only if the move had happened by the low byte.
        wr = self._sent_wr
        for i in range(_SENT_POLLS):
            if self._read16(_SN_TX_RD, _BSB_S0_REG) == wr:
                self._send_pending = False
                if self._cr_send:
                    self._cr_pending = False   # a SEND that has sent was accepted
                return True
            if i == 0 and self._cr_pending:
                self._settle()
        self.tx_timeouts += 1
        self._send_pending = False
        return False

    def send(self, frame, n):
        """Transmit the first ``n`` bytes of ``frame`` (a whole Ethernet frame, no FCS).

        Frames shorter than 60 bytes are padded with zeros written into ``frame`` itself
        (never with stale bytes: that would leak memory onto the wire). Returns True if the
        frame was queued, False if TX memory stayed full.
        """
        if n < _MIN_FRAME or n > _MAX_FRAME:
            raise ValueError("frame length out of range")
        if n < _MIN_TX:
            fill(frame, n, _MIN_TX - n, 0)
            n = _MIN_TX
        view = self.views(frame)[(n - 1) // _VIEW_STEP]
        # The whole view is written, so that is the room needed.
        if self._tx_free < len(view) and not self._tx_room(len(view)):
            return False
        wr = self._tx_wr
        self._write_from(wr, _BSB_S0_TX, view)
        wr = (wr + n) & 0xFFFF
        self._tx_wr = wr
        self._tx_free -= n
        if self._send_pending:
            self._wait_sent()
        self._write16(_SN_TX_WR, _BSB_S0_REG, wr)
        self._issue(_CR_SEND)
        self._sent_wr = wr
        self._send_pending = True
        self.tx_frames += 1
        self.tx_bytes = (self.tx_bytes + n) & _COUNTER_MASK
        return True

    def _tx_room(self, need):
        """(send(), the room it knows of too small) Ask the chip for its free TX room; wait
        for the previous frame to go if that makes room. False (counted) if there is none.
        (Apart from send(): its frame stays within 11 words, off the heap.)"""
        free = self._read16_stable(_SN_TX_FSR)
        if free < need and self._send_pending:
            self._wait_sent()
            free = self._read16_stable(_SN_TX_FSR)
        self._tx_free = free
        if free < need:
            self.tx_no_room += 1
            return False
        return True

    def flush(self):
        """Wait until the last frame has gone (bounded), and give back held received
        frames."""
        if self._send_pending:
            self._wait_sent()
        self.rx_release()
