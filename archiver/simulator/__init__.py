"""The built-in Exotel simulator: faithful enough to the v3/v1 docs to archive against.

Use ``Simulator`` for the account and its calls, ``SimulatorServer`` to serve it from a background
thread (tests), ``serve`` to serve it on the current event loop, ``run_simulator`` for the CLI.
"""

from archiver.simulator.calls import SimCall, recording_body
from archiver.simulator.faults import RECORDING_FAULTS, Faults
from archiver.simulator.server import Simulator, SimulatorServer, run_simulator, serve

__all__ = [
    "RECORDING_FAULTS",
    "Faults",
    "SimCall",
    "Simulator",
    "SimulatorServer",
    "recording_body",
    "run_simulator",
    "serve",
]
