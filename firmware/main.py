# TwinStack firmware entry point. `board` is the board file (boards/<name>.py deployed as
# board.py; on the simulated board, `twinstack sim` provides it).
import board
from netkernel.node import main

main(board)
