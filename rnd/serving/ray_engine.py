"""`rnd serve --engine ray`: the same Open Inference Protocol app, deployed on Ray Serve with N replicas.

Each replica is a Ray actor that builds its own app with `build_app(settings, pid=os.getpid())` at
start (so it loads the checkpoint and draws its own noise, `worker_seed`) and hands it to Ray Serve's
ASGI ingress, which runs the app's lifespan (the batcher) inside the replica before the replica takes
traffic. The key store is shared (SQLite on one host; PostgreSQL when replicas run on several nodes),
and its check-and-charge is atomic across processes, so a quota holds across replicas. Ray Serve's
HTTP proxy listens on the given host and port and forwards requests, status codes and headers to and
from the replicas.

Ray is imported lazily (the `ray` and `serve` extras); importing this module does not need it.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from typing import Any

log = logging.getLogger(__name__)

#: The Serve application name (Ray names replica processes `ray::ServeReplica:rnd:RndReplica`).
APP_NAME = "rnd"
#: Requests a replica takes at once: enough to fill the dynamic batcher (Ray's default is 5).
MAX_ONGOING_REQUESTS = 256
#: Ray CPUs claimed by one replica.
REPLICA_CPUS = 1.0
#: `rnd serve --ray-proxy` -> Ray Serve's proxy location.
PROXY_LOCATIONS = {"every": "EveryNode", "head": "HeadOnly"}


def build_application(settings: dict[str, Any], replicas: int, threads: int | None = None) -> Any:
    """The Serve application: `replicas` copies of the app for `settings` (as `build_app` takes them);
    `threads` sets torch's CPU threads in each replica (None: Ray's default, one per claimed CPU)."""
    from ray import serve

    def replica_app() -> Any:
        """Run by Serve inside each replica at start; Serve then runs the app's lifespan."""
        import torch

        from rnd.serving.factory import build_app

        if threads is not None:
            torch.set_num_threads(threads)
        return build_app(settings, pid=os.getpid())

    # a builder function (not a built app) goes to the ingress: each replica loads its own model
    ingress = serve.ingress(replica_app)()
    deployment = serve.deployment(
        ingress,
        name="RndReplica",
        num_replicas=replicas,
        max_ongoing_requests=MAX_ONGOING_REQUESTS,
        ray_actor_options={"num_cpus": REPLICA_CPUS},
    )
    return deployment.bind()


def serve_forever(
    settings: dict[str, Any],
    *,
    replicas: int,
    host: str,
    port: int,
    address: str | None = None,
    threads: int | None = None,
    proxy: str = "every",
) -> None:
    """Deploy `replicas` replicas behind Ray Serve's proxy on `host:port` and block until SIGINT or
    SIGTERM; then delete the application and, when Ray was started here (no `address`), shut Serve
    and the local Ray down.

    Args:
        address: a Ray cluster to join (`ray.init(address=...)`); None starts a local Ray with the
            CPUs the replicas claim, without the dashboard.
        proxy: where Ray Serve's HTTP proxies listen on `host:port`: "every" node that holds a
            replica (Ray's default; put a load balancer in front), or the "head" node only (one
            address for clients; also what several nodes on one machine need, as they share its
            ports).
    """
    import ray
    from ray import serve

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, on_signal) for s in signals}
    try:
        if address is None:
            ray.init(
                num_cpus=max(1, math.ceil(replicas * REPLICA_CPUS)),
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        for s in signals:  # Ray's core worker installs its own SIGTERM handler, which exits at once
            signal.signal(s, on_signal)
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # one line on stderr, as with uvicorn
        try:
            location = PROXY_LOCATIONS[proxy]
            serve.start(proxy_location=location, http_options={"host": host, "port": port})
            serve.run(
                build_application(settings, replicas, threads),
                name=APP_NAME,
                route_prefix="/",
                blocking=False,
            )
            log.info("ray serve: %d replicas of %s on %s:%d", replicas, settings["name"], host, port)
            while not stop.wait(0.5):
                pass
        finally:
            if address is None:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
            ray.shutdown()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
