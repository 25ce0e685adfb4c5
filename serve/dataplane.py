"""What the server does, whichever transport asks: the models, their batchers, statistics and
metrics, the API key and the drain, and every check an inference request passes. The HTTP
routes (`serve.server`) and the gRPC service (`serve.kserve_grpc`) are thin adapters over it.

A refusal is a `ProtocolError` whose HTTP status each transport maps to its own codes; the
message is the same over both.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from serve.batcher import DynamicBatcher
from serve.metrics import Metrics, ModelStats
from serve.models import ServedModel
from serve.protocol import InferRequest, ProtocolError, datatype_of

SERVER_NAME = "vit-adapt-deploy"
EXTENSIONS = ["binary_tensor_data", "statistics", "model_configuration"]
UNAUTHORIZED = "missing or wrong API key (Authorization: Bearer <key>)"
# a request runs in place only this long after the last one that had company: under a load
# of a few clients some requests find the others between requests, and each runs ~1 ms
LONE_AFTER_S = 0.01


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


class Dataplane:
    """The served models and what the protocol says of them; `start()` in the event loop
    before the first request, `close()` after the last."""

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
        self.draining = False  # readiness fails while in-flight requests finish
        self.in_flight = 0  # inference requests between their checks and their logits
        self.company_seen = -float("inf")  # when a request last had company (perf_counter)
        self.dropped = 0  # requests the drain cancelled

    def start(self) -> None:
        for batcher in self.batchers.values():
            batcher.start()

    async def close(self) -> None:
        """Finish every queued request and stop the batchers."""
        for batcher in self.batchers.values():
            await batcher.close()

    def trusted(self, authorization: str | None, api_key: str | None) -> bool:
        """Whether a request carries the key (`Authorization: Bearer <key>` or `X-API-Key`);
        every request does when the server has none."""
        key = self.cfg.api_key
        if not key:
            return True
        given = (authorization or "").removeprefix("Bearer ").strip()
        given = api_key if api_key is not None else given
        # surrogateescape: a header of stray bytes is a wrong key, not a crash
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key.encode("utf-8"))

    @property
    def ready(self) -> bool:
        return not self.draining

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": _version(), "extensions": EXTENSIONS}

    def model(self, name: str, version: str, trusted: bool) -> ServedModel:
        """The model `name` at `version` ("" or "1": the only one)."""
        if name not in self.models:
            # with a key, an unauthenticated prober learns nothing of what is served
            listing = f" (this server has: {', '.join(self.models)})" if trusted else ""
            raise ProtocolError(404, f"unknown model {name!r}{listing}")
        if version not in ("1", ""):
            raise ProtocolError(404, f"model {name!r} has only version 1")
        return self.models[name]

    def model_config(self, model: ServedModel) -> dict:
        """Triton's model configuration (JSON) of `model` as this server runs it."""
        cfg = self.cfg
        return model.config(cfg.max_batch_size, cfg.max_queue_delay_us, cfg.dynamic_batching)

    def statistics(self, model: ServedModel | None) -> dict:
        """Triton's statistics of `model`, or of every model for None."""
        names = [model.name] if model is not None else list(self.models)
        return {"model_stats": [self.stats[n].report() for n in names]}

    def repository_index(self) -> list[dict]:
        return [{"name": n, "version": "1", "state": "READY"} for n in self.models]

    async def infer(
        self,
        model: ServedModel,
        request: InferRequest,
        alone: bool = False,
        may_skip_queue: bool = True,
    ) -> dict[str, np.ndarray]:
        """The outputs `request` asks for (all without a list), in its order; `alone` and
        `may_skip_queue` as for `run`."""
        name = model.backend.input_name
        unexpected = set(request.inputs) - {name}
        if unexpected or name not in request.inputs:
            got = ", ".join(repr(n) for n in request.inputs)
            raise ProtocolError(400, f"model {model.name!r} takes one input {name!r}, got {got}")
        images = request.inputs[name]
        if images.dtype != np.float32:
            raise ProtocolError(
                400, f"input {name!r}: datatype {datatype_of(images)}, the model takes FP32"
            )
        out_name = model.backend.output_name
        unknown = set(request.outputs) - {out_name}
        if unknown:
            raise ProtocolError(
                400,
                f"model {model.name!r} has no output {sorted(unknown)[0]!r} (it has {out_name!r})",
            )
        logits = await self.run(model, images, alone, may_skip_queue)
        return {n: logits for n in request.outputs or [out_name]}

    async def run(
        self,
        model: ServedModel,
        images: np.ndarray,
        alone: bool = False,
        may_skip_queue: bool = True,
    ) -> np.ndarray:
        """Check a batch of images against the model, queue it, and count it: the logits.
        `alone`: the transport knows of no other request under way (HTTP: no other connection
        partway through one; gRPC passes True, since its calls are all in flight here). A request
        that is alone, with no other inference request in flight (any model, either transport)
        and none that had company in the last `LONE_AFTER_S`, skips the queue
        (`DynamicBatcher.infer`) if `may_skip_queue`; the memory keeps a load of a few clients,
        which can look alone between its requests, batching."""
        expected = model.input_shape
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ProtocolError(
                400,
                f"input '{model.backend.input_name}': shape {list(images.shape)}, the model "
                f"takes {[-1, *expected]}",
            )
        if not 1 <= len(images) <= self.cfg.max_batch_size:
            raise ProtocolError(
                400,
                f"batch of {len(images)}: the server takes 1 to {self.cfg.max_batch_size} "
                "images per request (--max-batch-size)",
            )
        start = time.perf_counter()
        stats = self.stats[model.name]
        self.in_flight += 1
        if not alone or self.in_flight > 1:
            self.company_seen = start
        lone = start - self.company_seen > LONE_AFTER_S
        try:
            result = await self.batchers[model.name].infer(images, lone and may_skip_queue)
        except Exception as e:
            stats.request(time.perf_counter() - start, ok=False)
            raise ProtocolError(500, f"the {model.kind} backend failed: {e}") from e
        finally:
            self.in_flight -= 1
        stats.request(time.perf_counter() - start, ok=True, queue_seconds=result.queue_seconds)
        return result.logits
