"""The service's actors, each a restartable trio task under the supervisor.

Live path: ``feeds`` (one ``feed`` per WebSocket v2 connection) → ``buffer`` (batches;
overflow policy; ``journal`` on disk) → ``flusher`` (Storage). Beside it: ``pairs`` (Kraken's
AssetPairs into the registry and the feeds' subscriptions), ``rollup``, ``gapfiller``,
``backfiller``, ``maintenance`` and ``query`` (the Unix-socket API, with ``hub`` fanning live
data out to stream clients). ``histdata.service`` wires them into the supervision tree.
"""
