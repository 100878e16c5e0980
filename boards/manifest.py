# The MicroPython image for the RP2040 boards (RPI_PICO; RPI_PICO2 too): MicroPython's own rp2
# build with this file as its frozen manifest (FROZEN_MANIFEST=$PWD/boards/manifest.py in the
# environment of `make -C micropython/ports/rp2 BOARD=RPI_PICO`).
#
# Frozen, the code runs from flash; the heap only holds what importing it builds (module
# dicts, classes, functions: about 24 KB for the firmware). Loaded from the filesystem, the
# firmware's ~110 KB of .mpy would live in the RP2040's ~240 KB heap.
#
# The package is bytecode only: its machine code (viper) is the module netkernel_native,
# which `make deploy` copies to /lib. MicroPython v1.28's freezer puts armv6m machine code
# on 2-byte boundaries and the Cortex-M0+ faults on the word read at its start
# (docs/frozen-native-alignment.md); loaded from a file, it goes to the heap, aligned.
include("$(PORT_DIR)/boards/manifest.py")
require("usb-device-cdc")   # boot.py's second USB serial port, which carries host data
package("netkernel", base_path="../firmware")
