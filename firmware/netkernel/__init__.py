# TwinStack firmware: the net kernel package that runs on each core of the board.
