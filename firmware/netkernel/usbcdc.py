# The host-data USB serial port on MicroPython's runtime USB (machine.USBDevice, rp2):
# micropython-lib's usb-device-cdc gives the CDC function (descriptors, line state); the host
# link's bytes take a short path of their own (_data_path).
from micropython import const

from netkernel.wire import copy

# A USB OUT transfer ends when it is full or on a short packet; the host library never lets
# a write end on a packet boundary (linkframe.usb_fill), so a transfer of several packets
# hands the board each write at once: one callback for 8 packets instead of 8.
_PACKET = const(64)
_OUT_XFER = const(512)


def open_data_port(txbuf, rxbuf):
    """Add the host-data CDC interface beside the REPL's (before USB starts) and return it
    (``any``/``readinto``/``write``: the host link's stream); None without
    micropython-lib's usb-device-cdc."""
    try:
        import usb.device
        from usb.device.cdc import CDCInterface
        from usb.device.core import Buffer
    except ImportError:
        return None

    class MovingBuffer(Buffer):
        """usb-device's Buffer with its data moved by one machine-code copy where the
        original moves it a byte at a time in Python (~10 bytecodes a byte).
        Straight-line code: a USB callback is scheduled, run by the VM at a jump, so it
        cannot come between reading the count and storing it here."""

        def finish_write(self, nbytes):
            b = self._b
            n = self._n
            copy(b, n, b, self._w, nbytes)      # data read while the transfer was pending
            self._n = n + nbytes
            self._w = len(b)

        def finish_read(self, nbytes):
            # The viper copy, not a slice store: that also copies the rest of the buffer
            # onto itself, where the USB IRQ may be writing the next packet.
            b = self._b
            left = self._n - nbytes
            copy(b, 0, b, nbytes, left)
            self._n = left

    class DataPort(CDCInterface):
        """usb-device-cdc's CDC (descriptors, line state, its stream methods) with the
        host link's bytes on a short path of its own: see _data_path()."""

        def _rd_xfer(self):
            self._rx_start()

        def _wr_xfer(self):
            self._tx_start()

        def on_open(self):
            self._up[1] = 0       # a reset that came halfway through a start left a claim
            self._up[2] = 0
            self._up[0] = 1
            super().on_open()

        def on_reset(self):
            self._up[0] = 0
            self._up[1] = 0       # a reset cancels the transfers in flight
            self._up[2] = 0
            super().on_reset()

    dev = usb.device.get()
    cdc = DataPort()
    cdc.init(timeout=0, txbuf=_PACKET, rxbuf=_PACKET)   # its buffers: replaced below
    _data_path(cdc, dev, MovingBuffer(rxbuf), MovingBuffer(txbuf))
    dev.init(cdc, builtin_driver=True)
    return cdc


def _data_path(cdc, dev, rb, wb):
    """The data endpoints' transfers and the host link's any/readinto/write as closures
    over locals: per transfer, usb-device's own path takes a dozen Python calls and as many
    attribute lookups through CDC's classes; these take two or three calls. Transfers on
    other endpoints still go to usb-device (its _xfer_cb, replaced here before init())."""
    usbd = dev._usbd
    other = dev._xfer_cb
    up = bytearray(3)           # configured by the host; OUT and IN transfer in flight

    # Each transfer starter claims its endpoint's flag before it looks at anything: a
    # check and a set with no jump between, so a callback run in between cannot start the
    # same transfer too.
    def rx_start():
        n = up[1]             # the claim; then n is the room to ask for (one local: the
        up[1] = 1             # frame stays within 11 words, so it is not a heap block)
        if n:
            return
        n = min(rb.writable(), _OUT_XFER) & ~(_PACKET - 1)
        if n <= 0 or not up[0]:
            up[1] = 0
            return
        if not usbd.submit_xfer(cdc.ep_d_out, rb.pend_write(n)):
            up[1] = 0

    def tx_start():
        busy = up[2]
        up[2] = 1
        if busy:
            return
        if wb._n == 0 or not up[0]:
            up[2] = 0
            return
        if not usbd.submit_xfer(cdc.ep_d_in, wb.pend_read()):
            up[2] = 0

    # An ended transfer goes to rx_done / tx_done: one closure over everything both need
    # would have a frame over 11 words, which comes from the heap on every call.
    def xfer_done(ep, res, nbytes):
        if ep == cdc.ep_d_out:
            rx_done(res, nbytes)
        elif ep == cdc.ep_d_in:
            tx_done(ep, 0 if res else nbytes)     # a failed transfer sent nothing
        else:
            other(ep, res, nbytes)

    def rx_done(res, nbytes):
        if res == 0:
            rb.finish_write(nbytes)
        up[1] = 0
        rx_start()

    def tx_done(ep, nbytes):
        if nbytes:
            wb.finish_read(nbytes)
            if wb._n == 0 and nbytes & (_PACKET - 1) == 0:
                # A transfer that ended on a full packet is ended for the host by a
                # zero-length packet (its read may be waiting for a short one).
                if usbd.submit_xfer(ep, wb.pend_read()):   # empty
                    return
        up[2] = 0
        tx_start()

    # Buffer's own readinto and write: a callback that ends a transfer between their
    # pend_ and finish_ is what its finish_ methods are made for.
    def readinto(buf):
        n = rb.readinto(buf)
        if n:
            rx_start()        # a full buffer had stopped reading
        return n

    def write(buf):
        k = wb.write(buf)
        if k:
            tx_start()
        return k

    cdc._up = up
    cdc._rb = rb
    cdc._wb = wb
    cdc._rx_start = rx_start
    cdc._tx_start = tx_start
    cdc.any = rb.readable
    cdc.readinto = readinto
    cdc.write = write
    dev._xfer_cb = xfer_done
