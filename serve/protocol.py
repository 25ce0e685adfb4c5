"""The Open Inference Protocol (KServe v2) tensors over HTTP: JSON and the binary tensor data
extension (what tritonclient sends by default).

A binary request is a JSON header of `Inference-Header-Content-Length` bytes followed by each
binary input's raw little-endian bytes, in the order the header lists them (each such input says
its size in `parameters.binary_data_size`). Responses mirror this when the client asks for
binary outputs.

JSON has no NaN or infinity: non-finite values in JSON `data` are the strings "NaN",
"Infinity" and "-Infinity", as protobuf's JSON mapping of the protocol's gRPC messages writes
them (and as NumPy reads them back); binary data carries them bit-exact.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_DIMS = 32  # NumPy's own limit is 64; no model here takes more than 4
NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
NO_CLASSIFICATION = (
    "the classification extension is not served: take the logits, or POST an image "
    "to /v2/models/{model}/classify for the top-k classes"
)

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(bool),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


class ProtocolError(Exception):
    """A request the server refuses: `status` is the HTTP code, the message names the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple:  # raised in the parser process, re-raised in the server
        return ProtocolError, (self.status, str(self))


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    # output name -> whether it goes back as binary; empty: every output, as `binary_default`
    outputs: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False


def _json(raw: bytes | memoryview) -> dict[str, Any]:
    try:
        doc = json.loads(bytes(raw))
    except RecursionError:
        raise ProtocolError(400, "malformed JSON in the request: nested too deeply") from None
    except ValueError as e:  # undecodable bytes, bad syntax, an integer of thousands of digits
        raise ProtocolError(400, f"malformed JSON in the request: {e}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(400, "the request must be a JSON object")
    return doc


def described(name: str, shape: Any, datatype: Any) -> tuple[np.dtype, int]:
    """The dtype and element count an input's header (JSON or gRPC) describes, checked."""
    if not (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ProtocolError(400, f"input '{name}': 'shape' must be a list of non-negative ints")
    if len(shape) > MAX_DIMS:
        raise ProtocolError(
            400, f"input '{name}': a shape of {len(shape)} dimensions (at most {MAX_DIMS})"
        )
    if datatype not in DATATYPES:
        raise ProtocolError(
            400,
            f"input '{name}': unknown datatype {datatype!r} (one of {', '.join(DATATYPES)})",
        )
    return DATATYPES[datatype], math.prod(shape)  # a Python int: a huge shape cannot wrap


def _object(value: Any, what: str) -> dict:
    """An optional JSON object field ({} when absent)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(400, f"{what} must be a JSON object")
    return value


def values_array(values: Any, name: str, datatype: str, shape: list[int]) -> np.ndarray:
    """A tensor sent as a list of values (JSON `data`, gRPC typed contents), flat, checked to
    fill `shape`; the strings of NON_FINITE read as their floats."""
    try:
        array = np.asarray(values, dtype=DATATYPES[datatype]).reshape(-1)
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
        raise ProtocolError(400, f"input '{name}': bad values for {datatype}: {e}") from None
    if array.size != math.prod(shape):
        raise ProtocolError(400, f"input '{name}': {array.size} values do not fill shape {shape}")
    return array


def json_part(body_length: int, header_length: str | None) -> int:
    """How many bytes of a body are JSON (all, without a binary part)."""
    if header_length is not None and header_length.isdigit():
        return min(int(header_length), body_length)
    return body_length


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Decode an infer request body; `header_length` is the Inference-Header-Content-Length
    header's value (None for a pure JSON request)."""
    if header_length is None:
        header, binary = body, b""
    else:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(
                400, f"{HEADER_LENGTH} is not an integer: {header_length!r}"
            ) from None
        if not 0 < n <= len(body):
            raise ProtocolError(
                400, f"{HEADER_LENGTH} is {n} but the body holds {len(body)} bytes (truncated?)"
            )
        header, binary = body[:n], memoryview(body)[n:]
    doc = _json(header)
    tensors = doc.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise ProtocolError(400, "the request has no 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in tensors:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise ProtocolError(400, "each input must be an object with a 'name'")
        name = tensor["name"]
        shape, datatype = tensor.get("shape"), tensor.get("datatype")
        dtype, count = described(name, shape, datatype)
        size = _object(tensor.get("parameters"), f"input '{name}': 'parameters'").get(
            "binary_data_size"
        )
        if size is not None:
            if (
                not isinstance(size, int)
                or isinstance(size, bool)
                or size < 0
                or offset + size > len(binary)
            ):
                raise ProtocolError(
                    400,
                    f"input '{name}': binary_data_size {size} but only {len(binary) - offset} "
                    "bytes are left in the body (truncated?)",
                )
            if size != count * dtype.itemsize:
                raise ProtocolError(
                    400,
                    f"input '{name}': {size} bytes of binary data do not make a {datatype} "
                    f"tensor of shape {shape} ({count * dtype.itemsize} bytes)",
                )
            array = np.frombuffer(binary[offset : offset + size], dtype=dtype)
            offset += size
        else:
            if "data" not in tensor:
                raise ProtocolError(400, f"input '{name}': neither 'data' nor binary data")
            array = values_array(tensor["data"], name, datatype, shape)
        inputs[name] = array.reshape(shape)
    if offset != len(binary):
        raise ProtocolError(
            400, f"{len(binary) - offset} bytes of binary data follow the inputs unclaimed"
        )
    binary_default = bool(_object(doc.get("parameters"), "'parameters'").get("binary_data_output"))
    requested = doc.get("outputs") or []
    if not isinstance(requested, list):
        raise ProtocolError(400, "'outputs' must be a list")
    outputs = {}
    for out in requested:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise ProtocolError(400, "each requested output must be an object with a 'name'")
        params = _object(out.get("parameters"), f"output '{out['name']}': 'parameters'")
        if "classification" in params:
            raise ProtocolError(400, NO_CLASSIFICATION)
        # an output's own binary_data overrides the request's binary_data_output
        outputs[out["name"]] = bool(params.get("binary_data", binary_default))
    request_id = doc.get("id")
    return InferRequest(
        inputs=inputs,
        id=str(request_id) if request_id is not None else None,
        outputs=outputs,
        binary_default=binary_default,
    )


def json_number(x: float) -> float | str:
    """A float as strict JSON takes it: non-finite values by their names."""
    if math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def json_values(array: np.ndarray) -> list:
    """A tensor's values as a flat JSON list (non-finite floats by their names)."""
    flat = array.reshape(-1)
    if flat.dtype.kind != "f" or np.isfinite(flat).all():
        return flat.tolist()
    return [json_number(x) for x in flat.tolist()]


def datatype_of(array: np.ndarray) -> str:
    for name, dtype in DATATYPES.items():
        if array.dtype == dtype:
            return name
    raise ValueError(f"no protocol datatype for {array.dtype}")


def encode_infer_response(
    model: str, request: InferRequest, outputs: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: outputs as JSON data, or as binary where asked."""
    wanted = request.outputs or {name: request.binary_default for name in outputs}
    tensors, blobs = [], []
    for name, binary in wanted.items():
        array = outputs[name]
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if binary:
            blob = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = json_values(array)
        tensors.append(tensor)
    doc: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": tensors}
    if request.id is not None:
        doc["id"] = request.id
    header = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *blobs]), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def encode_infer_request(
    name: str, array: np.ndarray, binary: bool = True, outputs: list[str] | None = None
) -> tuple[bytes, dict[str, str]]:
    """A one-input request body and its headers, as a client sends it; outputs come back in
    the same encoding."""
    tensor: dict[str, Any] = {
        "name": name,
        "datatype": datatype_of(array),
        "shape": list(array.shape),
    }
    doc: dict[str, Any] = {"inputs": [tensor]}
    if outputs:
        doc["outputs"] = [{"name": o, "parameters": {"binary_data": binary}} for o in outputs]
    elif binary:
        doc["parameters"] = {"binary_data_output": True}
    if not binary:
        tensor["data"] = json_values(array)
        return json.dumps(doc, allow_nan=False).encode(), {"Content-Type": "application/json"}
    blob = np.ascontiguousarray(array).tobytes()
    tensor["parameters"] = {"binary_data_size": len(blob)}
    header = json.dumps(doc).encode()
    return header + blob, {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def decode_infer_response(body: bytes, header_length: str | None) -> dict[str, np.ndarray]:
    """The output tensors of a response body, JSON or binary."""
    n = int(header_length) if header_length is not None else len(body)
    doc = json.loads(body[:n])
    out, offset = {}, n
    for tensor in doc["outputs"]:
        dtype = DATATYPES[tensor["datatype"]]
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is None:
            array = np.asarray(tensor["data"], dtype=dtype)
        else:
            array = np.frombuffer(body[offset : offset + size], dtype=dtype)
            offset += size
        out[tensor["name"]] = array.reshape(tensor["shape"])
    return out
