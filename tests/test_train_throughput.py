"""What a training step costs: saved-activation accounting, and adapters against full
fine-tuning measured on the real training step."""

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from pipeline import adapters
from pipeline.config import ConfigError, TrainConfig, parse_params
from pipeline.train.loop import cross_entropy
from pipeline.train.throughput import MIB, Workload, measure_training, saved_activation_bytes
from pipeline.training_benchmark import workload

ROOT = Path(__file__).resolve().parents[1]
RECIPE = TrainConfig(lr=1e-3, amp=False)


def test_saved_activations_are_what_autograd_keeps_for_backward():
    net = nn.Sequential(nn.Linear(16, 8), nn.ReLU())
    x = torch.randn(32, 16)
    # the Linear keeps its input (for its weight's gradient), the ReLU its output
    assert saved_activation_bytes(net, lambda: net(x).sum()) == 32 * 16 * 4 + 32 * 8 * 4
    assert net[0].weight.grad is None  # the accounting leaves no gradient behind
    net[0].requires_grad_(False)
    x.requires_grad_(True)
    # frozen: the input is no longer needed, only the ReLU's output is
    assert saved_activation_bytes(net, lambda: net(x).sum()) == 32 * 8 * 4


def _measure(model: nn.Module) -> dict:
    return measure_training(
        Workload(model, cross_entropy), RECIPE, 8, 16, 4, warmup=1, steps=2, device="cpu"
    )


def test_adapters_train_in_less_memory_than_full_fine_tuning(tiny_vit):
    torch.manual_seed(0)
    full = _measure(tiny_vit().requires_grad_(True))
    lora = _measure(adapters.inject(tiny_vit(), "lora", rank=2))
    for row in (full, lora):
        assert row["memory_source"] == "accounted"
        assert row["images_per_s"] > 0 and row["step_p50_ms"] > 0
        parts = ("weights", "gradients", "optimizer", "activations")
        assert row["peak_memory_mib"] == pytest.approx(sum(row[f"{p}_mib"] for p in parts))
    assert full["params_trainable"] == full["params_total"]
    # AdamW keeps two moments per trained weight (and a step count per tensor)
    assert full["optimizer_mib"] == pytest.approx(2 * full["gradients_mib"], rel=0.02)
    assert full["gradients_mib"] == pytest.approx(full["params_total"] * 4 / MIB)
    assert lora["gradients_mib"] == pytest.approx(lora["params_trainable"] * 4 / MIB)
    assert lora["params_trainable"] < full["params_trainable"] / 2
    assert lora["peak_memory_mib"] < full["peak_memory_mib"]


def _params(training: dict):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["benchmark"]["training"] = training
    return parse_params(data)


def test_the_benchmark_builds_each_method_as_it_trains():
    params = _params(
        {
            "model": {"arch": "vit_tiny_patch16_224", "kwargs": {"depth": 2}},
            "idat_teacher": {"arch": "vit_tiny_patch16_224", "kwargs": {"depth": 1}},
            "image_size": 32,
            "num_classes": 3,
        }
    )
    full = workload(params, "full")
    assert all(p.requires_grad for p in full.model.parameters())
    arc = workload(params, "arc").model
    assert arc.adapter_spec["method"] == "arc" and not arc.blocks[0].attn.qkv.weight.requires_grad
    pair = workload(params, "idat").model
    # both models carry the adapters and both train, the larger one is the student
    assert len(pair.student.blocks) == 2 and len(pair.teacher.blocks) == 1
    groups = [[p for p in m.parameters() if p.requires_grad] for m in pair.param_group_modules()]
    assert all(groups)
    row = measure_training(
        workload(params, "idat"), RECIPE, 4, 32, 3, warmup=1, steps=1, device="cpu"
    )
    assert row["params_trainable"] == sum(p.numel() for g in groups for p in g)


def test_an_unknown_benchmark_method_is_a_config_error():
    with pytest.raises(ConfigError, match=r"benchmark\.training: unknown method 'bitfit'"):
        _params({"methods": ["full", "bitfit"]})
    with pytest.raises(ConfigError, match=r"idat_method: 'full' is not an adapter method"):
        _params({"idat_method": "full"})
