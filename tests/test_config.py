from pathlib import Path

import pytest
import yaml

from pipeline import PipelineError
from pipeline.adapters import METHODS
from pipeline.config import ConfigError, load_params, parse_params
from pipeline.variants import DISTILLATIONS, all_variants

ROOT = Path(__file__).resolve().parents[1]


def _params(**changes):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in changes.items():
        *path, last = dotted.split(".")
        node = data
        for key in path:
            node = node[key]
        node[last] = value
    return data


def test_project_params_are_valid():
    params = load_params(ROOT / "params.yaml")
    assert {"teacher-lora", "student-lora", "student-linear"} <= set(params.train.variants)
    # the default run trains every registered method (lora_qv, an ablation, is one -S away)
    assert {v.method for v in all_variants(params)} == set(METHODS) - {"lora_qv"}
    assert {v.distill for v in all_variants(params)} == {None, *DISTILLATIONS}
    assert params.backbone_kwargs("student")["img_size"] == params.data.image_size
    assert isinstance(params.train.lr, float)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train.lr": -1}, "train.lr must be > 0, got -1"),
        ({"train.epochs": "ten"}, "train.epochs: expected an integer, got 'ten'"),
        ({"train.amp": "yes"}, "train.amp: expected true or false"),
        ({"data.source": "mnist"}, "data.source must be one of digits, vtab, imagefolder"),
        ({"merge.tolerance": 0}, "merge.tolerance must be > 0"),
        ({"train.variants": ["pupil-lora"]}, "role 'pupil' has no backbone"),
        ({"train.variants": ["student-lorax"]}, "unknown method 'lorax'"),
        ({"train.variants": ["studentlora"]}, "is not <role>-<method>"),
        ({"backbone.student.arch": "vit_nonexistent"}, "backbone.student.arch: unknown timm ViT"),
        ({"backbone.student.kwargs.img_size": 64}, "must equal data.image_size"),
        ({"backbone.student.weights": "imagenet"}, "backbone.student.weights must be"),
        ({"train.variants": []}, "train.variants: list at least one variant"),
        ({"adapters.lora": {"rnak": 4}}, "adapters.lora: unknown option(s) ['rnak']"),
        ({"adapters.dora": {}}, "unknown adapter method 'dora'"),
        ({"train.method_lr": {"linear": 0}}, "train.method_lr.linear: needs a known method"),
        ({"train.betas": [0.9]}, "train.betas must be two numbers"),
        ({"train.shift": 16}, "train.shift (16) must be under half of data.image_size (32)"),
        ({"train.shift": -1}, "train.shift must be >= 0"),
        (
            {"continual.recipe": {"shift": 16}},
            "continual.recipe.shift (16) must be under half of data.image_size (32)",
        ),
        (
            {"distill.wecolora.recipe": {"shift": 20}},
            "distill.wecolora.recipe.shift (20) must be under half of data.image_size (32)",
        ),
        ({"benchmark.batch_sizes": [0]}, "benchmark.batch_sizes must be >= 1"),
        ({"export.opset": 17}, "export.opset must be >= 18"),
        ({"distill.variants": ["student-lora-dino"]}, "unknown distillation 'dino'"),
        ({"distill.variants": ["teacher-lora-kd"]}, "a distilled variant is the student"),
        ({"distill.variants": ["student-lora"]}, "'student-lora' belongs in train.variants"),
        ({"train.variants": ["student-lora-kd"]}, "belongs in distill.variants"),
        ({"distill.kd.teacher": "teacher-ssf"}, "distill.kd.teacher 'teacher-ssf' must be one of"),
        ({"distill.wecolora.few_shot": 0}, "distill.wecolora.few_shot must be in (0, 1]"),
        ({"distill.wecolora.recipe": {"lr": -1}}, "distill.wecolora.recipe.lr must be > 0"),
        ({"distill.idat.kd": "l2"}, "distill.idat.kd must be one of mse, kl"),
        ({"train.nproc": 0}, "train.nproc must be > 0"),
        ({"train.nproc": 3}, "train.batch_size (64) must be divisible by train.nproc (3)"),
        (
            {"train.nproc": 4, "pretrain.batch_size": 30},
            "pretrain.batch_size (30) must be divisible by train.nproc (4)",
        ),
        (
            {"train.nproc": 2, "distill.wecolora.recipe": {"batch_size": 33}},
            "distill.wecolora.recipe.batch_size (33) must be divisible by train.nproc (2)",
        ),
    ],
)
def test_bad_values_name_their_key(changes, message):
    with pytest.raises(PipelineError) as err:
        parse_params(_params(**changes))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"train.variants": ["teacher-lora", "student-lora", "student-linear"]},
            "benchmark.serve.variants: 'student-arc' is not a variant with a merged form in this "
            "run: set benchmark.serve.variants to a subset of train.variants / distill.variants "
            "that merge (teacher-lora, student-lora, student-arc-idat, student-lora_qkv-wecolora, "
            "student-lora-kd, teacher-arc-idat)",
        ),
        (
            {"benchmark.serve.variants": ["student-linear"]},
            "benchmark.serve.variants: 'student-linear' is not a variant with a merged form in "
            "this run: set benchmark.serve.variants to a subset of train.variants / "
            "distill.variants that merge (teacher-lora, teacher-arc, student-lora, "
            "student-lora_qkv, student-arc, student-arc_att, student-consolidator, student-ssf, "
            "student-arc-idat, student-lora_qkv-wecolora, student-lora-kd, teacher-arc-idat)",
        ),
        (
            {"continual.class_order": "reverse"},
            "continual.class_order must be null (natural order), a seed (an integer) or a list "
            "of class indices >= 0, got 'reverse'",
        ),
        (
            {"continual.class_order": [0, 1, -2]},
            "continual.class_order must be null (natural order), a seed (an integer) or a list "
            "of class indices >= 0, got [0, 1, -2]",
        ),
        (
            {"continual.class_order": [0, 1, 1, 2]},
            "continual.class_order lists class 1 twice: a list is a permutation of the classes "
            "0..K-1",
        ),
        ({"data.val_size": 0}, "data.val_size must be > 0, got 0"),
        ({"data.stratify": "yes"}, "data.stratify: expected true or false, got 'yes'"),
    ],
)
def test_checks_made_from_params_before_anything_trains(changes, message):
    with pytest.raises(ConfigError) as err:
        parse_params(_params(**changes))
    assert str(err.value) == message


def test_unknown_key_is_named():
    data = _params()
    data["train"]["lrr"] = 0.1
    with pytest.raises(ConfigError, match=r"train\.lrr: unknown key"):
        parse_params(data)


def test_missing_required_key_is_named():
    data = _params()
    del data["backbone"]["student"]["arch"]
    with pytest.raises(ConfigError, match=r"backbone\.student\.arch: required key is missing"):
        parse_params(data)


def test_yaml_exponent_strings_are_floats():
    params = parse_params(_params(**{"train.lr": "1e-3"}))
    assert params.train.lr == pytest.approx(1e-3)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "params.yaml")
