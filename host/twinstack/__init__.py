"""TwinStack host side.

The ``twinstack`` package drives a TwinStack board (a dual-core MicroPython board with a
W5500 Ethernet chip used as a TCP/IP offload engine) over USB, and runs the simulated board
(``twinstack sim``) where there is no hardware.

- :func:`connect` opens a board and brings up its I2O messaging unit: a
  :class:`~twinstack.osm.Board` (the OSM) with ``socket()``, ``stats()``, ``configure()``,
  ``status()``, ``reset()``;
- :mod:`twinstack.socket`: sockets close to the standard module, whose TCP/IP runs on the
  board;
- :mod:`twinstack.selectors`: :class:`~twinstack.selectors.TwinSelector` for them;
- :mod:`twinstack.aio`: ``open_connection`` / ``start_server`` for asyncio.
"""

__version__ = "0.1.0"

from . import aio, selectors, socket  # noqa: E402
from .errors import VersionMismatch  # noqa: E402
from .osm import Board, connect  # noqa: E402

__all__ = ["Board", "VersionMismatch", "__version__", "aio", "connect", "selectors", "socket"]
