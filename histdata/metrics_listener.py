"""``[metrics] listen``: ``/metrics`` over TCP, for a Prometheus server to scrape.

Prometheus cannot scrape a Unix socket, so with ``listen = "127.0.0.1:9108"`` the service
also serves the Prometheus text on that address — and nothing else: every other path is a
404, so opening this port exposes no market data and no control. Off by default (``""``).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from histdata.config import parse_listen
from histdata.httpserver import Handler, Request, Response, open_tcp_listener, serve_http
from histdata.supervisor import current_child_stopping
from histdata.telemetry import CONTENT_TYPE

__all__ = ["metrics_handler", "run"]


def metrics_handler(metrics: Callable[[], bytes]) -> Handler:
    """An HTTP handler answering ``GET /metrics`` with ``metrics()``; 404 or 405 otherwise."""

    async def handle(request: Request) -> Response:
        if request.path != "/metrics":
            return Response.json(404, {"error": f"no such path {request.path}; try /metrics"})
        if request.method not in ("GET", "HEAD"):
            return Response.json(
                405, {"error": f"method {request.method} not allowed"}, headers=[("allow", "GET")]
            )
        return Response(200, (("content-type", CONTENT_TYPE),), metrics())

    return handle


async def run(
    listen: str,
    metrics: Callable[[], bytes],
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``metrics()`` at ``http://<listen>/metrics`` until the supervisor stops us.

    A supervised child (``ChildSpec("metrics", partial(run, listen, service.metrics))``):
    reports started with the bound ``(host, port)`` once listening (port 0 in ``listen``
    picks a free one), and returns when its stopping event is set.

    Raises:
        ConfigError: ``listen`` is not ``host:port``.
        OSError: the address cannot be bound (in use, not local, no permission).
    """
    host, port = parse_listen(listen)
    stopping = current_child_stopping()
    listener = await open_tcp_listener(host, port)
    bound = listener.socket.getsockname()
    async with listener, trio.open_nursery() as nursery:
        await nursery.start(serve_http, metrics_handler(metrics), [listener])
        task_status.started((str(bound[0]), int(bound[1])))
        await stopping.wait()
        nursery.cancel_scope.cancel()
