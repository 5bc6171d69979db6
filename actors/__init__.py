"""The service's actors, each a restartable trio task under the supervisor.

Live path: ``feed`` (WebSocket v2) → ``buffer`` (batches; overflow policy; ``journal`` on disk)
→ ``flusher`` (Storage). Beside it: ``rollup``, ``gapfiller``, ``backfiller``,
``maintenance`` and ``query`` (the Unix-socket API, with ``hub`` fanning live data out to
stream clients). ``histdata.service`` wires them into the supervision tree.
"""
