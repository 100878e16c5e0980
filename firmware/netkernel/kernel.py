# A net kernel: one per core, owning its receive ring, counters and its own TCP/IPv4 stack
# instance. No module-level mutable state; time is passed in by the caller.
#
# One turn: take up to _BATCH frame slots from this kernel's ring (filled by the dispatcher
# on core 0), run each through the whole stack to completion, give the slot back through the
# return ring; take a datagram another core reassembled for us; then run the stack's timers
# and pending output. Bounded work per turn, so core 0's USB and timers keep their turn.
#
# Per-flow counters (flow_frames[flow number], per kernel) show which kernel processed the
# frames of each flow: a connection's frames are all counted on one kernel.
import _thread
from array import array
from time import ticks_add, ticks_diff, ticks_ms

from micropython import const

from netkernel import wire
from netkernel.busy import BusyTime
from netkernel.rings import Mailbox
from netkernel.stack import Stack

_BATCH = const(16)
_ISM_FAILED = "the socket ISM's turn raised"   # last_error (its exception is not kept)
# Packet layout: copies of wire's (const() inlines only within a module).
_IP_PROTO = const(9)
_IP_SRC = const(12)
_IP_DST = const(16)
_PROTO_TCP = const(6)
_PROTO_UDP = const(17)
# An idle kernel sleeps until its stack's next deadline, at most _SLEEP_MAX_MS; with host
# sockets open (their data and credit move without frames) or receive credit owed, at most
# _SLEEP_BUSY_MS.
_SLEEP_MAX_MS = const(200)
_SLEEP_BUSY_MS = const(2)
_SLEEPING = const(0)      # cores.Cores.sleep_state
_DUE = const(1)
# Handoff.state: datagram length, 1 = full (set by its producer, cleared by the owner), owner.
_H_LEN = const(0)
_H_FULL = const(1)
_H_CORE = const(2)


class Handoff:
    """One buffer for a datagram reassembled on one core for a flow another core owns,
    shared by every kernel: producers fill it under ``lock`` (taken with acquire(0), never
    waited for) only while it is empty; the owner named in state[_H_CORE] empties it."""

    def __init__(self, nbytes):
        self.buf = bytearray(nbytes)
        self.state = array("H", bytes(6))
        self.lock = _thread.allocate_lock()



class NetKernel:
    def __init__(self, core, send, mac, ip, prefix, gateway, stack_config, port, pool, peers,
                 ncores=1, handoff=None):
        """``send(buf, n)``: this core's way to the wire (the NIC, the NIC under the SPI
        lock, or a TX port to core 0); ``port``: its DispatchPort (its rings, where flows
        go, closed flows); ``pool``: the FramePool its ring's slots point into; ``peers``:
        every kernel by core (handoff targets; filled in by the caller); ``handoff``: the
        Handoff every kernel shares (several kernels), or None."""
        self.core = core
        self.ncores = ncores
        self.stack = Stack(send, mac, ip, prefix, gateway, stack_config)
        iface = self.stack.iface
        iface.ip_id = core                  # cores sharing one address never reuse an ID
        iface.ip_id_step = ncores
        iface.arp_responder = core == 0
        self.port = port
        self.rx = port.rx         # the port's rings and counts, read on every turn
        self.ret = port.ret
        self.flow_frames = port.flow_frames
        self._in_stack = -1       # the slot whose frame the stack is working on (recover())
        self.pool = pool
        self.peers = peers
        self.ism = None           # the socket ISM (netkernel.ism), set by the node
        # A datagram reassembled on another core for a flow we own arrives in the shared
        # handoff buffer (one for all kernels: 8 KB less per kernel than one each).
        self.hand = handoff
        self.hand_state = handoff.state if handoff is not None else array("H", bytes(6))
        self.rx_frames = 0
        self.rx_bytes = 0
        self.turns = 0
        self.errors = 0
        self.idle_sleeps = 0
        self.last_error = None
        self.errors_reported = 0       # errors core 0 has logged (Node)
        self.handoffs_out = 0
        self.handoffs_in = 0
        self.handoff_busy = 0
        self.handoff_too_big = 0
        self.idle = BusyTime()    # this kernel's core asleep (node._loop, cores._core_loop)
        # Work core 0 hands this kernel (settings from the host): core 0 writes todo and then
        # todo_seq[0]; the kernel alone writes todo_seq[1] once it has run it.
        self.todo = Mailbox()     # work core 0 hands this kernel (settings from the host)
        self.todo_errors = 0
        self.todo_error = None    # what the last one that failed raised (core 0 reports it)
        if ncores > 1:
            iface.handoff = self._handoff
            self.stack.tcp.port_ok = self._port_ok
        self.stack.tcp.on_remove = self._on_remove

    def turn(self, now):
        """One turn; True if frames are still waiting on this kernel's ring."""
        self.turns += 1
        ridx = self.rx.idx
        if ridx[0] != ridx[1]:
            self._take_frames(now)
        hs = self.hand_state
        if hs[_H_FULL] and hs[_H_CORE] == self.core:
            self._take_handoff(now)
        if self.todo.pending():
            self._run_todo()
        if self.ism is not None:
            self._ism_turn(now)       # before poll: what the host sent leaves this turn
        self.stack.poll(now)
        return ridx[0] != ridx[1]

    def _ism_turn(self, now):
        # A bug in the ISM must not keep this turn from the stack's poll. Its own function,
        # and no "as e": either would put turn()'s frame, or this one, over 11 words, and a
        # bytecode frame that size comes from the heap on every call.
        try:
            self.ism.turn(now)
        except Exception:
            self.errors += 1
            self.last_error = _ISM_FAILED

    def _take_frames(self, now):
        """Up to _BATCH frames off the ring, each through the stack and back to the pool.
        A frame whose input raises goes back too: the core's handler calls recover(). (No
        handler here and no attributes cached in locals: either puts this frame over 11
        words, and such a frame comes from the heap on every call.)"""
        done = 0
        while done < _BATCH:
            s = self.rx.pop()
            if s < 0:
                break
            n = self.pool.flows[s]
            if n >= 0:
                self.flow_frames[n] += 1
            n = self.pool.lens[s]
            self.rx_frames += 1
            self.rx_bytes += n
            self._in_stack = s
            self.stack.input(self.pool.bufs[s], n, now)
            self._in_stack = -1
            self.ret.push(s)
            done += 1

    def recover(self):
        """(This kernel's core, after its turn raised) Give back the frame the stack was
        working on, if it was one of ours (a bug must not leak a slot): True if it was."""
        s = self._in_stack
        if s < 0:
            return False
        self._in_stack = -1
        self.ret.push(s)
        return True

    def has_work(self):
        """Frames on the ring, a datagram handed over, work from core 0 or the host."""
        idx = self.rx.idx          # indices, not calls: core 0 asks on every look
        if idx[0] != idx[1]:
            return True
        idx = self.todo.seq
        if idx[0] != idx[1]:
            return True
        idx = self.hand_state
        if idx[_H_FULL] and idx[_H_CORE] == self.core:
            return True
        ism = self.ism
        return ism is not None and ism.has_messages()

    def sleep(self, wait_event, intn, reader, bell=None, state=None):
        """(Kernels 1..N-1, after a turn that left nothing waiting) Sleep until there is
        work (has_work()), a batch to read for the dispatcher (``intn`` low or
        ``reader.backlog``; both None without dispatch help) or the stack's next deadline.
        With a doorbell (``bell``, held by core 0, and ``state``: Cores.sleep_state) the
        core blocks on it until core 0 rings; else it waits for events (``wait_event()``:
        the board's wait for an interrupt or the other core, at most about a ms)."""
        start = ticks_ms()
        stack = self.stack
        ism = self.ism
        limit = stack.poll_at(start)
        if limit < 0 or limit > _SLEEP_MAX_MS:
            limit = _SLEEP_MAX_MS
        if limit > _SLEEP_BUSY_MS and ((ism is not None and not ism.idle())
                                       or stack.tcp.credit_waiting()):
            limit = _SLEEP_BUSY_MS
        if bell is not None:
            state[_DUE] = ticks_add(start, limit)
            state[_SLEEPING] = 1
            # Looked at after saying so: core 0 rings for anything that comes after.
            if not self.has_work() and (intn is None or (intn() and not reader.backlog)):
                bell.acquire()
                bell.release()
            state[_SLEEPING] = 0
            return
        while ticks_diff(ticks_ms(), start) < limit:
            if self.has_work():
                return
            if intn is not None and (intn() == 0 or reader.backlog):
                return
            wait_event()

    def run_on_core(self, fn):
        """(core 0) Have ``fn(kernel)`` run on this kernel's own core: at once for kernel 0,
        at its next turn for the others. False if an earlier one has not run yet."""
        if self.core == 0:
            fn(self)
            return True
        if self.todo.pending():
            return False
        self.todo.post(fn)
        return True

    def todo_pending(self):
        return self.todo.pending()

    def _run_todo(self):
        fn = self.todo.take()
        try:
            fn(self)
        except Exception as e:      # a bad setting must not stop the core
            self.todo_errors += 1
            self.todo_error = e
        self.todo.done()

    # -- inter-core handoff of reassembled datagrams --------------------------------------

    def _handoff(self, buf, ip_off, total, now):
        """iface hook: True if the datagram went to (or was dropped for) its owner core."""
        proto = buf[ip_off + _IP_PROTO]
        if proto != _PROTO_TCP and proto != _PROTO_UDP:
            return False                  # ICMP has no owner: answered where reassembled
        ihl = (buf[ip_off] & 0x0F) << 2
        if total < ihl + 4:
            return False
        owner = self.port.core_for(buf, ip_off + _IP_SRC, buf, ip_off + _IP_DST, proto,
                                   wire.get16(buf, ip_off + ihl),
                                   wire.get16(buf, ip_off + ihl + 2))
        if owner < 0 or owner >= self.ncores or owner == self.core:
            return False
        hand = self.hand
        if total > len(hand.buf):
            self.handoff_too_big += 1
            return True
        lock = hand.lock
        if not lock.acquire(0):           # another core is filling it: never wait
            self.handoff_busy += 1
            return True
        st = hand.state
        if st[_H_FULL]:
            lock.release()
            self.handoff_busy += 1        # its owner has not taken the previous one yet
            return True
        wire.copy(hand.buf, 0, buf, ip_off, total)
        st[_H_LEN] = total
        st[_H_CORE] = owner
        st[_H_FULL] = 1                   # publish after the copy
        lock.release()
        self.handoffs_out += 1
        return True

    def _take_handoff(self, now):
        try:
            self.stack.iface.deliver_handoff(self.hand.buf, 0, self.hand_state[_H_LEN], now)
        except Exception:
            self.errors += 1
        self.handoffs_in += 1
        self.hand_state[_H_FULL] = 0      # free for the next producer (after delivery)

    # -- hooks for active open and closed connections -------------------------------------

    def _port_ok(self, rip, rport, lport):
        return self.port.core_for(rip, 0, self.stack.iface.ip, 0, _PROTO_TCP,
                                  rport, lport) == self.core

    def _on_remove(self, s):
        self.port.flow_closed(s.remote_ip, s.remote_port, self.stack.iface.ip, s.local_port)

    # -- reports ---------------------------------------------------------------------------

    def counters(self):
        """(name, value) pairs of this kernel and every layer of its stack (allocates)."""
        return list(self.iter_counters())

    def iter_counters(self):
        """counters() one pair at a time (reports: no more than one small layer's dict alive
        at a time)."""
        yield "rx_frames", self.rx_frames
        yield "rx_bytes", self.rx_bytes
        yield "turns", self.turns
        yield "tcp_conns", self.stack.tcp.connection_count()
        yield "kernel_errors", self.errors
        yield "setting_errors", self.todo_errors
        yield "handoffs_out", self.handoffs_out
        yield "handoffs_in", self.handoffs_in
        yield "handoff_busy", self.handoff_busy
        yield "handoff_too_big", self.handoff_too_big
        yield "events_dropped", self.port.events.dropped
        if self.ism is not None:
            for name, value in self.ism.counters():
                yield "ism." + name, value
        for layer in self.stack.layers():
            for name, value in self.stack.layer_report(layer):
                yield "%s.%s" % (layer, name), value

    def stats(self):
        """name=value pairs of this kernel and every layer of its stack (allocates)."""
        return "core=%d " % self.core + " ".join("%s=%d" % kv for kv in self.counters())
