"""The Triton kernels inside a real training run (CPU interpreter) match the PyTorch path.

The run uses decoder masking, the kernels' most general use: the tubelet gather for the
encoder's tokens and for the loss's targets on the decoder's subset, the mask-token scatter
into that subset (not the whole grid), and the loss over part of it."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")

ARGS = ("--preset", "tiny", "--set", "data.mock=true", "--set", "model.norm_pix_loss=true",
        "--set", "log.tensorboard=false", "--set", "log.plot=false", "--train-iters", "2",
        "--lr-warmup-iters", "1", "--mask-ratio", "0.8", "--decoder-mask-ratio", "0.5")


@pytest.mark.slow  # ~32 s: two trainings, one in the Triton interpreter
def test_triton_kernels_train_like_the_reference(tmp_path, launch):
    torch_rows = launch.pretrain(tmp_path / "torch", 1, *ARGS, "--set", "model.kernels=torch")
    triton_rows = launch.pretrain(tmp_path / "triton", 1, *ARGS, "--set", "model.kernels=triton",
                                  env={"TRITON_INTERPRET": "1"})
    for ref, got in zip(torch_rows, triton_rows):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
