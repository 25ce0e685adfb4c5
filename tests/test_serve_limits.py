"""The server under hostile or careless clients: malformed HTTP, slow and idle connections,
too many of them, clients that leave, huge bodies, a drain that runs out of time."""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

import numpy as np
import pytest

from pipeline.manifest import KINDS
from serve.launch import ServerProcess
from serve.protocol import decode_infer_response, encode_infer_request
from tests import test_serve
from tests.test_serve import CLASSES, _batch, _direct, _http, _infer

model_dir = test_serve.model_dir  # the exported tiny models, and a server of them
server = test_serve.server

INFER = "/v2/models/tiny-merged/infer"


def _onnx(model_dir) -> str:
    return str(model_dir / "tiny-merged" / KINDS["onnxruntime"].file)


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=20)
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict]:
    """The status and JSON body of one response (its Content-Length says where it ends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers["content-length"])
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), json.loads(body[:length])


def _closed(sock: socket.socket) -> bool:
    """Whether the server closes the connection (within the socket's timeout)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v2 HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n",
        b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
    ],
    ids=["bad Content-Length", "bad chunking", "header too long"],
)
def test_http_parser_errors_are_json_errors(server, request_bytes):
    with _connect(server.url) as sock:
        sock.sendall(request_bytes)
        status, doc = _read_response(sock)
    assert status == 400 and doc["error"].startswith("malformed HTTP request"), doc
    assert _http(f"{server.url}/v2/health/live")[0] == 200


def test_a_client_leaving_mid_body_is_counted_apart_and_logged_quietly(server):
    with _connect(server.url) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".encode()
            + b"{" * 10
        )
        time.sleep(0.3)
    time.sleep(0.5)
    text = _http(f"{server.url}/metrics")[2].decode()
    assert 'serve_client_disconnects_total{route="infer"} 1.0' in text
    assert 'code="500"' not in text
    assert not [line for line in server.output if "Traceback" in line or " ERROR " in line]


def test_non_finite_outputs_are_strict_json(server, model_dir):
    x = _batch(2)
    x[0, 0, 0, 0] = np.nan  # NaN spreads through the whole of image 0
    body, headers = encode_infer_request("images", x, binary=False, outputs=["logits"])
    status, _, raw = _http(server.url + INFER, "POST", body, headers)
    assert status == 200, raw

    def refuse(name: str) -> None:
        raise ValueError(f"bare {name} is not JSON")

    doc = json.loads(raw, parse_constant=refuse)
    assert doc["outputs"][0]["data"][: len(CLASSES)] == ["NaN"] * len(CLASSES)
    logits = decode_infer_response(raw, None)["logits"]
    assert np.isnan(logits[0]).all()
    np.testing.assert_allclose(logits[1], _direct(model_dir, x[1:])[0], atol=1e-5)


def test_header_body_and_keepalive_timeouts_free_the_connection(model_dir):
    args = ["--model", _onnx(model_dir), "--threads", "1"]
    args += ["--header-timeout", "1", "--body-timeout", "1", "--keepalive-timeout", "3"]
    with ServerProcess(args) as s:
        with _connect(s.url) as slow_headers:
            slow_headers.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\n".encode())
            status, doc = _read_response(slow_headers)
            assert status == 408 and "headers did not arrive within 1 s" in doc["error"]
            assert _closed(slow_headers)
        with _connect(s.url) as no_body:
            no_body.sendall(
                f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode() + b"{"
            )
            status, doc = _read_response(no_body)
            assert (
                status == 408 and "body did not arrive within 1 s (--body-timeout)" in doc["error"]
            )
            assert _closed(no_body)
        with _connect(s.url) as idle:
            idle.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(idle) == (200, {"live": True})
            start = time.monotonic()
            assert _closed(idle)  # kept alive for 3 s, then let go
            assert time.monotonic() - start < 10
        x = _batch(2)
        np.testing.assert_allclose(
            _infer(s.url, "tiny-merged", x), _direct(model_dir, x), atol=1e-5
        )


def test_connections_over_the_cap_get_a_503_and_the_held_ones_keep_working(model_dir):
    args = ["--model", _onnx(model_dir), "--threads", "1", "--max-connections", "3"]
    with ServerProcess(args) as s:
        held = [_connect(s.url) for _ in range(3)]
        time.sleep(0.3)
        with _connect(s.url) as extra:
            status, doc = _read_response(extra)
        assert status == 503 and "limit of 3 connections (--max-connections)" in doc["error"]
        held[0].sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(held[0]) == (200, {"live": True})
        for sock in held:
            sock.close()
        time.sleep(0.3)
        assert _http(f"{s.url}/v2/health/live")[0] == 200


def test_the_cap_stays_under_the_descriptor_limit(model_dir):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (160, hard))  # the server inherits it
    try:
        limited = ServerProcess(["--model", _onnx(model_dir), "--threads", "1"]).__enter__()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        held = [_connect(limited.url) for _ in range(120)]  # over the 96 the limit leaves
        time.sleep(1)
        refused = 0
        for sock in held:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                refused += sock.recv(64).startswith(b"HTTP/1.1 503")
        assert refused >= 120 - 96, "\n".join(limited.output)
        for sock in held:
            sock.close()
        time.sleep(0.3)
        x = _batch(1)
        logits = _infer(limited.url, "tiny-merged", x)
        np.testing.assert_allclose(logits, _direct(model_dir, x), atol=1e-5)
    finally:
        limited.stop()
    log = "\n".join(limited.output)
    assert "--max-connections 1000 lowered to 96: the descriptor limit is 160" in log
    assert "Traceback" not in log
    assert log.count("Too many open files") <= 1  # a burst may hit the limit: said once


def test_a_large_json_body_does_not_stall_health_checks(model_dir):
    args = ["--model", _onnx(model_dir), "--threads", "1", "--max-payload-bytes", str(200 << 20)]
    # 60 MB of JSON numbers (too many for the shape: refused once parsed)
    body = b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 16, 16], '
    body += b'"data": [' + b"0.123456789, " * 5_000_000 + b"0.5]}]}"
    with ServerProcess(args) as s:
        answer: dict = {}

        def big() -> None:
            start = time.monotonic()
            answer["status"], _, answer["raw"] = _http(s.url + INFER, "POST", body)
            answer["seconds"] = time.monotonic() - start

        worker = threading.Thread(target=big)
        worker.start()
        health = []
        while worker.is_alive():
            start = time.monotonic()
            assert _http(f"{s.url}/v2/health/live")[0] == 200
            health.append(time.monotonic() - start)
            time.sleep(0.02)
        worker.join()
    assert answer["status"] == 400 and b"do not fill shape" in answer["raw"]
    assert answer["seconds"] > 0.5, "the parse took no real time: the test measures nothing"
    assert max(health) < answer["seconds"] / 3, (max(health), answer["seconds"])


def test_a_drain_that_times_out_exits_non_zero_and_says_what_it_dropped(model_dir):
    args = ["--model", _onnx(model_dir), "--threads", "1", "--shutdown-timeout", "1"]
    draining = ServerProcess(args)
    with draining, _connect(draining.url) as sock:
        sock.sendall(
            f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode() + b"{"
        )
        time.sleep(0.3)
        assert draining.process is not None
        draining.process.send_signal(signal.SIGTERM)
        assert draining.process.wait(30) == 1
    time.sleep(0.2)  # the reader thread takes the last lines
    assert any("1 request(s) in flight were dropped" in line for line in draining.output)
