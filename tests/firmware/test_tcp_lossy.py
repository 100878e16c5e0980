# Two TCP layers across a link with 5% loss, 10% reordering and 1% duplication: data must
# arrive byte-exact in both directions, both sides must close cleanly, and no connection
# state may be left once TIME-WAIT is over.
from netkernel import tcp as T
from tcp_harness import OUR_IP, ImpairedLink

TIMEOUT_S = 300


def pattern(i, salt):
    # Byte i of a stream of 32-bit big-endian counters: misplaced data shows where it came from.
    return (((i >> 2) >> ((3 - (i & 3)) * 8)) ^ salt) & 0xFF


class Endpoint:
    """Application: send `total` bytes of a pattern, read and check the other side's."""

    def __init__(self, sock, total, salt, expect_salt, expect_total):
        self.sock = sock
        self.total = total
        self.salt = salt
        self.sent = 0
        self.expect_salt = expect_salt
        self.expect_total = expect_total
        self.got = 0
        self.bad = 0
        self.buf = bytearray(2000)
        self.closed = False

    def pump(self):
        s = self.sock
        buf = self.buf
        while self.sent < self.total and s.state in (T.ESTABLISHED, T.CLOSE_WAIT):
            n = min(len(buf), self.total - self.sent)
            for i in range(n):
                buf[i] = pattern(self.sent + i, self.salt)
            k = s.send(buf, 0, n)
            self.sent += k
            if k < n:
                break
        if self.sent >= self.total and not self.closed:
            s.close()
            self.closed = True
        while True:
            n = s.recv_into(buf, 0, len(buf))
            if not n:
                break
            for i in range(n):
                if buf[i] != pattern(self.got + i, self.expect_salt):
                    self.bad += 1
            self.got += n


def transfer(nbytes_a, nbytes_b, seed, **impair):
    link = ImpairedLink(seed=seed, **impair)
    listener = link.b.tcp.listen(80)
    now = 1000
    ca = link.a.tcp.connect(OUR_IP, 0, 80, now)
    a = Endpoint(ca, nbytes_a, 1, 2, nbytes_b)
    b = None
    for _ in range(400000):
        d = link.next_event(now)
        if d < 0:
            break
        now += d if d > 0 else 0
        link.step(now)
        if b is None:
            sb = listener.accept()
            if sb is not None:
                b = Endpoint(sb, nbytes_b, 2, 1, nbytes_a)
        a.pump()
        if b is not None:
            b.pump()
        if d == 0 and not link.queue:
            now += 1
    assert b is not None
    return link, a, b, now


def check(link, a, b):
    assert a.got == b.sent == b.total, (a.got, b.sent)
    assert b.got == a.sent == a.total, (b.got, a.sent)
    assert a.bad == 0 and b.bad == 0
    assert a.sock.error == 0 and b.sock.error == 0
    assert a.sock.state == T.CLOSED and b.sock.state == T.CLOSED
    assert link.a.tcp.connection_count() == 0 and link.b.tcp.connection_count() == 0


def test_bulk_both_ways_through_loss_reordering_duplication():
    link, a, b, now = transfer(300000, 200000, seed=11)
    check(link, a, b)
    c = link.a.tcp.counters()
    assert c["retransmits"] > 0 and link.b.tcp.counters()["ooo_segments"] > 0


def test_other_seeds_and_heavier_loss():
    for seed in (1, 99, 4242):
        link, a, b, now = transfer(60000, 60000, seed=seed, loss=150, reorder=200, dup=30)
        check(link, a, b)


def test_cases_that_once_failed():
    # An RX ring that rewound its head when emptied moved parked out-of-order data.
    check(*transfer(200000, 150000, seed=7)[:3])
    # Pure ACKs with SEQ = SND.NXT after an RTO made two stacks ACK each other forever.
    check(*transfer(40925, 30275, seed=25, loss=50, reorder=100, dup=10)[:3])
    check(*transfer(40296, 30088, seed=8, loss=200, reorder=300, dup=50)[:3])


def test_clean_link_is_fast():
    link, a, b, now = transfer(300000, 0, seed=3, loss=0, reorder=0, dup=0)
    check(link, a, b)
    assert link.a.tcp.retransmits == 0
