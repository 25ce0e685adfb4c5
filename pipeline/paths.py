"""Where each stage reads and writes (relative to the project root, where DVC runs stages)."""

from pathlib import Path

PREPARED = Path("data/prepared")
DOWNSTREAM = PREPARED / "downstream"
SOURCE = PREPARED / "source"
BACKBONES = Path("models/backbone")
ADAPTERS = Path("models/adapters")
DISTILLED = Path("models/distilled")
MERGED = Path("models/merged")
ONNX = Path("models/onnx")
TRITON = Path("models/triton")  # a Triton Inference Server model repository
CONTINUAL = Path("models/continual")  # prompt learners: two-pass ONNX models
METRICS = Path("metrics")
PLOTS = Path("plots")
LIVE = Path("dvclive")
CHECKPOINTS = Path("checkpoints")
