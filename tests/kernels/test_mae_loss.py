"""Fused MAE loss vs ``reference.mae_loss``: value and gradient w.r.t. ``pred``.

Tolerances, relative to the largest reference value: fp32 1e-5 (loss) / 1e-5
(grad), only summation order differs. bf16 inputs: the loss is computed in fp32
from the same bf16 values, 1e-4; the gradient is rounded to bf16 by both, so
they may differ by one bf16 ulp, 1e-2.
"""

from __future__ import annotations

import pytest
import torch
from megavid.kernels import reference

from tests.kernels.conftest import assert_close_rel

pytest.importorskip("triton")
from megavid.kernels import fused_mae_loss  # noqa: E402

TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-4, 1e-2)}  # (loss, grad)
SHAPES = [(1, 5, 1536), (3, 37, 7 * 8 * 3), (2, 9, 100)]  # 4DS tubelet, odd N and P


def _mask(kind: str, b: int, n: int) -> torch.Tensor:
    if kind == "all":
        return torch.ones(b, n, dtype=torch.bool)
    if kind == "none":
        return torch.zeros(b, n, dtype=torch.bool)
    return torch.rand(b, n) < 0.75


def _loss_and_grad(fn, pred, patches, mask, norm_pix):
    pred = pred.detach().clone().requires_grad_()
    loss = fn(pred, patches, mask, norm_pix=norm_pix)
    loss.backward()
    return loss.detach(), pred.grad


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("norm_pix", [True, False], ids=["norm", "raw"])
@pytest.mark.parametrize("mask_kind", ["random", "all", "none"])
def test_matches_reference(shape, dtype, norm_pix, mask_kind, device):
    torch.manual_seed(0)
    b, n, p = shape
    pred = torch.randn(shape).to(device, dtype)
    patches = (torch.rand(shape) * 4 + 1).to(device, dtype)  # pixel-like, nonzero mean
    mask = _mask(mask_kind, b, n).to(device)

    def fused(*args, norm_pix):
        return fused_mae_loss(*args, norm_pix=norm_pix, backend="triton")

    loss, grad = _loss_and_grad(fused, pred, patches, mask, norm_pix)
    ref_loss, ref_grad = _loss_and_grad(reference.mae_loss, pred, patches, mask, norm_pix)
    loss_tol, grad_tol = TOL[dtype]
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close_rel(loss, ref_loss, loss_tol)
    assert_close_rel(grad, ref_grad, grad_tol)
    if mask_kind == "none":  # nothing hidden: exactly zero, as the reference
        assert loss.item() == 0.0 and not grad.any()


def test_unmasked_rows_get_zero_grad(device):
    pred = torch.randn(2, 6, 48, device=device, requires_grad=True)
    mask = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 1, 1]], dtype=torch.bool, device=device)
    fused_mae_loss(pred, torch.randn(2, 6, 48, device=device), mask, backend="triton").backward()
    assert not pred.grad[~mask].any() and pred.grad[mask].abs().sum(-1).gt(0).all()


def test_noncontiguous_inputs(device):
    pred = torch.randn(3, 48, 11, device=device).transpose(1, 2)  # (3, 11, 48), strided
    patches = torch.randn(3, 11, 48, device=device)
    mask = torch.rand(3, 11, device=device) < 0.5
    loss = fused_mae_loss(pred, patches, mask, backend="triton")
    assert_close_rel(loss, reference.mae_loss(pred, patches, mask), 1e-5)


def test_cpu_without_interpreter_falls_back(monkeypatch):
    """auto mode on CPU tensors with the interpreter off: the reference, no error."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    pred, patches = torch.randn(2, 5, 24), torch.randn(2, 5, 24)
    mask = torch.rand(2, 5) < 0.6
    assert torch.equal(fused_mae_loss(pred, patches, mask), reference.mae_loss(pred, patches, mask))
    with pytest.raises(RuntimeError, match="backend='triton'"):
        fused_mae_loss(pred, patches, mask, backend="triton")


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must"):
        fused_mae_loss(torch.randn(2, 5, 24), torch.randn(2, 5, 23),
                       torch.ones(2, 5, dtype=torch.bool))
