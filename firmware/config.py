# Board configuration, deployed as /config.py. Edit it on the board (mpremote edit :config.py).
# The simulated board does not use this file: `twinstack sim` passes its own settings.
IP = "192.168.1.50"
PREFIX = 24
GATEWAY = "192.168.1.1"
MAC = None          # None: 02:xx:xx:xx:xx:xx from machine.unique_id()
KERNELS = 2         # one net kernel per core (1: everything on core 0)
SERVICES = False    # built-in TCP/UDP echo (7) and discard (9)
LOG_FRAMES = False  # log one line per received frame on the console
