# The I2O messaging unit (core 0): bring-up, inbound checks and FAIL replies, MFA credits in
# both directions, FREE batching, resumed link writes, the EXEC functions served on core 0.
import struct

from i2o_harness import Reply, Rig, message
from netkernel.proto import i2o
from netkernel.proto import linkframe as lf


def frames_of(rig, kind):
    return [f for f in rig.got if f[0] == kind]


def fails(rig):
    out = [r for r in rig.replies if r.flags & i2o.FLAG_FAIL]
    for r in out:
        rig.replies.remove(r)
    return out


def test_ready_at_boot_then_init_reports_the_board():
    rig = Rig(kernels=1)
    rig.run(20)
    ready = frames_of(rig, lf.KIND_I2O_READY)
    assert len(ready) == 1 and ready[0][1:] == rig.mu.epoch
    st, proto, ver, iops, hbits, depth, fb, used, epoch = rig.init(grant=40, fbytes=4096)
    assert (st, proto, ver, iops, hbits, depth) == (i2o.INIT_OK, i2o.PROTOCOL_VERSION,
                                                    i2o.VERSION, 1, 16, 8)
    assert fb == 1024 and used == 16               # the board's maxima
    assert epoch == struct.unpack("<I", rig.mu.epoch)[0]
    st, _, _, _, _, _, fb, used, _ = rig.init(grant=3, fbytes=256)
    assert st == i2o.INIT_OK and fb == 256 and used == 3 and rig.mu.inits == 2
    rig.run(20)
    assert len(frames_of(rig, lf.KIND_I2O_READY)) == 1   # READY only once
    rig.stop()


def test_wrong_version_or_grant_is_refused_and_changes_nothing():
    rig = Rig(kernels=1)
    r = rig.init(version=7)
    assert r[0] == i2o.INIT_BAD_VERSION and r[1] == i2o.PROTOCOL_VERSION
    assert rig.mu.ready == 0 and rig.mu.granted == 0
    assert rig.init(grant=0)[0] == i2o.INIT_BAD_GRANT
    assert rig.init(fbytes=8)[0] == i2o.INIT_BAD_GRANT
    # Before any INIT there is no frame to answer in: a POST is counted, nothing else.
    rig.post(0, message(i2o.F_UTIL_NOP, i2o.TID_EXEC), mfa=0)
    rig.run(20)
    assert rig.mu.not_ready == 1 and rig.replies == []
    assert rig.mu.init_refused == 3
    assert rig.init()[0] == i2o.INIT_OK
    rig.stop()


def test_bad_mfa_bad_iop_and_duplicates_fail_with_the_preserved_mfa():
    rig = Rig(kernels=1)
    rig.init()
    req = message(i2o.F_UTIL_NOP, i2o.TID_EXEC, ictx=0xAABBCCDD, tctx=77)
    rig.post(0, req, mfa=8)                       # out of range
    rig.post(3, req, mfa=0)                       # no IOP 3
    rig.run(30)
    f = fails(rig)
    assert [r.detail for r in f] == [i2o.FAIL_BAD_MFA, i2o.FAIL_BAD_IOP]
    for r, (iop, mfa) in zip(f, ((0, 8), (3, 0))):
        assert r.flags & i2o.FLAG_REPLY and r.rs == i2o.RS_ERROR_NO_DATA
        assert struct.unpack_from("<HH", r.payload, 0) == (mfa, iop)    # preserved MFA
        assert r.payload[4:20] == req[:16]             # the refused frame's first words
        assert (r.ictx, r.tctx) == (0xAABBCCDD, 77)    # found by its contexts
    # A duplicate: the same MFA twice before the first is processed.
    mfa = rig.free[0].pop(0)
    rig.post(0, message(i2o.F_UTIL_NOP, i2o.TID_EXEC), mfa=mfa)
    rig.post(0, message(i2o.F_EXEC_STATUS_GET, i2o.TID_EXEC, tctx=5), mfa=mfa)
    rig.run(30)
    f = fails(rig)
    assert len(f) == 1 and f[0].detail == i2o.FAIL_MFA_IN_USE and f[0].tctx == 5
    assert rig.free[0].count(mfa) == 1           # came back once, for its first message
    assert rig.held() == {0: 0}
    assert rig.mu.fail_bad_mfa == 1 and rig.mu.fail_bad_iop == 1 and rig.mu.fail_in_use == 1
    rig.stop()


def test_bad_header_and_too_large_fail_and_the_mfa_comes_back():
    rig = Rig(kernels=1)
    rig.init(fbytes=256)
    bad = bytearray(message(i2o.F_UTIL_NOP, i2o.TID_EXEC, tctx=9))
    bad[0] = 0x02                                  # wrong version
    rig.post(0, bytes(bad))
    short = bytearray(message(i2o.F_UTIL_NOP, i2o.TID_EXEC, tctx=10))
    short[2] = 9                                   # claims 9 words, has 4
    rig.post(0, bytes(short))
    rig.post(0, b"\x01\x00")                      # not even a header
    rig.post(0, message(i2o.F_SOCK_SEND, payload=bytes(300), tctx=11))   # > 256 bytes
    rig.run(30)
    f = fails(rig)
    assert [r.detail for r in f] == [i2o.FAIL_BAD_HEADER] * 3 + [i2o.FAIL_FRAME_TOO_LARGE]
    assert f[0].tctx == 9 and f[1].tctx == 10 and f[3].tctx == 11
    assert rig.held() == {0: 0}                   # every refused MFA is free again
    rig.stop()


def test_nops_come_back_in_one_free_batch_and_none_is_lost():
    rig = Rig(kernels=2)
    rig.init()
    rig.run(20)
    n = len(frames_of(rig, lf.KIND_I2O_FREE))
    for _ in range(8):
        rig.post(0, message(i2o.F_UTIL_NOP, i2o.TID_EXEC))
    for _ in range(5):
        rig.post(1, message(i2o.F_UTIL_NOP, i2o.TID_EXEC))
    rig.run(100, lambda: rig.held() == {0: 0, 1: 0})
    frees = frames_of(rig, lf.KIND_I2O_FREE)[n:]
    assert rig.held() == {0: 0, 1: 0}
    assert rig.replies == []                      # a NOP has no reply
    # Kernel 0 takes all 8 in one turn: one FREE. Kernel 1 (a thread) in its own time.
    assert [f[2] for f in frees if f[1] == 0] == [8]
    assert sum(f[2] for f in frees if f[1] == 1) == 5
    rig.stop()


def test_outbound_never_exceeds_the_grant_and_flush_gives_frames_back():
    rig = Rig(kernels=1)
    rig.init(grant=2)
    rig.auto_flush = False
    for _ in range(5):
        rig.request(i2o.F_EXEC_STATUS_GET, target=i2o.TID_EXEC)
    rig.run(50)
    assert len(rig.replies) == 2 and {r.mfa for r in rig.replies} == {0, 1}
    seen = len(rig.replies)
    while seen < 5:
        r = rig.replies[-1]
        rig.send(lf.KIND_I2O_FLUSH, bytes([1, r.mfa, 0]))
        rig.run(30)
        assert len(rig.replies) == seen + 1
        seen += 1
    assert all(r.mfa < 2 for r in rig.replies)
    assert [r.rs for r in rig.replies] == [0] * 5
    iop, state, socks, maxs, free = struct.unpack_from(i2o.STATUS_FMT, rig.replies[0].payload)
    assert iop == 0 and state == 2 and maxs > 0 and free <= 8
    x = rig.replies[-1].mfa
    rig.send(lf.KIND_I2O_FLUSH, bytes([1, 7, 0]))         # unknown
    rig.send(lf.KIND_I2O_FLUSH, bytes([2, x, 0, x, 0]))   # the second one is a duplicate
    rig.send(lf.KIND_I2O_FLUSH, bytes([2, 1]))            # malformed
    rig.run(20)
    assert rig.mu.flush_bad == 2 and rig.mu.bad_request == 1
    rig.stop()


def test_a_write_the_host_does_not_take_at_once_is_resumed_not_dropped():
    rig = Rig(kernels=1)
    s = rig.hw.stream
    orig = s.write
    budget = [0]

    def slow_write(buf):            # the host takes 7 bytes per turn
        n = min(len(buf), budget[0])
        budget[0] -= n
        return orig(bytes(buf[:n])) if n else 0

    s.write = slow_write
    rig.send(lf.KIND_I2O_INIT, struct.pack(i2o.INIT_FMT, 1, 4, 1024, 0))
    rig.free = {0: list(range(8))}
    for _ in range(400):
        budget[0] = 7
        rig.run(0)
    for _ in range(3):
        rig.request(i2o.F_PARAMS_GET, target=i2o.TID_EXEC)
    for _ in range(4000):
        budget[0] = 7
        rig.run(0)
        if len([r for r in rig.replies if r.flags & i2o.FLAG_LAST]) == 3:
            break
    assert len([r for r in rig.replies if r.flags & i2o.FLAG_LAST]) == 3
    assert rig.deframer.errors == 0 and rig.node.link.tx_dropped == 0
    assert rig.node.link.tx_resumed > 0 and rig.mu.out_waits > 0
    assert frames_of(rig, lf.KIND_I2O_INIT_REPLY)
    rig.stop()


def test_params_get_is_the_stats_text_in_multiple_frames():
    rig = Rig(kernels=2)
    rig.init(fbytes=256)
    t = rig.request(i2o.F_PARAMS_GET, target=i2o.TID_EXEC, iop=1)
    rig.run(300, lambda: any(r.tctx == t and r.flags & i2o.FLAG_LAST for r in rig.replies))
    parts = [r for r in rig.replies if r.tctx == t]
    assert len(parts) > 2
    assert all(r.flags & i2o.FLAG_MULTIPLE for r in parts[:-1])
    assert parts[-1].flags & i2o.FLAG_LAST and not parts[-1].flags & i2o.FLAG_MULTIPLE
    text = b"".join(bytes(r.raw[20:r.size]) for r in parts).rstrip(b"\x00").decode()
    fields = dict(item.split("=") for item in text.split())
    assert "i2o.posts" in fields and "k1.ism.msgs" in fields and "ism.sends" in fields
    rig.run(30)
    assert rig.held() == {0: 0, 1: 0}
    rig.stop()


def test_params_set_configures_the_node():
    rig = Rig(kernels=2)
    rig.init()
    r = rig.call(i2o.F_PARAMS_SET, b"hash=toeplitz", target=i2o.TID_EXEC)
    assert r.rs == i2o.RS_SUCCESS and bytes(r.raw[20:r.size]).startswith(b"ok hash")
    r = rig.call(i2o.F_PARAMS_SET, b"hash=nope", target=i2o.TID_EXEC)
    assert r.rs == i2o.RS_ERROR_NO_DATA and r.detail == i2o.DS_ERRNO + 22
    rig.run(30)
    assert rig.held() == {0: 0, 1: 0}
    rig.stop()


def test_unknown_exec_function_and_unknown_target_are_refused():
    rig = Rig(kernels=1)
    rig.init()
    r = rig.call(0x99, target=i2o.TID_EXEC)
    assert (r.rs, r.detail) == (i2o.RS_ERROR_NO_DATA, i2o.DS_UNKNOWN_FUNCTION)
    r = rig.call(i2o.F_SOCK_LISTEN, target=0x123)
    assert (r.rs, r.detail) == (i2o.RS_ERROR_NO_DATA, i2o.DS_UNKNOWN_TARGET)
    rig.run(30)
    assert rig.held() == {0: 0}
    rig.stop()


def test_counters_reach_the_node_stats():
    rig = Rig(kernels=1)
    rig.init()
    rig.call(i2o.F_EXEC_STATUS_GET, target=i2o.TID_EXEC)
    fields = dict(p.split("=") for p in " ".join(rig.node.stats_parts()).split())
    assert fields["i2o.posts"] == "1" and fields["i2o.inits"] == "1"
    assert int(fields["i2o.replies"]) >= 1 and "k0.ism.msgs" in fields
    assert Reply  # the harness's parser is what the tests read replies with
    rig.stop()
