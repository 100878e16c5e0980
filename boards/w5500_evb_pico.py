# WIZnet W5500-EVB-Pico (RP2040). Flash the plain RPI_PICO MicroPython firmware: the
# W5500_EVB_PICO build starts its own W5500 driver and lwIP (reference/rp2.md §8).
import rp2_w5500
from micropython import const
from rp2_w5500 import load_config  # noqa: F401 - part of the board interface

NAME = "w5500_evb_pico"
ARCH = "armv6m"
CORES = 2
HEAP_BYTES = const(242304)   # gc.mem_free() after boot on RPI_PICO v1.28 (rp2.md §7)
REQUIRES = ("rp2_w5500",)    # board modules deployed with this one


def open_hardware():
    return rp2_w5500.Hardware(spi_id=0, sck=18, mosi=19, miso=16, cs=17, rst=20, intn=21,
                              baudrate=24_000_000)
