"""The inference server as users run it (`python -m serve` on 127.0.0.1, real ONNX Runtime and
torch backends) and the load client that measures it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import http.client
import importlib.util
import io
import json
import signal
import struct
import subprocess
import sys
import threading
import time
import types
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import PipelineError, models
from pipeline.data import MEAN, STD, to_tensor
from pipeline.export import export_onnx, tensorrt
from pipeline.export.metadata import preprocessing
from pipeline.export.openvino import quantize_openvino, to_openvino
from pipeline.export.triton import PYTHON_MODEL
from pipeline.manifest import KINDS, Manifest
from pipeline.runtime import openvino
from pipeline.runtime.open import open_backend
from pipeline.runtime.ort import OnnxRuntimeBackend
from pipeline.runtime.pytorch import TorchBackend
from serve import __main__ as serve_main
from serve import bench
from serve.dataplane import LONE_AFTER_S
from serve.launch import ServerProcess
from serve.models import load_all, split_spec
from serve.protocol import (
    HEADER_LENGTH,
    decode_infer_response,
    encode_infer_request,
    parse_infer_request,
)
from tests.conftest import TINY

CLASSES = ["ant", "bee", "cat", "dog", "eel"]
T = TypeVar("T")
SHAPE = (3, 16, 16)
MAX_BATCH = 8
PAYLOAD_LIMIT = 200_000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """Two exported tiny ViTs in the export layout, and the first as a torch model folder."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    for name in ("tiny-merged", "tiny"):
        model = models.create("vit_tiny_patch16_224", TINY, len(CLASSES)).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        onnx = root / name / KINDS["onnxruntime"].file
        export_onnx(model, onnx, 16, metadata=preprocessing(CLASSES))
        models.save_model(root / "torch" / name, model, "vit_tiny_patch16_224", TINY, 5)
        manifest = Manifest(
            name=name,
            variant="tiny",
            shipped=name == "tiny-merged",
            torch=f"../torch/{name}",
            input_shape=list(SHAPE),
            num_classes=len(CLASSES),
            max_batch_size=MAX_BATCH,
            classes=CLASSES,
            mean=list(MEAN),
            std=list(STD),
            folder=onnx.parent,
        )
        manifest.add("onnxruntime", {})
        if openvino.unavailable() is None:
            to_openvino(onnx, onnx.parent / KINDS["openvino"].file)
            calibration = np.random.default_rng(0).standard_normal((8, *SHAPE)).astype("f4")
            quantize_openvino(
                onnx.parent / KINDS["openvino"].file,
                onnx.parent / KINDS["openvino-int8"].file,
                calibration,
            )
            manifest.add("openvino", {})
            manifest.add("openvino-int8", {})
        manifest.write()
    return root


@pytest.fixture(scope="module")
def server(model_dir):
    args = [
        "--model",
        str(model_dir / "tiny-merged" / KINDS["onnxruntime"].file),
        "--model",
        f"unmerged={model_dir / 'tiny'}",
        "--max-batch-size",
        str(MAX_BATCH),
        "--max-queue-delay-us",
        "20000",
        "--max-payload-bytes",
        str(PAYLOAD_LIMIT),
        "--threads",
        "1",
    ]
    with ServerProcess(args) as s:
        yield s


def _direct(model_dir: Path, x: np.ndarray, name: str = "tiny-merged") -> np.ndarray:
    return OnnxRuntimeBackend(model_dir / name / KINDS["onnxruntime"].file, threads=1).run(x)


def _http(url: str, method: str = "GET", body: bytes | None = None, headers=None):
    """(status, headers, body bytes) of one request; errors are answers too."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _infer(url: str, model: str, x: np.ndarray, binary: bool = True, headers=None) -> np.ndarray:
    body, h = encode_infer_request("images", x, binary)
    status, rh, raw = _http(
        f"{url}/v2/models/{model}/infer", "POST", body, {**h, **(headers or {})}
    )
    assert status == 200, raw
    return decode_infer_response(raw, rh.get(HEADER_LENGTH))["logits"]


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


# ---- names -----------------------------------------------------------------------------------


def test_model_names_follow_the_variant(tmp_path, model_dir):
    assert split_spec("models/onnx/student-lora/model.int8.onnx")[0] == "student-lora"
    assert split_spec("exports/resnet.opt.onnx")[0] == "resnet"
    assert split_spec(f"a=b={tmp_path}") == ("a", Path(f"b={tmp_path}"))
    assert split_spec(str(model_dir / "tiny"))[0] == "tiny"
    same = [
        str(model_dir / "tiny-merged" / KINDS["onnxruntime"].file),
        str(model_dir / "tiny-merged"),
    ]
    with pytest.raises(PipelineError, match="name them with NAME=PATH"):
        load_all(same, "onnxruntime")
    with pytest.raises(PipelineError, match="no such model"):
        load_all([str(tmp_path / "none.onnx")], "onnxruntime")


def test_served_onnx_runtime_threads_sleep_between_runs_as_in_the_triton_model(
    model_dir, monkeypatch
):
    """A server's event loop shares the cores: its sessions do not spin, the benchmark's
    in-process ones do, and the Triton yardstick's model is configured as the server is."""
    spinning = "session.intra_op.allow_spinning"
    folder = model_dir / "tiny-merged"
    (served,) = load_all([str(folder)], "onnxruntime", threads=1).values()
    options = served.backend.session.get_session_options()
    assert options.get_session_config_entry(spinning) == "0"
    direct = open_backend("onnxruntime", folder / KINDS["onnxruntime"].file, threads=1)
    with pytest.raises(RuntimeError, match="does not have configuration"):  # the default: spin
        direct.session.get_session_options().get_session_config_entry(spinning)
    x = _batch(3)
    np.testing.assert_allclose(served.backend.run(x), direct.run(x), atol=1e-6)
    # the Triton model's own initialize, outside Triton: its backend utilities are only
    # needed by execute
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("pb"))
    spec = importlib.util.spec_from_file_location("triton_model", PYTHON_MODEL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    triton = module.TritonPythonModel()
    config = {
        "parameters": {
            "onnx_file": {"string_value": KINDS["onnxruntime"].file},
            "intra_op_threads": {"string_value": "1"},
        },
        "input": [{"name": "images"}],
        "output": [{"name": "logits"}],
    }
    triton.initialize(
        {
            "model_config": json.dumps(config),
            "model_repository": str(folder.parent),
            "model_version": folder.name,
        }
    )
    assert triton.session.get_session_options().get_session_config_entry(spinning) == "0"


def _in_the_servers_loop(probe: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """`probe()` run as the server runs its main coroutine; this process's switch interval and
    collector are put back after."""
    before = sys.getswitchinterval()
    try:
        return serve_main.run(probe())
    finally:
        sys.setswitchinterval(before)
        gc.unfreeze()


def test_the_server_runs_on_uvloop_with_a_short_switch_interval():
    """libuv's loop holds the GIL through its socket calls: the batcher's threads must get it
    within the shorter interval."""

    async def probe() -> tuple[str, float]:
        return type(asyncio.get_running_loop()).__module__, sys.getswitchinterval()

    loop, interval = _in_the_servers_loop(probe)
    assert loop.startswith("uvloop"), loop
    assert interval == pytest.approx(serve_main.SWITCH_INTERVAL_S)
    assert interval < sys.getswitchinterval()


def test_the_server_freezes_what_it_built_before_serving_out_of_the_collectors_passes():
    async def probe() -> tuple[int, int]:
        frozen = gc.get_freeze_count()
        gc.collect()  # a full pass now walks only what was made after the freeze
        return frozen, sum(len(gc.get_objects(g)) for g in range(3))

    frozen, tracked = _in_the_servers_loop(probe)
    assert frozen > 10 * tracked, (frozen, tracked)


def test_binary_outputs_follow_the_request_default_unless_an_output_says():
    x = _batch(1)
    body, headers = encode_infer_request("images", x, binary=True)
    doc = json.loads(body[: int(headers[HEADER_LENGTH])])
    doc["outputs"] = [{"name": "logits"}, {"name": "extra", "parameters": {"binary_data": False}}]
    header = json.dumps(doc).encode()
    parsed = parse_infer_request(header + x.tobytes(), str(len(header)))
    assert parsed.outputs == {"logits": True, "extra": False}
    np.testing.assert_array_equal(parsed.inputs["images"], x)


# ---- routes --------------------------------------------------------------------------------


def test_every_route_answers(server):
    url = server.url
    meta = json.loads(_http(f"{url}/v2")[2])
    assert "binary_tensor_data" in meta["extensions"] and meta["name"] == "vit-adapt-deploy"
    assert json.loads(_http(f"{url}/v2/health/live")[2]) == {"live": True}
    assert json.loads(_http(f"{url}/v2/health/ready")[2]) == {"ready": True}
    model = json.loads(_http(f"{url}/v2/models/tiny-merged")[2])
    assert model["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, *SHAPE]}]
    assert model["outputs"][0]["shape"] == [-1, len(CLASSES)]
    assert model["platform"] == "onnxruntime_onnx"
    assert json.loads(_http(f"{url}/v2/models/unmerged/versions/1")[2])["name"] == "unmerged"
    assert _http(f"{url}/v2/models/unmerged/versions/2")[0] == 404
    assert json.loads(_http(f"{url}/v2/models/unmerged/ready")[2])["ready"] is True
    config = json.loads(_http(f"{url}/v2/models/tiny-merged/config")[2])
    assert config["max_batch_size"] == MAX_BATCH and config["input"][0]["dims"] == list(SHAPE)
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 20000
    index = json.loads(_http(f"{url}/v2/repository/index", "POST", b"")[2])
    assert {m["name"] for m in index} == {"tiny-merged", "unmerged"}
    stats = json.loads(_http(f"{url}/v2/models/stats")[2])["model_stats"]
    assert {s["name"] for s in stats} == {"tiny-merged", "unmerged"}


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_gets_the_logits_of_a_direct_onnxruntime_run(server, model_dir, binary):
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_model_ready("tiny-merged")
    assert client.get_model_config("tiny-merged")["max_batch_size"] == MAX_BATCH
    x = _batch(3)
    tensor = triton.InferInput("images", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("logits", binary_data=binary)
    result = client.infer("tiny-merged", [tensor], outputs=[out], request_id="r1")
    np.testing.assert_allclose(result.as_numpy("logits"), _direct(model_dir, x), atol=1e-5)
    assert result.get_response()["id"] == "r1"
    # no outputs named: tritonclient asks for every output in binary
    default = client.infer("unmerged", [tensor]).as_numpy("logits")
    np.testing.assert_allclose(default, _direct(model_dir, x, "tiny"), atol=1e-5)


def test_json_tensors_come_back_as_json(server, model_dir):
    x = _batch(2)
    body = json.dumps(
        {
            "id": "abc",
            "inputs": [
                {"name": "images", "datatype": "FP32", "shape": [2, *SHAPE], "data": x.tolist()}
            ],
        }
    ).encode()
    status, headers, raw = _http(f"{server.url}/v2/models/tiny-merged/infer", "POST", body)
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    doc = json.loads(raw)
    assert doc["id"] == "abc" and doc["outputs"][0]["shape"] == [2, len(CLASSES)]
    logits = np.asarray(doc["outputs"][0]["data"], np.float32).reshape(2, -1)
    np.testing.assert_allclose(logits, _direct(model_dir, x), atol=1e-5)


# ---- bad input -----------------------------------------------------------------------------


def _binary(
    x: np.ndarray, name: str = "images", datatype: str = "FP32", shape: list[int] | None = None
) -> tuple[bytes, dict]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(x.shape) if shape is None else shape,
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        }
    ).encode()
    return header + x.tobytes(), {HEADER_LENGTH: str(len(header))}


def _png_header(width: int, height: int) -> bytes:
    """A PNG that only declares its size: enough for the decoder to refuse it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _bad_cases() -> list[tuple[str, str, str, bytes, dict, int, str]]:
    x = _batch(1)
    good, good_h = _binary(x)
    header_len = int(good_h[HEADER_LENGTH])
    infer = "/v2/models/tiny-merged/infer"
    json_in = lambda **t: json.dumps({"inputs": [t]}).encode()  # noqa: E731
    one = {"name": "images", "datatype": "FP32", "shape": [1, *SHAPE], "data": x.ravel().tolist()}
    return [
        (
            "unknown model",
            "POST",
            "/v2/models/nope/infer",
            good,
            good_h,
            404,
            "unknown model 'nope'",
        ),
        ("malformed JSON", "POST", infer, b'{"inputs": [', {}, 400, "malformed JSON"),
        ("not an object", "POST", infer, b"[1, 2]", {}, 400, "must be a JSON object"),
        ("no inputs", "POST", infer, b"{}", {}, 400, "no 'inputs'"),
        ("wrong name", "POST", infer, *_binary(x, name="pixels"), 400, "takes one input 'images'"),
        (
            "wrong dtype",
            "POST",
            infer,
            *_binary(x.astype(np.float64), datatype="FP64"),
            400,
            "datatype FP64, the model takes FP32",
        ),
        ("unknown dtype", "POST", infer, *_binary(x, datatype="FP99"), 400, "unknown datatype"),
        ("wrong shape", "POST", infer, *_binary(_batch(1)[:, :, :8, :8]), 400, "the model takes"),
        (
            "too few values",
            "POST",
            infer,
            json_in(name="images", datatype="FP32", shape=[1, *SHAPE], data=[0.0] * 5),
            {},
            400,
            "do not fill shape",
        ),
        (
            "truncated binary",
            "POST",
            infer,
            good[:-100],
            good_h,
            400,
            "truncated",
        ),
        (
            "header longer than body",
            "POST",
            infer,
            good[: header_len - 1],
            good_h,
            400,
            "truncated",
        ),
        (
            "batch over the limit",
            "POST",
            infer,
            *_binary(_batch(MAX_BATCH + 1)),
            400,
            f"1 to {MAX_BATCH} images",
        ),
        (
            "oversized payload",
            "POST",
            infer,
            b"{" + b" " * PAYLOAD_LIMIT + b"}",
            {},
            413,
            "payload too large",
        ),
        (
            "unknown output",
            "POST",
            infer,
            json.dumps(
                {
                    "inputs": [
                        {
                            "name": "images",
                            "datatype": "FP32",
                            "shape": [1, *SHAPE],
                            "data": x.ravel().tolist(),
                        }
                    ],
                    "outputs": [{"name": "probs"}],
                }
            ).encode(),
            {},
            400,
            "no output 'probs'",
        ),
        (
            "huge shape",
            "POST",
            infer,
            json_in(name="images", datatype="FP32", shape=[2**40, 2**40], data=[]),
            {},
            400,
            "do not fill shape",
        ),
        (
            "bool in shape",
            "POST",
            infer,
            json_in(name="images", datatype="FP32", shape=[True, 3, 16, 16], data=[]),
            {},
            400,
            "'shape' must be",
        ),
        (
            "value out of range",
            "POST",
            infer,
            json_in(name="images", datatype="INT8", shape=[1], data=[1000]),
            {},
            400,
            "bad values for INT8",
        ),
        (
            "parameters not an object",
            "POST",
            infer,
            json.dumps({"inputs": [{**one, "parameters": "x"}]}).encode(),
            {},
            400,
            "'parameters' must be a JSON object",
        ),
        (
            "outputs not a list",
            "POST",
            infer,
            json.dumps({"inputs": [one], "outputs": 5}).encode(),
            {},
            400,
            "'outputs' must be a list",
        ),
        (
            "classification extension",
            "POST",
            infer,
            json.dumps(
                {
                    "inputs": [one],
                    "outputs": [{"name": "logits", "parameters": {"classification": 3}}],
                }
            ).encode(),
            {},
            400,
            "classification extension is not served",
        ),
        (
            "form without boundary",
            "POST",
            "/v2/models/tiny-merged/classify",
            b"--x\r\n",
            {"Content-Type": "multipart/form-data"},
            400,
            "malformed form upload",
        ),
        (
            "pixels over the cap",  # 480 KB as a real PNG, 0.5 GB once decoded
            "POST",
            "/v2/models/tiny-merged/classify",
            _png_header(13000, 13000),
            {"Content-Type": "image/png"},
            413,
            "13000x13000 = 169,000,000 pixels is over the limit of 40,000,000 pixels "
            "(--max-image-pixels)",
        ),
        (
            "JSON nested 100,000 deep",
            "POST",
            infer,
            b"[" * 100_000 + b"]" * 100_000,
            {},
            400,
            "nested too deeply",
        ),
        (
            "a shape of 100 dimensions in JSON",
            "POST",
            infer,
            json_in(name="images", datatype="FP32", shape=[1] * 100, data=[0.0]),
            {},
            400,
            "a shape of 100 dimensions (at most 32)",
        ),
        (
            "a shape of 100 dimensions in binary",
            "POST",
            infer,
            *_binary(x, shape=[1] * 97 + list(SHAPE)),
            400,
            "a shape of 100 dimensions",
        ),
        (
            "an integer of 5,000 digits",
            "POST",
            infer,
            b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1], "data": ['
            + b"9" * 5000
            + b"]}]}",
            {},
            400,
            "malformed JSON",
        ),
        *[
            (
                f"a malformed {encoding} body",
                "POST",
                infer,
                b"\x00 this is not compressed \xff" * 4,
                {"Content-Encoding": encoding},
                400,
                f"not valid Content-Encoding {encoding}",
            )
            for encoding in ("gzip", "deflate", "br")
        ],
        ("wrong method", "GET", infer, None, {}, 405, "Method Not Allowed"),
        ("unknown route", "GET", "/v3/whatever", None, {}, 404, "Not Found"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(server, model_dir, case):
    _, method, path, body, headers, status, message = case
    got, _, raw = _http(server.url + path, method, body, headers)
    assert got == status, raw
    assert message in json.loads(raw)["error"]
    x = _batch(2, seed=7)
    np.testing.assert_allclose(
        _infer(server.url, "tiny-merged", x), _direct(model_dir, x), atol=1e-5
    )


# ---- batching ------------------------------------------------------------------------------


def _concurrently(url: str, model: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    results: list = [None] * len(inputs)

    def one(i: int) -> None:
        results[i] = _infer(url, model, inputs[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _stats(url: str, model: str) -> dict:
    return json.loads(_http(f"{url}/v2/models/{model}/stats")[2])["model_stats"][0]


def _resend(send: Callable[[], T], stop: threading.Event) -> T:
    """`send()` again as soon as it has its answer, until `stop` is set; the last answer."""
    while True:
        answer = send()
        if stop.is_set():
            return answer


@contextlib.contextmanager
def busy(url: str, clients: int, chunk: int) -> Iterator[None]:
    """`clients` HTTP clients, each sending `chunk` images again as soon as it has its answer:
    the model computes batches of several requests all along, whatever this machine's speed."""
    stop = threading.Event()
    x = _batch(chunk)
    send = functools.partial(_infer, url, "tiny-merged", x)
    loaders = [threading.Thread(target=_resend, args=(send, stop)) for _ in range(clients)]
    for t in loaders:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in loaders:
            t.join(60)


def in_flight(
    pool: concurrent.futures.Executor, send: Callable[[], T]
) -> tuple[list[concurrent.futures.Future[T]], set[concurrent.futures.Future[T]]]:
    """On a server with a long queue delay: three clients of `send` keep batches of several
    requests forming; once they stop, a request without company waits out the delay: their
    last one when it was left alone, else a lone one sent after their last ones ran together.
    The clients' futures, and the waiting ones (none done yet)."""
    stop = threading.Event()
    clients = [pool.submit(_resend, send, stop) for _ in range(3)]
    time.sleep(0.5)
    stop.set()
    _, waiting = concurrent.futures.wait(clients, timeout=0.5)
    if not waiting:
        waiting = {pool.submit(send)}
        time.sleep(0.3)
    assert not any(f.done() for f in waiting), "nothing in flight: the test measures nothing"
    return clients, waiting


def _batches(url: str) -> dict[int, int]:
    """Executions so far, by batch size."""
    return {
        b["batch_size"]: b["compute_infer"]["count"]
        for b in _stats(url, "tiny-merged")["batch_stats"]
    }


def test_dynamic_batching_runs_concurrent_requests_together_and_splits_them_back(model_dir):
    """Ten requests sent together share batches and each gets its own rows back. Two clients
    keep the model busy with batches of `chunk` images, so the ten queue together however fast
    this machine answers a lone request; their images are the batch sizes' remainder."""
    onnx = str(model_dir / "tiny-merged" / KINDS["onnxruntime"].file)
    chunk = 2048
    inputs = [_batch(1 + i % 2, seed=i) for i in range(10)]  # 15 images in 10 requests
    args = ["--model", onnx, "--max-queue-delay-us", "300000", "--threads", "1"]
    args += ["--max-batch-size", str(4 * chunk), "--max-payload-bytes", str(64 << 20)]
    with ServerProcess(args) as s, busy(s.url, 2, chunk):
        time.sleep(0.3)
        before = _batches(s.url)
        results = _concurrently(s.url, "tiny-merged", inputs)
        time.sleep(0.3)  # the last batches are counted once they have run
        after = _batches(s.url)
    for x, logits in zip(inputs, results):
        np.testing.assert_allclose(logits, _direct(model_dir, x), atol=1e-5)
    ours = {  # the ten's images in a batch: executions that carried that many
        size % chunk: ran - before.get(size, 0)
        for size, ran in after.items()
        if size % chunk and ran > before.get(size, 0)
    }
    assert sum(n * ran for n, ran in ours.items()) == 15, ours
    assert sum(ours.values()) < 10 and max(ours) > 2, f"no batch was shared: {ours}"
    # each request alone; as in Triton, inference_stats count requests, batch_stats executions
    with ServerProcess(["--model", onnx, "--no-dynamic-batching", "--threads", "1"]) as s:
        results = _concurrently(s.url, "tiny-merged", inputs)
        stats = _stats(s.url, "tiny-merged")
        config = json.loads(_http(f"{s.url}/v2/models/tiny-merged/config")[2])
    assert "dynamic_batching" not in config
    assert stats["inference_count"] == 15 and stats["inference_stats"]["success"]["count"] == 10
    assert stats["inference_stats"]["compute_infer"]["count"] == 10
    assert stats["execution_count"] == 10 and {b["batch_size"] for b in stats["batch_stats"]} == {
        1,
        2,
    }
    assert sum(b["compute_infer"]["count"] for b in stats["batch_stats"]) == 10
    for x, logits in zip(inputs, results):
        np.testing.assert_allclose(logits, _direct(model_dir, x), atol=1e-5)


def _in_place(url: str) -> float:
    """Requests of tiny-merged run in place so far (the server's Prometheus counter)."""
    series = 'serve_in_place_requests_total{model="tiny-merged"} '
    text = _http(f"{url}/metrics")[2].decode()
    return sum(float(line.removeprefix(series)) for line in text.splitlines() if series in line)


def test_a_lone_client_runs_in_place_and_a_load_of_clients_still_batches(model_dir):
    """A lone client's requests skip the queue (no thread hand-off) once the first has shown
    that a batch of one computes quickly; four clients at once are batched as before, though
    each finds the others between requests now and then; once they stop, a lone client runs in
    place again. Idle kept-alive connections beside it change nothing. A batch that a busy
    machine slowed past the bound queues the next request of its size, so the counts leave
    room for one or two."""
    onnx = str(model_dir / "tiny-merged" / KINDS["onnxruntime"].file)
    x = _batch(1)
    args = ["--model", onnx, "--threads", "1", "--max-queue-delay-us", "20000"]
    with ServerProcess(args) as s, contextlib.ExitStack() as idle:
        for _ in range(12):  # a client pool's idle connections, each answered once
            pooled = idle.enter_context(
                contextlib.closing(http.client.HTTPConnection(s.url.removeprefix("http://")))
            )
            pooled.request("GET", "/v2/health/live")
            assert pooled.getresponse().read() == b'{"live": true}'
        for _ in range(10):
            np.testing.assert_allclose(
                _infer(s.url, "tiny-merged", x), _direct(model_dir, x), atol=1e-5
            )
        lone = _in_place(s.url)
        before, served = _batches(s.url), _stats(s.url, "tiny-merged")["inference_count"]
        with busy(s.url, 4, 1):
            time.sleep(1.0)
        loaded = _in_place(s.url) - lone
        after, served = _batches(s.url), _stats(s.url, "tiny-merged")["inference_count"] - served
        time.sleep(10 * LONE_AFTER_S)  # the load's company is forgotten
        _infer(s.url, "tiny-merged", x)  # a batch of one timed again, off the load
        start = _in_place(s.url)
        for _ in range(5):
            _infer(s.url, "tiny-merged", x)
        again = _in_place(s.url) - start
    assert 7 <= lone <= 9 and again >= 4  # the first of a size always queues
    shared = sum(n - before.get(size, 0) for size, n in after.items() if size > 1)
    assert shared > 0 and loaded < 0.2 * served, f"{loaded} of {served} in place, {after}"


# ---- image route, metrics, key, backends, shutdown -----------------------------------------


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_classify_returns_the_top_k_classes_of_an_image(server, model_dir, glyph_data):
    image = glyph_data.images[3]
    url = f"{server.url}/v2/models/tiny-merged/classify?top_k=3"
    status, _, raw = _http(url, "POST", _png(image), {"Content-Type": "image/png"})
    assert status == 200, raw
    preds = json.loads(raw)["predictions"]
    assert len(preds) == 3 and [p["probability"] for p in preds] == sorted(
        (p["probability"] for p in preds), reverse=True
    )
    logits = _direct(model_dir, to_tensor(image[None]).numpy())[0]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert preds[0]["class"] == int(probs.argmax()) and preds[0]["label"] == CLASSES[probs.argmax()]
    assert preds[0]["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
    # the same image as a form upload (curl -F file=@digit.png)
    boundary = "b0undary"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + _png(image)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _, raw = _http(
        url, "POST", form, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert status == 200 and json.loads(raw)["predictions"] == preds
    status, _, raw = _http(url, "POST", b"not an image")
    assert status == 400 and "not an image" in json.loads(raw)["error"]
    status, _, raw = _http(url.replace("top_k=3", "top_k=0"), "POST", _png(image))
    assert status == 400 and "top_k" in json.loads(raw)["error"]


def test_metrics_count_requests_errors_batches_and_memory(server):
    _infer(server.url, "unmerged", _batch(2))
    _http(f"{server.url}/v2/models/nope")
    text = _http(f"{server.url}/metrics")[2].decode()
    assert 'serve_http_requests_total{route="infer"}' in text
    assert 'serve_http_errors_total{code="404",route="metadata"}' in text
    for series in (
        "serve_batch_size_count",
        "serve_queue_seconds_sum",
        "serve_compute_seconds_sum",
    ):
        assert f'{series}{{model="unmerged"' in text
    assert 'serve_request_seconds_count{model="unmerged"}' in text
    rss = [line for line in text.splitlines() if line.startswith("process_resident_memory_bytes")]
    assert rss and float(rss[0].split()[1]) > 1e6


def test_api_key_guards_everything_but_health(model_dir):
    onnx = str(model_dir / "tiny-merged" / KINDS["onnxruntime"].file)
    with ServerProcess(["--model", onnx], env={"SERVE_API_KEY": "s3cret"}) as s:
        body, h = encode_infer_request("images", _batch(1))
        status, _, raw = _http(f"{s.url}/v2/models/tiny-merged/infer", "POST", body, h)
        assert status == 401 and "API key" in json.loads(raw)["error"]
        assert _http(f"{s.url}/v2/models/tiny-merged", headers={"X-API-Key": "wrong"})[0] == 401
        assert _http(f"{s.url}/v2/health/ready")[0] == 200
        assert _http(f"{s.url}/v2/models/tiny-merged/ready")[0] == 200  # a model's probe
        unknown = _http(f"{s.url}/v2/models/secret/ready")  # open, but it lists nothing
        assert unknown[0] == 404 and "tiny-merged" not in unknown[2].decode()
        known = _http(f"{s.url}/v2/models/secret/ready", headers={"X-API-Key": "s3cret"})
        assert "tiny-merged" in json.loads(known[2])["error"]
        assert _http(f"{s.url}/metrics")[0] == 401
        stray = _http(f"{s.url}/v2/models/tiny-merged", headers={"X-API-Key": "s3cr\xffet"})
        assert stray[0] == 401 and "API key" in json.loads(stray[2])["error"]
        auth = {"Authorization": "Bearer s3cret"}
        assert _infer(s.url, "tiny-merged", _batch(1), headers=auth).shape == (1, len(CLASSES))


def test_torch_backend_serves_a_model_folder(model_dir):
    folder = model_dir / "torch" / "tiny-merged"
    x = _batch(3)
    # the exported folder's manifest names the PyTorch model it came from
    manifest = f"exported={model_dir / 'tiny-merged'}"
    args = ["--backend", "torch", "--model", str(folder), "--model", manifest, "--threads", "1"]
    with ServerProcess(args) as s:
        logits = _infer(s.url, "tiny-merged", x, binary=False)
        via_manifest = _infer(s.url, "exported", x)
        config = json.loads(_http(f"{s.url}/v2/models/tiny-merged/config")[2])
    assert config["platform"] == "pytorch_libtorch"
    np.testing.assert_array_equal(via_manifest, logits)
    expected = TorchBackend(models.load_model(folder), device="cpu").run(x)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    np.testing.assert_allclose(logits, _direct(model_dir, x), atol=1e-4)


@pytest.mark.skipif(openvino.unavailable() is not None, reason="needs openvino")
def test_openvino_backends_serve_the_exported_folder_through_tritonclient(model_dir):
    import tritonclient.http as triton

    x = _batch(5)
    folder = model_dir / "tiny-merged"
    for backend in ("openvino", "openvino-int8"):
        args = ["--backend", backend, "--model", str(folder), "--threads", "1"]
        args += ["--model", f"unmerged={model_dir / 'tiny'}"]
        with ServerProcess(args) as s:
            client = triton.InferenceServerClient(s.url.removeprefix("http://"))
            assert client.get_model_metadata("tiny-merged")["platform"] == "openvino"
            tensor = triton.InferInput("images", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            logits = client.infer("tiny-merged", [tensor]).as_numpy("logits")
            unmerged = client.infer("unmerged", [tensor]).as_numpy("logits")
        direct = open_backend(backend, folder / KINDS[backend].file, threads=1).run(x)
        np.testing.assert_allclose(logits, direct, atol=1e-5)
        if backend == "openvino":  # the fp32 IR is the ONNX graph's function
            np.testing.assert_allclose(logits, _direct(model_dir, x), atol=1e-4)
            np.testing.assert_allclose(unmerged, _direct(model_dir, x, "tiny"), atol=1e-4)
        else:  # INT8: the same classes, up to quantization
            assert np.abs(logits - _direct(model_dir, x)).max() < 0.5


def test_torch_compile_backend_serves_the_eager_logits_at_every_batch_size(model_dir):
    folder = model_dir / "torch" / "tiny-merged"
    expected = TorchBackend(models.load_model(folder), device="cpu")
    args = ["--backend", "torch-compile", "--model", str(folder), "--threads", "1"]
    with ServerProcess(args) as s:  # compiles before it listens: no request waits for it
        for n in (1, 3, 5):
            x = _batch(n, seed=n)
            np.testing.assert_allclose(_infer(s.url, "tiny-merged", x), expected.run(x), atol=1e-4)
        config = json.loads(_http(f"{s.url}/v2/models/tiny-merged/config")[2])
    assert config["platform"] == "pytorch_libtorch"


def _refused(*args: str) -> str:
    """stderr of a server that must exit at start with a one-line error."""
    run = subprocess.run(
        [sys.executable, "-m", "serve", *args], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1
    assert len(run.stderr.strip().splitlines()) == 1 and run.stderr.startswith("error:")
    return run.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_graph_backend_fails_cleanly_without_a_gpu(model_dir):
    folder = str(model_dir / "torch" / "tiny-merged")
    assert "needs a CUDA GPU" in _refused("--backend", "cuda-graph", "--model", folder)


def test_bf16_is_refused_for_an_exported_graph(model_dir):
    onnx = str(model_dir / "tiny-merged" / KINDS["onnxruntime"].file)
    err = _refused("--precision", "bf16", "--model", onnx)
    assert "only the PyTorch backends" in err and "float32 graph" in err


@pytest.mark.skipif(tensorrt.unavailable() is None, reason="TensorRT runs here")
def test_tensorrt_backend_fails_cleanly_without_a_gpu(tmp_path):
    plan = tmp_path / "m" / KINDS["tensorrt"].file
    plan.parent.mkdir()
    plan.write_bytes(b"engine")
    assert "cannot run here" in _refused("--backend", "tensorrt", "--model", str(plan))


def test_shutdown_drains_requests_in_flight(model_dir):
    onnx = str(model_dir / "tiny-merged" / KINDS["onnxruntime"].file)
    args = ["--model", onnx, "--max-queue-delay-us", "1500000", "--threads", "1"]
    server = ServerProcess([*args, "--max-batch-size", "4096"])
    x = _batch(1024, seed=3)
    with server, concurrent.futures.ThreadPoolExecutor(4) as pool:
        clients, waiting = in_flight(pool, functools.partial(_infer, server.url, "tiny-merged", x))
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        answers = [f.result(timeout=60) for f in [*clients, *waiting]]
        assert server.process.wait(60) == 0
    expected = _direct(model_dir, x)
    for logits in answers:
        np.testing.assert_allclose(logits, expected, atol=1e-5)
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{server.url}/v2/health/live", timeout=5)


# ---- load client ---------------------------------------------------------------------------


def test_stability_follows_perf_analyzer():
    def window(rate: float, mean_ms: float) -> bench._Window:
        w = bench._Window(latencies=[mean_ms / 1e3] * int(rate), start=0.0, end=1.0)
        return w

    steady = [window(100, 10), window(104, 10.2), window(98, 9.9)]
    assert bench.stable(steady, 3, 10)
    assert not bench.stable(steady[:2], 3, 10), "too few windows"
    assert not bench.stable([window(100, 10), window(130, 10), window(100, 10)], 3, 10)
    assert not bench.stable([window(100, 10), window(100, 14), window(100, 10)], 3, 10)
    errors = [window(100, 10), window(100, 10), window(100, 10)]
    errors[1].errors = 1
    assert not bench.stable(errors, 3, 10)


def test_load_client_reports_percentiles_throughput_and_the_server_split(server, tmp_path):
    out = tmp_path / "load.json"
    bench.main(
        [
            "--url",
            server.url,
            "--model",
            "tiny-merged",
            "--concurrency",
            "1,4",
            "--window-ms",
            "300",
            "--max-windows",
            "4",
            "--warmup-s",
            "0.2",
            "--output",
            str(out),
        ]
    )
    rows = json.loads(out.read_text())["rows"]
    assert [r["concurrency"] for r in rows] == [1, 4]
    for r in rows:
        assert r["errors"] == 0 and r["requests"] > 0 and r["throughput"] > 0
        assert r["p50_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert 3 <= r["windows"] <= 4
        assert 0 < r["server_compute_ms"] < 5
        assert r["server_rss_mb"] and all(m > 1 for m in r["server_rss_mb"])
    assert rows[0]["server_batch_mean"] == pytest.approx(1.0)
    # a lone client's request runs at once: it never waits out the server's 20 ms queue delay
    assert rows[0]["server_queue_ms"] < 5
    assert rows[1]["server_batch_mean"] > 1.5, "4 clients should share batches"
    assert (tmp_path / "load.png").stat().st_size > 0


def test_load_client_says_when_no_server_answers(tmp_path):
    with pytest.raises(PipelineError, match="cannot reach the server"):
        bench.main(
            ["--url", "http://127.0.0.1:9", "--model", "m", "--output", str(tmp_path / "x.json")]
        )
