# Runs before USB starts (rp2). Adds a second USB CDC interface for host data when the
# usb-device-cdc package is installed, keeping the REPL on the first one for mpremote
# (reference/rp2.md §9). Boards without runtime USB skip this.
try:
    import rp2_w5500
except ImportError:
    pass
else:
    rp2_w5500.start_data_port()
