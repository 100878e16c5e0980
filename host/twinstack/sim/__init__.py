"""The simulated board: the firmware in the MicroPython unix port, wired to Linux.

:mod:`twinstack.sim.netns` makes the namespaces and the veth wire;
:mod:`twinstack.sim.launcher` runs one board (``twinstack sim``).
"""

from twinstack.sim.launcher import SimBoard, SimConfig, make_config, run_sim
from twinstack.sim.netns import SimError, validate_name

__all__ = ["SimBoard", "SimConfig", "SimError", "make_config", "run_sim", "validate_name"]
