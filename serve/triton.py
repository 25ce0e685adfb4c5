"""Run NVIDIA's Triton Inference Server (the one the `nvidia-pytriton` wheel ships, in
`.venv-triton`) as a child process on free ports: the yardstick this server is measured and
tested against, serving the export stage's repository (`models/triton`).

Triton gets an environment of its own because the wheel pins numpy<2. Its Python backend runs
the repository's `<model>-python` models; the backend directory is built in a temporary folder
(the installed package stays as it is), with the wheel's model-process launcher built for the
environment's Python beside the backend library. That process's interpreter is isolated (it
ignores PYTHONPATH), so model.py puts the environment's packages on sys.path itself, from
`SITE_PACKAGES`: the repository names no path of this machine. Triton serves a mirror of the
repository made of symlinks, since the model process writes bytecode caches beside each model.py
and the export stage's output must stay as written.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

from pipeline import PipelineError
from serve.launch import terminate

VENV = Path(__file__).resolve().parents[1] / ".venv-triton"
SITE_PACKAGES = "TRITON_SITE_PACKAGES"  # read by the repository's model.py (triton_model.py)
_ERROR = re.compile(r"E\d{4} ")  # how glog starts an error line


def _site_packages() -> Path | None:
    """The environment's site-packages holding pytriton, or None."""
    found = sorted(VENV.glob("lib/python3.*/site-packages/pytriton"))
    return found[-1].parent if found else None


def _launcher(site: Path) -> Path:
    """The Python backend's model-process binary built for the environment's Python (3.X of
    lib/python3.X)."""
    version = site.parent.name.removeprefix("python")
    return (
        site / "pytriton/tritonserver/python_backend_stubs" / version / "triton_python_backend_stub"
    )


def _libraries(site: Path) -> str:
    return str(site / "nvidia_pytriton.libs")


def unavailable() -> str | None:
    """Why Triton cannot run here, or None when it can."""
    site = _site_packages()
    if site is None:
        return f"no Triton environment in {VENV} (`make install` creates .venv-triton)"
    launcher = _launcher(site)
    if not launcher.is_file():
        return f"nvidia-pytriton has no Python backend binary for {site.parent.name} ({launcher})"
    # it embeds the system's libpython of that version: without it every model fails
    if shutil.which("ldd"):
        env = {**os.environ, "LD_LIBRARY_PATH": _libraries(site)}
        linked = subprocess.run(["ldd", str(launcher)], capture_output=True, text=True, env=env)
        missing = [line.split()[0] for line in linked.stdout.splitlines() if "not found" in line]
        if missing:
            return f"the Triton Python backend binary needs {', '.join(missing)}, not found here"
    return None


def _free_ports(n: int) -> list[int]:
    """n distinct free ports of 127.0.0.1 (held together while picked, so none repeats)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class TritonServer:
    """`with TritonServer(repo, ["m-python"]) as triton: triton.url, triton.grpc_url ...`: HTTP
    and gRPC on free ports of 127.0.0.1, no metrics endpoint; `models` loads only those (explicit
    model control), else the whole repository (which fails on an `onnxruntime_onnx` model: this
    Triton has only the Python backend). Leaving the block sends SIGTERM and waits, killing only
    a server that will not stop."""

    def __init__(
        self,
        repository: Path,
        models: list[str] | None = None,
        start_timeout: float = 180.0,
        stop_timeout: float = 60.0,
    ) -> None:
        if reason := unavailable():
            raise PipelineError(f"Triton cannot run here: {reason}")
        self.repository = Path(repository).resolve()
        self.models = models
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.output: deque[str] = deque(maxlen=200)  # the server's last lines, for errors
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.grpc_url = ""
        self._scratch: tempfile.TemporaryDirectory | None = None

    def _backend_directory(self, site: Path, into: Path) -> Path:
        """backends/python as the wheel has it, plus its model-process binary (symlinks, nothing
        copied)."""
        python = into / "backends" / "python"
        python.mkdir(parents=True)
        for file in (site / "pytriton/tritonserver/backends/python").iterdir():
            if file.is_file():
                (python / file.name).symlink_to(file)
        (python / "triton_python_backend_stub").symlink_to(_launcher(site))
        return python.parent

    def _mirror(self, into: Path) -> Path:
        """The repository as folders of symlinks: the model process writes a model.py's bytecode
        cache beside it, and the repository (the export stage's output) must stay as written."""
        for source in sorted(self.repository.rglob("*")):
            if "__pycache__" in source.parts:
                continue
            target = into / source.relative_to(self.repository)
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(source)
        return into

    def __enter__(self) -> TritonServer:
        site = _site_packages()
        assert site is not None  # unavailable() said so in __init__
        self._scratch = tempfile.TemporaryDirectory(prefix="triton-")
        scratch = Path(self._scratch.name)
        http, grpc = _free_ports(2)
        args = [
            str(site / "pytriton/tritonserver/bin/tritonserver"),
            f"--model-repository={self._mirror(scratch / 'repository')}",
            f"--backend-directory={self._backend_directory(site, scratch)}",
            "--http-address=127.0.0.1",
            f"--http-port={http}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={grpc}",
            "--allow-metrics=false",
            "--pinned-memory-pool-byte-size=0",  # CPU only: no CUDA pools to set up
            "--cuda-memory-pool-byte-size=0:0",
        ]
        if self.models is not None:
            args += ["--model-control-mode=explicit", *(f"--load-model={m}" for m in self.models)]
        libraries = [_libraries(site), *filter(None, [os.environ.get("LD_LIBRARY_PATH")])]
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": os.pathsep.join(libraries),
            SITE_PACKAGES: str(site),
        }
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )

        def read() -> None:  # keeps draining the pipe so the server never blocks on it
            assert self.process and self.process.stdout
            for line in self.process.stdout:
                self.output.append(line.rstrip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        self.url, self.grpc_url = f"http://127.0.0.1:{http}", f"127.0.0.1:{grpc}"
        deadline = time.monotonic() + self.start_timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                reader.join(5)  # Triton's last lines, the reason among them
                raise PipelineError(f"Triton did not start ({' '.join(args)}):\n{self._why()}")
            time.sleep(0.2)
        return self

    def _why(self) -> str:
        """Triton's error lines (glog's `E` lines; its tables of options only bury them) and
        its last words."""
        lines = list(self.output)
        errors = [line for line in lines[:-3] if _ERROR.match(line)]
        return "\n".join(errors[-10:] + lines[-3:])

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> int:
        """SIGTERM, wait for the in-flight requests; the exit status."""
        status = terminate(self.process, self.stop_timeout)
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None
        return status

    def __exit__(self, *exc: object) -> None:
        self.stop()
