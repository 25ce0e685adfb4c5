"""The HTTP server: the Open Inference Protocol (KServe v2) routes Triton's clients speak, an
image route for people, Triton-style statistics and Prometheus metrics.

Every refusal is a JSON `{"error": "..."}` with a 4xx status that names the problem; nothing a
client sends can stop the server from answering the next request.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import logging
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from PIL import Image

from pipeline.data import to_tensor
from pipeline.data.folders import ImageTooLarge, read_image
from serve.batcher import DynamicBatcher
from serve.connections import Connection
from serve.metrics import CONTENT_TYPE, Metrics, ModelStats
from serve.models import ServedModel
from serve.protocol import (
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    datatype_of,
    encode_infer_response,
    json_number,
    json_part,
    parse_infer_request,
)

LOG = logging.getLogger("serve")
SERVER_NAME = "vit-adapt-deploy"
# the health routes (server and model readiness) a prober reaches without the API key
OPEN_ROUTES = {"live", "ready", "model_ready"}
# JSON above this many bytes is parsed in a child process: json.loads holds the GIL, so a
# thread would still stall every route (a 60 MB body: seconds)
PARSE_INLINE_BYTES = 1 << 20
# images decoded at once: with the pixel cap, this bounds the memory decoding takes
DECODE_WORKERS = 2


@dataclass(frozen=True)
class ServerConfig:
    max_batch_size: int = 64
    max_queue_delay_us: int = 500
    dynamic_batching: bool = True
    max_payload_bytes: int = 64 << 20
    max_image_pixels: int = 40_000_000
    api_key: str | None = None
    # seconds: a request's headers, its body, an idle kept-alive connection, the drain
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    keepalive_timeout: float = 75.0
    shutdown_timeout: float = 30.0
    max_connections: int = 1000


def _version() -> str:
    try:
        return version(SERVER_NAME)
    except PackageNotFoundError:
        return "unknown"


class _State:
    def __init__(self, models: dict[str, ServedModel], cfg: ServerConfig) -> None:
        self.models = models
        self.cfg = cfg
        self.metrics = Metrics(cfg.max_batch_size)
        self.stats = {name: ModelStats(name, self.metrics) for name in models}
        self.batchers = {
            name: DynamicBatcher(
                m.backend,
                self.stats[name],
                cfg.max_batch_size,
                cfg.max_queue_delay_us,
                cfg.dynamic_batching,
            )
            for name, m in models.items()
        }
        self.draining = False
        self.dropped = 0  # requests the drain cancelled
        self.decoder = ThreadPoolExecutor(DECODE_WORKERS, thread_name_prefix="decode")
        self._parser: ProcessPoolExecutor | None = None  # started at the first large body

    def parser(self) -> Executor:
        if self._parser is None:
            # spawn: a fork would copy the backends' threads and memory
            self._parser = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return self._parser

    def parser_died(self) -> None:
        assert self._parser is not None
        self._parser.shutdown(wait=False)
        self._parser = None

    def close(self) -> None:
        self.decoder.shutdown(wait=False, cancel_futures=True)
        if self._parser is not None:
            self._parser.shutdown(wait=False, cancel_futures=True)

    def model(self, request: web.Request) -> ServedModel:
        """The model a `/v2/models/{model}[/versions/{version}]` route names."""
        name = request.match_info["model"]
        if name not in self.models:
            # with a key, an unauthenticated prober learns nothing of what is served
            listing = f" (this server has: {', '.join(self.models)})" if request["trusted"] else ""
            raise ProtocolError(404, f"unknown model {name!r}{listing}")
        if request.match_info.get("version", "1") not in ("1", ""):
            raise ProtocolError(404, f"model {name!r} has only version 1")
        return self.models[name]


STATE = web.AppKey("state", _State)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _has_key(request: web.Request, key: str) -> bool:
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    given = request.headers.get("X-API-Key", given)
    # surrogateescape: a header of stray bytes is a wrong key, not a crash
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key.encode("utf-8"))


@web.middleware
async def _guard(request: web.Request, handler) -> web.StreamResponse:
    """API key, payload limit, metrics and the JSON error shape for every route; counts what
    a drain drops and the clients that leave mid-request."""
    state = request.app[STATE]
    if isinstance(request.protocol, Connection):
        request.protocol.request_started()
    info = request.match_info.route
    route = (info.name or "unmatched").removesuffix("_v")
    state.metrics.http_requests.labels(route).inc()
    key = state.cfg.api_key
    request["trusted"] = not key or _has_key(request, key)
    try:
        response = await _answer(request, handler, route)
    except asyncio.CancelledError:
        if state.draining:
            state.dropped += 1
        raise
    except ConnectionError as e:  # the client left: nothing is sent, so no status is counted
        state.metrics.client_disconnects.labels(route).inc()
        LOG.info("client left during %s %s: %s", request.method, request.path, e)
        raise
    if response.status >= 400:
        state.metrics.http_errors.labels(route, str(response.status)).inc()
    return response


async def _answer(request: web.Request, handler, route: str) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        if not request["trusted"] and route not in OPEN_ROUTES:
            raise ProtocolError(401, "missing or wrong API key (Authorization: Bearer <key>)")
        size = request.content_length
        if size is not None and size > state.cfg.max_payload_bytes:
            raise ProtocolError(413, _too_large(size, state.cfg.max_payload_bytes))
        response = await handler(request)
    except ProtocolError as e:
        response = _error(e.status, str(e))
    except web.HTTPRequestEntityTooLarge:
        response = _error(413, _too_large(None, state.cfg.max_payload_bytes))
    except web.HTTPException as e:  # aiohttp's own: unknown route, wrong method
        response = _error(e.status, f"{e.reason}: {request.method} {request.path}")
    except ConnectionError:
        raise
    except Exception as e:  # a bug answers 500 and is logged; the server keeps serving
        LOG.exception("unhandled error on %s %s", request.method, request.path)
        response = _error(500, f"internal error: {type(e).__name__}: {e}")
    return response


def _too_large(size: int | None, limit: int) -> str:
    got = f"{size} bytes" if size is not None else "the body"
    return (
        f"payload too large: {got} over the server's limit of {limit} bytes (--max-payload-bytes)"
    )


async def _server_metadata(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "name": SERVER_NAME,
            "version": _version(),
            "extensions": ["binary_tensor_data", "statistics", "model_configuration"],
        }
    )


async def _live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def _ready(request: web.Request) -> web.Response:
    ready = not request.app[STATE].draining
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def _model_metadata(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].model(request).metadata())


async def _model_ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = state.model(request).name
    ready = not state.draining
    return web.json_response({"name": name, "ready": ready}, status=200 if ready else 503)


async def _model_config(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cfg = state.cfg
    model = state.model(request)
    return web.json_response(
        model.config(cfg.max_batch_size, cfg.max_queue_delay_us, cfg.dynamic_batching)
    )


async def _model_stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    names = [state.model(request).name] if "model" in request.match_info else list(state.models)
    return web.json_response({"model_stats": [state.stats[n].report() for n in names]})


async def _repository_index(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response([{"name": n, "version": "1", "state": "READY"} for n in state.models])


async def _run(state: _State, model: ServedModel, images: np.ndarray) -> np.ndarray:
    """Check the batch against the model, queue it, and count it."""
    expected = model.input_shape
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ProtocolError(
            400,
            f"input '{model.backend.input_name}': shape {list(images.shape)}, the model takes "
            f"{[-1, *expected]}",
        )
    if not 1 <= len(images) <= state.cfg.max_batch_size:
        raise ProtocolError(
            400,
            f"batch of {len(images)}: the server takes 1 to {state.cfg.max_batch_size} "
            "images per request (--max-batch-size)",
        )
    start = time.perf_counter()
    stats = state.stats[model.name]
    try:
        result = await state.batchers[model.name].infer(images)
    except Exception as e:
        stats.request(time.perf_counter() - start, ok=False)
        raise ProtocolError(500, f"the {model.kind} backend failed: {e}") from e
    stats.request(time.perf_counter() - start, ok=True, queue_seconds=result.queue_seconds)
    return result.logits


async def _within_body_timeout(request: web.Request, read: Callable[[], Awaitable[bytes]]) -> bytes:
    """`await read()` of the body, bounded by --body-timeout; a body the server cannot
    decompress is the client's error."""
    limit = request.app[STATE].cfg.body_timeout
    try:
        async with asyncio.timeout(limit):
            return await read()
    except TimeoutError:
        raise ProtocolError(
            408, f"the request body did not arrive within {limit:g} s (--body-timeout)"
        ) from None
    except (HttpProcessingError, RequestPayloadError) as e:  # bad chunks, a bad gzip body
        reason = str(e).removeprefix("400, message:").strip()
        encoding = request.headers.get("Content-Encoding")
        what = f"valid Content-Encoding {encoding}" if encoding else "a well-formed body"
        raise ProtocolError(400, f"the body is not {what}: {reason}") from None


async def _parse(request: web.Request) -> InferRequest:
    """The infer request of the body; large JSON is parsed in the parser process."""
    state = request.app[STATE]
    raw = await _within_body_timeout(request, request.read)
    header_length = request.headers.get(HEADER_LENGTH)
    if json_part(len(raw), header_length) <= PARSE_INLINE_BYTES:
        return parse_infer_request(raw, header_length)
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(state.parser(), parse_infer_request, raw, header_length)
    except BrokenProcessPool:
        state.parser_died()
        raise ProtocolError(
            413,
            f"the parser process died on a JSON body of {len(raw)} bytes (out of memory?): "
            "send large tensors as binary data",
        ) from None


async def _infer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    model = state.model(request)
    parsed = await _parse(request)
    name = model.backend.input_name
    unexpected = set(parsed.inputs) - {name}
    if unexpected or name not in parsed.inputs:
        got = ", ".join(repr(n) for n in parsed.inputs)
        raise ProtocolError(400, f"model {model.name!r} takes one input {name!r}, got {got}")
    images = parsed.inputs[name]
    if images.dtype != np.float32:
        raise ProtocolError(
            400, f"input {name!r}: datatype {datatype_of(images)}, the model takes FP32"
        )
    out_name = model.backend.output_name
    unknown = set(parsed.outputs) - {out_name}
    if unknown:
        raise ProtocolError(
            400, f"model {model.name!r} has no output {sorted(unknown)[0]!r} (it has {out_name!r})"
        )
    logits = await _run(state, model, images)
    body, headers = encode_infer_response(model.name, parsed, {out_name: logits})
    return web.Response(body=body, headers=headers)


async def _image_bytes(request: web.Request) -> bytes:
    """The image of a classify request: the raw body, or the first file of a form upload."""
    if not request.content_type.startswith("multipart/"):
        return await _within_body_timeout(request, request.read)
    return await _within_body_timeout(request, lambda: _form_file(request))


async def _form_file(request: web.Request) -> bytes:
    limit = request.app[STATE].cfg.max_payload_bytes
    try:
        reader = await request.multipart()
        async for part in reader:
            if getattr(part, "filename", None):
                data = bytearray()
                while chunk := await part.read_chunk():  # a chunked upload has no length
                    data += chunk
                    if len(data) > limit:
                        raise ProtocolError(413, _too_large(None, limit))
                return bytes(data)
    except ValueError as e:  # no boundary, a broken one, a malformed part
        raise ProtocolError(400, f"malformed form upload: {e}") from None
    raise ProtocolError(400, "the form holds no file: send the image as a file field")


async def _classify(request: web.Request) -> web.Response:
    """An image file (PNG, JPEG, ...) in, the top-k classes with probabilities out."""
    state = request.app[STATE]
    model = state.model(request)
    try:
        top_k = int(request.query.get("top_k", "5"))
    except ValueError:
        raise ProtocolError(
            400, f"top_k must be an integer, got {request.query['top_k']!r}"
        ) from None
    if top_k < 1:
        raise ProtocolError(400, f"top_k must be at least 1, got {top_k}")
    raw = await _image_bytes(request)
    max_pixels = state.cfg.max_image_pixels

    def decode() -> np.ndarray:
        image = read_image(io.BytesIO(raw), model.input_shape[1:], max_pixels)
        return to_tensor(image[None], model.mean, model.std).numpy()

    try:  # decoding is real work: off the event loop, a few at a time
        x = await asyncio.get_running_loop().run_in_executor(state.decoder, decode)
    except ImageTooLarge as e:
        raise ProtocolError(413, f"{e} (--max-image-pixels)") from None
    except Image.DecompressionBombError as e:
        raise ProtocolError(413, f"the image is too large to decode ({e})") from None
    except (OSError, ValueError) as e:
        raise ProtocolError(400, f"the body is not an image this server can read ({e})") from None
    logits = (await _run(state, model, x))[0].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)[:top_k]
    return web.json_response(
        {
            "model_name": model.name,
            "predictions": [
                {
                    "class": int(i),
                    "label": model.classes[i],
                    "probability": json_number(float(probs[i])),
                }
                for i in order
            ],
        }
    )


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _start(app: web.Application) -> None:
    for batcher in app[STATE].batchers.values():
        batcher.start()


async def _shutdown(app: web.Application) -> None:
    app[STATE].draining = True  # readiness fails while in-flight requests finish


async def _cleanup(app: web.Application) -> None:
    state = app[STATE]
    await asyncio.gather(*(b.close() for b in state.batchers.values()))
    state.close()


def create_app(models: dict[str, ServedModel], cfg: ServerConfig) -> web.Application:
    """The aiohttp application serving `models`."""
    # aiohttp refuses bodies over client_max_size itself; _guard turns that into JSON
    app = web.Application(middlewares=[_guard], client_max_size=cfg.max_payload_bytes)
    app[STATE] = _State(models, cfg)
    model = "/v2/models/{model}"
    version = "/versions/{version}"
    routes = [
        ("GET", "/v2", _server_metadata, "server"),
        ("GET", "/v2/health/live", _live, "live"),
        ("GET", "/v2/health/ready", _ready, "ready"),
        ("POST", "/v2/repository/index", _repository_index, "index"),
        ("GET", "/v2/models/stats", _model_stats, "stats"),
        ("GET", "/metrics", _metrics, "metrics"),
    ]
    for suffix, handler, name, method in [
        ("", _model_metadata, "metadata", "GET"),
        ("/ready", _model_ready, "model_ready", "GET"),
        ("/config", _model_config, "config", "GET"),
        ("/stats", _model_stats, "model_stats", "GET"),
        ("/infer", _infer, "infer", "POST"),
        ("/classify", _classify, "classify", "POST"),
    ]:
        routes.append((method, model + suffix, handler, name))
        routes.append((method, model + version + suffix, handler, f"{name}_v"))
    for method, path, handler, name in routes:
        app.router.add_route(method, path, handler, name=name)
    app.on_startup.append(_start)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
    return app
