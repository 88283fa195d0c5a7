"""GPU-only checks: Transformer Engine spec (bf16, FP8), NCCL parity, DALI mixed decoding.

Skipped without CUDA (see conftest.py). On a GPU node: ``python -m pytest -m gpu -ra``.
"""

from __future__ import annotations

import pytest
import torch

from megavid.config.fp8 import RECIPES, recipe_problem
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
    """Same weights (initialisation speaks the local names for both backends), BF16: the
    losses and grad norms of 3 steps agree to BF16 kernel differences."""
    _needs_te()
    local = launch.pretrain(tmp_path / "local", 1, *COMMON, "--bf16", "--transformer-impl", "local")
    te = launch.pretrain(tmp_path / "te", 1, *COMMON, *TE)
    assert _losses(te) == pytest.approx(_losses(local), rel=2e-2)
    assert [r["grad_norm"] for r in te] == pytest.approx([r["grad_norm"] for r in local],
                                                          rel=5e-2)


# FP8 GEMM widths must be multiples of 16 (MXFP8: 32): a wider tiny model. Its 13 visible
# tubelets per clip (mask 0.8) are padded by the FP8 rule (megavid/config/fp8.py).
WIDE = ("--set", "model.arch={hidden_size: 128, ffn_hidden_size: 512, "
        "decoder_hidden_size: 64, decoder_ffn_hidden_size: 256}")
TE = ("--bf16", "--transformer-impl", "transformer_engine")


def _supported_recipes() -> list[str]:
    capability = tuple(torch.cuda.get_device_capability())
    return [r for r in RECIPES if recipe_problem(r, capability, torch.version.cuda) is None]


@pytest.mark.parametrize("recipe", ["delayed", "tensorwise", "blockwise", "mxfp8"])
def test_te_fp8_step_per_recipe_tracks_bf16(tmp_path, launch, recipe):
    _needs_te()
    if recipe not in _supported_recipes():
        pytest.skip(f"this GPU cannot run --fp8-recipe {recipe}")
    bf16 = launch.pretrain(tmp_path / "bf16", 1, *COMMON, *WIDE, *TE)
    fp8 = launch.pretrain(tmp_path / "fp8", 1, *COMMON, *WIDE, *TE, "--fp8", "hybrid",
                          "--fp8-recipe", recipe)
    assert _losses(fp8) == pytest.approx(_losses(bf16), rel=5e-2)


def test_te_fp8_padding_changes_little(tmp_path, launch):
    """Padded rows are masked out of attention and dropped, but under FP8 they enter the
    amax of their GEMMs' inputs: equal up to FP8 rounding, not bit for bit."""
    _needs_te()
    if not _supported_recipes():
        pytest.skip("this GPU has no FP8")
    fp8 = (*TE, "--fp8", "hybrid", "--fp8-recipe", _supported_recipes()[0])
    auto = launch.pretrain(tmp_path / "auto", 1, *COMMON, *WIDE, *fp8)
    wide = launch.pretrain(tmp_path / "wide", 1, *COMMON, *WIDE, *fp8,
                           "--set", "model.pad_to_multiple_of=64")
    assert _losses(wide) == pytest.approx(_losses(auto), rel=2e-2)


def test_te_fp8_checkpoint_loads_into_the_local_spec(tmp_path, launch):
    """Train 2 steps with TE + FP8 and --save; the local spec reads the checkpoint (as eval
    and convert do) with the same weights, and says it dropped the FP8 state."""
    _needs_te()
    if not _supported_recipes():
        pytest.skip("this GPU has no FP8")
    save = tmp_path / "ckpt"
    launch.pretrain(tmp_path / "te", 1, *COMMON, *WIDE, *TE, "--fp8", "hybrid",
                    "--fp8-recipe", _supported_recipes()[0], "--train-iters", "2",
                    "--save", str(save))
    result = launch.run("-c", _LOAD_LOCAL.format(save=save), check=True, timeout=300)
    assert "FP8 scaling state" in result.stderr and "dropped" in result.stderr
    assert "max_abs_diff 0.0" in result.stdout
    rel = float(result.stdout.split("features_rel_diff")[1].split()[0])
    assert rel < 0.1  # TE FP8 vs the local spec in fp32 on the same weights


_LOAD_LOCAL = """
import torch
from megavid.config import load_config
from megavid.models.builder import build_model_chunks
from megavid.models.layout_free import layout_free_state
from megavid.models.masking import make_masks
from megavid.parallel import runtime
from megavid.training.checkpoint import load_weights
from megavid.training.checkpoint_dirs import resolve_load_dir
from megavid.training.common_state import read_common

runtime.ensure_model_parallel("test")
directory, _ = resolve_load_dir("{save}", fallback=False)
saved = read_common(directory)["config"]
model = {{"model.preset": "tiny", "model.arch": saved["model"]["arch"], "model.mask_ratio": 0.8}}
fp8 = {{"train.fp8": "hybrid", "train.fp8_recipe": saved["train"]["fp8_recipe"]}}
te = build_model_chunks(load_config(overrides={{**model, **fp8}}),
                        backend="transformer_engine")[0].cuda().eval()
load_weights([te], directory)  # same backend, FP8: its scaling state is restored
local = build_model_chunks(load_config(overrides=model), backend="local")[0].cuda().eval()
load_weights([local], directory)  # the local spec: FP8 state dropped, one line
a, b = layout_free_state([te]), layout_free_state([local])
assert a.keys() == b.keys()
print("max_abs_diff", max(float((a[k] - b[k]).abs().max()) for k in a))
arch = local.arch
video = torch.rand(2, arch.num_frames, arch.image_size, arch.image_size, 3, device="cuda")
ids_keep, _ = make_masks(torch.tensor([3, 4]), grid=arch.grid, mask_ratio=0.8, masking="random",
                         seed=0)
with torch.no_grad():
    x, y = te(video, ids_keep.cuda()).float(), local(video, ids_keep.cuda()).float()
print("features_rel_diff", float((x - y).norm() / y.norm()))
"""


def test_cuda_graphs_do_not_change_the_losses(tmp_path, launch):
    """megatron-core's per-layer graphs (captured after cuda_graph_warmup_steps = 3) replay
    the same kernels: steps 1-6 as eager."""
    _needs_te()
    six = ("--train-iters", "6")
    eager = launch.pretrain(tmp_path / "eager", 1, *COMMON, *TE, *six)
    graphs = launch.pretrain(tmp_path / "graphs", 1, *COMMON, *TE, *six,
                             "--cuda-graph-impl", "local")
    assert _losses(graphs) == pytest.approx(_losses(eager), rel=1e-4)
    assert [r["grad_norm"] for r in graphs] == pytest.approx([r["grad_norm"] for r in eager],
                                                             rel=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_tp_comm_overlap_does_not_change_the_losses(tmp_path, launch):
    """TE userbuffers (the encoder's TP collectives under its GEMMs) compute the same sums."""
    _needs_te()
    tp2 = (*COMMON, *WIDE, *TE, "--tp", "2", "--sp")
    plain = launch.pretrain(tmp_path / "plain", 2, *tp2)
    overlap = launch.pretrain(tmp_path / "overlap", 2, *tp2, "--tp-comm-overlap")
    assert _losses(overlap) == pytest.approx(_losses(plain), rel=1e-3)


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
