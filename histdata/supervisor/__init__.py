"""Supervision and bounded channels on trio: the skeleton every actor of histdata hangs on.

How the layers stack (each module only imports the ones above it):

- ``backoff``: jittered exponential delays; no trio.
- ``changes``: :data:`statistics_changed`, the notification actors send when their
  statistics move, so that a waiter awaits a condition instead of polling for it.
- ``channel``: :class:`Channel`, the bounded edge between two actors, with an explicit
  :class:`Overflow` policy and counters for everything dropped or spilled.
- ``supervisor``: :class:`Supervisor`, OTP restart semantics over a trio nursery; uses
  ``backoff`` and the error hierarchy of ``histdata.errors``.
- ``signals`` and ``systemd``: the process boundary. ``histdata run`` starts the root
  supervisor, reports ``ready()`` to systemd, and hands ``Supervisor.shutdown`` to
  ``watch_signals``.

Actors (``histdata.actors``) are the children; channels are created by whoever wires the tree,
so they survive the restart of the actors on either end.
"""

from __future__ import annotations

from histdata.supervisor.backoff import Backoff
from histdata.supervisor.changes import Changes, statistics_changed
from histdata.supervisor.channel import Channel, ChannelStatistics, Overflow, SpillSink, channels
from histdata.supervisor.signals import watch_signals
from histdata.supervisor.supervisor import (
    ChildSpec,
    ChildState,
    ChildStatistics,
    Restart,
    Strategy,
    Supervisor,
    SupervisorEscalation,
    SupervisorStatistics,
    cancel_when,
    current_child_stopping,
    sleep_unless_stopping,
)

__all__ = [
    "Backoff",
    "Changes",
    "Channel",
    "ChannelStatistics",
    "ChildSpec",
    "ChildState",
    "ChildStatistics",
    "Overflow",
    "Restart",
    "SpillSink",
    "Strategy",
    "Supervisor",
    "SupervisorEscalation",
    "SupervisorStatistics",
    "cancel_when",
    "channels",
    "current_child_stopping",
    "sleep_unless_stopping",
    "statistics_changed",
    "watch_signals",
]
