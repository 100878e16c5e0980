# Stand-in for the sim_config.py that `twinstack sim` writes, so tests can import boards/sim.py.
NETIF = "lo"
USB_FD = 0
IP = "10.77.0.2"
PREFIX = 24
PEER = "10.77.0.1"
GATEWAY = "10.77.0.1"
MAC = "02:00:0a:4d:00:02"
KERNELS = 1
SERVICES = True
LOG_FRAMES = False
HEAP = 408512
NAME = "test"
STACK = {}
