# Definitions shared by the firmware and the host package (see linkframe.py).
