"""The feature API: a pretrained (or preset) encoder and its features at any depth.

    from megavid.models import load_encoder
    encoder = load_encoder("4ds_b.npz")            # or a preset, a megavid checkpoint, an HF dir
    grid = encoder.features(video, depth=0.95)     # (B, T', H', W', D)

``video`` is (B, T, H, W, C) float in [0, 1] (RGB) for every megavid model: a
model whose ``pixel_norm`` is ``imagenet`` (VideoMAE's) normalises it itself.

Depth follows the official 4DS readout (``EncoderToReadout``): the candidate
features are ``[tokens] + [input of block i for i in 0..L-1]`` (L + 1 entries:
the token embedding twice, then the output of blocks 1..L-1; the last block's
output is not among them) and ``depth`` picks entry ``int((L + 1) * depth) - 1``.
For 4DS-B (L = 12), ``depth=0.95`` is entry 11: the output of block 10 of 12.
``Encoder.blocks_for(depth)`` says how many blocks that is.

The encoder runs in megatron-core's current parallel state: TP shards every
block, PP splits the blocks into equal stages; call ``features`` on every rank
of the model with the same video, and every rank gets the result. Without any
parallel state ``load_encoder`` starts a one-process gloo group itself.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megavid.config import ModelConfig, RunConfig, validate
from megavid.models.mae import VideoMAEChunk
from megavid.models.posembed import INTERPOLATIONS, resize_pos_embed, sincos_table
from megavid.models.presets import PRESETS, ModelArch


class Encoder:
    """This rank's part of an encoder, with the official 4DS readout convention."""

    def __init__(self, chunk: VideoMAEChunk, model_cfg: ModelConfig):
        self.chunk = chunk
        self.model_cfg = model_cfg

    @property
    def arch(self) -> ModelArch:
        return self.chunk.arch

    @property
    def num_layers(self) -> int:
        return self.arch.num_layers

    def blocks_for(self, depth: float) -> int:
        """How many blocks have been applied to the features read at ``depth``."""
        entries = self.num_layers + 1
        index = int(entries * depth) - 1
        if not 0 < depth <= 1 or index < 0:
            raise ValueError(f"depth {depth}: must be in [{1 / entries:.4g}, 1] for "
                             f"{self.num_layers} blocks (entry int({entries} * depth) - 1)")
        return max(index - 1, 0)

    @torch.no_grad()
    def features(self, video: torch.Tensor, depth: float = 0.95, grid: bool = True
                 ) -> torch.Tensor:
        """(B, T, H, W, C) in [0, 1] -> (B, T', H', W', D) if ``grid`` else (B, N, D) tokens."""
        arch = self.arch
        expected = (arch.num_frames, arch.image_size, arch.image_size, arch.channels)
        if video.dim() != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(f"video must be (B, {', '.join(map(str, expected))}) (B, T, H, W, C) "
                             f"for this encoder, got {tuple(video.shape)}; load_encoder("
                             "num_frames=..., image_size=...) adapts the position embedding")
        blocks = self.blocks_for(depth)
        chunk = self.chunk
        device = next(chunk.parameters()).device
        b, n, d = video.shape[0], arch.num_tokens, arch.hidden_size
        hidden = None
        if chunk.pre_process:
            video = video.to(device=device, dtype=chunk.patch_embed.weight.dtype)
            tokens = chunk.embed(video, None)  # (B, N, D)
            hidden = tokens.transpose(0, 1).contiguous()  # [N, B, D]
        hidden = self._run_stages(hidden, blocks, (n, b, d), device,
                                  next(chunk.parameters()).dtype)
        out = hidden.detach().transpose(0, 1)  # (B, N, D), raster order over (T', H', W')
        return out.reshape(b, *arch.grid, d) if grid else out

    def _run_stages(self, hidden, blocks: int, shape, device, dtype) -> torch.Tensor:
        """Apply the first ``blocks`` blocks across the pipeline; every rank gets the result."""
        chunk = self.chunk
        pp = parallel_state.get_pipeline_model_parallel_world_size()
        stage = parallel_state.get_pipeline_model_parallel_rank()
        per_stage = self.num_layers // pp
        owner = (blocks - 1) // per_stage if blocks else 0  # the stage applying the last block
        if 0 < stage <= owner:
            hidden = torch.empty(shape, dtype=dtype, device=device)
            dist.recv(hidden, src=parallel_state.get_pipeline_model_parallel_prev_rank())
        if stage <= owner:
            for i, layer in enumerate(chunk.encoder.layers):
                if chunk.first_encoder_layer + i < blocks:
                    hidden, _ = layer(hidden, attention_mask=None)
            if stage < owner:
                dist.send(hidden.contiguous(),
                          dst=parallel_state.get_pipeline_model_parallel_next_rank())
        if pp == 1:
            return hidden
        group = parallel_state.get_pipeline_model_parallel_group()
        hidden = hidden.contiguous() if stage == owner else torch.empty(shape, dtype=dtype,
                                                                         device=device)
        dist.broadcast(hidden, src=dist.get_global_rank(group, owner), group=group)
        return hidden


# -- loading -------------------------------------------------------------------------------------
def _ensure_parallel_state() -> None:
    """A one-process gloo group and TP=PP=1 when the caller has set up nothing."""
    from megavid.parallel import runtime

    if not parallel_state.model_parallel_is_initialized():
        env = runtime.read_dist_env()
        if dist.is_initialized() and dist.get_world_size() > 1 or env.world_size > 1:
            raise RuntimeError(
                "load_encoder in a multi-process job: initialise the layout first, e.g. "
                "megavid.parallel.runtime.init_distributed(); "
                "runtime.init_model_parallel(tp=2, pp=1, vpp=None)")
        runtime.init_distributed(env=env)
        runtime.init_model_parallel(tp=1, pp=1, vpp=None)
    from megatron.core import tensor_parallel

    tracker = tensor_parallel.get_cuda_rng_tracker()
    if not tracker.get_states():  # megatron's TP init forks this tracker; keep the caller's RNG
        state = torch.get_rng_state()
        tensor_parallel.model_parallel_cuda_manual_seed(0)
        torch.set_rng_state(state)


def _read_source(source, *, weights: bool = True) -> tuple[ModelConfig, dict | None, Path | None]:
    """(model config, whole weights or None, megavid checkpoint dir or None) of ``source``;
    ``weights=False`` reads the configuration only."""
    if isinstance(source, str) and source.lower() in PRESETS:
        return ModelConfig(preset=source.lower()), None, None
    path = Path(source)
    if path.is_file() and path.suffix == ".npz":
        from megavid.models import fourds

        return (*fourds.read_npz(path, weights=weights), None)
    if path.is_dir() and (path / "config.json").is_file():
        from megavid.models import hf_videomae

        return (*hf_videomae.read_hf(path, weights=weights), None)
    if path.is_dir():
        from megavid.config import saved_arch
        from megavid.training.checkpoint_dirs import resolve_load_dir

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
    arch = _read_source(source, weights=False)[0].resolved_arch()
    return arch.replace(num_frames=num_frames or arch.num_frames,
                        image_size=image_size or arch.image_size)


def resize_chunk(chunk: VideoMAEChunk, arch: ModelArch, method: str) -> None:
    """Move ``chunk`` (encoder only) to another clip size: its position table follows."""
    old = chunk.arch
    chunk.arch = arch
    if not chunk.pre_process or old.grid == arch.grid:
        return
    table = chunk.pos_embed
    if chunk.model_cfg.pos_embed == "sincos":
        chunk.pos_embed = sincos_table(arch.num_tokens, arch.hidden_size).to(table.device)
    else:
        resized = resize_pos_embed(table.detach(), old.grid, arch.grid, method)
        chunk.pos_embed = torch.nn.Parameter(resized, requires_grad=table.requires_grad)


def load_encoder(source: str | Path, *, device: str | torch.device = "cpu",
                 num_frames: int | None = None, image_size: int | None = None,
                 interpolation: str = "trilinear", seed: int = 0,
                 model: dict | None = None) -> Encoder:
    """An encoder from a preset name (seeded random weights), a megavid checkpoint
    (save root or ``iter_*``), an official 4DS ``.npz`` or a Hugging Face VideoMAE
    directory, in the current parallel layout (one process if there is none).

    num_frames, image_size: clip size to run at; a learned position table is
    resized with ``interpolation`` (``trilinear`` | ``bicubic``, see
    ``megavid.models.posembed``). seed: weights of a preset. model: ModelConfig
    fields for a preset (e.g. ``{"gelu": "tanh"}``).
    """
    from megavid.models.builder import build_encoder_chunk
    from megavid.parallel.init import initialize_chunk, load_layout_free_state

    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not one of {INTERPOLATIONS}")
    _ensure_parallel_state()
    model_cfg, weights, checkpoint = _read_source(source)
    if model:
        if checkpoint is not None or weights is not None:
            raise ValueError("load_encoder(model=...) applies to presets only; a checkpoint "
                             "carries its own architecture")
        model_cfg = dataclasses.replace(model_cfg, **model)
    validate(RunConfig(model=model_cfg))
    chunk = build_encoder_chunk(model_cfg)
    if weights is not None:
        load_layout_free_state(chunk, weights)
    elif checkpoint is not None:
        from megavid.training.checkpoint import load_weights

        load_weights([chunk], checkpoint)
    else:
        initialize_chunk(chunk, seed=seed, std=model_cfg.init_std)
    arch = chunk.arch.replace(num_frames=num_frames or chunk.arch.num_frames,
                              image_size=image_size or chunk.arch.image_size)
    if arch != chunk.arch:
        validate(RunConfig(model=dataclasses.replace(
            model_cfg, arch={**model_cfg.arch, "num_frames": arch.num_frames,
                             "image_size": arch.image_size})))
        resize_chunk(chunk, arch, interpolation)
    chunk.to(device).eval()
    return Encoder(chunk, model_cfg)
