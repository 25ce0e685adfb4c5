"""The HTTP server: the Open Inference Protocol (KServe v2) routes Triton's clients speak, an
image route for people, Triton-style statistics and Prometheus metrics; each route an adapter
over the dataplane (`serve.dataplane`), which the gRPC service shares.

Every refusal is a JSON `{"error": "..."}` with a 4xx status that names the problem; nothing a
client sends can stop the server from answering the next request.
"""

from __future__ import annotations

import asyncio
import io
import logging
import multiprocessing
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from PIL import Image

from pipeline.data import to_tensor
from pipeline.data.folders import ImageTooLarge, read_image
from serve.connections import Connection, alone
from serve.dataplane import UNAUTHORIZED, Dataplane
from serve.metrics import CONTENT_TYPE
from serve.models import ServedModel
from serve.protocol import (
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    encode_infer_response,
    json_number,
    json_part,
    parse_infer_request,
)

LOG = logging.getLogger("serve")
# the health routes (server and model readiness) a prober reaches without the API key
OPEN_ROUTES = {"live", "ready", "model_ready"}
# JSON above this many bytes is parsed in a child process: json.loads holds the GIL, so a
# thread would still stall every route (a 60 MB body: seconds)
PARSE_INLINE_BYTES = 1 << 20
# images decoded at once: with the pixel cap, this bounds the memory decoding takes
DECODE_WORKERS = 2


class _Http:
    """The dataplane, and what only the HTTP side needs: image decoders, the JSON parser."""

    def __init__(self, dataplane: Dataplane) -> None:
        self.dataplane = dataplane
        self.cfg = dataplane.cfg
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


STATE = web.AppKey("state", _Http)


def _plane(request: web.Request) -> Dataplane:
    return request.app[STATE].dataplane


def _model(request: web.Request) -> ServedModel:
    """The model a `/v2/models/{model}[/versions/{version}]` route names."""
    info = request.match_info
    return _plane(request).model(info["model"], info.get("version", "1"), request["trusted"])


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _guard(request: web.Request, handler) -> web.StreamResponse:
    """API key, payload limit, metrics and the JSON error shape for every route; counts what
    a drain drops and the clients that leave mid-request."""
    plane = _plane(request)
    if isinstance(request.protocol, Connection):
        request.protocol.request_started()
    info = request.match_info.route
    route = (info.name or "unmatched").removesuffix("_v")
    plane.metrics.http_requests.labels(route).inc()
    headers = request.headers
    request["trusted"] = plane.trusted(headers.get("Authorization"), headers.get("X-API-Key"))
    try:
        response = await _answer(request, handler, route)
    except asyncio.CancelledError:
        if plane.draining:
            plane.dropped += 1
        raise
    except ConnectionError as e:  # the client left: nothing is sent, so no status is counted
        plane.metrics.client_disconnects.labels(route).inc()
        LOG.info("client left during %s %s: %s", request.method, request.path, e)
        raise
    if response.status >= 400:
        plane.metrics.http_errors.labels(route, str(response.status)).inc()
    return response


async def _answer(request: web.Request, handler, route: str) -> web.StreamResponse:
    cfg = request.app[STATE].cfg
    try:
        if not request["trusted"] and route not in OPEN_ROUTES:
            raise ProtocolError(401, UNAUTHORIZED)
        size = request.content_length
        if size is not None and size > cfg.max_payload_bytes:
            raise ProtocolError(413, _too_large(size, cfg.max_payload_bytes))
        response = await handler(request)
    except ProtocolError as e:
        response = _error(e.status, str(e))
    except web.HTTPRequestEntityTooLarge:
        response = _error(413, _too_large(None, cfg.max_payload_bytes))
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
    return web.json_response(_plane(request).server_metadata())


async def _live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def _ready(request: web.Request) -> web.Response:
    ready = _plane(request).ready
    return web.json_response({"ready": ready}, status=200 if ready else 503)


async def _model_metadata(request: web.Request) -> web.Response:
    return web.json_response(_model(request).metadata())


async def _model_ready(request: web.Request) -> web.Response:
    name = _model(request).name
    ready = _plane(request).ready
    return web.json_response({"name": name, "ready": ready}, status=200 if ready else 503)


async def _model_config(request: web.Request) -> web.Response:
    return web.json_response(_plane(request).model_config(_model(request)))


async def _model_stats(request: web.Request) -> web.Response:
    model = _model(request) if "model" in request.match_info else None
    return web.json_response(_plane(request).statistics(model))


async def _repository_index(request: web.Request) -> web.Response:
    return web.json_response(_plane(request).repository_index())


async def _within_body_timeout(request: web.Request, read: Callable[[], Awaitable[bytes]]) -> bytes:
    """`await read()` of the body, bounded by --body-timeout while some of it is still to come;
    a body the server cannot decompress is the client's error."""
    limit = request.app[STATE].cfg.body_timeout
    try:
        if request.content.is_eof():  # all of it has arrived: no timer to arm and cancel
            return await read()
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
    model = _model(request)
    parsed = await _parse(request)
    outputs = await _plane(request).infer(model, parsed, alone(request))
    body, headers = encode_infer_response(model.name, parsed, outputs)
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
    model = _model(request)
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
    logits = (await state.dataplane.run(model, x, alone(request)))[0]
    logits = logits.astype(np.float64)
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
    body = _plane(request).metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _cleanup(app: web.Application) -> None:
    app[STATE].close()


def create_app(dataplane: Dataplane) -> web.Application:
    """The aiohttp application serving `dataplane` (whose batchers its runner starts and
    stops: `serve.connections.serve`)."""
    cfg = dataplane.cfg
    # aiohttp refuses bodies over client_max_size itself; _guard turns that into JSON
    app = web.Application(middlewares=[_guard], client_max_size=cfg.max_payload_bytes)
    app[STATE] = _Http(dataplane)
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
    # infer first: aiohttp tries the routes under one prefix in the order they were added
    for suffix, handler, name, method in [
        ("/infer", _infer, "infer", "POST"),
        ("", _model_metadata, "metadata", "GET"),
        ("/ready", _model_ready, "model_ready", "GET"),
        ("/config", _model_config, "config", "GET"),
        ("/stats", _model_stats, "model_stats", "GET"),
        ("/classify", _classify, "classify", "POST"),
    ]:
        routes.append((method, model + suffix, handler, name))
        routes.append((method, model + version + suffix, handler, f"{name}_v"))
    for method, path, handler, name in routes:
        app.router.add_route(method, path, handler, name=name)
    app.on_cleanup.append(_cleanup)
    return app
