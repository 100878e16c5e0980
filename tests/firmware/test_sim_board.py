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
    # The emulator is inside `used` here. The firmware's code is not (imported before
    # `before`; frozen into flash on a real board). Its data, with the I2O frame pools and
    # the rings of the connections preallocated at boot (4 per kernel), must leave at least
    # half of the board's budget (the RP2040 heap, x 3/2 for the 64-bit port) for sockets
    # and connections beyond those.
    firmware = used - sim.EMULATOR_HEAP_BYTES
    assert firmware < sim.FIRMWARE_HEAP_BYTES * 3 // 2 // 2, firmware
    node.stop()


def test_a_paced_core_sleeps_what_a_slower_core_would_have_worked_on():
    import time
    pacer = sim._Pacer(25)                 # a quarter of a host core: 3 times as long again
    t0 = time.ticks_us()
    for _ in range(10):
        pacer.turn_took(1000)               # ten turns of 1 ms each
    slept = time.ticks_diff(time.ticks_us(), t0)
    assert 28000 <= slept < 60000, slept   # 30 ms owed, minus what is still carried
    fast = sim._Pacer(100)
    t0 = time.ticks_us()
    fast.turn_took(1000)
    assert time.ticks_diff(time.ticks_us(), t0) < 1000
