# WIZnet W5500-EVB-Pico2 (RP2350): same wiring as the RP2040 board. Flash RPI_PICO2.
import rp2_w5500
from micropython import const
from rp2_w5500 import load_config  # noqa: F401 - part of the board interface

NAME = "w5500_evb_pico2"
ARCH = "armv7emsp"
CORES = 2
HEAP_BYTES = const(480000)   # about twice the RP2040's (rp2.md §7); re-measure on a board
REQUIRES = ("rp2_w5500",)


def open_hardware():
    return rp2_w5500.Hardware(spi_id=0, sck=18, mosi=19, miso=16, cs=17, rst=20, intn=21,
                              baudrate=24_000_000)
