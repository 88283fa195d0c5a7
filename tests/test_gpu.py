"""GPU-only checks: Transformer Engine spec (bf16, FP8), NCCL parity, DALI mixed decoding.

Skipped without CUDA (see conftest.py). On a GPU node: ``python -m pytest -m gpu -ra``.
"""

from __future__ import annotations

import pytest
import torch

from megavid.data.dali import AutoDecoder, DALIDecoder
from megavid.data.decode import PyAVDecoder

pytestmark = pytest.mark.gpu

COMMON = ("--preset", "tiny", "--set", "data.mock=true", "--set", "model.norm_pix_loss=true",
          "--set", "log.tensorboard=false",
          "--set", "log.plot=false", "--train-iters", "3", "--lr-warmup-iters", "1",
          "--mask-ratio", "0.8", "--global-batch-size", "8", "--micro-batch-size", "2")


def _needs_te():
    pytest.importorskip("transformer_engine.pytorch", reason="Transformer Engine not installed")


def _losses(rows):
    return [row["loss"] for row in rows]


def test_te_spec_matches_local_spec_in_bf16(tmp_path, launch):
    _needs_te()
    local = launch.pretrain(tmp_path / "local", 1, *COMMON, "--bf16", "--transformer-impl", "local")
    te = launch.pretrain(tmp_path / "te", 1, *COMMON, "--bf16", "--transformer-impl",
                         "transformer_engine")
    assert _losses(te) == pytest.approx(_losses(local), rel=2e-2)


def test_te_fp8_tracks_bf16(tmp_path, launch):
    _needs_te()
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs Ada/Hopper or newer")
    # FP8 GEMMs need dimensions divisible by 16: a wider tiny model
    arch = ("--set", "model.arch={hidden_size: 128, ffn_hidden_size: 512, "
            "decoder_hidden_size: 64, decoder_ffn_hidden_size: 256}")
    bf16 = launch.pretrain(tmp_path / "bf16", 1, *COMMON, *arch, "--bf16",
                           "--transformer-impl", "transformer_engine")
    fp8 = launch.pretrain(tmp_path / "fp8", 1, *COMMON, *arch, "--bf16", "--fp8", "hybrid",
                          "--transformer-impl", "transformer_engine")
    assert _losses(fp8) == pytest.approx(_losses(bf16), rel=5e-2)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_nccl_tp2_sp_matches_single_gpu(tmp_path, launch):
    single = launch.pretrain(tmp_path / "one", 1, *COMMON, "--transformer-impl", "local")
    tp2 = launch.pretrain(tmp_path / "tp2", 2, *COMMON, "--transformer-impl", "local", "--tp", "2",
                          "--sp")
    assert _losses(tp2) == pytest.approx(_losses(single), rel=1e-4)


def test_dali_mixed_decoding_matches_pyav(tmp_path, launch):
    dali = pytest.importorskip("nvidia.dali", reason="DALI not installed")
    import av
    import numpy as np
    from nvidia.dali import fn, pipeline_def

    path = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    frames = [np.clip(rng.normal(128, 40, (1, 1, 3)) + np.linspace(0, 60, 128)[None, :, None]
                      + 3 * i, 0, 255).astype(np.uint8).repeat(96, 0) for i in range(24)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        stream.options = {"g": "8", "crf": "12"}
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    with av.open(str(path)) as container:
        reference = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])

    @pipeline_def(batch_size=1, num_threads=2, device_id=0)
    def pipe():
        return fn.readers.video(device="gpu", filenames=[str(path)], sequence_length=16,
                                random_shuffle=False, name="reader")

    p = pipe()
    p.build()
    (video,) = p.run()
    decoded = np.asarray(video.as_cpu()[0])  # (16, H, W, 3)
    assert decoded.shape == (16, 96, 128, 3)
    assert np.abs(decoded.astype(int) - reference[:16].astype(int)).mean() < 3.0
    del dali


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_dali_gpu_decoder_matches_pyav(tmp_path, launch, codec):
    """megavid's DALIDecoder on NVDEC ("mixed"): chosen frames, any order, vs PyAV."""
    pytest.importorskip("nvidia.dali", reason="DALI not installed")
    import numpy as np

    from tests.data.helpers import ramp_frames, write_video

    clip = write_video(tmp_path / f"clip.{'webm' if codec == 'vp9' else 'mp4'}",
                       ramp_frames(32, 96, 128), codec=codec)
    indices = [0, 5, 17, 17, 31, 2]
    reference = PyAVDecoder().decode(clip, indices).astype(int)  # (6, H, W, 3)
    decoded = DALIDecoder(device="mixed").decode(clip, indices).astype(int)
    assert decoded.shape == reference.shape
    assert np.abs(decoded - reference).mean() < 3.0
    assert AutoDecoder().dali.device == "mixed"
