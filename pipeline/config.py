"""Typed, validated parameters read from params.yaml.

Every section is a dataclass; reading params checks every key and value, and a bad one raises
ConfigError naming its dotted key, so a typo fails at once instead of deep inside a stage.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline import PipelineError


class ConfigError(PipelineError):
    pass


TORCH_BACKENDS = ("torch", "torch-compile", "cuda-graph")  # serve's PyTorch backends
# the ONNX Runtime artefacts the reference stage builds for a real-size ViT
REFERENCE_ARTEFACTS = (
    "onnxruntime",
    "onnxruntime-optimized",
    "onnxruntime-optimized-skipln",
    "onnxruntime-int8",
    "onnxruntime-int8-skipln",
    "onnxruntime-int8-static",
)


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: float) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _fraction(v: float) -> str | None:
    return None if 0 <= v < 1 else "must be in [0, 1)"


def _one_of(*choices: str):
    def check(v: str) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"

    return check


def _check(fn, default=dataclasses.MISSING, **kw):
    if default is not dataclasses.MISSING:
        kw["default"] = default
    return field(metadata={"check": fn}, **kw)


@dataclass(frozen=True)
class DataConfig:
    source: str = _check(_one_of("digits", "vtab", "imagefolder"), "digits")
    path: str | None = None  # the VTAB-1K task folder or the ImageFolder root
    image_size: int = _check(_positive, 32)
    train_size: int = _check(_positive, 800)
    val_size: int = _check(_non_negative, 200)
    split_seed: int = 0


@dataclass(frozen=True)
class PretrainConfig:
    """The project-made source data (glyphs) and the recipe that pre-trains the backbones."""

    num_classes: int = _check(_positive, 16)
    samples_per_class: int = _check(_positive, 400)
    val_fraction: float = _check(_fraction, 0.1)
    epochs: int = _check(_positive, 4)
    lr: float = _check(_positive, 1e-3)
    weight_decay: float = _check(_non_negative, 0.05)
    batch_size: int = _check(_positive, 128)


@dataclass(frozen=True)
class BackboneConfig:
    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    # "pretrain" (on the glyphs source data), "timm" (the arch's pretrained tag, from the hub),
    # "none" (random init) or the path of a local checkpoint (.safetensors, .npz, .pth/.pt/.bin).
    weights: str = "pretrain"


@dataclass(frozen=True)
class TrainConfig:
    variants: list[str] = field(default_factory=lambda: ["student-lora", "student-linear"])
    epochs: int = _check(_positive, 10)
    batch_size: int = _check(_positive, 64)
    lr: float = _check(_positive, 1e-2)
    # Per-method learning rates where one recipe does not fit all (a linear probe wants more).
    method_lr: dict[str, float] = field(default_factory=dict)
    weight_decay: float = _check(_non_negative, 0.0)
    warmup_epochs: float = _check(_non_negative, 1.0)
    min_lr_ratio: float = _check(_fraction, 0.0)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = _check(_non_negative, 1.0)  # 0 disables clipping
    amp: bool = True  # autocast on CUDA only; ignored on CPU
    num_workers: int = _check(_non_negative, 0)
    # processes per training stage (one per GPU; gloo on CPU), started by pipeline.launch
    nproc: int = _check(_positive, 1)


@dataclass(frozen=True)
class IdatConfig:
    kd: str = _check(_one_of("mse", "kl"), "mse")  # mse: the official script; kl: argparse default
    temperature: float = _check(_positive, 5.0)  # for kd: kl only


@dataclass(frozen=True)
class WecoloraConfig:
    ratio: int = _check(_positive, 2)  # keep one teacher block in `ratio`
    keep: str = _check(_one_of("first", "last"), "first")
    loss: str = _check(_one_of("l1", "per_block", "l1_kl"), "l1")
    few_shot: float = _check(lambda v: None if 0 < v <= 1 else "must be in (0, 1]", 0.1)
    recipe: dict[str, Any] = field(default_factory=dict)  # train.* overrides for distillation


@dataclass(frozen=True)
class KDConfig:
    teacher: str = "teacher-lora"  # a variant of train.variants
    task_weight: float = _check(_non_negative, 0.5)
    distill_weight: float = _check(_non_negative, 0.5)
    temperature: float = _check(_positive, 2.0)


@dataclass(frozen=True)
class DistillConfig:
    variants: list[str] = field(default_factory=list)  # <role>-<method>-<idat|wecolora|kd>
    idat: IdatConfig = field(default_factory=IdatConfig)
    wecolora: WecoloraConfig = field(default_factory=WecoloraConfig)
    kd: KDConfig = field(default_factory=KDConfig)


def _all_of(*choices: str):
    def check(values: list[str]) -> str | None:
        bad = [v for v in values if v not in choices]
        return f"has {bad[0]!r}: each must be one of {', '.join(choices)}" if bad else None

    return check


@dataclass(frozen=True)
class L2PConfig:
    pool: int = _check(_positive, 30)
    length: int = _check(_positive, 20)
    top_k: int = _check(_positive, 5)
    layers: list[int] = field(default_factory=lambda: [0])  # on a 12-block ViT; scaled


@dataclass(frozen=True)
class DualPromptConfig:
    g_length: int = _check(_positive, 6)
    g_layers: list[int] = field(default_factory=lambda: [0, 1])
    e_length: int = _check(_positive, 20)
    e_layers: list[int] = field(default_factory=lambda: [2, 3, 4])


@dataclass(frozen=True)
class CodaConfig:
    components: int = _check(_positive, 100)
    length: int = _check(_positive, 8)
    layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])


@dataclass(frozen=True)
class ContinualConfig:
    """Class-incremental prompt learning with a teacher and a student (CDL)."""

    tasks: int = _check(_positive, 5)
    class_order: Any = None  # null: natural order; an int: a seeded permutation; a list
    learners: list[str] = _check(
        _all_of("l2p", "dualprompt", "coda"), default_factory=lambda: ["l2p", "dualprompt", "coda"]
    )
    recipe: dict[str, Any] = field(default_factory=dict)  # train.* overrides for every task
    alpha: float = _check(_fraction, 0.5)
    temperature: float = _check(_positive, 2.0)
    feature_weight: float = _check(_non_negative, 0.0)  # FitNets' feature loss; the paper: 0.1
    mapping: bool = True  # CDL-Prompt's teacher -> student prompt mapping; False: KD head only
    mapping_heads: int = _check(_positive, 1)
    l2p: L2PConfig = field(default_factory=L2PConfig)
    dualprompt: DualPromptConfig = field(default_factory=DualPromptConfig)
    coda: CodaConfig = field(default_factory=CodaConfig)


@dataclass(frozen=True)
class MergeConfig:
    tolerance: float = _check(_positive, 1e-4)


@dataclass(frozen=True)
class ExportConfig:
    opset: int = _check(lambda v: None if v >= 18 else "must be >= 18", 18)
    tolerance: float = _check(_positive, 1e-4)
    # ONNX Runtime's SkipLayerNormalization fusion: slower than Add + LayerNorm on CPU
    skip_layer_norm: bool = False
    calibration_images: int = _check(_positive, 256)  # training images for static INT8
    max_batch_size: int = _check(_positive, 64)  # TensorRT profile and Triton config
    max_queue_delay_us: int = _check(_non_negative, 500)  # Triton dynamic batching


@dataclass(frozen=True)
class ReferenceConfig:
    """A real-size model for the deployment speed figures (random weights: nothing to fetch)."""

    arch: str = "vit_small_patch16_224"
    image_size: int = _check(_positive, 224)
    num_classes: int = _check(_positive, 10)
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    calibration_images: int = _check(_positive, 16)
    # the PyTorch backends measured beside ONNX Runtime; cuda-graph only where CUDA is present
    torch_backends: list[str] = _check(
        _all_of(*TORCH_BACKENDS), default_factory=lambda: list(TORCH_BACKENDS)
    )
    precision: str = _check(_one_of("fp32", "bf16"), "fp32")  # of the PyTorch backends
    onnxruntime: list[str] = _check(  # the artefacts timed (all are built and profiled)
        _all_of(*REFERENCE_ARTEFACTS), default_factory=lambda: list(REFERENCE_ARTEFACTS)
    )
    peak_tflops: float | None = None  # the device's dense peak: rows then say what share of it


@dataclass(frozen=True)
class ArchConfig:
    """A timm ViT with random weights: for speed figures, which do not depend on weights."""

    arch: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingBenchConfig:
    """Adapter training against full fine-tuning on one backbone (random weights): time per
    step, images/s and peak memory. iDAT trains `idat_method` in this backbone and in the
    smaller `idat_teacher` jointly. Autocast follows train.amp."""

    model: ArchConfig = field(default_factory=lambda: ArchConfig("vit_base_patch16_224"))
    idat_teacher: ArchConfig = field(default_factory=lambda: ArchConfig("vit_small_patch16_224"))
    idat_method: str = "arc"
    image_size: int = _check(_positive, 224)
    num_classes: int = _check(_positive, 100)
    batch_size: int = _check(_positive, 64)
    methods: list[str] = field(
        default_factory=lambda: ["full", "lora", "arc", "consolidator", "idat"]
    )
    warmup: int = _check(_positive, 3)
    steps: int = _check(_positive, 10)


def _levels(values: list[int]) -> str | None:
    return None if values and min(values) >= 1 else "must be a non-empty list of levels >= 1"


@dataclass(frozen=True)
class ServingConfig:
    """The served benchmark: `python -m serve` per backend, driven by `serve.bench` (the
    perf_analyzer method); the server batches as export.max_batch_size/max_queue_delay_us say."""

    backends: list[str] = _check(  # tensorrt only where the export stage built engines
        _all_of(*TORCH_BACKENDS, "onnxruntime", "tensorrt"),
        default_factory=lambda: ["torch", "onnxruntime", "tensorrt"],
    )
    variants: list[str] | None = None  # merged and unmerged form of each; None: every one
    concurrency: list[int] = _check(_levels, default_factory=lambda: [1, 4, 16])
    window_ms: int = _check(_positive, 500)
    stability: float = _check(_positive, 10.0)  # percent
    max_windows: int = _check(_positive, 8)
    warmup_s: float = _check(_non_negative, 0.5)


@dataclass(frozen=True)
class BenchmarkConfig:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    warmup: int = _check(_non_negative, 5)
    iterations: int = _check(_positive, 30)
    threads: int = _check(_positive, 2)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    training: TrainingBenchConfig = field(default_factory=TrainingBenchConfig)
    serve: ServingConfig = field(default_factory=ServingConfig)


@dataclass(frozen=True)
class Params:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    backbone: dict[str, BackboneConfig] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    adapters: dict[str, dict[str, Any]] = field(default_factory=dict)
    distill: DistillConfig = field(default_factory=DistillConfig)
    continual: ContinualConfig = field(default_factory=ContinualConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    def backbone_kwargs(self, role: str) -> dict[str, Any]:
        """timm kwargs of a role's backbone; the image size always comes from data.image_size."""
        return {**self.backbone[role].kwargs, "img_size": self.data.image_size}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp)
        return [_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, inner = typing.get_args(tp)
        return {k: _coerce(inner, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-3 as a string
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key (known: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: required key is missing")
            continue
        value = _coerce(hints[name], data[name], key)
        check = f.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise ConfigError(f"{key} {problem}, got {data[name]!r}")
        values[name] = value
    return cls(**values)


def parse_params(data: dict[str, Any]) -> Params:
    from pipeline.models import check_arch
    from pipeline.variants import parse_variant

    params = _build(Params, data, "")
    for role, cfg in params.backbone.items():
        check_arch(cfg.arch, f"backbone.{role}.arch")
        size = cfg.kwargs.get("img_size", params.data.image_size)
        if size != params.data.image_size:
            raise ConfigError(
                f"backbone.{role}.kwargs.img_size ({size}) must equal "
                f"data.image_size ({params.data.image_size}); leave it out"
            )
        if cfg.weights not in ("pretrain", "timm", "none") and not Path(cfg.weights).suffix:
            raise ConfigError(
                f"backbone.{role}.weights must be pretrain, timm, none or a "
                f"checkpoint path, got {cfg.weights!r}"
            )
    from pipeline.adapters import METHODS, check_options

    for method, options in params.adapters.items():
        check_options(method, options)
    for method, lr in params.train.method_lr.items():
        if method not in METHODS or not lr > 0:
            raise ConfigError(
                f"train.method_lr.{method}: needs a known method and a rate > 0, "
                f"got {lr!r} (methods: {', '.join(METHODS)})"
            )
    if len(params.train.betas) != 2 or not all(0 <= b < 1 for b in params.train.betas):
        raise ConfigError(f"train.betas must be two numbers in [0, 1), got {params.train.betas}")
    _check_training_bench(params.benchmark.training, METHODS)
    if not params.benchmark.batch_sizes or min(params.benchmark.batch_sizes) < 1:
        raise ConfigError(f"benchmark.batch_sizes must be >= 1, got {params.benchmark.batch_sizes}")
    if not params.train.variants:
        raise ConfigError("train.variants: list at least one variant")
    for key, distilled in (("train.variants", False), ("distill.variants", True)):
        for name in getattr(params, key.split(".")[0]).variants:
            try:
                variant = parse_variant(name, params)
            except PipelineError as e:
                raise ConfigError(f"{key}: {e}") from None
            if bool(variant.distill) != distilled:
                where = "distill.variants" if variant.distill else "train.variants"
                raise ConfigError(f"{key}: '{name}' belongs in {where}")
    uses_kd = any(v.endswith("-kd") for v in params.distill.variants)
    if uses_kd and params.distill.kd.teacher not in params.train.variants:
        raise ConfigError(
            f"distill.kd.teacher '{params.distill.kd.teacher}' must be one of "
            "train.variants (it is trained first)"
        )
    wecolora = override(params.train, params.distill.wecolora.recipe, "distill.wecolora.recipe")
    override(params.train, params.continual.recipe, "continual.recipe")
    _check_shares(params, wecolora)
    return params


def _check_training_bench(cfg: TrainingBenchConfig, methods: tuple[str, ...]) -> None:
    from pipeline.models import check_arch

    for key in ("model", "idat_teacher"):
        check_arch(getattr(cfg, key).arch, f"benchmark.training.{key}.arch")
    for name in cfg.methods:
        if name not in ("full", "idat", *methods):
            raise ConfigError(
                f"benchmark.training: unknown method {name!r} "
                f"(full, idat or one of {', '.join(methods)})"
            )
    if cfg.idat_method not in methods:
        raise ConfigError(
            f"benchmark.training.idat_method: {cfg.idat_method!r} is not an adapter method "
            f"(one of {', '.join(methods)})"
        )


def _check_shares(params: Params, wecolora: TrainConfig) -> None:
    """Every training batch splits evenly over the train.nproc processes."""
    sizes = {
        "train.batch_size": params.train.batch_size,
        "distill.wecolora.recipe.batch_size": wecolora.batch_size,
    }
    if any(b.weights == "pretrain" for b in params.backbone.values()):
        sizes["pretrain.batch_size"] = params.pretrain.batch_size
    nproc = params.train.nproc
    for key, size in sizes.items():
        if size % nproc:
            raise ConfigError(
                f"{key} ({size}) must be divisible by train.nproc ({nproc}): "
                "each process trains on an equal share of every batch"
            )


def override(base: TrainConfig, changes: dict[str, Any], key: str) -> TrainConfig:
    """`base` with `changes` applied, validated like params.yaml itself (errors name `key`)."""
    return _build(TrainConfig, {**dataclasses.asdict(base), **changes}, key)


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    with path.open() as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from e
    return parse_params(data)
