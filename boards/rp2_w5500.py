# Shared by the RP2040/RP2350 boards with a W5500 on SPI (W5500-EVB-Pico wiring by default).
# Board files set the pins and call make_hardware(); this module is deployed with them.
from machine import SPI, Pin, Timer, unique_id
from machine import idle as wait_for_event

# Set by start_data_port() (boot.py) when it could add a second USB CDC interface (runtime
# USB, rp2.md §9): host data then travels there and the REPL stays on the first port.
DATA_CDC = None


def start_data_port():
    """Add the host-data CDC interface beside the REPL's (boot.py, before USB starts);
    False without micropython-lib's usb-device-cdc."""
    global DATA_CDC
    from netkernel.usbcdc import open_data_port    # frozen: its code stays out of the heap

    DATA_CDC = open_data_port(2048, 2048)          # bytes each way: a whole link frame
    return DATA_CDC is not None


class Hardware:
    """The W5500's SPI bus and pins, core 0's tick timer and the USB data stream."""

    DOORBELLS = True     # an idle kernel on core 1 blocks on a lock core 0 releases

    def __init__(self, spi_id, sck, mosi, miso, cs, rst, intn, baudrate):
        # 24 MHz is the fastest the default 48 MHz clk_peri gives (rp2.md §6); asking for
        # 20 MHz would give 12 MHz.
        self.spi = SPI(spi_id, baudrate=baudrate, polarity=0, phase=0, bits=8,
                       firstbit=SPI.MSB, sck=Pin(sck), mosi=Pin(mosi), miso=Pin(miso))
        self.cs = Pin(cs, Pin.OUT, value=1)
        self.rst = Pin(rst, Pin.OUT, value=1)
        self.intn = Pin(intn, Pin.IN, Pin.PULL_UP)
        self._alarm = Timer()

    def idle(self, timeout_ms):
        """Core 0 has nothing to do: sleep (WFE) until an interrupt (INTn, USB, a timer),
        the other core's event or about a millisecond. True if the host's bytes are waiting.

        Twice: machine.idle() sets a wake-up alarm only when none is set, and setting one
        sends an event that ends that same wait at once (pico-sdk's
        best_effort_wfe_or_timeout); alone, every other call would return without sleeping."""
        wait_for_event()
        wait_for_event()
        cdc = DATA_CDC
        return cdc is not None and cdc.any() > 0

    def wait_event(self):
        """An idle kernel on core 1: sleep (WFE) until an event or about a millisecond."""
        wait_for_event()

    def alarm(self, ms, callback):
        """One hard-IRQ ``callback`` in ``ms`` ms, replacing the last one (None: none)."""
        if callback is None:
            self._alarm.deinit()
        else:
            self._alarm.init(mode=Timer.ONE_SHOT, period=ms, callback=callback, hard=True)

    def timer(self, period_ms, callback):
        # Soft timer: the callback runs on core 0's main thread (rp2.md §4).
        return Timer(-1, mode=Timer.PERIODIC, period=period_ms, callback=callback)

    def usb(self):
        if DATA_CDC is None:
            raise OSError("no USB data interface: install usb-device-cdc (make deploy does)")
        return DATA_CDC

    def counters(self):
        return {}

    def close(self):
        pass


def default_mac():
    uid = unique_id()
    return "02:%02x:%02x:%02x:%02x:%02x" % (uid[-5], uid[-4], uid[-3], uid[-2], uid[-1])


def load_config(budget):
    """config.py's settings over the board's memory budget (its BUDGET)."""
    import config

    cfg = dict(budget)
    cfg.update({
        "ip": config.IP,
        "prefix": config.PREFIX,
        "gateway": config.GATEWAY,
        "mac": config.MAC or default_mac(),
        "kernels": getattr(config, "KERNELS", budget["kernels"]),
        "services": config.SERVICES,
        "log_frames": config.LOG_FRAMES,
    })
    return cfg
