# The RP2040's memory budget: what the firmware may take of the ~240 KB heap, pool by pool.
# Boards built on an RP2040 state it as theirs (w5500_evb_pico), and so does the simulated
# board, which stands for one. The node sizes every pool from it at boot and allocates them
# all then; docs/memory.md gives what each costs on the RP2040 and how they add up (the
# default configuration boots with 36 KB free; connections take pooled sockets and chunks).
BUDGET = {
    "kernels": 2,               # one net kernel per core (config.py's KERNELS overrides it)
    "thread_stack": 8192,       # core 1's C stack, taken from the heap by _thread
    "ring_capacity": 6,         # frames on each kernel's receive ring
    "tcp_connections": 16,      # per kernel: a SYN beyond them is dropped and counted
    "tcp_rx_pool": 8192,        # per kernel: bytes of received data not yet read...
    "tcp_tx_pool": 4096,        # ...and of data sent and not yet acknowledged (tcpbuf.py)
    "reasm_bytes": 4096,        # per kernel: IPv4 reassembly (datagrams up to 4,068 bytes)
    "handoff_bytes": 4096,      # one, shared: a reassembled datagram for another kernel
    "i2o_frame_bytes": 1024,    # I2O message frames: inbound per kernel, outbound shared
    "i2o_inbound_depth": 4,
    "i2o_outbound_max": 5,
}
