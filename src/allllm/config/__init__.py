"""Run configuration: pydantic models for ``configs/<name>.json`` and their lookup.

One import point, so callers need not know which submodule holds a name: the
models are in ``sections``, reading files and finding configs and presets in
``files``, the one-line wording of validation errors in ``explain``. It stays
light (pydantic only, no torch) so ``allllm config`` starts fast. The contract for every
key is in docs/design.md (config), the lookup rules in its workspace section.
"""

from __future__ import annotations

from allllm.config.explain import describe_validation_error
from allllm.config.files import (
    CONFIG_DIR,
    ConfigSource,
    find_config,
    init_config,
    iter_known_configs,
    load_config,
    load_config_file,
    local_config_paths,
    parse_config,
    preset_names,
    read_json_file,
)
from allllm.config.sections import (
    ARCH_DEFAULTS,
    NAME_PATTERN,
    Config,
    DataConfig,
    ModelConfig,
    TokenizerConfig,
    TrainConfig,
    default_intermediate_size,
    is_tiktoken_file,
    parse_duration,
)

__all__ = [
    "ARCH_DEFAULTS",
    "CONFIG_DIR",
    "NAME_PATTERN",
    "Config",
    "ConfigSource",
    "DataConfig",
    "ModelConfig",
    "TokenizerConfig",
    "TrainConfig",
    "default_intermediate_size",
    "describe_validation_error",
    "find_config",
    "init_config",
    "is_tiktoken_file",
    "iter_known_configs",
    "load_config",
    "load_config_file",
    "local_config_paths",
    "parse_config",
    "parse_duration",
    "preset_names",
    "read_json_file",
]
