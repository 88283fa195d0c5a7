"""Pure definitions: the preset table, the run-config schema, the stage map and the pre-flight.

The bottom layer: it imports nothing else of megavid, so every layer above
(models, parallel, data, training, the entry points) reads sizes, fields and
rules from here. ``preflight`` runs every cross-field and machine rule once,
before any process group exists.
"""

from megavid.config.loading import config_from_dict, load_config
from megavid.config.preflight import Layout, LayoutError, Machine, preflight, validate
from megavid.config.presets import (
    PRESETS,
    ModelArch,
    count_parameters,
    get_preset,
    num_decoded,
    num_visible,
)
from megavid.config.schema import (
    ARCH_FIELDS,
    CheckpointConfig,
    ConfigError,
    DataConfig,
    LogConfig,
    ModelConfig,
    ParallelConfig,
    RunConfig,
    TrainConfig,
    has_validation,
)
from megavid.config.stages import StageMap

__all__ = [
    "ARCH_FIELDS", "CheckpointConfig", "ConfigError", "DataConfig", "Layout", "LayoutError",
    "LogConfig", "Machine", "ModelArch", "ModelConfig", "PRESETS", "ParallelConfig", "RunConfig",
    "StageMap", "TrainConfig", "config_from_dict", "count_parameters", "get_preset",
    "has_validation", "load_config", "num_decoded", "num_visible", "preflight", "validate",
]
