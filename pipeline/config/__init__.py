"""Typed, validated parameters read from params.yaml.

schema: every section as a frozen model with its field checks (light: no torch); loading:
parse_params/load_params/override/key_value, any bad key or value one ConfigError naming its
dotted key;
checks: the checks across sections and against the registries (timm, adapters, variants).
"""

from pipeline.config.loading import key_value, load_params, override, parse_params, validate
from pipeline.config.schema import (
    REFERENCE_ARTEFACTS,
    ArchConfig,
    BackboneConfig,
    BenchmarkConfig,
    CodaConfig,
    ConfigError,
    ContinualConfig,
    DataConfig,
    DistillConfig,
    DualPromptConfig,
    ExportConfig,
    IdatConfig,
    KDConfig,
    L2PConfig,
    LoadConfig,
    MergeConfig,
    Params,
    PretrainConfig,
    ReferenceConfig,
    ServingConfig,
    TrainConfig,
    TrainingBenchConfig,
    WecoloraConfig,
)

__all__ = [
    "REFERENCE_ARTEFACTS",
    "ArchConfig",
    "BackboneConfig",
    "BenchmarkConfig",
    "CodaConfig",
    "ConfigError",
    "ContinualConfig",
    "DataConfig",
    "DistillConfig",
    "DualPromptConfig",
    "ExportConfig",
    "IdatConfig",
    "KDConfig",
    "L2PConfig",
    "LoadConfig",
    "MergeConfig",
    "Params",
    "PretrainConfig",
    "ReferenceConfig",
    "ServingConfig",
    "TrainConfig",
    "TrainingBenchConfig",
    "WecoloraConfig",
    "key_value",
    "load_params",
    "override",
    "parse_params",
    "validate",
]
