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
METRICS = Path("metrics")  # small summaries, kept in git (pipeline.summary)
REPORTS = Path("reports")  # each stage's whole report, a cached DVC output
PLOTS = Path("plots")
LIVE = Path("dvclive")
CHECKPOINTS = Path("checkpoints")

# the files of a saved model folder (plain or merged ViT) and of a trained variant's folder;
# an exported model's files are listed in pipeline.manifest
MODEL_FILE = "model.safetensors"  # a state dict with timm's own keys
MODEL_META = "model.json"  # arch, kwargs, classes: how to rebuild it
ADAPTER_FILE = "adapter.safetensors"  # only what the method trained
ADAPTER_META = "adapter.json"  # the backbone folder, the method and its options
