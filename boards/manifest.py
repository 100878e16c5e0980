# Freeze the firmware into a MicroPython image (RPI_PICO / RPI_PICO2), so its code runs from
# flash and the whole heap is left for data. On an RP2040 this is required for two kernels
# and the host link: the compiled firmware is ~175 KB of .mpy, and loaded from the
# filesystem it would take most of the ~240 KB heap (the simulated board measures the same
# split: `twinstack sim` adds the code's heap to the board's budget, see
# host/twinstack/sim/launcher.py frozen_code_bytes).
#
#   make -C micropython/ports/rp2 BOARD=RPI_PICO FROZEN_MANIFEST=$PWD/boards/manifest.py
#
# then flash the .uf2 and deploy only main.py, boot.py, config.py and board.py
# (`make deploy` copies the .mpy files too; frozen modules take precedence over /lib only
# when /lib has none, so remove /lib/netkernel on a board running a frozen image).
include("$(PORT_DIR)/boards/manifest.py")
package("netkernel", base_path="../firmware")
