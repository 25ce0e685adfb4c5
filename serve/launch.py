"""Run `python -m serve` as a child process on a free port, and always stop it: for the
benchmark stage and the tests, which measure and probe the server as users run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque

from pipeline import PipelineError
from serve.__main__ import LISTENING


def terminate(process: subprocess.Popen | None, timeout: float) -> int:
    """SIGTERM a server, wait up to `timeout` s for its drain, kill it if it will not stop; its
    exit status (0 for a server never started)."""
    if process is None:
        return 0
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


class ServerProcess:
    """`with ServerProcess(["--model", path]) as server: server.url ...`; leaving the block
    sends SIGTERM (a graceful drain) and waits, killing only a server that will not stop.
    With `--grpc-port` in `args`, `server.grpc_url` is the gRPC address (`host:port`)."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        start_timeout: float = 180.0,
        stop_timeout: float = 60.0,
    ) -> None:
        self.args = [sys.executable, "-m", "serve", "--port", "0", *args]
        self.env = {**os.environ, **(env or {})}
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.output: deque[str] = deque(maxlen=200)  # the server's last lines, for errors
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.grpc_url = ""

    def __enter__(self) -> ServerProcess:
        self.process = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        found = threading.Event()

        def read() -> None:  # keeps draining the pipe so the server never blocks on it
            assert self.process and self.process.stdout
            for line in self.process.stdout:
                self.output.append(line.rstrip())
                if line.startswith(LISTENING) and not found.is_set():
                    words = line.split()
                    self.url = words[2]
                    if words[3].startswith("grpc://"):
                        self.grpc_url = words[3].removeprefix("grpc://")
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while not found.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(list(self.output)[-10:])
                raise PipelineError(f"the server did not start ({' '.join(self.args)}):\n{tail}")
        return self

    def stop(self) -> int:
        """SIGTERM, wait for the drain; the exit status."""
        return terminate(self.process, self.stop_timeout)

    def __exit__(self, *exc: object) -> None:
        self.stop()
