"""`rnd serve`: put a defended checkpoint behind an Open Inference Protocol (KServe v2) endpoint.

The defense (`--defense`, e.g. `rnd:nu=0.02`) runs inside the server with its own generator, seeded
from the OS unless `--seed` says otherwise (with `--workers N`, each worker mixes the seed with its
pid, so no two draw the same noise); what clients see is `--output`. With `--keys`, every
request needs `Authorization: Bearer KEY` (keys made by `rnd keys add`) and is charged per image.

`--engine ray --replicas N` deploys the same app on Ray Serve instead (`rnd.serving.ray_engine`):
N replicas, each with its own model and noise, behind Ray Serve's HTTP proxy, sharing the key store.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import click

from rnd.cli.app import main
from rnd.cli.checks import MAX_SEED, count
from rnd.cli.models import given_meta, model_source_options, stored_spec
from rnd.device import default_device, resolve_device
from rnd.errors import InputError
from rnd.extras import require
from rnd.models import checkpoint_paths
from rnd.models.source import model_kind, model_label
from rnd.serving.factory import ENV, build_app
from rnd.serving.keys import is_postgres_url, redact
from rnd.serving.limits import ServerLimits
from rnd.serving.ray_engine import serve_forever

log = logging.getLogger(__name__)

#: What a served model may be named: one URL path segment that needs no escaping.
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _model_name(spec: str) -> str:
    """The name in the URL: a checkpoint's file stem (`models/fashion-mnist-small-cnn.safetensors`
    -> `fashion-mnist-small-cnn`), a TorchScript file's stem, a factory's function name."""
    kind = model_kind(spec)
    if kind != "checkpoint":
        return model_label(spec, kind)
    weights, _ = checkpoint_paths(spec)
    return weights.name.removesuffix(".safetensors")


@main.command()
@click.argument("checkpoint", metavar="MODEL")
@model_source_options
@click.option("--defense", default="rnd:nu=0.02", show_default=True, help="defense spec applied server-side")
@click.option(
    "--output",
    type=click.Choice(["probs", "topk", "labels"]),
    default="probs",
    show_default=True,
    help="what clients see",
)
@click.option("--k", "k", type=count(1, 10_000), default=5, show_default=True, help="classes shown by topk")
@click.option(
    "--name", default=None, help="model name in the URL [default: the model's file stem or factory name]"
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--keys",
    "keys_db",
    default=None,
    metavar="STORE",
    help="API key store made by `rnd keys add`: an SQLite file, or a postgresql:// URL shared by hosts",
)
@click.option("--max-batch", type=count(1, 65_536), default=256, show_default=True, help="images per forward")
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(0, 10_000),
    default=2.0,
    show_default=True,
    help="how long a request waits for others to share its forward",
)
@click.option("--max-body-bytes", type=count(1, 2**31), default=6_553_500, show_default=True)
@click.option(
    "--header-timeout",
    type=click.FloatRange(0, 3600, min_open=True),
    default=ServerLimits.header_timeout_s,
    show_default=True,
    help="seconds a connection has to send a whole request head (then 408 and closed)",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(0, 3600, min_open=True),
    default=ServerLimits.body_timeout_s,
    show_default=True,
    help="seconds a request has to send its whole body (then 408 and closed)",
)
@click.option(
    "--max-connections",
    type=count(8, 1_000_000),
    default=None,
    help="open connections per server process [default: min(1000, half the open-file limit)]",
)
@click.option("--max-headers", type=count(8, 10_000), default=ServerLimits.max_headers, show_default=True)
@click.option(
    "--max-header-bytes", type=count(1024, 2**24), default=ServerLimits.max_header_bytes, show_default=True
)
@click.option(
    "--metrics",
    "metrics_access",
    type=click.Choice(["public", "key", "off"]),
    default="public",
    show_default=True,
    help="/metrics for anyone, for a valid key only (needs --keys), or not at all",
)
@click.option("--seed", type=count(0, MAX_SEED), default=None, help="defense seed [default: OS entropy]")
@click.option("--device", default=None, help="where the model runs [default: rnd --device, else cpu]")
@click.option(
    "--workers",
    type=count(1, 256),
    default=1,
    show_default=True,
    help="server processes sharing the port and the key store (each loads the model); uvicorn only",
)
@click.option(
    "--engine",
    type=click.Choice(["uvicorn", "ray"]),
    default="uvicorn",
    show_default=True,
    help="uvicorn processes on this machine, or Ray Serve replicas (the ray and serve extras)",
)
@click.option(
    "--replicas",
    type=count(1, 1024),
    default=None,
    help="Ray Serve replicas, each loading the model  [default: 1]; ray only",
)
@click.option(
    "--ray-proxy",
    type=click.Choice(["every", "head"]),
    default=None,
    help="Ray Serve's HTTP proxies on every node with a replica, or on the head node only  "
    "[default: every]; ray only",
)
@click.option(
    "--ray-address",
    default=None,
    help="join this Ray cluster instead of starting a local Ray; ray only",
)
def serve(
    checkpoint: str,
    weights: Path | None,
    input_shape: str | None,
    num_classes: int | None,
    defense: str,
    output: str,
    k: int,
    name: str | None,
    host: str,
    port: int,
    keys_db: str | None,
    max_batch: int,
    max_wait_ms: float,
    max_body_bytes: int,
    header_timeout: float,
    body_timeout: float,
    max_connections: int | None,
    max_headers: int,
    max_header_bytes: int,
    metrics_access: str,
    seed: int | None,
    device: str | None,
    workers: int,
    engine: str,
    replicas: int | None,
    ray_address: str | None,
    ray_proxy: str | None,
) -> None:
    """Serve MODEL with a defense inside (Open Inference Protocol on uvicorn or Ray Serve).

    MODEL is an rnd checkpoint, a TorchScript file (with a model.json sidecar or --input-shape /
    --num-classes) or package.module:factory (with --weights)."""
    ctx = click.get_current_context()
    if engine == "uvicorn" and (replicas is not None or ray_address is not None or ray_proxy is not None):
        raise click.UsageError("--replicas, --ray-address and --ray-proxy go with --engine ray")
    if engine == "ray" and ctx.get_parameter_source("workers") != click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--workers goes with --engine uvicorn; use --replicas with --engine ray")
    # optional extra: imported here so the rest of the CLI works without it
    require("serve", "rnd serve")
    import uvicorn

    model_name = name if name is not None else _model_name(checkpoint)
    if not MODEL_NAME_RE.fullmatch(model_name):
        given = "--name" if name is not None else f"the name {model_name!r} taken from MODEL; give --name"
        raise InputError(
            f"{given}: a served model name is 1-128 letters, digits, '.', '_' or '-' starting with a "
            f"letter or digit (it is a part of the URL), got {model_name!r}"
        )
    settings = {
        "checkpoint": stored_spec(checkpoint),
        "weights": None if weights is None else str(weights),
        "model_meta": given_meta(input_shape, num_classes),
        "defense": defense,
        "seed": seed,
        "name": model_name,
        "output": output,
        "k": k,
        "keys": keys_db,
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "max_body_bytes": max_body_bytes,
        "limits": ServerLimits(
            max_header_bytes=max_header_bytes,
            max_headers=max_headers,
            header_timeout_s=header_timeout,
            body_timeout_s=body_timeout,
            max_connections=max_connections,
        ).to_dict(),
        "metrics": metrics_access,
        "device": str(resolve_device(device) if device is not None else default_device()),
    }
    if engine == "ray":
        require("ray", "rnd serve --engine ray")
    if seed is not None:
        click.echo(
            "warning: --seed makes the defense's noise replayable: whoever knows the seed (and the "
            "worker pids) can draw the same noise offline and take it out; serve without --seed",
            err=True,
        )
    app = build_app(settings)  # checks the checkpoint, defense and key store before serving
    where = f"http://{host}:{port}/v2/models/{model_name}"
    if engine == "ray":
        replicas = replicas or 1
        scale = f", {replicas} Ray Serve replicas" + (f" on {ray_address}" if ray_address else "")
    else:
        scale = f", {workers} worker processes" if workers > 1 else ""
    click.echo(
        f"serving {model_name} ({defense}, output {output}) on {where}"
        + (f" with keys from {redact(keys_db) if is_postgres_url(keys_db) else keys_db}" if keys_db else "")
        + scale,
        err=True,
    )
    if engine == "ray":
        del app
        threads = ctx.find_root().params.get("threads")
        serve_forever(
            settings,
            replicas=replicas,
            host=host,
            port=port,
            address=ray_address,
            threads=threads,
            proxy=ray_proxy or "every",
        )
        return
    from rnd.serving.protocol import GuardedH11Protocol

    guarded = GuardedH11Protocol.uvicorn_options(ServerLimits.from_dict(settings["limits"]))
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="warning", **guarded)
        return
    del app
    os.environ[ENV] = json.dumps(settings)
    uvicorn.run(
        "rnd.serving.factory:app_from_env",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_level="warning",
        **guarded,
    )
