"""Reading a run config: a YAML file, then --load's saved architecture, then flags.

Parsing is the schema's (``megavid.config.schema``), checking the pre-flight's
``validate``: a config that loads is one every rule without a world size accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import yaml

from megavid.config.preflight import validate
from megavid.config.schema import RunConfig, from_dict


def config_from_dict(data: dict) -> RunConfig:
    """A validated RunConfig from ``RunConfig.to_dict()``'s form (a checkpoint's config)."""
    cfg = from_dict(RunConfig, data, "")
    validate(cfg)
    return cfg


def load_config(path: Optional[str | Path] = None, overrides: Optional[dict] = None, *,
                saved_model: Optional[Callable[[str], dict]] = None) -> RunConfig:
    """YAML file (optional) + dotted overrides like {"parallel.tensor_model_parallel_size": 2}.

    ``saved_model(load)``: the ARCH_FIELDS a checkpoint was saved with ({} if unreadable);
    given it, --load restores that architecture over the YAML's model section, and
    explicit flags still win
    (``megavid.training.common_state.saved_arch``: reading checkpoints is training's job).
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--config: no such file {path}")
        data = yaml.safe_load(path.read_text()) or {}
    # --load restores the architecture the checkpoint was saved with; explicit flags still win
    load = (overrides or {}).get("checkpoint.load") or (data.get("checkpoint") or {}).get("load")
    if load and saved_model is not None:
        arch = saved_model(load)
        if arch:
            data["model"] = {**(data.get("model") or {}), **arch}
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})
        if data[section] is None:
            data[section] = {}
        data[section][key] = value
    cfg = from_dict(RunConfig, data, "")
    validate(cfg)
    return cfg
