"""Tests of the W5500 emulator at the SPI byte level (not of the firmware's driver).

Each helper below drives the emulated bus the way a host would: CS low, header bytes,
data bytes, CS high. Section numbers refer to shared/reference/w5500.md.
"""

import _thread
import time

from simhw.w5500_emulator import EmulatedPin, W5500Emulator
from simhw.wire import MemoryWire

# Block select codes.
COMMON = 0


def SREG(n):
    return 4 * n + 1


def TXB(n):
    return 4 * n + 2


def RXB(n):
    return 4 * n + 3


# Register offsets used here (common block, then socket block).
MR = 0x00
SHAR = 0x09
SIR = 0x17
SIMR = 0x18
RTR = 0x19
RCR = 0x1B
PHYCFGR = 0x2E
VERSIONR = 0x39
Sn_MR = 0x00
Sn_CR = 0x01
Sn_IR = 0x02
Sn_SR = 0x03
Sn_DHAR = 0x06
Sn_TTL = 0x16
Sn_RXBUF_SIZE = 0x1E
Sn_TXBUF_SIZE = 0x1F
Sn_TX_FSR = 0x20
Sn_TX_RD = 0x22
Sn_TX_WR = 0x24
Sn_RX_RSR = 0x26
Sn_RX_RD = 0x28
Sn_RX_WR = 0x2A
Sn_IMR = 0x2C
Sn_FRAG = 0x2D
# Sn_CR commands and Sn_IR bits.
OPEN = 0x01
CLOSE = 0x10
SEND = 0x20
RECV = 0x40
SENDOK = 0x10
RECV_IR = 0x04

MAC = b"\x02\x00\x00\x00\x00\x01"
OTHER = b"\x02\x00\x00\x00\x00\x09"
PEER = b"\x02\x00\x00\x00\x00\x02"
BCAST = b"\xff\xff\xff\xff\xff\xff"
MCAST = b"\x01\x00\x5e\x00\x00\x01"


# ----- bus helpers ------------------------------------------------------------------------


def header(addr, bsb, write, om=0):
    return bytes([addr >> 8, addr & 0xFF, (bsb << 3) | (0x04 if write else 0) | om])


def rd(emu, bsb, addr, n):
    buf = bytearray(n)
    emu.cs(0)
    emu.spi.write(header(addr, bsb, False))
    emu.spi.readinto(buf)
    emu.cs(1)
    return buf


def wr(emu, bsb, addr, data):
    emu.cs(0)
    emu.spi.write(header(addr, bsb, True) + bytes(data))
    emu.cs(1)


def rd8(emu, bsb, addr):
    return rd(emu, bsb, addr, 1)[0]


def rd16(emu, bsb, addr):
    b = rd(emu, bsb, addr, 2)
    return (b[0] << 8) | b[1]


def wr16(emu, bsb, addr, v):
    wr(emu, bsb, addr, [(v >> 8) & 0xFF, v & 0xFF])


def command(emu, n, cmd):
    wr(emu, SREG(n), Sn_CR, [cmd])
    for _ in range(100):
        if rd8(emu, SREG(n), Sn_CR) == 0:
            return
    raise AssertionError("Sn_CR never cleared")


def read_rsr_bytes(emu):
    # As ioLibrary does it: high byte and low byte in two separate 1-byte frames.
    hi = rd8(emu, SREG(0), Sn_RX_RSR)
    lo = rd8(emu, SREG(0), Sn_RX_RSR + 1)
    return (hi << 8) | lo


def macraw(mr=0x84, **kwargs):
    """An emulator with SHAR=MAC and socket 0 open in MACRAW mode with Sn_MR=mr."""
    emu = W5500Emulator(**kwargs)
    wr(emu, COMMON, SHAR, MAC)
    wr(emu, SREG(0), Sn_MR, [mr])
    command(emu, 0, OPEN)
    assert rd8(emu, SREG(0), Sn_SR) == 0x42
    return emu


def eth(dst, n=100, etype=0x0800, src=PEER, seed=0):
    f = bytearray(n)
    f[0:6] = dst
    f[6:12] = src
    f[12] = etype >> 8
    f[13] = etype & 0xFF
    for i in range(14, n):
        f[i] = (i + seed) & 0xFF
    return bytes(f)


def read_record(emu, split=False):
    """Read one RX record the way a driver does; returns the frame, advances RX_RD."""
    ptr = rd16(emu, SREG(0), Sn_RX_RD)
    hdr = rd(emu, RXB(0), ptr, 2)
    length = (hdr[0] << 8) | hdr[1]
    if split:
        body = rd(emu, RXB(0), (ptr + 2) & 0xFFFF, 7)
        body += rd(emu, RXB(0), (ptr + 9) & 0xFFFF, length - 9)
    else:
        body = rd(emu, RXB(0), (ptr + 2) & 0xFFFF, length - 2)
    wr16(emu, SREG(0), Sn_RX_RD, (ptr + length) & 0xFFFF)
    command(emu, 0, RECV)
    return bytes(body)


def send_frame(emu, frame):
    ptr = rd16(emu, SREG(0), Sn_TX_WR)
    wr(emu, TXB(0), ptr, frame)
    wr16(emu, SREG(0), Sn_TX_WR, (ptr + len(frame)) & 0xFFFF)
    command(emu, 0, SEND)


# ----- SPI framing ------------------------------------------------------------------------


def test_versionr_byte_stream():
    emu = W5500Emulator()
    emu.cs(0)
    emu.spi.write(b"\x00\x39\x00")
    assert emu.spi.read(1) == b"\x04"
    emu.cs(1)
    # The whole frame in one full-duplex call: the chip shifts out 00 01 02 during the header.
    rbuf = bytearray(4)
    emu.cs(0)
    emu.spi.write_readinto(b"\x00\x39\x00\x00", rbuf)
    emu.cs(1)
    assert rbuf == b"\x00\x01\x02\x04"
    assert emu.counters.spi_frames == 2


def test_write_simr_byte_stream():
    emu = W5500Emulator()
    emu.cs(0)
    emu.spi.write(b"\x00\x18\x04\xff")
    emu.cs(1)
    assert rd8(emu, COMMON, SIMR) == 0xFF


def test_bytes_ignored_while_cs_high():
    emu = W5500Emulator()
    emu.spi.write(b"\x00\x18\x04\xff")  # CS never went low
    assert rd8(emu, COMMON, SIMR) == 0


def test_header_and_data_split_across_calls():
    emu = W5500Emulator()
    emu.cs(0)
    for b in (b"\x00", b"\x09", b"\x04"):
        emu.spi.write(b)
    emu.spi.write(MAC[:2])
    emu.spi.write(MAC[2:])
    emu.cs(1)
    emu.cs(0)
    emu.spi.write(b"\x00\x09")
    emu.spi.write(b"\x00")
    a = emu.spi.read(1)
    b = emu.spi.read(5)
    emu.cs(1)
    assert a + b == MAC
    # Header and first data bytes in one call, the rest in another.
    emu.cs(0)
    emu.spi.write(b"\x00\x09\x00")
    buf = bytearray(6)
    emu.spi.readinto(memoryview(buf)[:3])
    emu.spi.readinto(memoryview(buf)[3:])
    emu.cs(1)
    assert bytes(buf) == MAC


def test_fdm_frames_without_cs_toggling():
    emu = W5500Emulator()
    emu.cs(0)  # SCSn tied low: frames are delimited by their fixed length
    # OM=01 (1 byte): SIMR=0x5A; OM=11 (4 bytes): GAR; OM=10 (2 bytes) read of RTR.
    emu.spi.write(header(SIMR, COMMON, True, 1) + b"\x5a")
    gar_write = header(0x01, COMMON, True, 3) + b"\x0a\x00\x00\x01"
    emu.spi.write(gar_write + header(RTR, COMMON, False, 2))
    rtr = emu.spi.read(2)
    emu.spi.write(header(0x01, COMMON, False, 3))
    gar = emu.spi.read(4)
    emu.spi.write(header(SIMR, COMMON, False, 1))
    simr = emu.spi.read(1)
    emu.cs(1)
    assert rtr == b"\x07\xd0"
    assert gar == b"\x0a\x00\x00\x01"
    assert simr == b"\x5a"
    assert emu.counters.spi_frames == 5
    # A 4-byte FDM write does not spill into the next register.
    assert rd8(emu, COMMON, 0x05) == 0


def test_reserved_blocks_read_zero_and_ignore_writes():
    emu = W5500Emulator()
    for bsb in (4, 8, 28):
        wr(emu, bsb, 0x10, b"\x55\x55")
        assert rd(emu, bsb, 0x10, 2) == b"\x00\x00"
    wr(emu, COMMON, VERSIONR, b"\x99")
    assert rd8(emu, COMMON, VERSIONR) == 0x04


# ----- registers --------------------------------------------------------------------------


def test_common_reset_values():
    emu = W5500Emulator()
    assert rd8(emu, COMMON, MR) == 0
    assert rd(emu, COMMON, 0x01, 18) == bytes(18)  # GAR, SUBR, SHAR, SIPR
    assert rd(emu, COMMON, 0x13, 6) == bytes(6)  # INTLEVEL, IR, IMR, SIR, SIMR
    assert rd16(emu, COMMON, RTR) == 0x07D0
    assert rd8(emu, COMMON, RCR) == 0x08
    # 0b10111xxx with status DPX=1, SPD=1, LNK=1.
    assert rd8(emu, COMMON, PHYCFGR) == 0xBF
    assert rd8(emu, COMMON, VERSIONR) == 0x04


def test_socket_reset_values():
    emu = W5500Emulator()
    for n in range(8):
        r = rd(emu, SREG(n), 0, 0x30)
        assert r[Sn_MR] == 0 and r[Sn_CR] == 0 and r[Sn_IR] == 0 and r[Sn_SR] == 0
        assert r[Sn_DHAR : Sn_DHAR + 6] == BCAST
        assert r[Sn_TTL] == 0x80
        assert r[Sn_RXBUF_SIZE] == 2 and r[Sn_TXBUF_SIZE] == 2
        assert r[Sn_TX_FSR] == 0x08 and r[Sn_TX_FSR + 1] == 0x00
        assert r[Sn_TX_RD:Sn_IMR] == bytes(Sn_IMR - Sn_TX_RD)
        assert r[Sn_IMR] == 0xFF
        assert r[Sn_FRAG] == 0x40 and r[Sn_FRAG + 1] == 0x00


def test_mr_rst_resets_everything():
    emu = macraw()
    wr(emu, COMMON, SIMR, b"\x01")
    wr(emu, SREG(0), Sn_TTL, b"\x10")
    emu.receive_frame(eth(MAC))
    wr(emu, COMMON, MR, b"\x80")
    assert rd8(emu, COMMON, MR) == 0  # RST clears itself
    assert rd(emu, COMMON, SHAR, 6) == bytes(6)
    assert rd8(emu, COMMON, SIMR) == 0
    assert rd8(emu, SREG(0), Sn_TTL) == 0x80
    assert rd8(emu, SREG(0), Sn_SR) == 0
    assert rd8(emu, SREG(0), Sn_IR) == 0
    assert rd16(emu, SREG(0), Sn_RX_RSR) == 0
    assert emu.receive_frame(eth(MAC)) is False  # socket closed by the reset


def test_phycfgr_link_and_phy_reset():
    wire = MemoryWire()
    emu = W5500Emulator(wire=wire)
    assert rd8(emu, COMMON, PHYCFGR) & 0x07 == 0x07
    wire.link_up = False
    assert emu.link_up is False
    assert rd8(emu, COMMON, PHYCFGR) & 0x07 == 0x06
    # PHY reset (RST=0) with OPMD/OPMDC: RST reads back 1, status bits stay read-only.
    wr(emu, COMMON, PHYCFGR, [0x78 & 0xF8])
    assert rd8(emu, COMMON, PHYCFGR) == 0x80 | 0x78 | 0x06
    emu2 = W5500Emulator()
    emu2.link_up = False
    assert rd8(emu2, COMMON, PHYCFGR) & 1 == 0


def test_read_only_socket_registers():
    emu = macraw(open_pointer=0x1234)
    wr(emu, SREG(0), Sn_SR, b"\x00")
    wr16(emu, SREG(0), Sn_TX_RD, 0)
    wr16(emu, SREG(0), Sn_RX_WR, 0)
    assert rd8(emu, SREG(0), Sn_SR) == 0x42
    assert rd16(emu, SREG(0), Sn_TX_RD) == 0x1234
    assert rd16(emu, SREG(0), Sn_RX_WR) == 0x1234
    wr(emu, COMMON, SIR, b"\xff")
    assert rd8(emu, COMMON, SIR) == 0


# ----- commands ---------------------------------------------------------------------------


def test_open_macraw_socket0():
    emu = W5500Emulator()
    wr(emu, SREG(0), Sn_MR, b"\x04")
    command(emu, 0, OPEN)
    assert rd8(emu, SREG(0), Sn_SR) == 0x42
    command(emu, 0, CLOSE)
    assert rd8(emu, SREG(0), Sn_SR) == 0x00


def test_open_macraw_rejected_on_other_sockets():
    emu = W5500Emulator()
    for n in range(1, 8):
        wr(emu, SREG(n), Sn_MR, b"\x04")
        command(emu, n, OPEN)
        assert rd8(emu, SREG(n), Sn_SR) == 0x00


def test_open_tcp_udp_status_only():
    emu = W5500Emulator()
    wr(emu, SREG(1), Sn_MR, b"\x01")
    command(emu, 1, OPEN)
    wr(emu, SREG(2), Sn_MR, b"\x02")
    command(emu, 2, OPEN)
    assert rd8(emu, SREG(1), Sn_SR) == 0x13
    assert rd8(emu, SREG(2), Sn_SR) == 0x22


def test_cr_delay():
    emu = W5500Emulator(cr_delay=3)
    wr(emu, SREG(0), Sn_MR, b"\x04")
    wr(emu, SREG(0), Sn_CR, [OPEN])
    seen = [rd8(emu, SREG(0), Sn_CR) for _ in range(4)]
    assert seen == [OPEN, OPEN, OPEN, 0]
    assert rd8(emu, SREG(0), Sn_SR) == 0x42
    # The command takes effect only once accepted: SR is still the old value before that.
    wr(emu, SREG(0), Sn_CR, [CLOSE])
    assert rd8(emu, SREG(0), Sn_SR) == 0x42
    while rd8(emu, SREG(0), Sn_CR):
        pass
    assert rd8(emu, SREG(0), Sn_SR) == 0x00


# ----- reception --------------------------------------------------------------------------


def test_receive_stores_length_prefixed_record():
    emu = macraw()
    f = eth(MAC, 100)
    assert emu.receive_frame(f) is True
    assert read_rsr_bytes(emu) == 102
    assert rd8(emu, SREG(0), Sn_IR) & RECV_IR
    ptr = rd16(emu, SREG(0), Sn_RX_RD)
    assert rd(emu, RXB(0), ptr, 2) == b"\x00\x66"
    assert read_record(emu) == f
    assert rd16(emu, SREG(0), Sn_RX_RSR) == 0
    assert emu.counters.rx_accepted == 1


def test_several_records_queue_up():
    emu = macraw()
    frames = [eth(MAC, 60 + 37 * i, seed=i) for i in range(5)]
    for f in frames:
        assert emu.receive_frame(f)
    assert rd16(emu, SREG(0), Sn_RX_RSR) == sum(len(f) + 2 for f in frames)
    for f in frames:
        assert read_record(emu) == f


def test_short_frames_padded_to_60():
    emu = macraw()
    arp = eth(BCAST, 42, etype=0x0806)
    assert emu.receive_frame(arp)
    assert rd16(emu, SREG(0), Sn_RX_RSR) == 62
    body = read_record(emu)
    assert len(body) == 60
    assert body[:42] == arp
    assert body[42:] == bytes(18)


def test_runt_oversize_and_closed_are_dropped():
    emu = W5500Emulator()
    assert emu.receive_frame(eth(MAC)) is False
    assert emu.counters.rx_dropped_closed == 1
    emu = macraw()
    assert emu.receive_frame(eth(MAC, 14)[:13]) is False
    assert emu.receive_frame(eth(MAC, 1515)) is False
    assert emu.receive_frame(eth(MAC, 14)) is True
    assert emu.receive_frame(eth(MAC, 1514)) is True
    c = emu.counters
    assert (c.rx_dropped_runt, c.rx_dropped_oversize, c.rx_accepted) == (1, 1, 2)
    assert rd16(emu, SREG(0), Sn_RX_RSR) == 62 + 1516


def test_mac_filter():
    emu = macraw(mr=0x84)  # MFEN
    assert emu.receive_frame(eth(MAC))
    assert emu.receive_frame(eth(BCAST))
    assert emu.receive_frame(eth(MCAST))
    assert not emu.receive_frame(eth(OTHER))
    assert emu.counters.rx_dropped_filtered == 1
    wr(emu, SREG(0), Sn_MR, b"\xa4")  # MFEN | MMB
    assert not emu.receive_frame(eth(MCAST))
    assert emu.receive_frame(eth(BCAST))
    wr(emu, SREG(0), Sn_MR, b"\xc4")  # MFEN | BCASTB
    assert not emu.receive_frame(eth(BCAST))
    assert emu.receive_frame(eth(MAC))
    wr(emu, SREG(0), Sn_MR, b"\x94")  # MFEN | MIP6B
    assert not emu.receive_frame(eth(MAC, etype=0x86DD))
    assert emu.receive_frame(eth(MAC, etype=0x0800))
    assert emu.counters.rx_dropped_filtered == 4
    wr(emu, SREG(0), Sn_MR, b"\x04")  # no filter: promiscuous
    assert emu.receive_frame(eth(OTHER))
    assert emu.receive_frame(eth(MAC, etype=0x86DD))


def test_overflow_drops_and_counts():
    emu = W5500Emulator()
    wr(emu, SREG(0), Sn_RXBUF_SIZE, b"\x01")  # 1 KB
    wr(emu, SREG(0), Sn_MR, b"\x04")
    command(emu, 0, OPEN)
    f = eth(MAC, 254)  # records of 256 bytes: exactly 4 fit in 1024
    for _ in range(4):
        assert emu.receive_frame(f)
    assert rd16(emu, SREG(0), Sn_RX_RSR) == 1024
    assert not emu.receive_frame(eth(MAC, 14))
    assert emu.counters.rx_dropped_overflow == 1
    read_record(emu)
    assert emu.receive_frame(f)
    for _ in range(4):
        assert read_record(emu) == f


def test_rx_wrap_with_raw_split_and_masked_pointers():
    emu = macraw(open_pointer=0xFFF0)  # 2 KB buffers: offset 0xFFF0 mod 2048 = 2032
    assert rd16(emu, SREG(0), Sn_RX_RD) == 0xFFF0
    f1 = eth(MAC, 100, seed=1)
    f2 = eth(MAC, 70, seed=2)
    assert emu.receive_frame(f1)  # its record wraps 16 bytes in, and the pointer wraps too
    assert emu.receive_frame(f2)
    assert rd16(emu, SREG(0), Sn_RX_WR) == (0xFFF0 + 102 + 72) & 0xFFFF
    assert read_rsr_bytes(emu) == 174
    # One burst at the raw pointer (ioLibrary style).
    ptr = rd16(emu, SREG(0), Sn_RX_RD)
    assert rd(emu, RXB(0), (ptr + 2) & 0xFFFF, 100) == f1
    # The same bytes read as two transfers split at the buffer end (Linux style)...
    part1 = rd(emu, RXB(0), 0xFFF2, 14)
    part2 = rd(emu, RXB(0), 0x0000, 86)
    assert part1 + part2 == f1
    # ...and through masked pointers (Adafruit style: ptr & 0x7FF plus an arbitrary base).
    assert rd(emu, RXB(0), 0x8000 + (0xFFF2 & 0x7FF), 14) == f1[:14]
    assert read_record(emu, split=True) == f1
    assert read_record(emu) == f2
    assert rd16(emu, SREG(0), Sn_RX_RSR) == 0


def test_rx_records_keep_wrapping():
    # Many frames through a small buffer: the header itself lands split across the end.
    emu = W5500Emulator(open_pointer=0xFFFF)
    wr(emu, SREG(0), Sn_RXBUF_SIZE, b"\x01")
    wr(emu, SREG(0), Sn_MR, b"\x04")
    command(emu, 0, OPEN)
    for i in range(40):
        f = eth(MAC, 61 + (i * 13) % 300, seed=i)
        assert emu.receive_frame(f)
        assert read_record(emu, split=(i & 1) == 1) == f


def test_open_discards_rx_buffer():
    emu = macraw()
    emu.receive_frame(eth(MAC))
    command(emu, 0, CLOSE)
    assert not emu.receive_frame(eth(MAC))
    command(emu, 0, OPEN)
    assert rd16(emu, SREG(0), Sn_RX_RSR) == 0


def test_sixteen_kb_buffer_layout():
    emu = W5500Emulator()
    wr(emu, SREG(0), Sn_RXBUF_SIZE, b"\x10\x10")  # RX 16, TX 16
    for n in range(1, 8):
        wr(emu, SREG(n), Sn_RXBUF_SIZE, b"\x00\x00")
    wr(emu, SREG(0), Sn_MR, b"\x04")
    command(emu, 0, OPEN)
    assert rd16(emu, SREG(0), Sn_TX_FSR) == 0x4000
    f = eth(MAC, 1514)
    count = 0
    while emu.receive_frame(f):
        count += 1
    assert count == 16384 // 1516


# ----- transmission -----------------------------------------------------------------------


def test_send_goes_to_wire_and_sets_sendok():
    wire = MemoryWire()
    emu = W5500Emulator(wire=wire)  # attaches itself to the wire
    wr(emu, SREG(0), Sn_MR, b"\x04")
    command(emu, 0, OPEN)
    f = eth(PEER, 300)
    send_frame(emu, f)
    assert wire.sent == [f]
    assert emu.sent == []  # only kept when there is no wire
    assert rd8(emu, SREG(0), Sn_IR) & SENDOK
    wr(emu, SREG(0), Sn_IR, [SENDOK])
    assert rd8(emu, SREG(0), Sn_IR) & SENDOK == 0
    assert emu.counters.tx_frames == 1
    assert wire.inject(eth(BCAST)) is True


def test_send_with_wrap_and_tx_fsr():
    emu = macraw(open_pointer=0xFFF0)
    assert rd16(emu, SREG(0), Sn_TX_FSR) == 2048
    f = eth(PEER, 100, seed=3)
    ptr = rd16(emu, SREG(0), Sn_TX_WR)
    assert ptr == 0xFFF0
    wr(emu, TXB(0), ptr, f)  # one burst at the raw pointer, wrapping inside the buffer
    wr16(emu, SREG(0), Sn_TX_WR, (ptr + 100) & 0xFFFF)
    assert rd16(emu, SREG(0), Sn_TX_FSR) == 2048 - 100
    command(emu, 0, SEND)
    assert emu.sent == [f]
    assert rd16(emu, SREG(0), Sn_TX_RD) == 0x0054
    assert rd16(emu, SREG(0), Sn_TX_FSR) == 2048
    # The host can read back what it wrote in the TX buffer.
    assert rd(emu, TXB(0), 0xFFF0, 100) == f
    # Written as two transfers split at the buffer end (Linux style).
    emu = macraw(open_pointer=0xFFF0)
    g = eth(BCAST, 60, seed=4)
    wr(emu, TXB(0), 0xFFF0, g[:16])
    wr(emu, TXB(0), 0x0000, g[16:])
    wr16(emu, SREG(0), Sn_TX_WR, 0x002C)
    assert rd16(emu, SREG(0), Sn_TX_FSR) == 2048 - 60
    command(emu, 0, SEND)
    assert emu.sent == [g]


def test_send_bad_length():
    emu = macraw()
    send_frame(emu, b"\x00" * 10)
    assert emu.sent == []
    assert emu.counters.tx_bad_length == 1
    assert rd8(emu, SREG(0), Sn_IR) & SENDOK  # still completes
    assert rd16(emu, SREG(0), Sn_TX_FSR) == 2048
    send_frame(emu, eth(PEER, 1514))
    assert len(emu.sent) == 1


def test_send_on_closed_socket_is_ignored():
    emu = W5500Emulator()
    wr(emu, TXB(0), 0, eth(PEER, 60))
    wr16(emu, SREG(0), Sn_TX_WR, 60)
    command(emu, 0, SEND)
    assert emu.sent == []
    assert rd8(emu, SREG(0), Sn_IR) == 0


# ----- test hooks -------------------------------------------------------------------------


def test_counter_race_tears_the_rsr_read():
    emu = macraw()
    emu.receive_frame(eth(MAC, 200))  # RSR = 0x00CA
    emu.arm_counter_race(eth(MAC, 100))  # + 0x66 = 0x0130
    first = read_rsr_bytes(emu)
    assert first == 0x0030  # high byte before the frame, low byte after: torn
    second = read_rsr_bytes(emu)
    third = read_rsr_bytes(emu)
    assert second == third == 0x0130
    # The race also fires in a burst that reads both bytes.
    emu.arm_counter_race(eth(MAC, 0xE0 - 2))  # 0x0130 + 0xE0 = 0x0210
    assert rd16(emu, SREG(0), Sn_RX_RSR) == 0x0110


def test_corrupt_next_length():
    emu = macraw()
    emu.corrupt_next_length(0x9999)
    emu.receive_frame(eth(MAC, 80))
    assert rd16(emu, SREG(0), Sn_RX_RSR) == 82  # RX_WR still advances by the true length
    ptr = rd16(emu, SREG(0), Sn_RX_RD)
    assert rd(emu, RXB(0), ptr, 2) == b"\x99\x99"
    # Recovery as the driver must do it: CLOSE, OPEN; the buffer is empty again.
    command(emu, 0, CLOSE)
    command(emu, 0, OPEN)
    assert rd16(emu, SREG(0), Sn_RX_RSR) == 0
    f = eth(MAC, 80)
    emu.receive_frame(f)
    assert read_record(emu) == f  # only one frame was corrupted


# ----- interrupts -------------------------------------------------------------------------


def test_intn_level_and_falling_edge_handler():
    emu = macraw()
    calls = []
    emu.intn.irq(handler=lambda pin: calls.append(pin.value()), trigger=EmulatedPin.IRQ_FALLING)
    assert emu.intn.value() == 1
    emu.receive_frame(eth(MAC))  # Sn_IR.RECV set, but SIMR is 0
    assert emu.intn.value() == 1 and calls == []
    assert rd8(emu, COMMON, SIR) == 0x01  # SIR follows Sn_IR & Sn_IMR
    wr(emu, COMMON, SIMR, b"\x01")
    assert emu.intn.value() == 0
    assert calls == [0]
    emu.receive_frame(eth(MAC))  # already asserted: no new edge
    assert calls == [0]
    wr(emu, SREG(0), Sn_IR, [RECV_IR])  # write 1 to clear
    assert rd8(emu, SREG(0), Sn_IR) == 0
    assert rd8(emu, COMMON, SIR) == 0
    assert emu.intn.value() == 1
    emu.receive_frame(eth(MAC))
    assert emu.intn.value() == 0 and calls == [0, 0]
    assert emu.counters.int_edges == 2
    # Sn_IMR masks INTn and SIR but (default model) not the status bit.
    wr(emu, SREG(0), Sn_IR, [0xFF])
    wr(emu, SREG(0), Sn_IMR, [SENDOK])
    emu.receive_frame(eth(MAC))
    assert rd8(emu, SREG(0), Sn_IR) == RECV_IR
    assert rd8(emu, COMMON, SIR) == 0
    assert emu.intn.value() == 1
    send_frame(emu, eth(PEER, 60))
    assert emu.intn.value() == 0 and len(calls) == 3
    # Clearing just one of two pending bits keeps INTn asserted.
    wr(emu, SREG(0), Sn_IMR, [SENDOK | RECV_IR])
    wr(emu, SREG(0), Sn_IR, [SENDOK])
    assert emu.intn.value() == 0
    wr(emu, SREG(0), Sn_IR, [RECV_IR])
    assert emu.intn.value() == 1


def test_imr_gates_status_switch():
    emu = macraw(imr_gates_status=True)
    wr(emu, SREG(0), Sn_IMR, [RECV_IR])
    send_frame(emu, eth(PEER, 60))
    assert rd8(emu, SREG(0), Sn_IR) == 0  # SENDOK masked: never set
    emu.receive_frame(eth(MAC))
    assert rd8(emu, SREG(0), Sn_IR) == RECV_IR


def test_handler_goes_through_schedule_and_may_use_the_bus():
    queued = []

    def schedule(func, arg):
        queued.append((func, arg))

    emu = macraw(schedule=schedule)
    seen = []

    def handler(pin):
        # Runs without the emulator's lock held: it can clear the interrupt over SPI.
        seen.append(rd8(emu, SREG(0), Sn_IR))
        wr(emu, SREG(0), Sn_IR, [0xFF])

    emu.intn.irq(handler)
    wr(emu, COMMON, SIMR, b"\x01")
    emu.receive_frame(eth(MAC))
    assert len(queued) == 1 and seen == []
    func, arg = queued.pop()
    assert arg is emu.intn
    func(arg)
    assert seen == [RECV_IR]
    assert emu.intn.value() == 1
    # Without schedule the handler is called directly.
    emu2 = macraw()
    emu2.intn.irq(lambda pin: seen.append("direct"))
    wr(emu2, COMMON, SIMR, b"\x01")
    emu2.receive_frame(eth(MAC))
    assert seen[-1] == "direct"


def test_rising_trigger():
    emu = macraw()
    edges = []
    emu.intn.irq(lambda pin: edges.append(pin.value()), trigger=EmulatedPin.IRQ_RISING)
    wr(emu, COMMON, SIMR, b"\x01")
    emu.receive_frame(eth(MAC))
    assert edges == []
    wr(emu, SREG(0), Sn_IR, [RECV_IR])
    assert edges == [1]


# ----- reset pin --------------------------------------------------------------------------


def test_rst_pin():
    emu = macraw()
    wr(emu, COMMON, SIMR, b"\x01")
    emu.receive_frame(eth(MAC))
    assert emu.intn.value() == 0
    emu.rst(0)
    assert emu.rst.value() == 0
    assert emu.intn.value() == 1  # all interrupt sources reset
    wr(emu, COMMON, SIMR, b"\x01")  # ignored while held in reset
    emu.rst(1)
    assert emu.rst() == 1
    assert rd8(emu, COMMON, SIMR) == 0
    assert rd8(emu, SREG(0), Sn_SR) == 0
    assert rd(emu, COMMON, SHAR, 6) == bytes(6)
    assert rd8(emu, COMMON, VERSIONR) == 0x04


# ----- concurrency ------------------------------------------------------------------------


def test_phy_thread_and_bus_in_parallel():
    emu = macraw()
    total = 300
    done = []

    def phy():
        for i in range(total):
            emu.receive_frame(eth(MAC, 60 + (i % 50), seed=i))
        done.append(1)

    _thread.start_new_thread(phy, ())
    got = 0
    t0 = time.time()
    while True:
        # The driver's read-twice loop (section 5) against a counter that really moves.
        a = read_rsr_bytes(emu)
        while True:
            b = read_rsr_bytes(emu)
            if a == b:
                break
            a = b
        if a:
            body = read_record(emu)
            assert 60 <= len(body) <= 109
            got += 1
        elif done:
            if rd16(emu, SREG(0), Sn_RX_RSR) == 0:
                break
        assert time.time() - t0 < 30
    c = emu.counters
    assert got == c.rx_accepted
    assert c.rx_accepted + c.rx_dropped_overflow == total


# ----- allocation ---------------------------------------------------------------------------


def test_bus_paths_do_not_allocate():
    # The firmware's per-packet path must not allocate, and the emulator runs in the same
    # heap in the simulated board, so its SPI and receive paths must not allocate either.
    try:
        import micropython
    except ImportError:
        return  # CPython: nothing to check
    wire = MemoryWire()
    emu = W5500Emulator(wire)
    count = [0]

    def send(frame):
        count[0] += len(frame)

    wire.send = send  # count instead of copying, so the wire itself does not allocate
    wr(emu, COMMON, SHAR, MAC)
    wr(emu, SREG(0), Sn_MR, b"\x84")
    command(emu, 0, OPEN)
    f = eth(MAC, 300)
    hdr = header(Sn_RX_RSR, SREG(0), False)
    hdr_tx = header(0, TXB(0), True)
    hdr_rx = header(2, RXB(0), False)
    hdr_ptr = header(Sn_TX_WR, SREG(0), True)
    ptr = bytearray(2)
    ptr[1] = 60
    hdr_cr = header(Sn_CR, SREG(0), True)
    cmd_send = bytearray(1)
    cmd_send[0] = SEND
    rbuf = bytearray(300)
    two = bytearray(2)
    spi, cs = emu.spi, emu.cs
    micropython.heap_lock()
    try:
        ok = emu.receive_frame(f)
        cs(0)
        spi.write(hdr)
        spi.readinto(two)
        cs(1)
        cs(0)
        spi.write(hdr_rx)
        spi.readinto(rbuf)
        cs(1)
        for _ in range(2):
            cs(0)
            spi.write(hdr_tx)
            spi.write(rbuf)
            cs(1)
    finally:
        micropython.heap_unlock()
    assert ok and two == b"\x01\x2e"
    assert bytes(rbuf) == f
    # SEND: the first one of a given length creates a cached view; later ones reuse it.
    for i in range(3):
        ptr[0] = 0
        ptr[1] = 60 * (i + 1)
        if i:
            micropython.heap_lock()
        try:
            cs(0)
            spi.write(hdr_ptr)
            spi.write(ptr)
            cs(1)
            cs(0)
            spi.write(hdr_cr)
            spi.write(cmd_send)
            cs(1)
        finally:
            if i:
                micropython.heap_unlock()
    assert count[0] == 180
