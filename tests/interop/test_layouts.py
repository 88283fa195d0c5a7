"""A 4DS-layout .npz loads into TP=2 and PP=2 layouts (gloo processes) and gives TP=1's features,
directly and through a megavid checkpoint the converter wrote at TP=2."""

from __future__ import annotations

import pytest
import torch

from megavid.inference import load_encoder
from megavid.training.common_state import read_common
from tests.conftest import REPO
from tests.interop.features_worker import DEPTHS
from tests.interop.helpers import make_fourds_npz

DECODER = ("--decoder", "decoder_hidden_size=16", "--decoder", "decoder_num_layers=2",
           "--decoder", "decoder_ffn_hidden_size=32", "--decoder", "decoder_num_attention_heads=2")


def torchrun(launch, nproc: int, *args: str) -> None:
    launch.run(*args, nproc=nproc, timeout=300, check=True)


def rank_results(out, nproc: int) -> list[dict]:
    return [torch.load(out / f"rank{r}.pt") for r in range(nproc)]


@pytest.mark.slow  # three launches of gloo processes: ~40 s of CPU on 2 cores
def test_tp2_and_pp2_give_tp1_features(single_process, tmp_path, launch):
    npz = str(make_fourds_npz(tmp_path / "model.npz", layers=4))
    ckpt = tmp_path / "ckpt_tp2"
    # the converter CLI with --tp 2 starts its 2 processes itself
    proc = launch.run("-m", "megavid.tools.convert", "--from", "4ds-npz",
                      "--to", "megavid", npz, str(ckpt), "--tp", "2", *DECODER, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert read_common(ckpt / "iter_0000000")["layout"] == {"tp": 2, "pp": 1}

    video = torch.rand(2, 4, 24, 24, 3, generator=torch.Generator().manual_seed(0))
    reference = {}
    for source in (npz, str(ckpt)):
        encoder = load_encoder(source)
        reference[source] = torch.stack([encoder.features(video, depth=d) for d in DEPTHS])
    assert torch.equal(reference[npz], reference[str(ckpt)])

    worker = str(REPO / "tests" / "interop" / "features_worker.py")
    torchrun(launch, 2, worker, "--tp", "2", "--source", npz, "--out", str(tmp_path / "tp2"))
    torchrun(launch, 2, worker, "--pp", "2", "--source", npz, "--source", str(ckpt),
             "--out", str(tmp_path / "pp2"))
    tp2 = rank_results(tmp_path / "tp2", 2)
    pp2 = rank_results(tmp_path / "pp2", 2)
    tp_error = max((r[npz] - reference[npz]).abs().max().item() for r in tp2)
    print(f"\n4DS npz features, TP=2 vs TP=1: max abs error {tp_error:.3g}; PP=2: bit-exact")
    assert tp_error <= 1e-5
    assert torch.equal(tp2[0][npz], tp2[1][npz])  # every rank holds the result
    for result in pp2:
        assert torch.equal(result[npz], reference[npz])
        assert torch.equal(result[str(ckpt)], reference[npz])
