# Runs before USB starts (rp2). Adds a second USB CDC interface for host data when the
# usb-device-cdc package is installed, keeping the REPL on the first one for mpremote
# (reference/rp2.md §9). Boards without runtime USB skip this.
try:
    import rp2_w5500
    import usb.device
    from usb.device.cdc import CDCInterface

    _cdc = CDCInterface()
    _cdc.init(timeout=0, txbuf=2048, rxbuf=2048)
    usb.device.get().init(_cdc, builtin_driver=True)
    rp2_w5500.DATA_CDC = _cdc
except ImportError:
    pass
