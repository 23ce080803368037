"""The app of one server worker process, built from the settings `rnd serve --workers N` passes
through the environment (uvicorn starts each worker from an import string, so the settings cannot
travel as Python objects). Each worker loads the checkpoint and builds its own defense; the key
store is shared (an SQLite file on one host, a PostgreSQL database across hosts), and its
check-and-charge is atomic across processes, so quotas hold across workers."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from rnd.defenses import build_defense
from rnd.models import load_model
from rnd.serving.keys import open_keys
from rnd.serving.limits import ServerLimits

ENV = "RND_SERVE_SETTINGS"


def worker_seed(seed: int | None, pid: int) -> int | None:
    """A worker's defense seed: None (OS entropy) stays None; a given seed is mixed with the worker's
    pid, so two workers never draw the same noise."""
    if seed is None:
        return None
    return int.from_bytes(hashlib.sha256(f"{seed}:{pid}".encode()).digest()[:8], "big") >> 1


def build_app(settings: dict[str, Any], pid: int | None = None) -> Any:
    """The FastAPI app for `settings` (checkpoint: any `rnd.models.load_model` spec, with weights
    and model_meta; defense, seed, name, output, k, keys, max_batch, max_wait_ms, max_body_bytes,
    device; limits, a `ServerLimits` dict, and metrics, its access)."""
    from rnd.serving.app import create_app

    model, _ = load_model(
        settings["checkpoint"],
        settings.get("weights"),
        device=settings.get("device", "cpu"),
        meta=settings.get("model_meta") or None,
    )
    seed = settings.get("seed")
    if pid is not None:
        seed = worker_seed(seed, pid)
    defended = build_defense(settings["defense"], model, seed=seed)
    keys = None
    if settings.get("keys"):
        keys = open_keys(settings["keys"], create=False)  # a server never starts on an empty store
    return create_app(
        model,
        defended,
        name=settings["name"],
        output=settings["output"],
        k=settings["k"],
        keys=keys,
        max_batch=settings["max_batch"],
        max_wait_ms=settings["max_wait_ms"],
        max_body_bytes=settings["max_body_bytes"],
        limits=ServerLimits.from_dict(settings.get("limits")),
        metrics_access=settings.get("metrics", "public"),
    )


def app_from_env() -> Any:
    """uvicorn's factory for a worker process (`rnd.serving.factory:app_from_env`); it also gives the
    process's connections their limits (`rnd.serving.protocol`)."""
    from rnd.serving.protocol import GuardedH11Protocol

    settings = json.loads(os.environ[ENV])
    GuardedH11Protocol.configure(ServerLimits.from_dict(settings.get("limits")))
    return build_app(settings, pid=os.getpid())
