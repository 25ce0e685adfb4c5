"""The KServe v2 gRPC API (`inference.GRPCInferenceService`, the messages Triton serves) over the
dataplane, on a `grpc.aio` server in the event loop the HTTP server runs in: one batcher, one
set of statistics and metrics, one API key and one drain for both.

Inputs come as `raw_input_contents` (little-endian bytes, one per input, in input order) or as
typed `contents`; outputs go back in `raw_output_contents`, as Triton answers. A refusal is the
gRPC status of its HTTP status, with HTTP's message as its details.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.json_format import ParseDict
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from pipeline import PipelineError
from serve.dataplane import UNAUTHORIZED, Dataplane
from serve.protocol import (
    NO_CLASSIFICATION,
    InferRequest,
    ProtocolError,
    datatype_of,
    described,
    values_array,
)

LOG = logging.getLogger("serve")
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# Every this many ModelInfer calls that are alone, one queues instead of running in place. While
# a call runs in place the event loop starts no other, and grpc.aio starts the calls that came
# meanwhile one at a time after it, so each would find no other in flight and run in place in
# turn: a multiplexing client would be served one call at a time. A queued call leaves the loop
# free while it computes; the calls waiting are started, meet it in flight, and the dataplane's
# memory of company then keeps them batching.
QUEUE_EVERY = 8
# the health probes, open without the API key as their HTTP routes are
OPEN_METHODS = {"ServerLive", "ServerReady", "ModelReady"}
# the typed contents field of each datatype; FP16 has none (it travels raw)
CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}

Handler = Callable[[Any, Any, bool], Awaitable[Any]]


def parse_model_infer(request: service_pb2.ModelInferRequest) -> InferRequest:
    """The infer request of a `ModelInferRequest`, checked as HTTP checks its body."""
    raw = request.raw_input_contents
    if not request.inputs:
        raise ProtocolError(400, "the request has no inputs")
    if raw and len(raw) != len(request.inputs):
        raise ProtocolError(
            400,
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: send one per "
            "input, in input order (or none, with typed contents)",
        )
    inputs: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        name, shape, datatype = tensor.name, list(tensor.shape), tensor.datatype
        dtype, count = described(name, shape, datatype)
        if raw:
            if tensor.HasField("contents"):
                raise ProtocolError(400, f"input '{name}': both typed contents and raw contents")
            if len(raw[i]) != count * dtype.itemsize:
                raise ProtocolError(
                    400,
                    f"input '{name}': {len(raw[i])} bytes of raw contents do not make a "
                    f"{datatype} tensor of shape {shape} ({count * dtype.itemsize} bytes)",
                )
            array = np.frombuffer(raw[i], dtype=dtype)
        else:
            if datatype not in CONTENTS:
                raise ProtocolError(400, f"input '{name}': {datatype} travels in raw contents only")
            array = values_array(
                getattr(tensor.contents, CONTENTS[datatype]), name, datatype, shape
            )
        inputs[name] = array.reshape(shape)
    for out in request.outputs:
        if "classification" in out.parameters:
            raise ProtocolError(400, NO_CLASSIFICATION)
    return InferRequest(
        inputs=inputs,
        id=request.id or None,
        outputs={out.name: True for out in request.outputs},
        binary_default=True,
    )


def model_infer_response(
    model: str, request: InferRequest, outputs: dict[str, np.ndarray]
) -> service_pb2.ModelInferResponse:
    """The outputs as Triton sends them: shapes in `outputs`, bytes in `raw_output_contents`."""
    response = service_pb2.ModelInferResponse(
        model_name=model, model_version="1", id=request.id or ""
    )
    for name, array in outputs.items():
        response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        response.raw_output_contents.append(little.tobytes())
    return response


def _credentials(context: grpc.aio.ServicerContext) -> tuple[str | None, str | None]:
    metadata = dict(context.invocation_metadata() or ())  # keys arrive lower-cased
    return metadata.get("authorization"), metadata.get("x-api-key")


def _rpc(method: Handler) -> Callable[..., Awaitable[Any]]:
    """One RPC: metrics, the API key, refusals as status codes; a bug answers INTERNAL and is
    logged; a call the drain cancels is counted."""
    name = method.__name__

    @functools.wraps(method)
    async def call(self: Service, request: Any, context: grpc.aio.ServicerContext) -> Any:
        plane = self.plane
        plane.metrics.grpc_requests.labels(name).inc()
        trusted = plane.trusted(*_credentials(context))
        try:
            if not trusted and name not in OPEN_METHODS:
                raise ProtocolError(401, UNAUTHORIZED)
            return await method(self, request, trusted)
        except ProtocolError as e:
            code, message = CODES.get(e.status, grpc.StatusCode.INTERNAL), str(e)
        except asyncio.CancelledError:
            if plane.draining:
                plane.dropped += 1
            raise
        except Exception as e:
            LOG.exception("unhandled error in gRPC %s", name)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}"
        plane.metrics.grpc_errors.labels(name, code.name).inc()
        await context.abort(code, message)

    return call


class Service(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The RPCs a client of Triton's core protocol calls; the others answer UNIMPLEMENTED."""

    def __init__(self, plane: Dataplane) -> None:
        self.plane = plane
        self.lone_calls = 0  # calls that found none in flight: every QUEUE_EVERY-th queues

    @_rpc
    async def ServerLive(self, request: Any, trusted: bool) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request: Any, trusted: bool) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.plane.ready)

    @_rpc
    async def ServerMetadata(self, request: Any, trusted: bool) -> Any:
        return service_pb2.ServerMetadataResponse(**self.plane.server_metadata())

    @_rpc
    async def ModelReady(self, request: Any, trusted: bool) -> Any:
        self.plane.model(request.name, request.version, trusted)
        return service_pb2.ModelReadyResponse(ready=self.plane.ready)

    @_rpc
    async def ModelMetadata(self, request: Any, trusted: bool) -> Any:
        model = self.plane.model(request.name, request.version, trusted)
        return ParseDict(model.metadata(), service_pb2.ModelMetadataResponse())

    @_rpc
    async def ModelConfig(self, request: Any, trusted: bool) -> Any:
        model = self.plane.model(request.name, request.version, trusted)
        config = ParseDict(self.plane.model_config(model), model_config_pb2.ModelConfig())
        return service_pb2.ModelConfigResponse(config=config)

    @_rpc
    async def ModelStatistics(self, request: Any, trusted: bool) -> Any:
        # no name: every model, as Triton answers
        model = self.plane.model(request.name, request.version, trusted) if request.name else None
        return ParseDict(self.plane.statistics(model), service_pb2.ModelStatisticsResponse())

    @_rpc
    async def RepositoryIndex(self, request: Any, trusted: bool) -> Any:
        index = {"models": self.plane.repository_index()}
        return ParseDict(index, service_pb2.RepositoryIndexResponse())

    @_rpc
    async def ModelInfer(self, request: Any, trusted: bool) -> Any:
        model = self.plane.model(request.model_name, request.model_version, trusted)
        parsed = parse_model_infer(request)
        # nothing awaits before the dataplane counts this call in flight, so the count says
        # whether another call (either transport) is under way: `alone` is the dataplane's to judge
        self.lone_calls += self.plane.in_flight == 0
        outputs = await self.plane.infer(
            model, parsed, alone=True, may_skip_queue=self.lone_calls % QUEUE_EVERY != 0
        )
        return model_infer_response(model.name, parsed, outputs)


SERVED = sorted(name for name in vars(Service) if name[0].isupper())


def _unimplemented(name: str) -> Callable[..., Awaitable[Any]]:
    async def refuse(self: Service, request: Any, trusted: bool) -> Any:
        raise ProtocolError(
            501, f"{name} is not implemented by this server (it serves {', '.join(SERVED)})"
        )

    refuse.__name__ = name
    return _rpc(refuse)


# the base class's defaults are synchronous, which a grpc.aio server cannot run
for _name in dir(service_pb2_grpc.GRPCInferenceServiceServicer):
    if _name[0].isupper() and _name not in SERVED:
        setattr(Service, _name, _unimplemented(_name))


def create_server(plane: Dataplane, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """A gRPC server of `plane` bound to `host:port` (0: a free port), not yet started; the
    port it holds."""
    cfg = plane.cfg
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", cfg.max_payload_bytes),
            # an idle connection is let go as HTTP lets go of an idle kept-alive one
            ("grpc.max_connection_idle_ms", max(1, int(cfg.keepalive_timeout * 1e3))),
        ],
        # calls in flight at once; more are refused with RESOURCE_EXHAUSTED
        maximum_concurrent_rpcs=cfg.max_connections,
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Service(plane), server)
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as e:
        raise PipelineError(f"cannot serve gRPC on {host}:{port}: {e}") from None
    return server, bound
