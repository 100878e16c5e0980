# An ESP32 with a W5500 module on SPI2 (VSPI pins). The ESP32 port has a GIL: both net
# kernels run, but on one core (reference/rp2.md §11). Host data uses the USB-UART REPL port,
# so this board is for the stack and its tests, not yet for the host link.
from machine import SPI, Pin, Timer, unique_id
from micropython import const
from rp2040 import BUDGET as _RP2040

NAME = "esp32_w5500"
ARCH = "xtensawin"
CORES = 1
HEAP_BYTES = const(110000)
REQUIRES = ("rp2040",)
# A heap of ~110 KB and one core: one kernel with the RP2040's per-kernel pools, no host link.
BUDGET = dict(_RP2040, kernels=1, i2o_inbound_depth=2, i2o_outbound_max=2)


class Hardware:
    def __init__(self):
        self.spi = SPI(2, baudrate=20_000_000, polarity=0, phase=0,
                       sck=Pin(18), mosi=Pin(23), miso=Pin(19))
        self.cs = Pin(5, Pin.OUT, value=1)
        self.rst = Pin(16, Pin.OUT, value=1)
        self.intn = Pin(4, Pin.IN, Pin.PULL_UP)

    def timer(self, period_ms, callback):
        return Timer(0, mode=Timer.PERIODIC, period=period_ms, callback=callback)

    def usb(self):
        return _NoLink()

    def counters(self):
        return {}

    def close(self):
        pass


class _NoLink:
    """No host link on this board: nothing arrives, what is sent is dropped."""

    def readinto(self, buf):
        return 0

    def write(self, buf):
        return len(buf)

    def close(self):
        pass


def open_hardware():
    return Hardware()


def load_config():
    import config

    uid = unique_id()
    cfg = dict(BUDGET)
    cfg.update({
        "ip": config.IP, "prefix": config.PREFIX, "gateway": config.GATEWAY,
        "mac": config.MAC or "02:%02x:%02x:%02x:%02x:%02x" % tuple(uid[-5:]),
        "kernels": config.KERNELS, "services": config.SERVICES,
        "log_frames": config.LOG_FRAMES,
    })
    return cfg
