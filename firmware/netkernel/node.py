# The node: brings the board up and runs core 0's loop.
#
# One turn of the loop: when the W5500's INTn fell or the tick fired, acknowledge the chip's
# interrupt and drain frames in a bounded batch through the dispatcher onto the kernels'
# rings; run kernel 0's share (kernels 1..N-1 run in their own thread, netkernel.cores);
# service the host link; check the link state now and then; sleep briefly. INTn edges can
# be missed (w5500.md §7), which is why the tick exists.
#
# Config keys (board.load_config()): the board's memory budget (boards/rp2040.py names every
# key: kernels, thread_stack, ring_capacity, tcp_connections, tcp_rx_pool, tcp_tx_pool,
# reasm_bytes, handoff_bytes, i2o_frame_bytes, i2o_inbound_depth, i2o_outbound_max), every
# pool made from it here at boot; the addresses and settings of config.py; and optionally
# tx_mode ("lock" | "ring"), pool_slots, flow_capacity, tx_slots, idle_us, dispatch_help
# (bool, default on: netkernel.cores), and stack (StackConfig overrides).
import _thread
import gc
import time
from array import array

from micropython import const

from netkernel.cores import TX_LOCK, Cores, default_pool_slots
from netkernel.dispatcher.reader import LOG_HEX, LOG_OFF, LOG_SUMMARY
from netkernel.dispatcher.steering import default_red_min
from netkernel.hostlink import HostLink
from netkernel.ism import SocketIsm
from netkernel.msgunit import MsgUnit
from netkernel.services import Services
from netkernel.stack import StackConfig
from netkernel.w5500 import RX_RELEASE_BYTES, W5500, W5500Error
from netkernel_native import node_wake_irq

_TICK_MS = const(100)       # a safety net only: an idle core 0 looks at INTn itself
_SLEEP_MAX_MS = const(200)  # core 0 idle: its longest sleep without a deadline...
_SLEEP_BUSY_MS = const(2)   # ...and with host sockets open or the host link mid-reply
_W_INTN = const(0)          # Node.wakes: INTn low
_W_WORK = const(1)          # frames for kernel 0 or work for the message unit
_W_DUE = const(2)           # a deadline
_W_EVENT = const(3)         # the host's bytes
_W_WAITS = const(4)         # the board's idle waits (each ends at an event or ~1 ms)
_W_DOZES = const(5)         # blocked on the bell (Node._doze)
_HOST_QUIET_MS = const(200) # core 0 dozes only when the host sent nothing for this long
_SLEEP_CONNS_MS = const(10) # core 0 idle while another kernel has connections (_sleep)
_LINK_CHECK_MS = const(500)
_MAX_KERNELS = const(4)
_EINVAL = const(22)
_SETTING_WAIT_MS = const(200)   # how long a setting waits for a kernel to apply the last one
_CHIP_RX_BYTES = const(16384)  # the W5500's receive memory, all of it socket 0's
_MAX_FRAME = const(1514)
_MSS = const(1460)
TX_MODE = TX_LOCK      # the default transmit path with several kernels (measured: README)


def rx_budget(nkernels, pool_slots, ring_capacity):
    """Each kernel's TCP receive budget (StackConfig.tcp_rx_budget): its share of the segments
    the board can hold before anything is lost, the W5500's 16 KB of receive memory (frames
    of 1,514 bytes with their 2-byte length) and the frame slots of the rings. Offered
    windows that add up to more let a sender's burst overflow the chip (measured: 10 % of
    frames lost, 100 retransmission timeouts in 6 s with 16 connections). Frames the driver
    has read but not yet given back (up to RX_RELEASE_BYTES) are in a slot and in the chip
    at once, so they count once only.

    And never more than a ring takes below its early-discard threshold (one frame is left
    for handshakes and retransmissions). With several kernels the dispatcher moves a
    kernel's frames out of the chip into its ring as fast as they come, so a kernel that
    falls behind would otherwise find its own in-window segments discarded early (measured
    with rings of 8, 16 connections: 56 discards per run at 12 segments a kernel, 15 at 6,
    none at 5). One kernel loses nothing either way (the dispatcher leaves frames in the
    chip while the ring is that full), but with about a segment of budget per connection
    no connection waits for credit, the pool's first-come queue no longer takes turns, and
    16 connections into one kernel finished up to 2.4 times apart (measured on the
    simulated board with rings of 8: at 14 and 16 segments; at 5, 7 and 10 all 16 within
    0.05 s, and no slower). So every kernel of a board, one or several, works with the same
    window."""
    frame = _MAX_FRAME + 2
    held = (RX_RELEASE_BYTES + frame - 1) // frame
    segments = (_CHIP_RX_BYTES // frame - held + pool_slots) // nkernels
    segments = min(segments, default_red_min(ring_capacity) - 1)
    return max(segments, 2) * _MSS    # a handshake offers two (tcp.py, _rcv_cap)


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


def _services_on(kernel):
    stack = kernel.stack
    if stack.services is None:
        parked = stack.services_parked
        if parked is None:
            stack.services = Services(stack)
        else:
            parked.open()
            stack.services = parked
            stack.services_parked = None


def _services_off(kernel):
    # Kept for the next "on": tests switch the services on and off around each test, and
    # a new object and buffer each time left an RP2040's heap in pieces over a session.
    stack = kernel.stack
    svc = stack.services
    if svc is not None:
        svc.close()
        stack.services = None
        stack.services_parked = svc


def _log(msg):
    print("netkernel: " + msg)


class Node:
    def __init__(self, board):
        self.board = board
        cfg = board.load_config()
        self.cfg = cfg
        self.mac = parse_mac(cfg["mac"])
        self.ip = parse_ipv4(cfg["ip"])
        nk = cfg["kernels"]
        if not 1 <= nk <= _MAX_KERNELS:
            raise ValueError("kernels=%d: 1..%d net kernels are supported" % (nk, _MAX_KERNELS))
        self.nkernels = nk
        # Core 1's C stack comes from the heap when its thread starts, in one piece. Its room
        # is taken first, while the heap is whole, and let go just before (measured on the
        # RP2040: built the other way, 36 KB were free and no 8 KB in one piece).
        self._stack_room = bytearray(cfg["thread_stack"]) \
            if nk > 1 and cfg.get("stack_in_heap", True) else None
        log = cfg["log_frames"]
        self.log = LOG_HEX if log == "hex" else (LOG_SUMMARY if log else LOG_OFF)
        # The same ring, and so the same receive budget (rx_budget), for every kernel
        # whatever their number: a 1-kernel board is the yardstick of the scale figures,
        # and it had a ring of 4 and twice the window of each of two kernels (no faster for
        # it, measured with rounds in turns).
        ring = cfg["ring_capacity"]
        pool_slots = cfg.get("pool_slots", 0) or default_pool_slots(nk, ring)
        stack = {"reasm_max_bytes": cfg["reasm_bytes"],
                 "tcp_max_connections": cfg["tcp_connections"],
                 "tcp_rx_pool": cfg["tcp_rx_pool"], "tcp_tx_pool": cfg["tcp_tx_pool"],
                 "tcp_rx_budget": rx_budget(nk, pool_slots, ring)}
        stack.update(cfg.get("stack", {}))
        stack_config = StackConfig(services=cfg["services"], **stack)
        self.hw = board.open_hardware()
        self.nic = W5500(self.hw.spi, self.hw.cs, self.hw.rst)
        # A simulated board meters where the time goes by wrapping the loops' steps (the
        # chip's I/O here, the dispatcher's and kernels' turns below): the firmware's loops
        # carry no meters.
        metered = getattr(self.hw, "metered", None)
        if metered is not None:
            self.nic.recv_into = metered("nic", self.nic.recv_into, 1)
            self.nic.send = metered("nic", self.nic.send, 2)
        self.link = HostLink(self.hw.usb(), self)     # its 2 KB buffers while there is room
        # The I2O messaging unit (core 0; one socket ISM per kernel is added below, all
        # before any thread starts). Its frame pools are made first, while the heap still
        # has large free blocks.
        self.msgunit = MsgUnit(self, nk, frame_bytes=cfg["i2o_frame_bytes"],
                               inbound_depth=cfg["i2o_inbound_depth"],
                               outbound_max=cfg["i2o_outbound_max"])
        # Flow entries: every connection the kernels may hold, and some UDP flows.
        flows = 16 if nk == 1 else nk * stack_config.tcp_max_connections + 16
        self.cores = Cores(self.nic, nk, self.mac, self.ip, cfg["prefix"],
                           parse_ipv4(cfg["gateway"]), stack_config, self.log,
                           tx_mode=cfg.get("tx_mode", TX_MODE),
                           pool_slots=pool_slots,
                           ring_capacity=ring,
                           flow_capacity=cfg.get("flow_capacity", flows),
                           handoff_bytes=cfg["handoff_bytes"],
                           tx_slots=cfg.get("tx_slots", 8),
                           idle_us=cfg.get("idle_us", 100),
                           thread_stack=cfg["thread_stack"],
                           intn=self.hw.intn,
                           dispatch_help=cfg.get("dispatch_help", True),
                           allocate_lock=getattr(self.hw, "allocate_lock", None),
                           wait_event=getattr(self.hw, "wait_event", None),
                           wake_core0=getattr(self.hw, "wake_core0", None),
                           doorbells=getattr(self.hw, "DOORBELLS", False))
        self.kernels = self.cores.kernels
        self.kernel = self.kernels[0]
        self.disp = self.cores.disp
        if metered is not None:
            reader = self.cores.reader
            reader.turn = metered("disp", reader.turn, 2)
            reader.help = metered("disp", reader.help, 2)
            for k in self.kernels:
                k.turn = metered("k%d" % k.core, k.turn, 1)
        self.msgunit.link = self.link
        self.link.wire_frame = self.wire_tx_buffer()
        self.link.msgunit = self.msgunit
        for k in self.kernels:
            k.ism = SocketIsm(k, self.msgunit)
        self._shares_last = {}     # stats_parts(): each meter's total at the last report
        self._shares_at = time.ticks_us()
        self._wake = True
        # Where the board has a wake-up alarm, an idle core 0 with a quiet host dozes: it
        # blocks on this lock until an IRQ (INTn, the alarm) releases it (Node._doze).
        self._bell = _thread.allocate_lock() if hasattr(self.hw, "alarm") else None
        self._dozing = False
        self.irqs = 0
        # One bound method for every IRQ registration (INTn, the doze alarm).
        self._on_irq = self._on_hard_irq if self._bell is not None else self._on_event
        self.wakes = array("I", bytes(4 * 6))   # why core 0's idle waits ended (_W_*)
        self._next_link_check = 0
        self.link_up = False
        self.errors = 0

    def _on_event(self, _):
        # INTn and the tick as soft IRQs (where core 0 does not doze).
        self._wake = True
        self.irqs = (self.irqs + 1) & 0x3FFFFFFF

    # INTn and the doze alarm as hard IRQs (where core 0 dozes): machine code, which no
    # pending Ctrl-C can interrupt. A dozing core 0 blocks on its bell: ring it (once:
    # only this core's IRQs do).
    _on_hard_irq = node_wake_irq

    def start(self):
        self.nic.init(self.mac)
        self.link_up = self.nic.link_up()
        self.hw.intn.irq(handler=self._on_irq, trigger=self.hw.intn.IRQ_FALLING,
                         hard=self._bell is not None)
        self._timer = self.hw.timer(_TICK_MS, self._on_event)
        self.kernel.stack.announce(time.ticks_ms())
        self._stack_room = None
        gc.collect()               # the room is free again: the stack goes there
        self.cores.start()         # every module is imported by now: core 1 may start
        _log("up mac=%s ip=%s/%d link=%s kernels=%d tx=%s board=%s" % (
            self.cfg["mac"], self.cfg["ip"], self.cfg["prefix"],
            "up" if self.link_up else "down", self.nkernels, self.cores.tx_mode,
            self.board.NAME))

    def run(self):
        """Run until KeyboardInterrupt (Ctrl-C on the REPL, SIGINT on the simulated board)."""
        idle = getattr(self.hw, "idle", None)
        while True:
            try:
                self._loop(idle)
            except Exception as e:  # a bug must not stop the board: count, report, go on
                self._turn_failed(e)

    def _loop(self, idle):
        # The loop, not each turn, holds the exception handler: a bytecode function whose
        # frame is over 11 words (a handler takes 3) gets that frame from the heap on every
        # call, 30 to 200 us on the RP2040 as the heap is cut up; this one is made once.
        while True:
            now = time.ticks_ms()
            if not self._steps(now):
                t0 = time.ticks_us()
                if idle is not None:
                    self._sleep(now, idle)
                else:
                    time.sleep_ms(1)
                self.kernel.idle.since(t0)

    def _sleep(self, now, idle):
        """Core 0 has nothing to do: wait for events (``idle(ms)``, the board's wait for an
        interrupt, the other core or the host, True if the host sent bytes) until INTn is
        low, the host sent something, a helping core read frames for kernel 0, a kernel
        posted a reply, or the next deadline (kernel 0's timers, the link check, a sleeping
        kernel's)."""
        limit = self.kernel.stack.poll_at(now)
        if limit < 0 or limit > _SLEEP_MAX_MS:
            limit = _SLEEP_MAX_MS
        d = time.ticks_diff(self._next_link_check, now)
        if d < limit:
            limit = d
        if limit > _SLEEP_BUSY_MS and (not self.link.idle() or not self._isms_idle()
                                       or not self.msgunit.idle()
                                       or self.kernel.stack.tcp.credit_waiting()):
            limit = _SLEEP_BUSY_MS
        d = self.cores.ring_bells(now)       # a sleeping kernel's deadline
        if d >= 0 and d < limit:
            limit = d
        if limit > _SLEEP_CONNS_MS and self._other_kernels_connected():
            # A kernel awake now may arm a timer (a delayed ACK) and go to sleep while this
            # core waits: its deadline is seen at the next look, at most this far off.
            limit = _SLEEP_CONNS_MS
        if (limit > _SLEEP_BUSY_MS and self._bell is not None
                and time.ticks_diff(now, self.link.rx_at) > _HOST_QUIET_MS):
            self._doze(now, limit)
            return
        self._wait(now, limit, idle)

    def _wait(self, now, limit, idle):
        # What another core may change while we sleep, read without calls (each call costs
        # ~1k instructions on the RP2040, and an idle core 0 looks ~2 times a ms): frames a
        # helping core put on kernel 0's ring, replies a kernel posted for the host.
        ring = self.kernel.rx.idx
        post = self.msgunit.out_post.idx
        intn = self.hw.intn
        wakes = self.wakes
        while not self._wake:
            if intn() == 0:
                self._wake = True
                wakes[_W_INTN] += 1
                return
            if ring[0] != ring[1] or post[0] != post[1]:
                wakes[_W_WORK] += 1
                return
            left = limit - time.ticks_diff(time.ticks_ms(), now)
            if left <= 0:
                wakes[_W_DUE] += 1
                return
            wakes[_W_WAITS] += 1
            if idle(left):
                wakes[_W_EVENT] += 1
                return

    def _doze(self, now, limit):
        """Sleep on the bell until INTn falls or the board's alarm rings after ``limit``
        ms: a blocked acquire waits in WFE and wakes for nothing else (machine.idle()
        wakes about twice a millisecond, and each look costs ~10k instructions). The
        host's USB bytes wait until then, so only a host quiet for _HOST_QUIET_MS does."""
        bell = self._bell
        kernel = self.kernel
        ring = kernel.rx.idx
        post = self.msgunit.out_post.idx
        bell.acquire()              # free: only this core holds it
        self.hw.alarm(limit, self._on_irq)
        self._dozing = True
        # Looked at after _dozing is set: an IRQ from here on releases the bell.
        if (not self._wake and self.hw.intn() and ring[0] == ring[1]
                and post[0] == post[1]):
            self.wakes[_W_DOZES] += 1
            bell.acquire()          # until an IRQ releases it; held again then
        self._dozing = False
        try:
            bell.release()
        except RuntimeError:        # an IRQ came first and released it
            pass
        self.hw.alarm(0, None)
        if self.hw.intn() == 0:
            self._wake = True

    def _other_kernels_connected(self):
        ks = self.kernels
        i = 1
        while i < len(ks):
            if ks[i].stack.tcp.conns:
                return True
            i += 1
        return False

    def _isms_idle(self):
        # Any kernel's: what another core's ISM posts for the host is sent from core 0.
        ks = self.kernels
        i = 0
        while i < len(ks):
            if not ks[i].ism.idle():
                return False
            i += 1
        return True

    def turn(self, now):
        """One bounded turn of core 0's loop; returns True if work is still waiting."""
        try:
            return self._steps(now)
        except Exception as e:  # a bug must not stop the board: count, report, go on
            self._turn_failed(e)
        return self._wake

    def _steps(self, now):
        rx = self._wake
        self._wake = False
        if self.cores.turn(now, rx):
            self._wake = True       # batch full: come back after the link's turn
        self.link.poll()            # what the host asks may touch the chip too
        self.msgunit.pump()         # I2O: frees, replies, bring-up
        self.cores.ring_bells(now)  # kernels asleep with work waiting
        if time.ticks_diff(now, self._next_link_check) >= 0:
            self._next_link_check = time.ticks_add(now, _LINK_CHECK_MS)
            self._check_link()
            self._report_kernel_errors()
        return self._wake

    def _turn_failed(self, e):
        self.cores.reader.unlock_after_error(0)
        in_stack = self.kernel.recover()
        if isinstance(e, W5500Error):
            self._recover(e)
        elif in_stack:
            # Kernel 0's stack raised on a frame: the kernel's error, which the link check
            # reports (not a console line per frame).
            self.kernel.errors += 1
            self.kernel.last_error = e
        else:
            self.errors += 1
            _log("error in core 0's turn: %r" % e)

    def _report_kernel_errors(self):
        # A kernel counts what a bug raised and goes on (kernel.py); the console says what
        # it was, once per check however many there were.
        for k in self.kernels:
            if k.errors != k.errors_reported:
                k.errors_reported = k.errors
                _log("error in kernel %d (%d so far): %r" % (k.core, k.errors, k.last_error))

    def _check_link(self):
        up = self.cores.nic.call(self.nic.link_up)
        if up != self.link_up:
            self.link_up = up
            _log("link " + ("up" if up else "down"))

    def _recover(self, err):
        # A chip that stopped answering: count, report, reopen the socket, carry on.
        self.errors += 1
        _log("nic error: %s; reopening socket 0" % err)
        try:
            self.cores.nic.call(self.nic.reopen)
        except W5500Error as e:
            _log("reopen failed: %s" % e)

    # -- what the host link asks for ---------------------------------------------------------

    def wire_tx_buffer(self):
        """Where the link copies a KIND_WIRE_TX frame: kernel 0's transmit buffer, free
        between kernel 0's turns (the link is serviced on core 0 too)."""
        return self.kernel.stack.iface.tx

    def wire_tx(self, buf, n):
        return self.cores.nic.send(buf, n)

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
        return self.stats_parts()

    def stats(self):
        return " ".join(self.stats_parts())

    def stats_parts(self):
        """name=value texts, one by one: sums over kernels under the plain names (rx_frames,
        tcp_conns, tcp.established, ...), each kernel's own under kN., the dispatcher's
        under disp."""
        # Heap figures first, after a collection: live memory, neither garbage nor this
        # report's own text (two kernels' counters take ~60 KB while the report is built).
        gc.collect()
        heap_free = gc.mem_free()
        heap_alloc = gc.mem_alloc()
        d = self.link.deframer
        n = self.nic
        c = self.cores
        # A generator, not a list: the link sends each part as it comes, so only the part
        # being sent and each kernel's counter walk are alive at a time (a list of the
        # whole report of two kernels took ~60 KB, more than a busy board has left).
        yield "kernels=%d" % self.nkernels
        # Every kernel's stack has the same counters in the same order: sum them in step.
        walks = [k.iter_counters() for k in self.kernels]
        errors = self.errors
        for first in walks[0]:
            name = first[0]
            total = first[1]
            for w in walks[1:]:
                total += next(w)[1]
            if name == "kernel_errors":
                errors += total
            yield "%s=%d" % (name, total)
        del walks
        yield (
            "heap_free=%d heap_alloc=%d nic_rx=%d nic_tx=%d rx_bad_length=%d "
            "reopens=%d tx_no_room=%d tx_timeouts=%d unsettled_reads=%d link_frames=%d "
            "link_bad_crc=%d "
            "link_bad_cobs=%d link_too_long=%d link_unknown=%d link_bad_request=%d "
            "link_tx_dropped=%d link_replies_cut=%d errors=%d"
            % (heap_free, heap_alloc, n.rx_frames,
               n.tx_frames, n.rx_bad_length, n.reopens, n.tx_no_room, n.tx_timeouts,
               n.unsettled_reads, d.frames, d.bad_crc, d.bad_cobs, d.too_long,
               self.link.unknown_kind, self.link.bad_request, self.link.tx_dropped,
               self.link.replies_cut, errors))
        for kv in self.msgunit.counters():
            yield "i2o.%s=%d" % kv
        flows = self.disp.flows()
        now = time.ticks_us()
        elapsed = time.ticks_diff(now, self._shares_at) or 1
        self._shares_at = now
        dc = self.disp.counters()
        last = self._shares_last
        r = c.reader

        def pct(name, total):
            p = (total - last.get(name, 0)) * 100 // elapsed
            last[name] = total
            return p

        # Shares of the time since the last report. Every board: how long each core had
        # nothing to do. A simulated board also meters the dispatcher's turns, the chip's
        # SPI I/O (serial work: one chip, one bus) and each kernel's turns (its own chip I/O
        # included).
        for k in self.kernels:
            yield "core%d.idle_pct=%d" % (k.core, pct("core%d" % k.core, k.idle.total_us()))
        meters = getattr(self.hw, "meters", None) or {}
        for name, label in (("disp", "disp.busy_pct"), ("nic", "nic.io_pct")):
            if name in meters:
                yield "%s=%d" % (label, pct(name, meters[name].total_us()))
        w = self.wakes
        yield ("core0.wake_intn=%d core0.wake_work=%d core0.wake_due=%d core0.wake_event=%d "
               "core0.idle_waits=%d core0.dozes=%d core0.irqs=%d bell_rings=%d" % (
                   w[_W_INTN], w[_W_WORK], w[_W_DUE], w[_W_EVENT], w[_W_WAITS], w[_W_DOZES],
                   self.irqs, c.bell_rings))
        for i, k in enumerate(self.kernels):
            name = "k%d" % i
            if name in meters:
                yield "k%d.busy_pct=%d" % (i, pct(name, meters[name].total_us()))
            owned = 0
            for f in flows:
                if f[2] == i:
                    owned += 1
            tx = c.txq.ports[i] if c.txq is not None and i > 0 else None
            yield (
                "k%d.ring_depth=%d k%d.ring_hwm=%d k%d.flows_owned=%d "
                "k%d.drop_ring_full=%d k%d.drop_red=%d k%d.idle_sleeps=%d "
                "k%d.tx_ring_frames=%d k%d.tx_no_slot=%d k%d.dispatched=%d"
                % (i, k.rx.depth(), i, k.rx.hwm, i, owned, i, r.drop_full[i],
                   i, r.drop_red[i], i, k.idle_sleeps,
                   i, tx.frames if tx else 0, i, tx.no_slot if tx else 0,
                   i, r.dispatched[i]))
            for name, value in k.iter_counters():
                yield "k%d.%s=%d" % (i, name, value)
        pool = c.pool
        mine = {"rx_frames": r.rx_frames, "rx_bytes": r.rx_bytes,
                "drop_no_slot": r.drop_no_slot, "drop_steer": r.drop_steer,
                "to_all_cores": r.broadcasts, "flows_closed": r.flows_closed,
                "pool_slots": pool.size, "pool_free": pool.nfree, "pool_low": pool.low,
                "tx_ring_sent": c.txq.sent if c.txq else 0,
                "tx_ring_failed": c.txq.failed if c.txq else 0,
                "tx_ring_hwm": c.txq.post.hwm if c.txq else 0,
                "flows": len(flows)}
        for name in sorted(dc):
            if isinstance(dc[name], int):
                yield "disp.%s=%d" % (name, dc[name])
        for name in sorted(mine):
            if name not in dc:
                yield "disp.%s=%d" % (name, mine[name])
        hw = getattr(self.hw, "counters", None)    # a simulated board's hardware, last
        if hw is not None:
            for kv in sorted(hw().items()):
                yield "hw.%s=%d" % kv

    def flows_text(self):
        """The dispatcher's flow table, one line per flow, line by line (KIND_FLOWS_REPLY):
        the table as one string needs a block of several KB that a busy heap may not have."""
        return self.cores.reader.flow_lines()

    def configure(self, text):
        """Apply host settings (KIND_CONFIG): (0, text) or (errno, reason); never raises."""
        applied = []
        try:
            for item in text.split():
                name, eq, value = item.partition("=")
                if not eq or not value:
                    raise ValueError("expected name=value: %s" % item)
                # Dispatcher state (hash, table, rules, address) changes while no
                # other core dispatches.
                self.cores.reader.with_lock(self._configure_one, name, value)
                applied.append(name)
        except Exception as e:   # refused with a status, never a crash
            return _EINVAL, "refused %s: %s" % (item, e)
        return 0, "ok " + " ".join(applied)

    def _configure_one(self, name, value):
        disp = self.disp
        if name == "hash":
            if value not in ("fold", "toeplitz"):
                raise ValueError("hash must be fold or toeplitz")
            disp.set_hash(algorithm=value)
        elif name == "mask":
            disp.set_hash(mask=bytes.fromhex(value))
        elif name == "indirection":
            table = [int(v) for v in value.split(",")]
            if not table or any(c < 0 or c >= self.nkernels for c in table):
                raise ValueError("indirection entries must be cores 0..%d"
                                 % (self.nkernels - 1))
            disp.set_indirection(table)
        elif name == "balance":
            disp.set_balance(value)
        elif name == "rule":
            key, colon, core = value.partition(":")
            if not colon:
                raise ValueError("rule=<key hex>:<core>")
            core = int(core)
            if core < 0 or core >= self.nkernels:
                raise ValueError("no core %d" % core)
            disp.add_rule(bytes.fromhex(key), core)
        elif name == "ip":
            addr, slash, prefix = value.partition("/")
            iface = self.kernel.stack.iface
            self._set_address(parse_ipv4(addr), int(prefix) if slash else iface.prefix,
                              bytes(iface.gateway))
        elif name == "gateway":
            iface = self.kernel.stack.iface
            self._set_address(bytes(iface.ip), iface.prefix, parse_ipv4(value))
        elif name == "mac":
            mac = parse_mac(value)
            if mac[0] & 1:
                raise ValueError("a multicast MAC address cannot be the board's")
            self._on_every_core(lambda k: setattr(k.stack.iface, "mac", mac))
            self.cores.nic.call(self.nic.set_mac, mac)
            self.mac = mac
            self.kernel.stack.announce(time.ticks_ms())
        elif name == "services":
            if value not in ("on", "off"):
                raise ValueError("services=on|off")
            if value == "off":
                self._on_every_core(_services_off)
                return
            try:
                self._on_every_core(_services_on)
            except Exception:
                # On every kernel or on none (the kernels that started them stop again).
                self._on_every_core(_services_off)
                raise
        else:
            raise ValueError("unknown setting " + name)

    def _on_every_core(self, fn):
        """Run fn(kernel) on every kernel's own core (kernel 0 now, the others at their next
        turn) and wait until they have: a stack is only ever touched by its own core. Raises
        what fn raised on a kernel, so the host hears of it."""
        for k in self.kernels:
            # The previous setting first (a kernel turn is short; settings are rare).
            self._wait_applied(k, "the previous setting")
        failed = [k.todo_errors for k in self.kernels]
        for k in self.kernels:
            k.run_on_core(fn)
        for i, k in enumerate(self.kernels):
            self._wait_applied(k, "it yet (it will at its next turn)")
            if k.todo_errors != failed[i]:
                raise ValueError("kernel %d: %r" % (k.core, k.todo_error))

    def _wait_applied(self, kernel, what):
        deadline = time.ticks_add(time.ticks_ms(), _SETTING_WAIT_MS)
        while kernel.todo_pending():
            self.cores.ring_bells(time.ticks_ms())   # a sleeping kernel wakes for it
            if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                raise ValueError("busy: kernel %d has not applied %s" % (kernel.core, what))
            time.sleep_ms(1)

    def _set_address(self, ip, prefix, gateway):
        if not 0 <= prefix <= 32:
            raise ValueError("prefix must be 0..32")

        def apply(k):
            iface = k.stack.iface
            iface.set_address(ip, prefix, gateway)
            iface.arp.flush()          # neighbours learned on the old subnet
        self._on_every_core(apply)
        for i in range(4):
            self.disp.ip[i] = ip[i]
        self.ip = bytes(ip)
        self.kernel.stack.announce(time.ticks_ms())

    def stop(self):
        try:
            self.cores.stop()
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
        # One line, written part by part: one string of it all needs ~9 KB in one piece.
        print("netkernel: stats", end="")
        for part in node.stats_parts():
            print(" " + part, end="")
        print()
        hw = node.hw.counters()
        if hw:
            # Part by part too: the RP2040-sized heap may hold no large piece by now.
            print("netkernel: hw", end="")
            for k in sorted(hw):
                print(" %s=%d" % (k, hw[k]), end="")
            print()
        node.stop()
        _log("down")
