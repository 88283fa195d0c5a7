"""Patchify+gather and scatter kernels vs ``megavid.kernels.reference``: outputs and gradients.

These kernels only copy, so outputs and the gradients that are copies (video,
visible tokens) must match exactly in fp32 and bf16. The fill vector's gradient
is a sum: fp32 within 1e-5 of the largest value; in bf16 both round the fp32
sum to bf16 once, so within one bf16 ulp, 1e-2.
"""

from __future__ import annotations

import pytest
import torch
from megavid.kernels import reference

from tests.kernels.conftest import assert_close_rel

pytest.importorskip("triton")
from megavid.kernels import patchify_gather, scatter_tokens  # noqa: E402

DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
# (video shape (B, T, H, W, C), tubelet): 4DS tubelet (P=1536), P = 7*8*3, edge pixels left over.
GEOMETRIES = [
    ((1, 4, 32, 48, 3), (2, 16, 16)),
    ((3, 2, 21, 24, 3), (1, 7, 8)),
    ((2, 5, 23, 17, 2), (2, 4, 4)),
]


def _ids(b: int, n: int, k: int) -> torch.Tensor:
    return torch.stack([torch.randperm(n)[:k] for _ in range(b)])


def _num_tokens(shape, tubelet) -> int:
    return (shape[1] // tubelet[0]) * (shape[2] // tubelet[1]) * (shape[3] // tubelet[2])


def _reference(video, tubelet, ids):
    """The reference needs whole tubelets: crop the edge pixels, which get no gradient."""
    t, h, w = (d // s * s for d, s in zip(video.shape[1:4], tubelet))
    return reference.gather_tokens(reference.patchify(video[:, :t, :h, :w], tubelet), ids)


@DTYPES
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=["4ds", "p168", "edges"])
@pytest.mark.parametrize("keep", ["some", "all", "none"])
def test_patchify_gather_matches_reference(geometry, keep, dtype, device):
    torch.manual_seed(0)
    shape, tubelet = geometry
    n = _num_tokens(shape, tubelet)
    k = {"some": max(1, n // 4) | 1, "all": n, "none": 0}[keep]  # odd K where possible
    ids = _ids(shape[0], n, k).to(device)
    video = torch.randn(shape).to(device, dtype)
    out_grad = torch.randn(shape[0], k, tubelet[0] * tubelet[1] * tubelet[2] * shape[4])
    out_grad = out_grad.to(device, dtype)
    results = []
    for fn in (lambda v: patchify_gather(v, tubelet, ids, backend="triton"),
               lambda v: _reference(v, tubelet, ids)):
        v = video.clone().requires_grad_()
        out = fn(v)
        out.backward(out_grad)
        results.append((out.detach(), v.grad))
    (out, grad), (ref_out, ref_grad) = results
    assert out.dtype == dtype and torch.equal(out, ref_out)
    assert torch.equal(grad, ref_grad)


def test_patchify_all_tokens_and_strided_video(device):
    """ids_keep=None is plain patchify; a channels-first video is read through its strides."""
    video = torch.randn(2, 3, 4, 16, 24, device=device).permute(0, 2, 3, 4, 1)  # (B, T, H, W, C)
    assert not video.is_contiguous()
    out = patchify_gather(video, (2, 8, 8), backend="triton")
    assert torch.equal(out, reference.patchify(video, (2, 8, 8)))


@DTYPES
@pytest.mark.parametrize(
    "b,n,k,d", [(1, 12, 3, 1536), (3, 37, 9, 168), (2, 11, 11, 40), (2, 7, 0, 33)],
    ids=["4ds", "odd", "none-masked", "all-masked"],
)
def test_scatter_tokens_matches_reference(b, n, k, d, dtype, device):
    torch.manual_seed(0)
    ids = _ids(b, n, k).to(device)
    visible = torch.randn(b, k, d).to(device, dtype)
    fill = torch.randn(d, device=device)  # the mask token, an fp32 parameter
    out_grad = torch.randn(b, n, d).to(device, dtype)
    results = []
    for fn in (lambda v, f: scatter_tokens(v, ids, f, n, backend="triton"),
               lambda v, f: reference.scatter_tokens(v, ids, f, n)):
        v, f = visible.clone().requires_grad_(), fill.clone().requires_grad_()
        out = fn(v, f)
        out.backward(out_grad)
        results.append((out.detach(), v.grad, f.grad))
    (out, gv, gf), (ref_out, ref_gv, ref_gf) = results
    assert torch.equal(out, ref_out) and torch.equal(gv, ref_gv)
    assert_close_rel(gf, ref_gf, 1e-5 if dtype == torch.float32 else 1e-2)
    if k == n:
        assert not gf.any()


def test_cpu_without_interpreter_falls_back(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    video, ids = torch.randn(1, 2, 8, 8, 3), torch.tensor([[3, 0]])
    ref = reference.gather_tokens(reference.patchify(video, (2, 4, 4)), ids)
    assert torch.equal(patchify_gather(video, (2, 4, 4), ids), ref)
    vis, fill = torch.randn(1, 2, 5), torch.randn(5)
    assert torch.equal(scatter_tokens(vis, ids, fill, 4), reference.scatter_tokens(vis, ids, fill, 4))
    with pytest.raises(RuntimeError, match="backend='triton'"):
        scatter_tokens(vis, ids, fill, 4, backend="triton")
