"""TwinStack host side.

The ``twinstack`` package drives a TwinStack board (a dual-core MicroPython board with a
W5500 Ethernet chip used as a TCP/IP offload engine) over USB, and runs the simulated board
(``twinstack sim``) where there is no hardware.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
