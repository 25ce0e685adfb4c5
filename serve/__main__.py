"""`python -m serve --model PATH [--model NAME=PATH ...] --backend onnxruntime`: serve exported
models over the Open Inference Protocol (KServe v2) until SIGINT/SIGTERM, then drain."""

from __future__ import annotations

import argparse
import logging
import os
import socket

import torch

from pipeline import PipelineError
from pipeline.cli import run_stage
from pipeline.runtime import BACKENDS
from pipeline.runtime.base import PRECISIONS
from serve.models import load_all
from serve.server import ServerConfig, create_app

LISTENING = "listening on"  # the line a launcher waits for


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
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--max-queue-delay-us", type=int, default=500)
    p.add_argument(
        "--no-dynamic-batching",
        dest="dynamic_batching",
        action="store_false",
        help="run every request alone (the baseline batching is measured against)",
    )
    p.add_argument("--max-payload-bytes", type=int, default=64 << 20)
    p.add_argument("--threads", type=int, default=None, help="backend CPU threads")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="the PyTorch backends' compute type (inputs and logits stay float32 on the wire)",
    )
    p.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds to drain")
    p.add_argument(
        "--api-key-env",
        default="SERVE_API_KEY",
        help="environment variable holding the API key; unset or empty: no key needed",
    )
    args = p.parse_args(argv)
    if args.max_batch_size < 1 or args.max_queue_delay_us < 0 or args.max_payload_bytes < 1:
        p.error("--max-batch-size and --max-payload-bytes must be >= 1, the delay >= 0")
    return args


def main(argv: list[str]) -> None:
    from aiohttp import web

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
        api_key=os.environ.get(args.api_key_env) or None,
    )
    # our own socket: with --port 0 the port is known before the first request
    v6 = ":" in args.host
    sock = socket.create_server(
        (args.host, args.port), family=socket.AF_INET6 if v6 else socket.AF_INET
    )
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if v6 else host
    names = ", ".join(models)
    print(f"{LISTENING} http://{host}:{port} ({args.backend}: {names})", flush=True)
    web.run_app(
        create_app(models, cfg),
        sock=sock,
        shutdown_timeout=args.shutdown_timeout,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_stage(main)
