# WIZnet W5500-EVB-Pico2 (RP2350): same wiring as the RP2040 board. Flash RPI_PICO2.
import rp2_w5500
from micropython import const
from rp2040 import BUDGET as _RP2040

# The RP2350 has about twice the RP2040's heap: twice the connections and their buffers.
BUDGET = dict(_RP2040, tcp_connections=32, tcp_rx_pool=20480, tcp_tx_pool=16384,
              i2o_inbound_depth=8, thread_stack=16384)

NAME = "w5500_evb_pico2"
ARCH = "armv7emsp"
CORES = 2
HEAP_BYTES = const(480000)   # about twice the RP2040's (rp2.md §7); re-measure on a board
REQUIRES = ("rp2_w5500", "rp2040")


def load_config():
    return rp2_w5500.load_config(BUDGET)


def open_hardware():
    return rp2_w5500.Hardware(spi_id=0, sck=18, mosi=19, miso=16, cs=17, rst=20, intn=21,
                              baudrate=24_000_000)
