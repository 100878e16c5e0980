# WIZnet W5500-EVB-Pico (RP2040). Flash the plain RPI_PICO MicroPython firmware: the
# W5500_EVB_PICO build starts its own W5500 driver and lwIP (reference/rp2.md §8).
import rp2_w5500
from micropython import const
from rp2040 import BUDGET  # noqa: F401 - the RP2040's memory budget, sizes every pool

NAME = "w5500_evb_pico"
ARCH = "armv6m"
CORES = 2
HEAP_BYTES = const(242304)   # gc.mem_free() after boot on RPI_PICO v1.28 (rp2.md §7)
REQUIRES = ("rp2_w5500", "rp2040")   # board modules deployed with this one
FROZEN = ("netkernel",)      # in the image (boards/manifest.py): `make deploy` leaves it out


def load_config():
    return rp2_w5500.load_config(BUDGET)


def open_hardware():
    return rp2_w5500.Hardware(spi_id=0, sck=18, mosi=19, miso=16, cs=17, rst=20, intn=21,
                              baudrate=24_000_000)
