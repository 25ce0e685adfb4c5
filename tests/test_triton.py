"""This server against a real Triton Inference Server (nvidia-pytriton's, in `.venv-triton`)
serving the repository the export stage writes: the same requests to both, over HTTP and gRPC,
must get the same metadata, configuration, statistics, logits and classes of error. Where
Triton's answer differs from ours, the difference is asserted here, so that a change to either
shows."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import PipelineError, models
from pipeline.data import MEAN, STD
from pipeline.export import export_onnx, triton
from pipeline.export.metadata import preprocessing
from pipeline.export.optimize import attention_shape, optimize_vit
from pipeline.manifest import KINDS, Manifest
from pipeline.runtime.ort import OnnxRuntimeBackend
from serve.launch import ServerProcess
from serve.protocol import HEADER_LENGTH
from serve.triton import TritonServer, unavailable
from tests.conftest import TINY

REASON = unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

CLASSES = ["ant", "bee", "cat", "dog", "eel"]
SHAPE = (3, 16, 16)
MAX_BATCH = 8
QUEUE_DELAY_US = 2000
ARTEFACT = "onnxruntime-optimized"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Manifest, Path]:
    """A tiny ViT exported as the export stage does (the graph and its optimised form), and the
    Triton repository written from it: the ONNX model and the Python-backend model."""
    root = tmp_path_factory.mktemp("triton")
    torch.manual_seed(0)
    model = models.create("vit_tiny_patch16_224", TINY, len(CLASSES)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = root / "onnx" / "tiny"
    onnx = export_onnx(
        model, folder / KINDS["onnxruntime"].file, 16, metadata=preprocessing(CLASSES)
    )
    optimize_vit(onnx, folder / KINDS[ARTEFACT].file, *attention_shape(model))
    manifest = Manifest(
        name="tiny",
        variant="tiny",
        shipped=True,
        torch=".",
        input_shape=list(SHAPE),
        num_classes=len(CLASSES),
        max_batch_size=MAX_BATCH,
        classes=CLASSES,
        mean=list(MEAN),
        std=list(STD),
        folder=folder,
    )
    manifest.add("onnxruntime", {})
    manifest.add(ARTEFACT, {})
    manifest.write()
    repo = root / "repo"
    triton.add_model(repo, manifest, ARTEFACT, QUEUE_DELAY_US)
    triton.add_python_model(repo, manifest, ARTEFACT, QUEUE_DELAY_US, threads=1)
    return manifest, repo


@pytest.fixture(scope="module")
def triton_server(exported):
    with TritonServer(exported[1], ["tiny-python"]) as server:
        yield server


@pytest.fixture(scope="module")
def servers(exported, triton_server):
    """Triton and ours on the same artefact, with the HTTP and gRPC address of each."""
    manifest = exported[0]
    args = ["--model", str(manifest.path(ARTEFACT)), "--max-batch-size", str(MAX_BATCH)]
    args += ["--max-queue-delay-us", str(QUEUE_DELAY_US), "--threads", "1"]
    with ServerProcess([*args, "--grpc-port", "0"]) as ours:
        yield {
            "http": {"triton": (triton_server.url, "tiny-python"), "ours": (ours.url, "tiny")},
            "grpc": {
                "triton": (triton_server.grpc_url, "tiny-python"),
                "ours": (ours.grpc_url, "tiny"),
            },
        }


@pytest.fixture(scope="module")
def both(servers):
    """{"triton": (url, model), "ours": (url, model)}: the same artefact in both, over HTTP."""
    return servers["http"]


@pytest.fixture(scope="module")
def both_grpc(servers):
    """The same over gRPC: {"triton": (host:port, model), "ours": (host:port, model)}."""
    return servers["grpc"]


def _direct(manifest: Manifest, x: np.ndarray) -> np.ndarray:
    return OnnxRuntimeBackend(manifest.path(ARTEFACT), threads=1).run(x)


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def _http(url: str, method: str = "GET", body: bytes | None = None, headers=None):
    """(status, body bytes) of one request; errors are answers too."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _get(url: str) -> dict:
    status, raw = _http(url)
    assert status == 200, raw
    return json.loads(raw)


def _client(url: str):
    import tritonclient.http as http

    return http.InferenceServerClient(url.removeprefix("http://"))


def _infer(url: str, model: str, x: np.ndarray, binary: bool = True) -> np.ndarray:
    import tritonclient.http as http

    tensor = http.InferInput("images", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    out = http.InferRequestedOutput("logits", binary_data=binary)
    return _client(url).infer(model, [tensor], outputs=[out]).as_numpy("logits")


def _stats(url: str, model: str) -> dict:
    return _get(f"{url}/v2/models/{model}/stats")["model_stats"][0]


# ---- the repository the export stage writes ---------------------------------------------------


def test_triton_loads_the_python_model_the_export_stage_writes(exported, triton_server):
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    _, repo = exported
    url, model = triton_server.url, "tiny-python"
    index = json.loads(_http(f"{url}/v2/repository/index", "POST", b"{}")[1])
    assert {"name": model, "version": "1", "state": "READY"} in index
    # loaded, and the repository left as written (no bytecode cache beside model.py)
    assert sorted(p.name for p in (repo / model / "1").iterdir()) == [
        KINDS[ARTEFACT].file,
        "model.py",
    ]
    written = text_format.Parse(
        (repo / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    loaded = json_format.ParseDict(
        _get(f"{url}/v2/models/{model}/config"), model_config_pb2.ModelConfig()
    )
    assert loaded.backend == written.backend == "python"
    assert loaded.max_batch_size == written.max_batch_size == MAX_BATCH
    assert loaded.input == written.input and loaded.output == written.output
    assert loaded.dynamic_batching == written.dynamic_batching
    assert dict(loaded.parameters) == dict(written.parameters)
    assert written.parameters["onnx_file"].string_value == KINDS[ARTEFACT].file
    assert written.parameters["intra_op_threads"].string_value == "1"
    assert [(g.kind, g.count) for g in loaded.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)
    ]


def test_a_model_triton_cannot_load_fails_the_start_with_tritons_words(exported):
    server = TritonServer(exported[1], ["nope"], start_timeout=60)
    with pytest.raises(PipelineError, match="Triton did not start") as error, server:
        pass
    assert "failed to poll model 'nope'" in str(error.value)
    assert server.process is not None and server.process.poll() is not None


# ---- metadata, configuration, statistics ------------------------------------------------------


def test_both_describe_the_model_alike(both):
    meta = {k: _get(f"{url}/v2/models/{m}") for k, (url, m) in both.items()}
    for key in ("inputs", "outputs"):
        assert meta["triton"][key] == meta["ours"][key]
    assert meta["ours"]["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, *SHAPE]}]
    assert meta["ours"]["outputs"] == [
        {"name": "logits", "datatype": "FP32", "shape": [-1, len(CLASSES)]}
    ]
    # a difference: the platform names what runs the graph (Triton's Python backend, ours ORT)
    assert (meta["triton"]["platform"], meta["ours"]["platform"]) == ("python", "onnxruntime_onnx")
    config = {k: _get(f"{url}/v2/models/{m}/config") for k, (url, m) in both.items()}
    for c in config.values():
        assert c["max_batch_size"] == MAX_BATCH
        assert [t["dims"] for t in c["input"]] == [list(SHAPE)]
        assert [t["dims"] for t in c["output"]] == [[len(CLASSES)]]
        assert c["dynamic_batching"]["max_queue_delay_microseconds"] == QUEUE_DELAY_US


def test_both_count_the_requests_they_serve(both):
    sizes = [1, 3, 2]
    before = {k: _stats(url, m) for k, (url, m) in both.items()}
    for url, model in both.values():
        for i, n in enumerate(sizes):
            _infer(url, model, _batch(n, seed=i))
    after = {k: _stats(url, m) for k, (url, m) in both.items()}
    for server in both:
        old, new = before[server], after[server]
        assert new["inference_count"] - old["inference_count"] == sum(sizes), server
        assert 1 <= new["execution_count"] - old["execution_count"] <= len(sizes), server
        for kind in ("success", "queue", "compute_infer"):
            counted = new["inference_stats"][kind]["count"] - old["inference_stats"][kind]["count"]
            assert counted == len(sizes), (server, kind)
            assert new["inference_stats"][kind]["ns"] > old["inference_stats"][kind]["ns"]


# ---- logits ---------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("n", [1, 4])
def test_both_give_the_logits_of_a_direct_onnxruntime_run(both, exported, binary, n):
    x = _batch(n, seed=n)
    expected = _direct(exported[0], x)
    for server, (url, model) in both.items():
        logits = _infer(url, model, x, binary)
        assert logits.shape == (n, len(CLASSES)), server
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5, err_msg=server)


# ---- bad input --------------------------------------------------------------------------------


def _binary(x: np.ndarray, name: str = "images", datatype: str = "FP32", size: int | None = None):
    """A binary-tensor request body and its headers; `size` overrides binary_data_size."""
    tensor = {
        "name": name,
        "datatype": datatype,
        "shape": list(x.shape),
        "parameters": {"binary_data_size": x.nbytes if size is None else size},
    }
    header = json.dumps({"inputs": [tensor]}).encode()
    return header + x.tobytes(), {HEADER_LENGTH: str(len(header))}


def _json(data: list[float] | None = None, **request) -> bytes:
    """A JSON-tensor request body for one image, or with `data` in its place."""
    x = _batch(1).ravel().tolist() if data is None else data
    tensor = {"name": "images", "datatype": "FP32", "shape": [1, *SHAPE], "data": x}
    return json.dumps({"inputs": [tensor], **request}).encode()


# name, model ("" for the served one), body, headers, our status (always a 4xx), Triton's
BAD = [
    ("wrong shape", "", *_binary(_batch(1)[:, :, :8, :8]), 400, 400),
    ("wrong datatype", "", *_binary(_batch(1).astype(np.float64), datatype="FP64"), 400, 400),
    ("binary size that does not match", "", *_binary(_batch(1), size=100), 400, 400),
    ("unknown input name", "", *_binary(_batch(1), name="pixels"), 400, 400),
    ("unknown model", "nope", *_binary(_batch(1)), 404, 404),
    ("batch over max_batch_size", "", *_binary(_batch(MAX_BATCH + 1)), 400, 400),
    ("binary data cut short", "", _binary(_batch(1))[0][:-100], _binary(_batch(1))[1], 400, 400),
    ("an output the model lacks", "", _json(outputs=[{"name": "probs"}]), {}, 400, 400),
    ("unknown datatype", "", *_binary(_batch(1), datatype="FP99"), 400, 400),
    # the differences: Triton blames itself (500) for a request body it cannot parse
    ("malformed JSON", "", b'{"inputs": [', {}, 400, 500),
    ("too few JSON values", "", _json(data=[0.0] * 5), {}, 400, 500),
    ("no inputs", "", b"{}", {}, 400, 500),
]


@pytest.mark.parametrize("case", BAD, ids=lambda c: c[0])
def test_both_refuse_bad_input_and_keep_serving(both, exported, case):
    """Ours with a 4xx whatever is wrong; Triton with the status BAD records for it."""
    _, model, body, headers, ours, theirs = case
    assert 400 <= ours < 500
    x = _batch(2, seed=7)
    expected = _direct(exported[0], x)
    for server, status in (("ours", ours), ("triton", theirs)):
        url, served = both[server]
        got, raw = _http(f"{url}/v2/models/{model or served}/infer", "POST", body, headers)
        assert got == status, (server, raw)
        assert json.loads(raw)["error"], server
        np.testing.assert_allclose(_infer(url, served, x), expected, atol=1e-5, err_msg=server)


# ---- Triton over gRPC (this server's gRPC endpoint is tested with the server) -----------------


def test_triton_grpc_gives_the_same_logits(triton_server, exported):
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(triton_server.grpc_url)
    assert client.is_server_ready() and client.is_model_ready("tiny-python")
    for n in (1, 4):
        x = _batch(n, seed=10 + n)
        tensor = grpc.InferInput("images", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        logits = client.infer("tiny-python", [tensor]).as_numpy("logits")
        np.testing.assert_allclose(logits, _direct(exported[0], x), rtol=0, atol=1e-5)


# ---- the same over gRPC -------------------------------------------------------------------------


def _grpc(address: str):
    import tritonclient.grpc as grpc

    return grpc.InferenceServerClient(address)


def _grpc_infer(address: str, model: str, x: np.ndarray, datatype: str = "FP32", shape=None):
    import tritonclient.grpc as grpc

    tensor = grpc.InferInput("images", list(shape or x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return _grpc(address).infer(model, [tensor]).as_numpy("logits")


def test_both_answer_the_same_over_grpc(both_grpc, exported):
    meta, config, stats = {}, {}, {}
    for server, (address, model) in both_grpc.items():
        client = _grpc(address)
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(model)
        meta[server] = client.get_model_metadata(model, as_json=True)
        config[server] = client.get_model_config(model, as_json=True)["config"]
        for n in (1, 4):
            x = _batch(n, seed=20 + n)
            logits = _grpc_infer(address, model, x)
            np.testing.assert_allclose(logits, _direct(exported[0], x), rtol=0, atol=1e-5)
        stats[server] = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    for key in ("inputs", "outputs"):
        assert meta["triton"][key] == meta["ours"][key]
    for c in config.values():
        assert int(c["max_batch_size"]) == MAX_BATCH
        assert [[int(d) for d in t["dims"]] for t in c["input"]] == [list(SHAPE)]
    for s in stats.values():  # int64 fields come as strings in protobuf's JSON
        assert int(s["inference_count"]) >= 5 and int(s["execution_count"]) >= 2
        assert int(s["inference_stats"]["success"]["count"]) >= 2


GRPC_BAD = [  # (what, datatype, the shape the request claims, the array whose bytes it sends)
    ("wrong shape", "FP32", [1, 3, 8, 8], np.zeros((1, 3, 8, 8), np.float32)),
    ("wrong datatype", "FP64", [1, *SHAPE], np.zeros((1, *SHAPE), np.float64)),
    ("raw size mismatch", "FP32", [2, *SHAPE], np.zeros((1, *SHAPE), np.float32)),
    ("too large a batch", "FP32", [MAX_BATCH + 1, *SHAPE], np.zeros((MAX_BATCH + 1, *SHAPE), "f4")),
]


def _raw_infer_code(address: str, model: str, datatype: str, shape: list[int], x: np.ndarray):
    """The status code of a ModelInfer sent as built, past the client library's own checks."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="images", datatype=datatype, shape=shape)
    request.raw_input_contents.append(x.tobytes())
    with grpc.insecure_channel(address) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("case", GRPC_BAD, ids=[c[0] for c in GRPC_BAD])
def test_both_refuse_bad_grpc_input_with_the_same_code_and_keep_serving(both_grpc, case):
    import grpc

    _, datatype, shape, x = case
    codes = {}
    for server, (address, model) in both_grpc.items():
        codes[server] = _raw_infer_code(address, model, datatype, shape, x)
        assert _grpc_infer(address, model, _batch(1)).shape == (1, len(CLASSES))
    assert codes == {"ours": grpc.StatusCode.INVALID_ARGUMENT, "triton": codes["ours"]}


def test_both_refuse_an_unknown_model_over_grpc(both_grpc):
    import grpc

    x = _batch(1)
    codes = {
        server: _raw_infer_code(address, "no-such-model", "FP32", list(x.shape), x)
        for server, (address, _) in both_grpc.items()
    }
    assert codes == {"triton": grpc.StatusCode.NOT_FOUND, "ours": grpc.StatusCode.NOT_FOUND}
