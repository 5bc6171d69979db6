"""A faithful local simulator of Kraken's public REST API and WebSocket v2, with faults.

Kraken is not reachable from CI or demo machines; everything network-facing in histdata is
tested against this simulator, and users run it (``histdata sim``) to try the service.

Layers, bottom up: ``pairs`` (the listing: named and generated pairs, their ``AssetPairs``
and ``Assets`` entries), ``market`` (the seeded ground truth: trades and the candles they make),
``faults`` (switchable misbehaviour), ``rest`` and ``ws`` (the two APIs, shaped as Kraken's,
quirks included), ``server`` (listeners, clock, :func:`open_simulator`). The ``histdata sim``
command line is :mod:`histdata.commands.sim`, with the other commands.
"""

from histdata.sim.faults import CLOSE_CODES, Faults
from histdata.sim.market import Market
from histdata.sim.server import SimConfig, SimStatistics, Simulator, open_simulator

__all__ = [
    "CLOSE_CODES",
    "Faults",
    "Market",
    "SimConfig",
    "SimStatistics",
    "Simulator",
    "open_simulator",
]
