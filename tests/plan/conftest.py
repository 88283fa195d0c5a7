"""One-rank gloo group shared by the perf tests, and a builder for real model chunks."""

from __future__ import annotations

import os

import pytest
import torch

from megavid.config import load_config
from megavid.models.builder import build_model_chunks
from megavid.models.initialization import initialize_chunk
from megavid.models.masking import make_masks
from megavid.parallel import runtime
from tests.conftest import free_port


@pytest.fixture(scope="package")
def one_rank():
    """Initialise megatron-core's parallel state once for tp=pp=1."""

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    runtime.init_distributed()
    runtime.init_model_parallel(tp=1, pp=1, vpp=None)
    yield
    runtime.shutdown()


@pytest.fixture()
def build_chunk(one_rank):
    """build(preset, mask_ratio) -> (cfg, arch, chunk, video_and_masks(batch))."""

    def build(preset: str, mask_ratio: float = 0.75, **overrides):
        runtime.set_seed(3)
        cfg = load_config(overrides={"model.preset": preset, "model.mask_ratio": mask_ratio,
                                     **overrides})
        (chunk,) = build_model_chunks(cfg)
        initialize_chunk(chunk, seed=3, std=0.02)
        arch = cfg.model.resolved_arch()

        def inputs(batch: int):
            video = torch.rand(batch, arch.num_frames, arch.image_size, arch.image_size, 3)
            ids_keep, mask = make_masks(torch.arange(batch), grid=arch.grid,
                                        mask_ratio=mask_ratio, masking="random", seed=1)
            return video, ids_keep, mask

        return cfg, arch, chunk, inputs

    return build
