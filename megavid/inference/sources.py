"""Where an encoder comes from: a preset, a megavid checkpoint, a 4DS .npz or an HF directory.

Each source reads as (ModelConfig, whole weights or None, checkpoint dir or None),
without building a model, so that a run whose features are cached learns the
clip shape from a few headers (for 4DS-j: instead of 88 GB).
"""

from __future__ import annotations

from pathlib import Path

from megavid.config import PRESETS, ModelArch, ModelConfig
from megavid.models import fourds, hf_videomae
from megavid.training.checkpoint_dirs import resolve_load_dir
from megavid.training.common_state import saved_arch


def read_source(source, *, weights: bool = True) -> tuple[ModelConfig, dict | None, Path | None]:
    """(model config, whole weights or None, megavid checkpoint dir or None) of ``source``;
    ``weights=False`` reads the configuration only."""
    if isinstance(source, str) and source.lower() in PRESETS:
        return ModelConfig(preset=source.lower()), None, None
    path = Path(source)
    if path.is_file() and path.suffix == ".npz":
        return (*fourds.read_npz(path, weights=weights), None)
    if path.is_dir() and (path / "config.json").is_file():
        return (*hf_videomae.read_hf(path, weights=weights), None)
    if path.is_dir():
        directory, _ = resolve_load_dir(path, fallback=False)
        arch = saved_arch(directory)
        if not arch:
            raise ValueError(f"{directory}: no model config in its common state")
        return ModelConfig(**arch), None, directory
    raise FileNotFoundError(
        f"load_encoder: {source!r} is not a preset ({', '.join(PRESETS)}), a 4DS .npz file, a "
        "Hugging Face VideoMAE directory (config.json) or a megavid checkpoint directory")


def source_arch(source: str | Path, *, num_frames: int | None = None,
                image_size: int | None = None) -> ModelArch:
    """The architecture ``load_encoder(source, ...)`` builds, read without the weights.

    An evaluation whose features are cached needs the clip shape, not the model: for
    4DS-j that is the difference between reading a few headers and 88 GB.
    """
    arch = read_source(source, weights=False)[0].resolved_arch()
    return arch.replace(num_frames=num_frames or arch.num_frames,
                        image_size=image_size or arch.image_size)
