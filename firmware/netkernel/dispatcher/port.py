# A kernel's port to the dispatcher: all it shares with it, in one object per kernel.
#
# Frames come in on `rx` (slot numbers into the dispatcher's FramePool) and go back on `ret`
# once the stack is done with them; `flow_frames` counts them per flow number. A kernel asks
# which core a flow goes to (core_for: for a port of an active open, a reassembled datagram)
# and says when a connection is gone (flow_closed). The dispatcher's state is read here, never
# written, except by a kernel on the dispatcher's own core (`direct`): every other kernel's
# closes travel on `events`, which the dispatcher's reader drains between its batches.
from array import array

from micropython import const

from netkernel.dispatcher.steering import KEY_LEN, put_key
from netkernel.rings import EventRing, SpscRing, pow2_at_least

_PROTO_TCP = const(6)
_EVENTS = const(32)       # closed connections waiting for the dispatcher


class DispatchPort:
    def __init__(self, disp, ring_capacity, return_capacity, flow_capacity, direct=False):
        """``disp``: the Dispatcher; ``direct``: this kernel runs where the dispatcher does
        and no other core dispatches, so it may tell it of closes itself."""
        self.disp = disp
        self.rx = SpscRing(pow2_at_least(ring_capacity))       # dispatcher -> kernel
        self.ret = SpscRing(pow2_at_least(return_capacity))    # used slots -> dispatcher
        self.events = EventRing(_EVENTS)                        # closed flows -> dispatcher
        self.flow_frames = array("I", bytes(4 * flow_capacity))
        self.direct = direct
        self.key = bytearray(KEY_LEN)     # this kernel's scratch key: the dispatcher's is core 0's

    def core_for(self, src, src_off, dst, dst_off, proto, sport, dport):
        """The core a flow (wire direction: src = remote) goes to: its owner in the flow
        table, else a host rule's core or the hash's, as a new flow's would be now."""
        key = self.key
        put_key(key, src, src_off, dst, dst_off, proto, sport, dport)
        return self.disp.core_for_key(key)

    def flow_closed(self, remote_ip, remote_port, local_ip, local_port):
        """A TCP connection is gone: its flow-table entry may go."""
        if self.direct:
            self.disp.flow_closed(_PROTO_TCP, remote_ip, 0, local_ip, 0, remote_port,
                                  local_port)
        else:
            self.events.push(remote_ip, 0, remote_port, local_port)
