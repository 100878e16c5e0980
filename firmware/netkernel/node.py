# The node: brings the board up and runs core 0's loop.
#
# One turn of the loop: when the W5500's INTn fell or the tick fired, acknowledge the chip's
# interrupt and drain frames in a bounded batch into the net kernel; service the host link;
# check the link state now and then; sleep briefly. INTn edges can be missed (w5500.md §7),
# which is why the tick exists.
import gc
import time

import micropython
from micropython import const

from netkernel.hostlink import HostLink
from netkernel.kernel import LOG_HEX, LOG_OFF, LOG_SUMMARY, NetKernel
from netkernel.stack import StackConfig
from netkernel.w5500 import W5500, W5500Error

_TICK_MS = const(10)
_LINK_CHECK_MS = const(500)


def parse_mac(text):
    parts = text.split(":")
    if len(parts) != 6:
        raise ValueError("bad MAC address: %s" % text)
    return bytes(int(p, 16) for p in parts)


def parse_ipv4(text):
    parts = text.split(".")
    if len(parts) != 4 or not all(0 <= int(p) <= 255 for p in parts):
        raise ValueError("bad IPv4 address: %s" % text)
    return bytes(int(p) for p in parts)


def _log(msg):
    print("netkernel: " + msg)


class Node:
    def __init__(self, board):
        self.board = board
        cfg = board.load_config()
        self.cfg = cfg
        self.mac = parse_mac(cfg["mac"])
        self.ip = parse_ipv4(cfg["ip"])
        if cfg["kernels"] != 1:
            # The dispatcher that feeds a second kernel is not built yet.
            raise ValueError("kernels=%d: only 1 net kernel is supported" % cfg["kernels"])
        log = cfg["log_frames"]
        self.log = LOG_HEX if log == "hex" else (LOG_SUMMARY if log else LOG_OFF)
        stack_config = StackConfig(services=cfg["services"], **cfg.get("stack", {}))
        self.hw = board.open_hardware()
        self.nic = W5500(self.hw.spi, self.hw.cs, self.hw.rst)
        self.kernel = NetKernel(0, self.nic, self.mac, self.ip, cfg["prefix"],
                                parse_ipv4(cfg["gateway"]), stack_config, self.log)
        self.link = HostLink(self.hw.usb(), self)
        self._wake = True
        self._next_link_check = 0
        self.link_up = False
        self.errors = 0

    def _on_event(self, _):
        self._wake = True

    def start(self):
        self.nic.init(self.mac)
        self.link_up = self.nic.link_up()
        self.hw.intn.irq(handler=self._on_event, trigger=self.hw.intn.IRQ_FALLING)
        self._timer = self.hw.timer(_TICK_MS, self._on_event)
        self.kernel.stack.announce(time.ticks_ms())
        _log("up mac=%s ip=%s/%d link=%s kernels=1 board=%s" % (
            self.cfg["mac"], self.cfg["ip"], self.cfg["prefix"],
            "up" if self.link_up else "down", self.board.NAME))

    def run(self):
        """Run until KeyboardInterrupt (Ctrl-C on the REPL, SIGINT on the simulated board)."""
        while True:
            if not self.turn(time.ticks_ms()):
                time.sleep_ms(1)

    @micropython.native
    def turn(self, now):
        """One bounded turn of core 0's loop; returns True if work is still waiting."""
        rx = self._wake
        self._wake = False
        try:
            if rx:
                self.nic.clear_interrupt()
            if self.kernel.poll(now, rx):
                self._wake = True   # batch full: come back after the link's turn
        except W5500Error as e:
            self._recover(e)
        except Exception as e:  # a bug must not stop the board: count, report, go on
            self.errors += 1
            _log("error in kernel turn: %r" % e)
        self.link.poll()
        if time.ticks_diff(now, self._next_link_check) >= 0:
            self._next_link_check = time.ticks_add(now, _LINK_CHECK_MS)
            self._check_link()
        return self._wake

    def _check_link(self):
        up = self.nic.link_up()
        if up != self.link_up:
            self.link_up = up
            _log("link " + ("up" if up else "down"))

    def _recover(self, err):
        # A chip that stopped answering: count, report, reopen the socket, carry on.
        self.errors += 1
        _log("nic error: %s; reopening socket 0" % err)
        try:
            self.nic.reopen()
        except W5500Error as e:
            _log("reopen failed: %s" % e)

    # -- what the host link asks for ---------------------------------------------------------

    def wire_tx(self, buf, n):
        return self.kernel.transmit(buf, n)

    def start_tcp_test(self, ip, port, nbytes, on_done):
        services = self.kernel.stack.services
        if services is None:
            return False
        try:
            services.start_test(ip, port, nbytes, time.ticks_ms(), on_done)
        except OSError as e:
            on_done(e.args[0], 0, 0, 0)
        return True

    def stats_text(self):
        return self.stats()

    def stats(self):
        gc.collect()   # so heap_alloc is live memory, not garbage awaiting collection
        d = self.link.deframer
        n = self.nic
        return ("%s heap_free=%d heap_alloc=%d nic_rx=%d nic_tx=%d rx_bad_length=%d "
                "reopens=%d tx_no_room=%d tx_timeouts=%d link_frames=%d link_bad_crc=%d "
                "link_bad_cobs=%d link_too_long=%d link_unknown=%d link_bad_request=%d "
                "link_tx_dropped=%d errors=%d"
                % (self.kernel.stats(), gc.mem_free(), gc.mem_alloc(), n.rx_frames,
                   n.tx_frames, n.rx_bad_length, n.reopens, n.tx_no_room, n.tx_timeouts,
                   d.frames, d.bad_crc, d.bad_cobs, d.too_long, self.link.unknown_kind,
                   self.link.bad_request, self.link.tx_dropped, self.errors))

    def stop(self):
        try:
            timer = getattr(self, "_timer", None)
            if timer is not None:
                timer.deinit()
            self.nic.close()
        finally:
            self.hw.close()


def main(board):
    node = Node(board)
    try:
        node.start()
        node.run()
    except KeyboardInterrupt:
        pass
    finally:
        _log("stats " + node.stats())
        hw = node.hw.counters()
        if hw:
            _log("hw " + " ".join("%s=%d" % kv for kv in sorted(hw.items())))
        node.stop()
        _log("down")
