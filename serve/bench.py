"""`python -m serve.bench --url URL --model M --concurrency 1,4,16 [--protocol grpc]`: a
closed-loop load client measured the way Triton's perf_analyzer measures, over KServe v2
HTTP/REST or gRPC.

Per concurrency level, `concurrency` clients each send a request as soon as their last one
returns. After a warm-up, the load runs in fixed measurement windows until the last
`stable_windows` windows agree (throughput and mean latency each within `stability` percent of
their average) or `max_windows` is reached; the figures pool those last windows. The server's
own statistics, read at each window edge (over the load's protocol), split its time into
queueing and compute; over HTTP its /metrics give its resident memory per window.
`--duration` turns this into a soak: windows for a fixed time, with no stability rule.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pipeline import PipelineError
from pipeline.cli import run_stage
from pipeline.config import LoadConfig, validate
from pipeline.io import write_json
from serve.protocol import encode_infer_request

if TYPE_CHECKING:
    import grpc

DEFAULT_URLS = {"http": "http://127.0.0.1:8000", "grpc": "127.0.0.1:8001"}
# how tensors travel, by protocol and LoadConfig.binary
ENCODINGS = {"http": {True: "binary", False: "json"}, "grpc": {True: "raw", False: "typed"}}
BACKOFF_S = 0.001  # a client's pause after a failed request
# gRPC clients sharing one channel (one HTTP/2 connection), as Triton's C++ client and so
# perf_analyzer share them (TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT, 6): 16 clients load
# a server over 3 connections, not 1
CLIENTS_PER_CHANNEL = 6
# counts a reply: whether it succeeded, and when its request was sent
Record = Callable[[bool, float], None]


@dataclass
class _Window:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    start: float = 0.0
    end: float = 0.0
    stats: dict | None = None  # the server's cumulative statistics at the window's end
    rss_bytes: float | None = None

    @property
    def throughput(self) -> float:  # requests/s
        return len(self.latencies) / max(self.end - self.start, 1e-9)

    @property
    def mean(self) -> float:
        return float(np.mean(self.latencies)) if self.latencies else float("inf")


def stable(windows: list[_Window], n: int, percent: float) -> bool:
    """perf_analyzer's rule: in each of the last `n` windows, throughput and mean latency lie
    within `percent` of their average over those windows."""
    if len(windows) < n:
        return False
    last = windows[-n:]
    if any(not w.latencies or w.errors for w in last):
        return False
    for values in ([w.throughput for w in last], [w.mean for w in last]):
        avg = float(np.mean(values))
        if any(abs(v - avg) > avg * percent / 100 for v in values):
            return False
    return True


def _images(shape: list[int], batch_size: int) -> np.ndarray:
    """The request's images: `batch_size` of the model's input shape (batch axis first)."""
    return np.random.default_rng(0).standard_normal([batch_size, *shape[1:]]).astype(np.float32)


class _HttpClient:
    """The load over HTTP/REST: one prebuilt body per model, a pooled aiohttp session."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float) -> None:
        import aiohttp

        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            headers=self.headers,
        )
        self.requests: dict[str, tuple[bytes, dict]] = {}

    async def get_json(self, path: str) -> dict:
        async with self.session.get(self.url + path) as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                raise PipelineError(f"{self.url}{path}: HTTP {r.status}: {body.get('error', body)}")
            return body

    async def prepare(self, model: str, cfg: LoadConfig) -> None:
        meta = await self.get_json(f"/v2/models/{model}")
        (tensor,) = meta["inputs"]
        x = _images(tensor["shape"], cfg.batch_size)
        out = [o["name"] for o in meta["outputs"]]
        self.requests[model] = encode_infer_request(tensor["name"], x, cfg.binary, out)

    async def infer(self, model: str) -> bool:
        """Whether the server answered; refused, dropped or timed out is an error to count, not
        a crash."""
        body, headers = self.requests[model]
        path = f"{self.url}/v2/models/{model}/infer"
        try:
            async with self.session.post(path, data=body, headers=headers) as r:
                await r.read()
                return r.status == 200
        except Exception:
            return False

    def start(
        self, model: str, concurrency: int, record: Record, stop: threading.Event
    ) -> list[asyncio.Future]:
        """`concurrency` closed-loop clients, a task each, until `stop`."""

        async def client() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                ok = await self.infer(model)
                record(ok, t0)
                if not ok:  # a refusing server is no spin
                    await asyncio.sleep(BACKOFF_S)

        return [asyncio.create_task(client()) for _ in range(concurrency)]

    async def stats(self, model: str) -> dict:
        return (await self.get_json(f"/v2/models/{model}/stats"))["model_stats"][0]

    async def rss_bytes(self) -> float | None:
        async with self.session.get(self.url + "/metrics") as r:
            text = await r.text()
        for line in text.splitlines():
            if line.startswith("process_resident_memory_bytes "):
                return float(line.split()[1])
        return None

    async def close(self) -> None:
        await self.session.close()


class _GrpcClient:
    """The load over KServe v2 gRPC (standard messages only, so Triton's endpoint too).

    The load runs on grpcio's synchronous stack, driven by its completion callbacks: each
    client's reply sends its next request from grpcio's own thread, so no Python thread waits
    per client. Every `CLIENTS_PER_CHANNEL` clients share a channel, as perf_analyzer's do.
    Each model has one prebuilt serialized `ModelInferRequest` and the reply stays
    bytes, as the HTTP load posts a prebuilt body and reads the reply unparsed. Per request,
    this costs the client less CPU than a `grpc.aio` call (by 0.1-0.15 ms) or a blocking call in
    a thread per client (by 15-30 us, 13-20 %): on a small machine that is time left to the
    server under test. Metadata and statistics go over `grpc.aio`, in the event loop."""

    def __init__(self, url: str, api_key: str | None, timeout_s: float) -> None:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        self.pb = service_pb2
        unlimited = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        self.channel = grpc.aio.insecure_channel(url, options=unlimited)
        self.service = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.url, self.options = url, unlimited
        self.load_channels: list[grpc.Channel] = []  # opened as clients need them
        self.call = {
            "metadata": (("authorization", f"Bearer {api_key}"),) if api_key else (),
            "timeout": timeout_s,
        }
        self.requests: dict[str, bytes] = {}

    async def prepare(self, model: str, cfg: LoadConfig) -> None:
        meta = await self.service.ModelMetadata(
            self.pb.ModelMetadataRequest(name=model), **self.call
        )
        (tensor,) = meta.inputs
        x = _images(list(tensor.shape), cfg.batch_size)
        request = self.pb.ModelInferRequest(model_name=model)
        sent = request.inputs.add(name=tensor.name, datatype="FP32", shape=x.shape)
        if cfg.binary:
            request.raw_input_contents.append(x.tobytes())
        else:
            sent.contents.fp32_contents.extend(x.ravel().tolist())
        for out in meta.outputs:
            request.outputs.add(name=out.name)
        self.requests[model] = request.SerializeToString()

    def start(
        self, model: str, concurrency: int, record: Record, stop: threading.Event
    ) -> list[asyncio.Future]:
        """`concurrency` closed-loop clients, each a chain of calls that ends at `stop`: a
        future per client that is done when its last reply is in."""
        loop = asyncio.get_running_loop()
        request = self.requests[model]

        def client(i: int) -> asyncio.Future:
            finished = loop.create_future()
            model_infer = self._model_infer(i)

            def send() -> None:
                t0 = time.perf_counter()
                try:
                    call = model_infer.future(request, **self.call)
                except Exception:  # a channel that cannot take calls
                    replied(False, t0)
                    return
                # any failed call (a `grpc.RpcError`, a cancel) counts as an error
                call.add_done_callback(
                    lambda call: replied(not call.cancelled() and call.exception() is None, t0)
                )

            def replied(ok: bool, t0: float) -> None:
                record(ok, t0)
                if stop.is_set():
                    loop.call_soon_threadsafe(finished.set_result, None)
                elif ok:
                    send()
                else:  # a refusing server is no spin; the pause waits in the event loop
                    loop.call_soon_threadsafe(loop.call_later, BACKOFF_S, send)

            send()
            return finished

        return [client(i) for i in range(concurrency)]

    def _model_infer(self, client: int) -> grpc.UnaryUnaryMultiCallable:
        """Client number `client`'s ModelInfer, on channel `client // CLIENTS_PER_CHANNEL`."""
        import grpc

        index = client // CLIENTS_PER_CHANNEL
        while len(self.load_channels) <= index:
            # a subchannel pool of its own: channels alike to one address share one
            # connection in grpcio's global pool (tritonclient tells them apart by an argument)
            options = [*self.options, ("grpc.use_local_subchannel_pool", 1)]
            self.load_channels.append(grpc.insecure_channel(self.url, options=options))
        # no (de)serializers: bytes in, bytes out
        return self.load_channels[index].unary_unary("/inference.GRPCInferenceService/ModelInfer")

    async def stats(self, model: str) -> dict:
        """The statistics `_server_split` reads, as the HTTP route's JSON has them."""
        reply = await self.service.ModelStatistics(
            self.pb.ModelStatisticsRequest(name=model), **self.call
        )
        s = reply.model_stats[0]
        kinds = {k: getattr(s.inference_stats, k) for k in ("queue", "compute_infer")}
        return {
            "inference_count": s.inference_count,
            "execution_count": s.execution_count,
            "inference_stats": {k: {"count": d.count, "ns": d.ns} for k, d in kinds.items()},
        }

    async def rss_bytes(self) -> float | None:  # the metrics are on the HTTP port
        return None

    async def close(self) -> None:
        for channel in self.load_channels:
            channel.close()
        await self.channel.close()


_Client = _HttpClient | _GrpcClient


def _server_split(first: dict | None, last: dict | None) -> dict[str, float]:
    """Mean queue and compute time per request, and mean executed batch, between two reads of
    the server's statistics."""
    if not first or not last:
        return {}

    def delta(kind: str) -> tuple[int, int]:
        a, b = first["inference_stats"][kind], last["inference_stats"][kind]
        return b["count"] - a["count"], b["ns"] - a["ns"]

    queue_n, queue_ns = delta("queue")
    compute_n, compute_ns = delta("compute_infer")
    images = last["inference_count"] - first["inference_count"]
    batches = last["execution_count"] - first["execution_count"]
    if not queue_n or not compute_n or not batches:
        return {}
    return {  # per request, as Triton counts: the compute is that of the batch it ran in
        "server_queue_ms": queue_ns / queue_n / 1e6,
        "server_compute_ms": compute_ns / compute_n / 1e6,
        "server_batch_mean": images / batches,
    }


async def _level(client: _Client, model: str, concurrency: int, cfg: LoadConfig) -> dict:
    windows: list[_Window] = []
    current = _Window()
    stop = threading.Event()
    counting = threading.Lock()  # the gRPC load counts from grpcio's threads

    def record(ok: bool, t0: float) -> None:
        """The request sent at `t0`, counted in the window open when its reply came."""
        w = current
        if ok:
            w.latencies.append(time.perf_counter() - t0)
        else:
            with counting:
                w.errors += 1

    async def snapshot(w: _Window) -> None:
        w.stats = await client.stats(model)
        w.rss_bytes = await client.rss_bytes()

    clients = client.start(model, concurrency, record, stop)
    progress = _Progress(model, concurrency, cfg)
    try:
        await asyncio.sleep(cfg.warmup_s)
        start = _Window(start=time.perf_counter())
        await snapshot(start)
        start.end = start.start
        current = _Window(start=time.perf_counter())
        begin = current.start
        while True:
            await asyncio.sleep(cfg.window_ms / 1e3)
            done, current = current, _Window(start=time.perf_counter())
            done.end = current.start
            await snapshot(done)
            windows.append(done)
            progress.update(done)
            if cfg.duration_s is not None:
                if done.end - begin >= cfg.duration_s:
                    break
            elif len(windows) >= cfg.max_windows or stable(
                windows, cfg.stable_windows, cfg.stability
            ):
                break
    finally:
        stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
        progress.close()
    pooled = windows if cfg.duration_s is not None else windows[-cfg.stable_windows :]
    before = windows[-len(pooled) - 1] if len(windows) > len(pooled) else start
    return _summary(model, concurrency, cfg, windows, pooled, before)


def _summary(
    model: str,
    concurrency: int,
    cfg: LoadConfig,
    windows: list[_Window],
    pooled: list[_Window],
    before: _Window,
) -> dict:
    ms = np.array([lat for w in pooled for lat in w.latencies]) * 1e3
    seconds = sum(w.end - w.start for w in pooled)
    rss = [w.rss_bytes / 2**20 for w in windows if w.rss_bytes is not None]
    row = {
        "model": model,
        "concurrency": concurrency,
        "batch_size": cfg.batch_size,
        "protocol": cfg.protocol,
        "encoding": ENCODINGS[cfg.protocol][cfg.binary],
        "requests": int(ms.size),
        "errors": sum(w.errors for w in pooled),
        "windows": len(windows),
        "stable": cfg.duration_s is None and stable(windows, cfg.stable_windows, cfg.stability),
        "throughput": ms.size * cfg.batch_size / seconds,  # images/s
        "requests_per_s": ms.size / seconds,
    }
    if ms.size:
        for q in (50, 90, 95, 99):
            row[f"p{q}_ms"] = float(np.percentile(ms, q))
        row["mean_ms"] = float(ms.mean())
    row.update(_server_split(before.stats, pooled[-1].stats))
    if rss:
        row["server_rss_mb"] = [round(r, 2) for r in rss]
        row["server_rss_growth_mb"] = round(rss[-1] - rss[0], 2)
    return row


class _Progress:
    """A live line per level on a terminal (tqdm); a summary line each level either way."""

    def __init__(self, model: str, concurrency: int, cfg: LoadConfig) -> None:
        from tqdm import tqdm

        total = None
        if cfg.duration_s is not None:
            total = int(np.ceil(cfg.duration_s * 1e3 / cfg.window_ms))
        self.bar = tqdm(
            total=total or cfg.max_windows,
            desc=f"{model} c{concurrency}",
            unit="window",
            leave=False,
            file=sys.stderr,
            disable=None,
        )

    def update(self, w: _Window) -> None:
        p99 = np.percentile(w.latencies, 99) * 1e3 if w.latencies else float("nan")
        self.bar.set_postfix_str(f"{w.throughput:.0f} req/s, p99 {p99:.2f} ms, {w.errors} err")
        self.bar.update()

    def close(self) -> None:
        self.bar.close()


async def _run(url: str, models: list[str], cfg: LoadConfig, api_key: str | None) -> list[dict]:
    kind = _GrpcClient if cfg.protocol == "grpc" else _HttpClient
    client = kind(url, api_key, cfg.timeout_s)
    rows = []
    try:
        for model in models:
            await client.prepare(model, cfg)
            for c in cfg.concurrency:
                row = await _level(client, model, c, cfg)
                print(describe(row), file=sys.stderr, flush=True)
                rows.append(row)
    finally:
        await client.close()
    return rows


def describe(row: dict) -> str:
    text = (
        f"{row['model']:28s} c{row['concurrency']:<3d} {row['throughput']:9.1f} img/s  "
        f"p50 {row.get('p50_ms', float('nan')):7.2f}  p99 {row.get('p99_ms', float('nan')):7.2f} ms"
        f"  {row['errors']} errors"
    )
    if "server_queue_ms" in row:
        text += (
            f"  server: queue {row['server_queue_ms']:.2f} ms, compute "
            f"{row['server_compute_ms']:.2f} ms, batches of {row['server_batch_mean']:.1f}"
        )
    if "server_rss_growth_mb" in row:
        text += f"  server memory {row['server_rss_growth_mb']:+.1f} MiB over the windows"
    return text


def load(url: str, models: list[str], cfg: LoadConfig, api_key: str | None = None) -> list[dict]:
    """Drive a running server at `url` (`http://host:port`, or `host:port` for gRPC) over
    `cfg.protocol`: one row per model and concurrency level."""
    return asyncio.run(_run(url, models, cfg, api_key))


def parse_args(argv: list[str]) -> argparse.Namespace:
    default = {k: f.default for k, f in LoadConfig.model_fields.items()}
    p = argparse.ArgumentParser(prog="python -m serve.bench", description=__doc__)
    p.add_argument(
        "--url", default=None, help="http://127.0.0.1:8000, or for gRPC 127.0.0.1:8001 (default)"
    )
    p.add_argument("--protocol", choices=["http", "grpc"], default=default["protocol"])
    p.add_argument("--model", action="append", required=True, help="repeat for several")
    p.add_argument(
        "--concurrency",
        default=",".join(map(str, default["concurrency"])),
        help="comma-separated levels",
    )
    p.add_argument("--batch-size", type=int, default=default["batch_size"], help="per request")
    p.add_argument("--window-ms", type=int, default=default["window_ms"])
    p.add_argument("--stability", type=float, default=default["stability"], help="percent")
    p.add_argument("--max-windows", type=int, default=default["max_windows"])
    p.add_argument("--warmup-s", type=float, default=default["warmup_s"])
    p.add_argument(
        "--json-tensors",
        action="store_true",
        help="JSON tensors instead of binary (over gRPC: typed contents instead of raw)",
    )
    p.add_argument("--duration", type=float, default=None, help="soak for this many seconds")
    p.add_argument("--output", default="serve_bench.json", help="JSON report (a PNG beside it)")
    p.add_argument("--api-key-env", default="SERVE_API_KEY")
    return p.parse_args(argv)


def main(argv: list[str]) -> None:
    from pathlib import Path

    import aiohttp
    import grpc

    from pipeline.plots import latency_throughput

    args = parse_args(argv)
    url = args.url or DEFAULT_URLS[args.protocol]
    try:
        levels = [int(c) for c in args.concurrency.split(",")]
    except ValueError:
        raise PipelineError(
            f"--concurrency must be integers like 1,4,16: {args.concurrency!r}"
        ) from None
    settings = {
        "concurrency": levels,
        "batch_size": args.batch_size,
        "window_ms": args.window_ms,
        "stability": args.stability,
        "max_windows": args.max_windows,
        "warmup_s": args.warmup_s,
        "binary": not args.json_tensors,
        "duration_s": args.duration,
        "protocol": args.protocol,
    }
    cfg = validate(LoadConfig, settings, "serve.bench")
    try:
        rows = load(url, args.model, cfg, os.environ.get(args.api_key_env) or None)
    except (OSError, asyncio.TimeoutError, aiohttp.ClientError, grpc.RpcError) as e:
        raise PipelineError(f"{url}: cannot reach the server ({e!r})") from None
    out = Path(args.output)
    write_json(out, {"url": url, "config": cfg.model_dump(), "rows": rows})
    latency_throughput(rows, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    run_stage(main)
