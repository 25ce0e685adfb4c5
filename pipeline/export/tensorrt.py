"""TensorRT engines from the exported ONNX: one optimisation profile for batch 1..max, FP16.

Both API generations are handled. TensorRT 10 takes the fp32 ONNX with the weakly-typed
`BuilderFlag.FP16`; TensorRT 11 removed that flag (every network is strongly typed), so the
precision comes from the graph: it builds from the FP16 ONNX instead.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import PipelineError
from pipeline.io import atomic_path
from pipeline.manifest import INPUT_NAME
from pipeline.runtime.tensorrt import unavailable

__all__ = ["build_engine", "unavailable"]


def weakly_typed_fp16() -> bool:
    """Whether the installed TensorRT still has the FP16 builder flag (TensorRT <= 10)."""
    import tensorrt as trt

    return hasattr(trt.BuilderFlag, "FP16")


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    image_size: int,
    max_batch: int,
    fp16_onnx_path: str | Path | None = None,
    workspace_bytes: int = 4 << 30,
) -> Path:
    """Serialize an engine for `onnx_path` (fp32) to `plan_path`; FP16 when the installed
    TensorRT allows it: via the flag (<= 10) or by building from `fp16_onnx_path` (11+)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    source = Path(onnx_path)
    config = builder.create_builder_config()
    if weakly_typed_fp16():
        config.set_flag(trt.BuilderFlag.FP16)
    elif fp16_onnx_path is not None:
        source = Path(fp16_onnx_path)
        if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PipelineError(f"{source}: TensorRT cannot parse it: {errors}")
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    profile = builder.create_optimization_profile()
    shape = (3, image_size, image_size)
    profile.set_shape(
        INPUT_NAME, (1, *shape), (max(1, max_batch // 2), *shape), (max_batch, *shape)
    )
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise PipelineError(f"{source}: TensorRT failed to build an engine (see its log above)")
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(bytes(engine))
    return Path(plan_path)
