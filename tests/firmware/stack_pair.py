# Two stacks wired back to back in one process: frames sent by one are queued (in
# preallocated slots, so the wire itself never allocates) and fed to the other's input().
import time

from netkernel import wire
from netkernel.stack import Stack, StackConfig

MAC_A = b"\x02\x00\x00\x00\x00\x0a"
MAC_B = b"\x02\x00\x00\x00\x00\x0b"
IP_A = bytes([10, 9, 0, 1])
IP_B = bytes([10, 9, 0, 2])
GW = bytes([10, 9, 0, 254])
_SLOTS = 128


class FrameRing:
    """A fixed ring of frame slots: the cable from one stack to the other."""

    def __init__(self):
        self.slots = [bytearray(1536) for _ in range(_SLOTS)]
        self.lens = [0] * _SLOTS
        self.head = 0
        self.tail = 0
        self.dropped = 0
        self.frames = 0
        self.drop_every = 0   # > 0: drop every n-th frame (a lossy cable)

    def send(self, buf, n):
        self.frames += 1
        if self.drop_every and self.frames % self.drop_every == 0:
            return True
        nxt = (self.head + 1) % _SLOTS
        if nxt == self.tail:
            self.dropped += 1
            return False
        wire.copy(self.slots[self.head], 0, buf, 0, n)
        self.lens[self.head] = n if n >= 60 else 60
        self.head = nxt
        return True

    def deliver_one(self, stack, now):
        if self.tail == self.head:
            return False
        i = self.tail
        self.tail = (i + 1) % _SLOTS
        stack.input(self.slots[i], self.lens[i], now)
        return True


class StackPair:
    def __init__(self, services_b=True, **config):
        self.a_to_b = FrameRing()
        self.b_to_a = FrameRing()
        self.a = Stack(self.a_to_b.send, MAC_A, IP_A, 24, GW,
                       StackConfig(services=False, **config))
        self.b = Stack(self.b_to_a.send, MAC_B, IP_B, 24, GW,
                       StackConfig(services=services_b, **config))
        self.now = time.ticks_ms()

    def run(self, turns=1, step_ms=1):
        """Deliver frames both ways and poll both stacks; time advances step_ms per turn."""
        for _ in range(turns):
            moved = True
            while moved:
                moved = self.a_to_b.deliver_one(self.b, self.now)
                moved = self.b_to_a.deliver_one(self.a, self.now) or moved
            self.a.poll(self.now)
            self.b.poll(self.now)
            self.now = time.ticks_add(self.now, step_ms)
