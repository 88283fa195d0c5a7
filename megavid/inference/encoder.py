"""The feature API: a pretrained (or preset) encoder and its features at any depth.

    from megavid.inference import load_encoder
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
from megatron.core import parallel_state

from megavid.config import ModelArch, ModelConfig, RunConfig, StageMap, validate
from megavid.inference.sources import read_source
from megavid.models.builder import build_encoder_chunk
from megavid.models.initialization import initialize_chunk
from megavid.models.layout_free import load_layout_free_state
from megavid.models.mae import VideoMAEChunk
from megavid.models.posembed import INTERPOLATIONS, resize_pos_embed, sincos_table
from megavid.parallel import runtime
from megavid.parallel.relay import relay_forward
from megavid.training.checkpoint import load_weights


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
        owner = StageMap(self.num_layers, pp).owner(blocks - 1)[0] if blocks else 0

        def run_stage(hidden):
            for i, layer in enumerate(chunk.encoder.layers):
                if chunk.first_encoder_layer + i < blocks:
                    hidden, _ = layer(hidden, attention_mask=None)
            return hidden

        return relay_forward(hidden, run_stage, last_stage=owner, shape=shape, dtype=dtype,
                             device=device)


# -- loading -------------------------------------------------------------------------------------
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
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not one of {INTERPOLATIONS}")
    runtime.ensure_model_parallel("load_encoder")
    model_cfg, weights, checkpoint = read_source(source)
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
