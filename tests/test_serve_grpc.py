"""The KServe v2 gRPC API beside HTTP (`python -m serve --grpc-port 0` on 127.0.0.1): Triton's
own gRPC client unmodified, the raw stub for what that client cannot send, and the load
client over gRPC."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import signal
import threading
import time

import grpc
import numpy as np
import psutil
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from pipeline.config import LoadConfig
from pipeline.manifest import KINDS
from serve import bench
from serve.kserve_grpc import QUEUE_EVERY
from serve.launch import ServerProcess
from tests import test_serve
from tests.test_serve import CLASSES, MAX_BATCH, PAYLOAD_LIMIT, SHAPE, _batch, _direct, _http

model_dir = test_serve.model_dir  # the exported tiny models


def _onnx(model_dir) -> str:
    return str(model_dir / "tiny-merged" / KINDS["onnxruntime"].file)


@pytest.fixture(scope="module")
def server(model_dir):
    args = [
        "--model",
        _onnx(model_dir),
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
        "--grpc-port",
        "0",
    ]
    with ServerProcess(args) as s:
        yield s


def _stub(url: str) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(url))


def _request(
    x: np.ndarray,
    model: str = "tiny-merged",
    name: str = "images",
    datatype: str = "FP32",
    shape: list[int] | None = None,
) -> service_pb2.ModelInferRequest:
    """A one-input request with its tensor in raw contents."""
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(
        name=name, datatype=datatype, shape=list(x.shape) if shape is None else shape
    )
    request.raw_input_contents.append(x.tobytes())
    return request


def _logits(response: service_pb2.ModelInferResponse) -> np.ndarray:
    (out,) = response.outputs
    assert out.name == "logits" and out.datatype == "FP32"
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(out.shape)


def _infer(url: str, x: np.ndarray, model: str = "tiny-merged", **kwargs) -> np.ndarray:
    client = triton.InferenceServerClient(url)
    tensor = triton.InferInput("images", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer(model, [tensor], **kwargs).as_numpy("logits")


def _together(*calls) -> list:
    """The results of `calls`, each run in its own thread at once."""
    results: list = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def _refusal(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# ---- the RPCs ---------------------------------------------------------------------------------


def test_the_banner_names_both_addresses(server):
    assert server.url.startswith("http://127.0.0.1:")
    host, port = server.grpc_url.split(":")
    assert host == "127.0.0.1" and int(port) > 0 and server.url != f"http://{server.grpc_url}"


def test_tritonclient_grpc_reads_every_rpc_as_http_has_it(server):
    client = triton.InferenceServerClient(server.grpc_url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny-merged") and client.is_model_ready("unmerged", "1")
    meta = client.get_server_metadata(as_json=True)
    http_meta = json.loads(_http(f"{server.url}/v2")[2])
    assert meta["name"] == http_meta["name"] == "vit-adapt-deploy"
    assert meta["extensions"] == http_meta["extensions"]
    model = client.get_model_metadata("tiny-merged", as_json=True)
    assert model["inputs"] == [
        {"name": "images", "datatype": "FP32", "shape": [str(d) for d in (-1, *SHAPE)]}
    ]
    assert model["outputs"][0]["shape"] == ["-1", str(len(CLASSES))]
    assert model["platform"] == "onnxruntime_onnx" and model["versions"] == ["1"]
    config = client.get_model_config("tiny-merged").config
    assert config.max_batch_size == MAX_BATCH and list(config.input[0].dims) == list(SHAPE)
    assert config.dynamic_batching.max_queue_delay_microseconds == 20000
    assert config.parameters["source"].string_value.endswith(KINDS["onnxruntime"].file)
    index = client.get_model_repository_index().models
    assert {(m.name, m.version, m.state) for m in index} == {
        ("tiny-merged", "1", "READY"),
        ("unmerged", "1", "READY"),
    }
    stats = client.get_inference_statistics().model_stats
    assert {s.name for s in stats} == {"tiny-merged", "unmerged"}
    with pytest.raises(InferenceServerException, match="has only version 1") as info:
        client.get_model_metadata("tiny-merged", "2")
    assert info.value.status() == "StatusCode.NOT_FOUND"


def test_other_rpcs_answer_unimplemented(server):
    stub = _stub(server.grpc_url)
    code, message = _refusal(
        lambda: stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="m"))
    )
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "RepositoryModelLoad is not implemented" in message and "ModelInfer" in message


@pytest.mark.parametrize("n", [1, 5])
def test_tritonclient_grpc_gets_the_logits_of_a_direct_onnxruntime_run(server, model_dir, n):
    client = triton.InferenceServerClient(server.grpc_url)
    x = _batch(n, seed=n)
    tensor = triton.InferInput("images", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    out = triton.InferRequestedOutput("logits")
    result = client.infer("tiny-merged", [tensor], outputs=[out], request_id="r1")
    np.testing.assert_allclose(result.as_numpy("logits"), _direct(model_dir, x), atol=1e-5)
    assert result.get_response().id == "r1"
    # no outputs named: every output comes back
    default = client.infer("unmerged", [tensor]).as_numpy("logits")
    np.testing.assert_allclose(default, _direct(model_dir, x, "tiny"), atol=1e-5)


def test_typed_contents_give_the_same_logits(server, model_dir):
    x = _batch(3)
    request = service_pb2.ModelInferRequest(model_name="tiny-merged", id="typed")
    tensor = request.inputs.add(name="images", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    response = _stub(server.grpc_url).ModelInfer(request)
    assert response.id == "typed" and response.model_name == "tiny-merged"
    np.testing.assert_allclose(_logits(response), _direct(model_dir, x), atol=1e-5)


def test_statistics_count_grpc_requests_as_http_reports_them(server):
    client = triton.InferenceServerClient(server.grpc_url)

    def stats():
        return client.get_inference_statistics("unmerged").model_stats[0]

    before = stats()
    for n in (2, 3):
        _infer(server.grpc_url, _batch(n), "unmerged")
    after = stats()
    assert after.inference_count - before.inference_count == 5
    assert after.inference_stats.success.count - before.inference_stats.success.count == 2
    http = json.loads(_http(f"{server.url}/v2/models/unmerged/stats")[2])["model_stats"][0]
    assert http["inference_count"] == after.inference_count
    assert http["execution_count"] == after.execution_count
    for kind in ("success", "fail", "queue", "compute_infer"):
        duration = getattr(after.inference_stats, kind)
        assert http["inference_stats"][kind] == {"count": duration.count, "ns": duration.ns}
    assert [(b["batch_size"], b["compute_infer"]["count"]) for b in http["batch_stats"]] == [
        (b.batch_size, b.compute_infer.count) for b in after.batch_stats
    ]


def test_metrics_count_grpc_calls_and_errors(server):
    _infer(server.grpc_url, _batch(1))
    stub = _stub(server.grpc_url)
    _refusal(lambda: stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="nope")))
    text = _http(f"{server.url}/metrics")[2].decode()
    assert 'serve_grpc_requests_total{method="ModelInfer"}' in text
    assert 'serve_grpc_errors_total{code="NOT_FOUND",method="ModelMetadata"}' in text


# ---- bad input --------------------------------------------------------------------------------


def _bad_cases() -> list[tuple[str, service_pb2.ModelInferRequest, grpc.StatusCode, str]]:
    x = _batch(1)
    bad = grpc.StatusCode.INVALID_ARGUMENT
    too_many = _request(x)
    too_many.raw_input_contents.append(x.tobytes())
    unknown_output = _request(x)
    unknown_output.outputs.add(name="probs")
    classification = _request(x)
    classification.outputs.add(name="logits").parameters["classification"].int64_param = 3
    short = service_pb2.ModelInferRequest(model_name="tiny-merged")
    short.inputs.add(name="images", datatype="FP32", shape=[1, *SHAPE])
    short.inputs[0].contents.fp32_contents.extend([0.0] * 5)
    version_2 = _request(x)
    version_2.model_version = "2"
    return [
        ("wrong shape", _request(x[:, :, :8, :8]), bad, "shape [1, 3, 8, 8], the model takes"),
        ("wrong datatype", _request(x.astype(np.float64), datatype="FP64"), bad, "datatype FP64"),
        ("unknown datatype", _request(x, datatype="FP99"), bad, "unknown datatype 'FP99'"),
        (
            "raw size mismatch",
            _request(x, shape=[2, *SHAPE]),
            bad,
            f"{x.nbytes} bytes of raw contents do not make a FP32 tensor of shape [2, 3, 16, 16]",
        ),
        ("too many raw contents", too_many, bad, "2 raw_input_contents for 1 inputs"),
        ("too few typed values", short, bad, "5 values do not fill shape [1, 3, 16, 16]"),
        (
            "unknown input",
            _request(x, name="pixels"),
            bad,
            "takes one input 'images', got 'pixels'",
        ),
        ("unknown output", unknown_output, bad, "has no output 'probs'"),
        ("unknown model", _request(x, model="nope"), grpc.StatusCode.NOT_FOUND, "unknown model"),
        ("version 2", version_2, grpc.StatusCode.NOT_FOUND, "has only version 1"),
        ("batch over the limit", _request(_batch(MAX_BATCH + 1)), bad, f"1 to {MAX_BATCH} images"),
        ("classification", classification, bad, "classification extension is not served"),
        (
            "over the payload limit",
            _request(_batch(1 + PAYLOAD_LIMIT // x.nbytes)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "larger than max",
        ),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_gets_the_http_refusal_as_a_status_and_the_server_keeps_serving(
    server, model_dir, case
):
    _, request, code, message = case
    stub = _stub(server.grpc_url)
    got, details = _refusal(lambda: stub.ModelInfer(request))
    assert got == code and message in details, details
    x = _batch(2, seed=7)
    np.testing.assert_allclose(
        _logits(stub.ModelInfer(_request(x))), _direct(model_dir, x), atol=1e-5
    )


def test_the_same_bad_input_gets_the_same_message_over_http(server):
    stub = _stub(server.grpc_url)
    x = _batch(1)[:, :, :8, :8]
    _, details = _refusal(lambda: stub.ModelInfer(_request(x)))
    body, headers = test_serve._binary(x)
    status, _, raw = _http(f"{server.url}/v2/models/tiny-merged/infer", "POST", body, headers)
    assert status == 400 and json.loads(raw)["error"] == details


# ---- key, batching, load client, drain ---------------------------------------------------------


def test_api_key_guards_every_rpc_but_health(model_dir):
    args = ["--model", _onnx(model_dir), "--threads", "1", "--grpc-port", "0"]
    with ServerProcess(args, env={"SERVE_API_KEY": "s3cret"}) as s:
        stub = _stub(s.grpc_url)
        metadata = service_pb2.ModelMetadataRequest(name="tiny-merged")
        code, message = _refusal(lambda: stub.ModelMetadata(metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "API key" in message
        wrong = (("x-api-key", "wrong"),)
        code, _ = _refusal(lambda: stub.ModelInfer(_request(_batch(1)), metadata=wrong))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = _refusal(lambda: stub.ServerMetadata(service_pb2.ServerMetadataRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert stub.ServerLive(service_pb2.ServerLiveRequest()).live
        assert stub.ServerReady(service_pb2.ServerReadyRequest()).ready
        assert stub.ModelReady(service_pb2.ModelReadyRequest(name="tiny-merged")).ready
        # open, but an unknown model's refusal lists nothing
        code, message = _refusal(lambda: stub.ModelReady(service_pb2.ModelReadyRequest(name="x")))
        assert code == grpc.StatusCode.NOT_FOUND and "tiny-merged" not in message
        key = (("x-api-key", "s3cret"),)
        assert stub.ModelMetadata(metadata, metadata=key).name == "tiny-merged"
        x = _batch(2)
        logits = _infer(s.grpc_url, x, headers={"authorization": "Bearer s3cret"})
        np.testing.assert_allclose(logits, _direct(model_dir, x), atol=1e-5)


def test_http_and_grpc_requests_share_batches(model_dir):
    """One HTTP and one gRPC request sent together under load run in one batch: one batcher
    behind both transports. Two clients keep the model busy with batches of `chunk` images, so
    the pair queues (or the batcher waits for as many requests as its last batch held) however
    fast this machine answers; the pair's images are the batch sizes' remainder modulo `chunk`."""
    chunk = 2048  # tens of milliseconds a batch: the pair's two arrivals fall inside one
    args = ["--model", _onnx(model_dir), "--max-batch-size", str(4 * chunk), "--threads", "1"]
    args += ["--max-queue-delay-us", "300000", "--max-payload-bytes", str(64 << 20)]
    http_x, grpc_x = _batch(2, seed=1), _batch(3, seed=2)
    rounds = []
    with ServerProcess([*args, "--grpc-port", "0"]) as s:
        stub = _stub(s.grpc_url)
        with test_serve.busy(s.url, 2, chunk):
            while len(rounds) < 5 and {5} not in rounds:
                time.sleep(0.3)
                before = test_serve._stats(s.url, "tiny-merged")["batch_stats"]
                http, reply = _together(
                    lambda: test_serve._infer(s.url, "tiny-merged", http_x),
                    lambda: stub.ModelInfer(_request(grpc_x)),
                )
                time.sleep(0.3)  # the pair's batches are counted once they have run
                after = test_serve._stats(s.url, "tiny-merged")["batch_stats"]
                over_grpc = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(3, -1)
                np.testing.assert_allclose(http, _direct(model_dir, http_x), atol=1e-5)
                np.testing.assert_allclose(over_grpc, _direct(model_dir, grpc_x), atol=1e-5)
                was = {b["batch_size"]: b["compute_infer"]["count"] for b in before}
                new = {
                    b["batch_size"] % chunk
                    for b in after
                    if b["compute_infer"]["count"] > was.get(b["batch_size"], 0)
                }
                rounds.append(new - {0})  # the pair's share of the batches that ran meanwhile
    assert rounds[-1] == {5}, f"the pair's images per batch, each round: {rounds}"


def test_a_lone_grpc_client_runs_in_place_and_multiplexed_clients_still_batch(model_dir):
    """A lone client's calls skip the queue, but for the first (its size not yet timed) and
    every QUEUE_EVERY-th lone call. Four clients multiplexed on one channel are not served one
    call at a time: grpc.aio starts the calls that came during an in-place run only after it,
    each finding no other in flight, and the queued call is what lets them meet. A batch that
    a busy machine slowed past the bound queues the next call of its size, so the counts leave
    room for one or two."""
    args = ["--model", _onnx(model_dir), "--threads", "1", "--max-queue-delay-us", "20000"]
    x = _batch(1)
    with ServerProcess([*args, "--grpc-port", "0"]) as s:
        stub = _stub(s.grpc_url)
        for _ in range(2 * QUEUE_EVERY):
            np.testing.assert_allclose(
                _logits(stub.ModelInfer(_request(x))), _direct(model_dir, x), atol=1e-5
            )
        lone = test_serve._in_place(s.url)
        before = test_serve._batches(s.url)
        served = test_serve._stats(s.url, "tiny-merged")["inference_count"]
        stop = threading.Event()
        send = functools.partial(stub.ModelInfer, _request(x))
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            clients = [pool.submit(test_serve._resend, send, stop) for _ in range(4)]
            time.sleep(1.0)
            stop.set()
            for client in clients:
                np.testing.assert_allclose(
                    _logits(client.result(timeout=60)), _direct(model_dir, x), atol=1e-5
                )
        loaded = test_serve._in_place(s.url) - lone
        after = test_serve._batches(s.url)
        served = test_serve._stats(s.url, "tiny-merged")["inference_count"] - served
    # 16 lone calls: the first and two QUEUE_EVERY-th queue
    assert 2 * QUEUE_EVERY - 5 <= lone <= 2 * QUEUE_EVERY - 3, lone
    shared = sum(n - before.get(size, 0) for size, n in after.items() if size > 1)
    assert shared > 0 and loaded < 0.2 * served, f"{loaded} of {served} in place, {after}"


def test_load_client_over_grpc_reports_percentiles_throughput_and_the_server_split(server):
    cfg = LoadConfig(
        concurrency=[1, 4], window_ms=300, max_windows=4, warmup_s=0.2, protocol="grpc"
    )
    rows = bench.load(server.grpc_url, ["tiny-merged"], cfg)
    assert [r["concurrency"] for r in rows] == [1, 4]
    for r in rows:
        assert r["protocol"] == "grpc" and r["encoding"] == "raw"
        assert r["errors"] == 0 and r["requests"] > 0 and r["throughput"] > 0
        assert r["p50_ms"] <= r["p90_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert 3 <= r["windows"] <= 4
        assert r["server_compute_ms"] > 0 and r["server_queue_ms"] >= 0
        assert isinstance(r["server_batch_mean"], float)
    assert rows[0]["server_batch_mean"] == pytest.approx(1.0)
    assert rows[1]["server_batch_mean"] > 1.5, "4 clients should share batches"
    typed = bench.load(
        server.grpc_url,
        ["unmerged"],
        cfg.model_copy(update={"concurrency": [2], "binary": False, "max_windows": 3}),
    )
    assert typed[0]["encoding"] == "typed" and typed[0]["errors"] == 0
    # a request the server refuses (a batch above its largest) is an error counted, not a crash
    refused = bench.load(
        server.grpc_url,
        ["tiny-merged"],
        cfg.model_copy(update={"concurrency": [2], "batch_size": MAX_BATCH + 1, "max_windows": 3}),
    )
    assert refused[0]["requests"] == 0 and refused[0]["errors"] > 10
    assert refused[0]["windows"] == 3 and not refused[0]["stable"]


def test_grpc_load_shares_a_connection_among_six_clients_as_perf_analyzer_does(server):
    port = int(server.grpc_url.rsplit(":", 1)[1])
    process = psutil.Process(server.process.pid)
    cfg = LoadConfig(concurrency=[13], window_ms=300, max_windows=3, warmup_s=0.3, protocol="grpc")

    def clients() -> set[tuple]:
        """The far ends of the server's established connections on its gRPC port."""
        return {
            tuple(c.raddr)
            for c in process.net_connections(kind="tcp")
            if c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
        }

    earlier = clients()  # other tests' clients may still hold theirs
    seen: set[tuple] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(clients() - earlier)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        (row,) = bench.load(server.grpc_url, ["tiny-merged"], cfg)
    finally:
        done.set()
        watcher.join()
    assert row["errors"] == 0 and row["requests"] > 0
    # 13 clients over 3 load channels, beside the one for metadata and statistics
    assert len(seen) == 3 + 1, seen


def test_load_over_grpc_ends_with_the_error_when_its_server_dies(model_dir):
    """Each client is a chain of callbacks, not a thread: a server killed mid-load fails the
    level's next statistics read, and every chain still ends (no call is left to hang on)."""
    cfg = LoadConfig(concurrency=[4], window_ms=200, duration_s=30, warmup_s=0.2, protocol="grpc")
    server = ServerProcess(["--model", _onnx(model_dir), "--threads", "1", "--grpc-port", "0"])
    with server:
        assert server.process is not None
        threading.Timer(1.0, server.process.kill).start()
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as failed:
            bench.load(server.grpc_url, ["tiny-merged"], cfg)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - start < 15, "the load outlived its server by its whole soak"


def test_shutdown_drains_grpc_requests_in_flight(model_dir):
    args = ["--model", _onnx(model_dir), "--max-queue-delay-us", "1500000", "--threads", "1"]
    server = ServerProcess([*args, "--max-batch-size", "4096", "--grpc-port", "0"])
    x = _batch(1024, seed=3)
    with server, concurrent.futures.ThreadPoolExecutor(4) as pool:
        stub = _stub(server.grpc_url)
        clients, waiting = test_serve.in_flight(
            pool, lambda: _logits(stub.ModelInfer(_request(x), timeout=60))
        )
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        answers = [f.result(timeout=60) for f in [*clients, *waiting]]
        assert server.process.wait(60) == 0
    expected = _direct(model_dir, x)
    for logits in answers:
        np.testing.assert_allclose(logits, expected, atol=1e-5)
    code, _ = _refusal(
        lambda: _stub(server.grpc_url).ServerLive(service_pb2.ServerLiveRequest(), timeout=5)
    )
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
