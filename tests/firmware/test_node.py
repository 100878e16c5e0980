# Core 0's node loop with the emulated chip: bring-up, frames in, host link, bad input.
import time

import boardfake
from netkernel.node import Node
from netkernel.proto import linkframe as lf

MAC = b"\x02\x00\x0a\x4d\x00\x02"
IP = bytes([10, 77, 0, 2])


def started():
    node = Node(boardfake)
    node.start()
    return node, node.hw


def turns(node, n=5):
    for _ in range(n):
        node.turn(time.ticks_ms())


def link_frame(kind, body=b""):
    payload = bytes([kind]) + body
    out = bytearray(lf.encoded_size(len(payload)))
    return bytes(out[:lf.encode_into(payload, len(payload), out)])


def link_replies(stream):
    got = []
    d = lf.Deframer(lambda buf, n: got.append(bytes(buf[:n])))
    d.feed(stream.outgoing, len(stream.outgoing))
    # The messaging unit's KIND_I2O_READY (once at boot) is not an answer to anything here.
    got = [f for f in got if f[0] != lf.KIND_I2O_READY]
    return got


def test_start_announces_with_gratuitous_arp():
    node, hw = started()
    arp = hw.wire.sent[0]
    assert len(arp) == 60 and arp[:6] == b"\xff" * 6 and arp[6:12] == MAC
    assert arp[12:22] == b"\x08\x06\x00\x01\x08\x00\x06\x04\x00\x01"
    assert arp[22:28] == MAC and arp[28:32] == IP and arp[38:42] == IP
    assert arp[42:] == bytes(18)
    node.stop()


def test_frames_run_through_the_stack():
    node, hw = started()
    peer_mac = b"\x02\x00\x0a\x4d\x00\x01"
    peer_ip = bytes([10, 77, 0, 1])
    arp_request = (b"\xff" * 6 + peer_mac + b"\x08\x06\x00\x01\x08\x00\x06\x04\x00\x01"
                   + peer_mac + peer_ip + bytes(6) + IP)
    sent_before = len(hw.wire.sent)
    hw.wire.inject(arp_request)
    turns(node)
    reply = hw.wire.sent[sent_before]
    assert reply[:6] == peer_mac and reply[12:14] == b"\x08\x06"
    assert reply[20:22] == b"\x00\x02" and reply[22:28] == MAC and reply[28:32] == IP
    assert node.kernel.rx_frames == 1
    node.stop()


def test_bad_frames_on_the_wire_are_counted_and_dropped():
    node, hw = started()
    peer = b"\x02\x00\x0a\x4d\x00\x01"
    assert not hw.wire.inject(b"\x01\x02\x03")                       # runt
    assert not hw.wire.inject(MAC + peer + b"\x08\x00" + bytes(2000))  # oversize
    good = MAC + peer + b"\x08\x00" + bytes(100)
    assert hw.wire.inject(good)
    turns(node)
    c = hw.chip.counters
    assert c.rx_dropped_runt == 1 and c.rx_dropped_oversize == 1
    # The good-length frame reaches the dispatcher, whose classifier drops it as malformed
    # (an IPv4 header of zeros) before any kernel sees it.
    assert node.cores.reader.rx_frames == 1 and node.errors == 0
    assert node.disp.counters()["drop_malformed"] == 1 and node.kernel.rx_frames == 0
    node.stop()


def test_garbage_on_usb_is_counted_and_the_link_resyncs():
    node, hw = started()
    hw.stream.incoming += b"\x55\xaa\x00garbage\x00\x07" + link_frame(lf.KIND_ECHO_REQUEST, b"hi")
    hw.stream.incoming += bytes(range(1, 256)) * 12 + link_frame(lf.KIND_ECHO_REQUEST, b"again")
    hw.stream.incoming += link_frame(0x7E, b"unknown kind")
    turns(node, 40)
    assert link_replies(hw.stream) == [bytes([lf.KIND_ECHO_REPLY]) + b"hi",
                                       bytes([lf.KIND_ECHO_REPLY]) + b"again"]
    d = node.link.deframer
    assert d.errors >= 2 and d.too_long == 1
    assert node.link.unknown_kind == 1
    node.stop()


def test_host_can_put_a_frame_on_the_wire():
    node, hw = started()
    frame = b"\xff" * 6 + MAC + b"\x88\xb5" + bytes(range(100))
    hw.stream.incoming += link_frame(lf.KIND_WIRE_TX, frame)
    hw.stream.incoming += link_frame(lf.KIND_WIRE_TX, b"\x01\x02")       # too short: refused
    turns(node)
    assert hw.wire.sent[-1] == frame
    assert node.link.wire_tx_frames == 1 and node.link.bad_request == 1
    node.stop()


def test_lost_link_is_reported():
    node, hw = started()
    assert node.link_up
    hw.wire.link_up = False
    node._next_link_check = time.ticks_ms()
    turns(node, 1)
    assert not node.link_up
    node.stop()


def test_stats_reach_the_host_whole_even_when_longer_than_a_frame():
    node, hw = started()
    hw.stream.incoming += link_frame(lf.KIND_STATS_REQUEST)
    turns(node, 3)
    replies = link_replies(hw.stream)
    assert len(replies) >= 2 and all(r[0] == lf.KIND_STATS_REPLY for r in replies)
    assert [r[1] for r in replies] == [1] * (len(replies) - 1) + [0]
    text = b"".join(r[2:] for r in replies).decode()
    fields = dict(item.split("=") for item in text.split())
    assert fields["errors"] == "0" and int(fields["heap_free"]) > 0
    assert fields["tcp.connections"] == "0" and "ip.bad_checksum" in fields
    node.stop()


def stats_fields(replies):
    text = b"".join(r[2:] for r in replies).decode()
    return dict(item.split("=") for item in text.split())


def test_stats_to_a_slow_host_come_whole_over_later_turns_and_nothing_is_dropped():
    node, hw = started()
    hw.stream.room = 300          # the host reads 300 bytes between two of the board's turns
    hw.stream.incoming += link_frame(lf.KIND_STATS_REQUEST)
    for _ in range(400):
        node.turn(time.ticks_ms())
        hw.stream.room = 300
        if node.link._text is None and not node.link.busy():
            break
    replies = link_replies(hw.stream)
    assert len(replies) >= 3 and all(r[0] == lf.KIND_STATS_REPLY for r in replies)
    assert [r[1] for r in replies] == [1] * (len(replies) - 1) + [0]
    fields = stats_fields(replies)
    assert fields["link_tx_dropped"] == "0" and fields["link_replies_cut"] == "0"
    assert int(fields["heap_free"]) > 0 and "ip.bad_checksum" in fields
    assert "i2o.posts" in fields and node.link.tx_dropped == 0
    node.stop()


def test_a_new_stats_request_replaces_one_still_going_out_without_tearing_a_frame():
    node, hw = started()
    hw.stream.room = 1000
    hw.stream.incoming += link_frame(lf.KIND_STATS_REQUEST)
    turns(node, 1)                # a frame and a half went out: the host stops reading
    assert node.link._text is not None and node.link.busy()
    hw.stream.incoming += link_frame(lf.KIND_STATS_REQUEST)
    hw.stream.room = None
    turns(node, 3)
    assert node.link.replies_cut == 1 and node.link.tx_dropped == 0
    replies = link_replies(hw.stream)
    # The first reply ends with its page that was under way (finished, so every frame
    # decodes); the second comes whole after it.
    assert all(r[0] == lf.KIND_STATS_REPLY for r in replies)
    assert [r[1] for r in replies] == [1] * (len(replies) - 1) + [0]
    fields = stats_fields(replies[1:])
    assert fields["link_replies_cut"] == "1" and fields["errors"] == "0"
    node.stop()


def test_a_failing_host_request_is_counted_and_the_link_carries_on():
    node, hw = started()

    def broken(buf, n):
        raise OSError(5)

    node.wire_tx = broken
    frame = b"\xff" * 6 + MAC + b"\x88\xb5" + bytes(50)
    hw.stream.incoming += link_frame(lf.KIND_WIRE_TX, frame)
    hw.stream.incoming += link_frame(lf.KIND_ECHO_REQUEST, b"after")
    turns(node, 4)            # must not raise
    assert node.errors == 1
    hw.stream.incoming += link_frame(lf.KIND_ECHO_REQUEST, b"again")
    turns(node, 4)
    assert bytes([lf.KIND_ECHO_REPLY]) + b"again" in link_replies(hw.stream)
    node.stop()


def test_the_receive_budget_fits_the_chip_and_stays_below_early_discard():
    from netkernel.node import rx_budget
    # One kernel: the chip's 10 frames, less the 3 the driver may hold before it gives
    # them back, plus the 7 slots of a ring of 8, is 14; but a ring of 8 takes 5 below its
    # early discard (from 6 on), as with several kernels.
    assert rx_budget(1, 7, 8) == 5 * 1460
    # A ring larger than the chip and the slots hold: the chip is the limit.
    assert rx_budget(1, 2, 32) == 9 * 1460
    # Two kernels, rings of 8 (early discard from 6 on): 5 segments each, not half of 22.
    assert rx_budget(2, 15, 8) == 5 * 1460
    # Never less than the two segments a handshake offers.
    assert rx_budget(2, 2, 2) == 2 * 1460


def test_one_kernel_gets_the_ring_slots_and_window_of_each_of_several():
    from netkernel.cores import default_pool_slots
    assert default_pool_slots(1, 8) == 7        # ring to 6, and early discard's one spare
    assert default_pool_slots(2, 8) == 15
    assert default_pool_slots(1, 4) == 3
    assert default_pool_slots(2, 4) == 8
    for kernels in (1, 2):
        boardfake.OVERRIDES.clear()
        boardfake.OVERRIDES["kernels"] = kernels
        boardfake.OVERRIDES["ring_capacity"] = 8
        try:
            node = Node(boardfake)
        finally:
            boardfake.OVERRIDES.clear()
        k0 = node.kernels[0]
        assert k0.rx.capacity == 8, (kernels, k0.rx.capacity)
        assert node.cores.pool.size == (7 if kernels == 1 else 15)
        assert k0.stack.config.tcp_rx_budget == 5 * 1460
