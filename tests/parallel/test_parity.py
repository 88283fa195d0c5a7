"""Every parallel layout trains the same model as one process (fp32, 3 optimizer steps).

The named layouts follow torchtitan's habit of listing parallelism combinations
by name. The tiny preset has 6 encoder + 2 decoder layers, so pp=2 cuts inside
the encoder-decoder transition chunk and pp2_vpp2 puts it on a chunk boundary;
mask ratio 0.8 leaves 13 visible tubelets, so tp=2 with SP pads to 14; forcing a
padding of 16 (what FP8 needs) or 48 must change nothing.
"""

from __future__ import annotations

import pytest

COMMON = ("--preset", "tiny", "--set", "data.mock=true", "--set", "model.norm_pix_loss=true",
          "--set", "log.tensorboard=false",
          "--set", "log.plot=false", "--train-iters", "3", "--lr-warmup-iters", "1",
          "--mask-ratio", "0.8", "--global-batch-size", "8", "--micro-batch-size", "2")

LAYOUTS = {
    "tp2_sp": (2, ("--tp", "2", "--sp")),
    "pp2": (2, ("--pp", "2")),
    "pp2_vpp2": (2, ("--pp", "2", "--vpp", "2")),
    "dp2": (2, ()),
    "dp2_distopt": (2, ("--use-distributed-optimizer",)),
    # updated parameters all-gathered in the next forward's pre-hooks (and before validation)
    "dp2_distopt_overlap_param_gather": (2, ("--use-distributed-optimizer",
                                             "--overlap-param-gather")),
    "tp2_pp2_sp": (4, ("--tp", "2", "--pp", "2", "--sp")),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_launch):
    """Metrics of a named run, trained once per module."""
    done = {}

    def run(name: str, nproc: int, *flags: str) -> list[dict]:
        if name not in done:
            done[name] = shared_launch.pretrain(tmp_path_factory.mktemp(name), nproc, *COMMON,
                                                *flags)
        return done[name]

    return run


@pytest.fixture(scope="module")
def reference(runs):
    return runs("single", 1)


SLOW = {"tp2_pp2_sp", "dp2_distopt_overlap_param_gather"}  # 4 ranks: 30 s; the rest of CI's


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in LAYOUTS])
def test_layout_matches_single_process(name, reference, runs):
    nproc, flags = LAYOUTS[name]
    metrics = runs(name, nproc, *flags)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for ref, got in zip(reference, metrics):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5), (name, ref["step"])
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5), (name, ref["step"])
        if "val_loss" in ref:  # validation sees this step's parameters on every layout
            assert got["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-5), name
    # the run must actually move: a parity test of a frozen model proves nothing
    assert reference[0]["grad_norm"] > 0 and reference[2]["loss"] != reference[0]["loss"]
    assert "val_loss" in reference[-1]  # mock validation clips, evaluated after the last step


DECODER_MASKING = ("--decoder-mask-ratio", "0.5")  # decoder on 13 + 26 of 64: 40 at tp2+sp


@pytest.mark.parametrize("name", ["tp2_sp", "pp2"])
def test_decoder_masking_layout_matches_single_process(name, runs):
    """The decoder's subset is drawn per sample on every rank that needs it (the first stage
    for nothing, the transition, the loss): TP+SP (its padding) and PP (the decoder stack's
    own token count between stages) train exactly what one process does. The subset is in
    effect (losses differ from the full decoder's) and validation, on every tubelet, agrees."""
    nproc, flags = LAYOUTS[name]
    reference = runs("single_decoder_masking", 1, *DECODER_MASKING)
    metrics = runs(f"{name}_decoder_masking", nproc, *flags, *DECODER_MASKING)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for ref, got in zip(reference, metrics):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5), (name, ref["step"])
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5), (name, ref["step"])
        if "val_loss" in ref:
            assert got["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-5), name
    full = runs("single", 1)  # mock clips' losses sit near 1 either way; gradients tell
    for a, b in zip(reference, full):  # (a few % apart at seed 1)
        assert a["loss"] != pytest.approx(b["loss"], rel=1e-6)
        assert a["grad_norm"] != pytest.approx(b["grad_norm"], rel=0.01)


PAD = ("--set", "model.pad_to_multiple_of={}")


@pytest.mark.parametrize("name, nproc, flags, multiple", [
    ("single", 1, (), 16),  # encoder 13 -> 16 tokens per clip
    pytest.param("tp2_sp", 2, LAYOUTS["tp2_sp"][1], 16,  # 13 -> 16, 8 per rank (12 s)
                 marks=pytest.mark.slow),
    pytest.param("single", 1, (), 48, marks=pytest.mark.slow),  # decoder 64 -> 96 too
])
def test_token_padding_changes_nothing(name, nproc, flags, multiple, runs):
    """Padding (FP8's rule, forced here on CPU) is masked out: the same losses and grad
    norms as the unpadded run of the same layout, to 1e-6."""
    unpadded = runs(name, nproc, *flags)
    padded = runs(f"{name}_pad{multiple}", nproc, *flags, PAD[0], PAD[1].format(multiple))
    assert [m["step"] for m in padded] == [1, 2, 3]
    for ref, got in zip(unpadded, padded):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6), ref["step"]
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-6), ref["step"]
