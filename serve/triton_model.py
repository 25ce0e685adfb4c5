"""The `model.py` of the Triton repository's `<model>-python` models: an exported ONNX graph on
ONNX Runtime inside Triton's Python backend (this Triton has no onnxruntime backend).

It runs in the Python backend's own interpreter process, not in this project's environment:
it imports only numpy, onnxruntime and the backend's utilities, from the folders
`TRITON_SITE_PACKAGES` names (set by serve/triton.py; unset where the interpreter already has
them). Its config's parameters name the graph in the version folder (`onnx_file`) and ONNX
Runtime's intra-op threads (`intra_op_threads`); inter-op is 1, execution sequential and the
intra-op threads do not spin between runs, as in the project's own server.
"""

import json
import os
import sys
from pathlib import Path

sys.path[:0] = [p for p in os.environ.get("TRITON_SITE_PACKAGES", "").split(os.pathsep) if p]

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters["intra_op_threads"])
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        graph = Path(args["model_repository"]) / args["model_version"] / parameters["onnx_file"]
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.input = config["input"][0]["name"]
        self.output = config["output"][0]["name"]

    def execute(self, requests: list) -> list:
        """The dynamic batcher's requests in one run; each gets its own rows back."""
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        (logits,) = self.session.run([self.output], {self.input: np.concatenate(arrays)})
        bounds = np.cumsum([len(a) for a in arrays])[:-1]
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor(self.output, rows)])
            for rows in np.split(logits, bounds)
        ]

    def finalize(self) -> None:
        self.session = None
