"""`python -m serve --model PATH [--model NAME=PATH ...] --backend onnxruntime [--grpc-port N]`:
serve exported models over the Open Inference Protocol (KServe v2), over HTTP and optionally
gRPC, until SIGINT/SIGTERM, then drain."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import socket
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import torch

from pipeline import PipelineError
from pipeline.cli import run_stage
from pipeline.runtime import BACKENDS
from pipeline.runtime.base import PRECISIONS
from serve import kserve_grpc
from serve.connections import serve
from serve.dataplane import Dataplane, ServerConfig
from serve.models import load_all
from serve.server import create_app

LISTENING = "listening on"  # the line a launcher waits for
SWITCH_INTERVAL_S = 1e-4
T = TypeVar("T")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m serve", description=__doc__)
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="a model file or folder (repeat for several); NAME defaults to the variant's name",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="onnxruntime",
        help="a PyTorch backend, or the artefact of an exported folder to run (a runtime's "
        "name is its fp32 artefact: openvino-int8 is NNCF's INT8 IR, onnxruntime-int8 ORT's)",
    )
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes it beyond this machine")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve the KServe v2 gRPC API on this port (0 picks a free one)",
    )
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-queue-delay-us", type=int, default=500)
    p.add_argument(
        "--no-dynamic-batching",
        dest="dynamic_batching",
        action="store_false",
        help="run every request alone (the baseline batching is measured against)",
    )
    defaults = ServerConfig()
    p.add_argument("--max-payload-bytes", type=int, default=defaults.max_payload_bytes)
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=defaults.max_image_pixels,
        help="the largest image /classify decodes (width x height, read from its header)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=defaults.max_connections,
        help="HTTP connections held at once (lowered to fit the descriptor limit), more get a "
        "503; gRPC calls in flight at once, more get RESOURCE_EXHAUSTED",
    )
    for name, what in [
        ("header", "for a request's headers, from its first byte"),
        ("body", "for a request's body, once its headers are in"),
        ("keepalive", "an idle connection is kept open"),
    ]:
        p.add_argument(
            f"--{name}-timeout",
            type=float,
            default=getattr(defaults, f"{name}_timeout"),
            help=f"seconds to wait {what}" if name != "keepalive" else f"seconds {what}",
        )
    p.add_argument("--threads", type=int, default=None, help="backend CPU threads")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="the PyTorch backends' compute type (inputs and logits stay float32 on the wire)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=defaults.shutdown_timeout,
        help="seconds to drain; requests still running then are dropped (exit status 1)",
    )
    p.add_argument(
        "--api-key-env",
        default="SERVE_API_KEY",
        help="environment variable holding the API key; unset or empty: no key needed",
    )
    args = p.parse_args(argv)
    at_least_one = ["max_batch_size", "max_payload_bytes", "max_image_pixels", "max_connections"]
    for name in at_least_one:
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.grpc_port is not None and not 0 <= args.grpc_port < 65536:
        p.error("--grpc-port must be 0 to 65535")
    for name in ["max_queue_delay_us", "header_timeout", "body_timeout", "keepalive_timeout"]:
        if not getattr(args, name) >= 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    return args


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    models = load_all(
        args.model,
        args.backend,
        threads=args.threads,
        precision=args.precision,
        max_batch_size=args.max_batch_size,
    )
    for name, model in models.items():
        limit = getattr(model.backend, "max_batch_size", None)  # an engine's profile, CUDA graphs
        if limit and args.max_batch_size > limit:
            raise PipelineError(
                f"{name}: the engine takes batches of at most {limit}; "
                f"serve it with --max-batch-size {limit} or less"
            )
    cfg = ServerConfig(
        max_batch_size=args.max_batch_size,
        max_queue_delay_us=args.max_queue_delay_us,
        dynamic_batching=args.dynamic_batching,
        max_payload_bytes=args.max_payload_bytes,
        max_image_pixels=args.max_image_pixels,
        api_key=os.environ.get(args.api_key_env) or None,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keepalive_timeout=args.keepalive_timeout,
        shutdown_timeout=args.shutdown_timeout,
        max_connections=args.max_connections,
    )
    # our own socket: with --port 0 the port is known before the first request
    v6 = ":" in args.host
    sock = socket.create_server(
        (args.host, args.port), family=socket.AF_INET6 if v6 else socket.AF_INET
    )
    host = sock.getsockname()[0]
    host = f"[{host}]" if v6 else host
    plane = Dataplane(models, cfg)
    run(_serve(plane, sock, host, args.grpc_port, f"{args.backend}: {', '.join(models)}"))
    if plane.dropped:
        raise PipelineError(
            f"the drain timed out after {cfg.shutdown_timeout:g} s (--shutdown-timeout): "
            f"{plane.dropped} request(s) in flight were dropped"
        )


def run(main: Coroutine[Any, Any, T]) -> T:
    """`main` on uvloop's event loop where it is installed (not on Windows): libuv's loop gives
    the gRPC path 5-11 % more throughput than asyncio's. libuv reads and writes sockets holding
    the GIL, where asyncio's socket calls release it, so the batcher's threads, which need the
    GIL to hand a batch on, would wait out Python's 5 ms switch interval behind a busy loop; a
    100 us one lets them in.

    What exists before the loop starts (the modules, torch, the models) lives as long as the
    server, so it is frozen out of the garbage collector's passes: grpc.aio leaves reference
    cycles behind each call, which set off a full pass every few seconds under load, and a full
    pass over that heap stopped the loop for 110-130 ms (under 1 ms once frozen)."""
    gc.collect()
    gc.freeze()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return uvloop.run(main)


async def _serve(
    plane: Dataplane, sock: socket.socket, host: str, grpc_port: int | None, what: str
) -> None:
    """The HTTP server on `sock`, the gRPC one on `grpc_port` of `host` (none for None); the
    listening line says where."""
    port = sock.getsockname()[1]
    addresses = [f"http://{host}:{port}"]
    grpc_server = None
    if grpc_port is not None:  # made in the loop it serves in
        grpc_server, bound = kserve_grpc.create_server(plane, host, grpc_port)
        addresses.append(f"grpc://{host}:{bound}")
    print(f"{LISTENING} {' '.join(addresses)} ({what})", flush=True)
    await serve(create_app(plane), sock, plane, grpc_server)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
