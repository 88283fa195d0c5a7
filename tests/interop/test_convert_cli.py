"""The converter's command line end to end, and what `pretrain --load` does with its output."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from megavid.features import main as features_main
from megavid.inference import load_encoder
from megavid.models.fourds import split_qkv
from megavid.models.layout_free import layout_free_state
from megavid.parallel import runtime
from megavid.tools.convert import main as convert_main
from megavid.tools.convert import read_megavid
from tests.interop.helpers import make_fourds_npz

DECODER = ["--decoder", "decoder_hidden_size=16", "--decoder", "decoder_num_layers=2",
           "--decoder", "decoder_ffn_hidden_size=32", "--decoder", "decoder_num_attention_heads=2"]
TRAIN = ("--set", "data.mock=true", "--set", "log.tensorboard=false", "--set", "log.plot=false",
         "--global-batch-size", "2", "--micro-batch-size", "1", "--mask-ratio", "0.5")


def pretrain(launch, tmp_path, name, *args):
    log_dir = tmp_path / name
    proc = launch.run("-m", "megavid.pretrain", "--log-dir", str(log_dir), *TRAIN, *args,
                      timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = " ".join(proc.stdout.split())  # rich wraps long lines
    rows = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    return out, rows


def test_help_shows_the_released_4ds_commands(launch):
    proc = launch.run("-m", "megavid.tools.convert", "--help", timeout=60)
    assert proc.returncode == 0
    for text in ("--from 4ds-npz --to megavid scaling4d_dist_b.npz",
                 "--from 4ds-npz --to megavid scaling4d_e.npz ckpt/4ds_e --tp 4 --pp 2",
                 "scaling4d_dist_b_depth.npz", "--from megavid --to 4ds-npz",
                 "--from hf-videomae --to megavid", "--from megavid --to hf-videomae"):
        assert text in proc.stdout, text


@pytest.mark.slow  # 36-43 s on 2 cores: three runs and two conversions
def test_npz_to_megavid_trains_and_exports_back(tmp_path, launch):
    """npz -> megavid (CLI) -> pretrain --load (weights only, arch from the checkpoint) -> npz."""

    npz = make_fourds_npz(tmp_path / "model.npz", layers=4)
    ckpt = tmp_path / "ckpt"
    assert convert_main(["--from", "4ds-npz", "--to", "megavid", str(npz), str(ckpt),
                         *DECODER]) == 0
    # lr 0: the trained checkpoint must hold the converted weights exactly; the demo config
    # (exact GELU, another preset) is overridden by the architecture saved in the checkpoint
    save = tmp_path / "save"
    out, rows = pretrain(launch, tmp_path, "run", "--load", str(ckpt), "--save", str(save),
                         "--train-iters", "1", "--lr-warmup-iters", "0", "--lr", "0",
                         "--set", "train.min_lr=0")
    assert "(the checkpoint holds weights only): starting at step 0" in out
    assert [r["step"] for r in rows] == [1]
    assert convert_main(["--from", "megavid", "--to", "4ds-npz", str(save),
                         str(tmp_path / "b.npz")]) == 0
    with np.load(npz) as a, np.load(tmp_path / "b.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        assert all(np.array_equal(a[k], b[k]) for k in a.files)
    video = torch.rand(1, 4, 24, 24, 3)
    assert torch.equal(load_encoder(npz).features(video), load_encoder(save).features(video))

    # --finetune: a full training checkpoint, weights only, from step 0; in bf16 the optimizer's
    # fp32 main weights must follow the loaded ones (lr 0: bf16 of the weights, exactly)
    out, rows = pretrain(launch, tmp_path, "finetune", "--load", str(save), "--finetune", "--bf16",
                         "--save", str(tmp_path / "bf16"), "--train-iters", "1",
                         "--lr-warmup-iters", "0", "--lr", "0", "--set", "train.min_lr=0")
    assert "(--finetune): starting at step 0" in out and [r["step"] for r in rows] == [1]
    want = layout_free_state([load_encoder(npz).chunk])
    got = layout_free_state([load_encoder(tmp_path / "bf16").chunk])
    assert all(torch.equal(want[k].bfloat16().float(), got[k]) for k in want)


def test_broken_npz_fails_naming_the_key(tmp_path, capsys):
    npz = make_fourds_npz(tmp_path / "model.npz", layers=2)
    with np.load(npz) as f:
        arrays = dict(f)
    arrays["params/processor/layers_1/attention/query/kernel"] = np.zeros((32, 4, 7), np.float32)
    np.savez(tmp_path / "bad.npz", **arrays)
    code = convert_main(["--from", "4ds-npz", "--to", "megavid", str(tmp_path / "bad.npz"),
                         str(tmp_path / "out")])
    assert code == 2
    assert ("params/processor/layers_1/attention/query/kernel: shape (32, 4, 7), expected "
            "(32, 4, 8)") in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # ~15 s: convert, then train
def test_hf_model_continues_pretraining_with_k_bias_held_at_zero(tmp_path, launch):
    """HF VideoMAE -> megavid; training keeps the absent k bias at exactly 0; -> HF again."""
    transformers = pytest.importorskip("transformers")

    torch.manual_seed(0)
    config = transformers.VideoMAEConfig(
        image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=48, decoder_hidden_size=16,
        decoder_num_hidden_layers=2, decoder_num_attention_heads=2, decoder_intermediate_size=32,
        use_mean_pooling=False)
    transformers.VideoMAEForPreTraining(config).save_pretrained(tmp_path / "hf")
    ckpt, save = tmp_path / "ckpt", tmp_path / "save"
    assert convert_main(["--from", "hf-videomae", "--to", "megavid", str(tmp_path / "hf"),
                         str(ckpt)]) == 0
    pretrain(launch, tmp_path, "run", "--load", str(ckpt), "--save", str(save),
             "--train-iters", "3", "--lr-warmup-iters", "0",
             "--set", "model.norm_pix_style=videomae")
    model_cfg, state = read_megavid_in_process(save)
    assert model_cfg.qkv_bias == "qv" and model_cfg.pos_embed == "sincos"
    _, before = read_megavid_in_process(ckpt)
    for name, bias in state.items():
        if name.endswith("linear_qkv.bias"):
            heads = 4 if name.startswith("encoder") else 2
            q, k, v = split_qkv(bias, heads)
            assert torch.count_nonzero(k) == 0, name
            assert not torch.equal(bias, before[name]), name  # q and v did train
    assert convert_main(["--from", "megavid", "--to", "hf-videomae", str(save),
                         str(tmp_path / "hf_out")]) == 0
    assert (tmp_path / "hf_out" / "config.json").is_file()


def read_megavid_in_process(path):
    runtime.init_distributed()
    runtime.init_model_parallel(tp=1, pp=1, vpp=None)
    try:
        return read_megavid(path)
    finally:
        runtime.shutdown()


def test_features_cli_writes_the_encoder_features(tmp_path):
    import av


    npz = make_fourds_npz(tmp_path / "model.npz", layers=2)
    frames = (np.random.default_rng(0).random((4, 24, 24, 3)) * 255).astype(np.uint8)
    np.save(tmp_path / "clip.npy", frames)  # already the model's clip size: no resampling
    assert features_main([str(tmp_path / "clip.npy"), "--ckpt", str(npz), "--depth", "1"]) == 0
    got = np.load(tmp_path / "clip.npy.features.npy")
    want = load_encoder(npz).features(torch.from_numpy(frames).float().div(255)[None], depth=1.0)
    assert got.shape == (2, 3, 3, 32) and np.array_equal(got, want[0].numpy())

    with av.open(str(tmp_path / "clip.mp4"), mode="w") as container:  # a real video file
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for i in range(10):
            image = np.full((32, 48, 3), 20 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out = tmp_path / "f.npy"
    assert features_main([str(tmp_path / "clip.mp4"), "--ckpt", str(npz), "--stride", "2",
                          "--tokens", "--out", str(out)]) == 0
    assert np.load(out).shape == (18, 32) and np.isfinite(np.load(out)).all()
    assert features_main([str(tmp_path / "clip.mp4"), "--ckpt", str(npz), "--start", "8"]) == 2
