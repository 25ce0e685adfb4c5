"""The sections of params.yaml as frozen pydantic models, with each field's own check.

Strict types, as YAML gives them: a bool is no integer and "10" is no number; a float takes an
int, and a string such as "1e-3" (YAML 1.1 reads exponents without a dot as strings).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from pipeline import PipelineError
from pipeline.runtime.base import BACKENDS, PRECISIONS, TORCH_BACKENDS


class ConfigError(PipelineError):
    pass


# the ONNX Runtime artefacts the reference stage builds for a real-size ViT: the export's, the
# optimiser's SkipLayerNormalization fusion, and each INT8 form ONNX Runtime has (dynamic per
# channel; static QDQ with s8 activations; static QOperator)
REFERENCE_ARTEFACTS = (
    "onnxruntime",
    "onnxruntime-optimized",
    "onnxruntime-optimized-skipln",
    "onnxruntime-int8",
    "onnxruntime-int8-skipln",
    "onnxruntime-int8-per-channel",
    "onnxruntime-int8-static",
    "onnxruntime-int8-static-s8s8",
    "onnxruntime-int8-static-qoperator",
)
# OpenVINO's: the default compile of the plain ONNX (the peer a user tries first), the IR in
# fp32 and bf16, and NNCF's INT8
REFERENCE_OPENVINO = ("openvino-default", "openvino", "openvino-bf16", "openvino-int8")


def _yaml_float(value: Any) -> Any:
    """A numeric string as a float; anything else is left to the strict float check."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


Float = Annotated[float, BeforeValidator(_yaml_float)]


def _rule(problem: Callable[[Any], str | None]) -> AfterValidator:
    """A field check: `problem(value)` says what is wrong with a value, or None."""

    def check(value: Any) -> Any:
        if message := problem(value):
            raise ValueError(message)  # loading names the key and the value given
        return value

    return AfterValidator(check)


_positive = _rule(lambda v: None if v > 0 else "must be > 0")
_non_negative = _rule(lambda v: None if v >= 0 else "must be >= 0")
_fraction = _rule(lambda v: None if 0 <= v < 1 else "must be in [0, 1)")
_non_empty_positive = _rule(
    lambda v: None if v and min(v) > 0 else "must be a non-empty list of values > 0"
)
_levels = _rule(lambda v: None if v and min(v) >= 1 else "must be a non-empty list of levels >= 1")


def _one_of(*choices: str) -> AfterValidator:
    return _rule(lambda v: None if v in choices else f"must be one of {', '.join(choices)}")


def _all_of(*choices: str) -> AfterValidator:
    def problem(values: list[str]) -> str | None:
        bad = [v for v in values if v not in choices]
        return f"has {bad[0]!r}: each must be one of {', '.join(choices)}" if bad else None

    return _rule(problem)


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_defaults(cls, data: Any) -> Any:
        return {} if data is None else data  # `train:` with nothing under it


class DataConfig(Section):
    source: Annotated[str, _one_of("digits", "vtab", "imagefolder")] = "digits"
    path: str | None = None  # the VTAB-1K task folder or the ImageFolder root
    image_size: Annotated[int, _positive] = 32
    train_size: Annotated[int, _positive] = 800
    val_size: Annotated[int, _positive] = 200  # an empty val split would stop training
    split_seed: int = 0
    stratify: bool = True  # each class in proportion in every split; false: a plain permutation


class PretrainConfig(Section):
    """The project-made source data (glyphs) and the recipe that pre-trains the backbones."""

    num_classes: Annotated[int, _positive] = 128
    samples_per_class: Annotated[int, _positive] = 120
    grid: Annotated[int, _positive] = 8  # glyphs are grid x grid block counts, as the digits
    val_fraction: Annotated[Float, _fraction] = 0.1
    epochs: Annotated[int, _positive] = 10
    lr: Annotated[Float, _positive] = 2e-3
    weight_decay: Annotated[Float, _non_negative] = 0.05
    batch_size: Annotated[int, _positive] = 128


class BackboneConfig(Section):
    arch: str
    kwargs: dict[str, Any] = {}
    # "pretrain" (on the glyphs source data), "timm" (the arch's pretrained tag, from the hub),
    # "none" (random init) or the path of a local checkpoint (.safetensors, .npz, .pth/.pt/.bin).
    weights: str = "pretrain"


class TrainConfig(Section):
    variants: list[str] = ["student-lora", "student-linear"]
    epochs: Annotated[int, _positive] = 10
    batch_size: Annotated[int, _positive] = 64
    lr: Annotated[Float, _positive] = 1e-2
    # Per-method learning rates where one recipe does not fit all.
    method_lr: dict[str, Float] = {}
    weight_decay: Annotated[Float, _non_negative] = 0.0
    warmup_epochs: Annotated[Float, _non_negative] = 1.0
    min_lr_ratio: Annotated[Float, _fraction] = 0.0
    betas: list[Float] = [0.9, 0.999]
    grad_clip: Annotated[Float, _non_negative] = 1.0  # 0 disables clipping
    # each training image moved by up to this many pixels each way per epoch, the uncovered
    # border black (random translation); 0: the images as they are
    shift: Annotated[int, _non_negative] = 0
    amp: bool = True  # autocast on CUDA only; ignored on CPU
    num_workers: Annotated[int, _non_negative] = 0
    # processes per training stage (one per GPU; gloo on CPU), started by pipeline.launch
    nproc: Annotated[int, _positive] = 1
    # the linear probe's L2 strengths (logistic regression's C), one chosen on val
    probe_c_grid: Annotated[list[Float], _non_empty_positive] = [0.01, 0.1, 1.0, 10.0, 100.0]


class IdatConfig(Section):
    # mse: the official script; kl: the argparse default
    kd: Annotated[str, _one_of("mse", "kl")] = "mse"
    temperature: Annotated[Float, _positive] = 5.0  # for kd: kl only


class WecoloraConfig(Section):
    ratio: Annotated[int, _positive] = 2  # keep one teacher block in `ratio`
    keep: Annotated[str, _one_of("first", "last")] = "first"
    loss: Annotated[str, _one_of("l1", "per_block", "l1_kl")] = "l1"
    few_shot: Annotated[Float, _rule(lambda v: None if 0 < v <= 1 else "must be in (0, 1]")] = 0.1
    recipe: dict[str, Any] = {}  # train.* overrides for distillation


class KDConfig(Section):
    teacher: str = "teacher-lora"  # a variant of train.variants
    task_weight: Annotated[Float, _non_negative] = 0.5
    distill_weight: Annotated[Float, _non_negative] = 0.5
    temperature: Annotated[Float, _positive] = 2.0


class DistillConfig(Section):
    variants: list[str] = []  # <role>-<method>-<idat|wecolora|kd>
    idat: IdatConfig = Field(default_factory=IdatConfig)
    wecolora: WecoloraConfig = Field(default_factory=WecoloraConfig)
    kd: KDConfig = Field(default_factory=KDConfig)


class L2PConfig(Section):
    pool: Annotated[int, _positive] = 30
    length: Annotated[int, _positive] = 20
    top_k: Annotated[int, _positive] = 5
    layers: list[int] = [0]  # on a 12-block ViT; scaled


class DualPromptConfig(Section):
    g_length: Annotated[int, _positive] = 6
    g_layers: list[int] = [0, 1]
    e_length: Annotated[int, _positive] = 20
    e_layers: list[int] = [2, 3, 4]


class CodaConfig(Section):
    components: Annotated[int, _positive] = 100
    length: Annotated[int, _positive] = 8
    layers: list[int] = [0, 1, 2, 3, 4]


_LEARNERS = ("l2p", "dualprompt", "coda")


class ContinualConfig(Section):
    """Class-incremental prompt learning with a teacher and a student (CDL)."""

    tasks: Annotated[int, _positive] = 5
    class_order: Any = None  # null: natural order; an int: a seeded permutation; a list
    learners: Annotated[list[str], _all_of(*_LEARNERS)] = list(_LEARNERS)
    recipe: dict[str, Any] = {}  # train.* overrides for every task
    alpha: Annotated[Float, _fraction] = 0.5
    temperature: Annotated[Float, _positive] = 2.0
    feature_weight: Annotated[Float, _non_negative] = 0.0  # FitNets' feature loss; the paper: 0.1
    # CDL-Prompt's KD head learns the teacher's logits on every class seen so far (chosen on
    # val), or on the current task's alone (the paper's KL)
    kd_head_classes: Literal["current", "seen"] = "seen"
    mapping: bool = False  # CDL-Prompt's teacher -> student prompt mapping (the paper's; off)
    mapping_heads: Annotated[int, _positive] = 1
    l2p: L2PConfig = Field(default_factory=L2PConfig)
    dualprompt: DualPromptConfig = Field(default_factory=DualPromptConfig)
    coda: CodaConfig = Field(default_factory=CodaConfig)


class MergeConfig(Section):
    tolerance: Annotated[Float, _positive] = 1e-4


class OpenVinoExportConfig(Section):
    """NNCF's INT8 of the OpenVINO IR: SmoothQuant's strength on MatMuls (-1: off), and its
    accuracy-control flow (layers reverted to floating point until the top-1 drop on the
    validation split is within export.max_top1_drop), at most `max_iterations` rounds."""

    smooth_quant_alpha: Annotated[
        Float, _rule(lambda v: None if v == -1 or 0 <= v <= 1 else "must be -1 (off) or in [0, 1]")
    ] = 0.95
    accuracy_control: bool = False
    max_iterations: Annotated[int, _positive] = 10


WECOLORA_METHODS = ("lora_qkv", "lora_qv", "linear")  # enhanced LoRA first: the others pair with it


class SeedsConfig(Section):
    """The seed study (`dvc repro seeds`): iDAT, WeCoLoRA and the continual study over `count`
    seeds."""

    count: Annotated[int, _positive] = 3  # seeds params.seed, params.seed + 1, ...
    idat_method: str = "arc"  # the adapter in both of iDAT's models, and trained alone
    idat_kd: Annotated[list[str], _all_of("mse", "kl")] = ["mse", "kl"]
    # WeCoLoRA's student with the enhanced LoRA against its ablations: plain q/v LoRA and the
    # weight copy alone (`linear`: nothing distilled), each then probed
    wecolora_methods: Annotated[list[str], _all_of(*WECOLORA_METHODS)] = list(WECOLORA_METHODS)


class EvaluateConfig(Section):
    """The pixel baselines every run records beside the ViTs (pipeline/baselines.py)."""

    pixels: Annotated[int, _positive] = 8  # images averaged down to pixels x pixels
    # LogisticRegression's and SVC's C: each fitted on train, the best on val counts
    c_grid: Annotated[list[Float], _non_empty_positive] = [0.01, 0.1, 1.0, 10.0, 100.0]


class ExportConfig(Section):
    opset: Annotated[int, _rule(lambda v: None if v >= 18 else "must be >= 18")] = 18
    tolerance: Annotated[Float, _positive] = 1e-4
    # test top-1 points a bf16 or INT8 artefact may lose against torch and still be recommended
    max_top1_drop: Annotated[Float, _non_negative] = 0.5
    # the recommended artefact is the fastest at the largest of these (a short latency probe)
    probe_batch_sizes: Annotated[list[int], _levels] = [1, 32]
    # ONNX Runtime's SkipLayerNormalization fusion: slower than Add + LayerNorm on CPU
    skip_layer_norm: bool = False
    calibration_images: Annotated[int, _positive] = 256  # training images for static INT8
    max_batch_size: Annotated[int, _positive] = 64  # TensorRT profile and Triton config
    max_queue_delay_us: Annotated[int, _non_negative] = 500  # Triton dynamic batching
    openvino: OpenVinoExportConfig = Field(default_factory=OpenVinoExportConfig)


class ReferenceConfig(Section):
    """A real-size model for the deployment speed figures (random weights: nothing to fetch)."""

    arch: str = "vit_small_patch16_224"
    image_size: Annotated[int, _positive] = 224
    num_classes: Annotated[int, _positive] = 10
    batch_sizes: list[int] = [1, 32]
    warmup: Annotated[int, _non_negative] = 2  # calls per row before timing
    iterations: Annotated[int, _positive] = 20  # timed calls per row, at most
    max_images: Annotated[int, _positive] = 192  # timed per row (at least 3 calls)
    calibration_images: Annotated[int, _positive] = 16
    # the PyTorch backends measured beside ONNX Runtime; cuda-graph only where CUDA is present
    torch_backends: Annotated[list[str], _all_of(*TORCH_BACKENDS)] = list(TORCH_BACKENDS)
    precisions: Annotated[list[str], _all_of(*PRECISIONS)] = list(PRECISIONS)  # PyTorch's
    # the artefacts timed (all are built)
    onnxruntime: Annotated[list[str], _all_of(*REFERENCE_ARTEFACTS)] = list(REFERENCE_ARTEFACTS)
    openvino: Annotated[list[str], _all_of(*REFERENCE_OPENVINO)] = list(REFERENCE_OPENVINO)
    # a GPU's dense peak (H100 bf16: ~790), for the share of it; on a CPU it is computed
    peak_tflops: Float | None = None


class ArchConfig(Section):
    """A timm ViT with random weights: for speed figures, which do not depend on weights."""

    arch: str
    kwargs: dict[str, Any] = {}


class TrainingBenchConfig(Section):
    """Adapter training against full fine-tuning on one backbone (random weights): time per
    step, images/s and peak memory. iDAT trains `idat_method` in this backbone and in the
    smaller `idat_teacher` jointly. Autocast follows train.amp."""

    model: ArchConfig = Field(default_factory=lambda: ArchConfig(arch="vit_base_patch16_224"))
    idat_teacher: ArchConfig = Field(
        default_factory=lambda: ArchConfig(arch="vit_small_patch16_224")
    )
    idat_method: str = "arc"
    image_size: Annotated[int, _positive] = 224
    num_classes: Annotated[int, _positive] = 100
    batch_size: Annotated[int, _positive] = 64
    methods: list[str] = ["full", "lora", "arc", "consolidator", "idat"]
    warmup: Annotated[int, _positive] = 3
    steps: Annotated[int, _positive] = 10


class LoadConfig(Section):
    """The load `serve.bench` applies, measured the way Triton's perf_analyzer measures: per
    concurrency level, closed-loop clients; after a warm-up, windows until the last
    `stable_windows` agree within `stability` percent (throughput and mean latency), at most
    `max_windows`; `duration_s` makes it a soak of that length instead."""

    concurrency: Annotated[list[int], _levels] = [1, 4, 16]
    batch_size: Annotated[int, _positive] = 1  # images per request
    window_ms: Annotated[int, _positive] = 1000
    stability: Annotated[Float, _positive] = 10.0  # percent
    stable_windows: Annotated[int, _positive] = 3
    max_windows: Annotated[int, _positive] = 10
    warmup_s: Annotated[Float, _non_negative] = 1.0
    binary: bool = True  # the binary tensor extension; False sends JSON tensors
    duration_s: Annotated[Float, _positive] | None = None
    timeout_s: Annotated[Float, _positive] = 60.0
    # the KServe v2 API spoken; over gRPC `binary` sends raw contents, else typed ones
    protocol: Literal["http", "grpc"] = "http"


class ServingConfig(LoadConfig):
    """The served benchmark: `python -m serve` per backend, driven by `serve.bench` under this
    load; the server batches as export.max_batch_size/max_queue_delay_us say."""

    backends: Annotated[  # tensorrt only where the export stage built engines
        list[str], _all_of(*BACKENDS)
    ] = ["torch", "onnxruntime", "tensorrt"]
    variants: list[str] | None = None  # merged and unmerged form of each; None: every one
    # rounds of the yardstick: the first variant's merged, optimised graph in this server and
    # in Triton (where .venv-triton exists), over HTTP and gRPC at batch 1 and the largest
    # benchmark batch, the two driven in turn; 0: off
    yardstick: Annotated[int, _non_negative] = 3


class BenchmarkConfig(Section):
    batch_sizes: list[int] = [1, 8, 32]
    warmup: Annotated[int, _non_negative] = 5
    iterations: Annotated[int, _positive] = 30
    # every in-process latency row (pipeline.runtime.latency.measure): more windows until the
    # last 3 windows' median latencies lie within `stability` percent of their average, at
    # most `max_windows`; a row that never settles is flagged `stable: false`
    stability: Annotated[Float, _positive] = 10.0
    max_windows: Annotated[int, _rule(lambda v: None if v >= 3 else "must be >= 3")] = 8
    threads: Annotated[int, _positive] = 2
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    training: TrainingBenchConfig = Field(default_factory=TrainingBenchConfig)
    serve: ServingConfig = Field(default_factory=ServingConfig)


class Params(Section):
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    backbone: dict[str, BackboneConfig] = {}
    train: TrainConfig = Field(default_factory=TrainConfig)
    adapters: dict[str, dict[str, Any]] = {}
    distill: DistillConfig = Field(default_factory=DistillConfig)
    continual: ContinualConfig = Field(default_factory=ContinualConfig)
    merge: MergeConfig = Field(default_factory=MergeConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    seeds: SeedsConfig = Field(default_factory=SeedsConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)

    def backbone_kwargs(self, role: str) -> dict[str, Any]:
        """timm kwargs of a role's backbone; the image size always comes from data.image_size."""
        return {**self.backbone[role].kwargs, "img_size": self.data.image_size}
