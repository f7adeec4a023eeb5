"""A faithful Genesys Cloud emulator, with faults on demand.

It serves OAuth, notification channels and sockets, the routing and
conversation endpoints, and a simulated contact centre on one base URL, plus
a control surface under ``/__emulator__/`` that is never part of the Genesys
API. See :mod:`genesys_mux.emulator.app` for the routes and for which module
does what.
"""

from genesys_mux.emulator.app import Emulator, EmulatorSettings, LedgerEntry, running_emulator
from genesys_mux.emulator.platform import ClientApp, PlatformLimits

__all__ = [
    "ClientApp",
    "Emulator",
    "EmulatorSettings",
    "LedgerEntry",
    "PlatformLimits",
    "running_emulator",
]
