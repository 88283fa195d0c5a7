"""The Triton kernels of ``kernels/`` against their PyTorch references.

Throughput is effective GB/s: the minimum bytes each operation must move
(counted below, the same for kernel and reference) over its time, so the
ratio of the two numbers is the speedup. On CPU the kernels only run in
Triton's interpreter, whose timings mean nothing: there the references are
timed alone unless ``TRITON_INTERPRET=1`` asks for the interpreter anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from megavid.kernels import (
    fused_mae_loss,
    interpreter_enabled,
    patchify_gather,
    reference,
    scatter_tokens,
    triton_usable,
)
from megavid.kernels.bench.common import Context, Report, element_size, throughput_row

from megavid.config.presets import PRESETS

CLIP = PRESETS["4ds-b"]


@dataclass
class Case:
    """One operation: inputs (which need grads), kernel, reference, bytes it must move."""

    inputs: tuple
    needs_grad: tuple[bool, ...]
    kernel: Callable
    reference: Callable
    fwd_bytes: int
    bwd_bytes: int


def _cases(ctx: Context) -> dict[str, Case]:
    batch = 16 if ctx.cuda else 1
    n, p, d = CLIP.num_tokens, CLIP.patch_dim, CLIP.decoder_hidden_size
    if not ctx.cuda:  # 4DS shapes, fewer frames: 392 tokens, or 196 for the slow interpreter
        n = CLIP.grid[1] * CLIP.grid[2] if interpreter_enabled() else (n // 4 if ctx.quick else n)
    k = n // 4  # mask ratio 0.75
    dev, dt = ctx.device, ctx.dtype
    elt = element_size(dt)
    pred = torch.randn(batch, n, p, device=dev, dtype=dt)
    patches = torch.rand(batch, n, p, device=dev, dtype=dt)
    mask = torch.ones(batch, n, dtype=torch.bool, device=dev)
    ids = torch.stack([torch.randperm(n, device=dev) for _ in range(batch)])
    mask.scatter_(1, ids[:, :k], False)
    ids = ids[:, :k].sort(dim=1).values
    frames = n // (CLIP.grid[1] * CLIP.grid[2]) * CLIP.tubelet[0]
    video = torch.randn(batch, frames, CLIP.image_size,
                        CLIP.image_size, CLIP.channels, device=dev, dtype=dt)
    visible = torch.randn(batch, k, d, device=dev, dtype=dt)
    fill = torch.randn(d, device=dev, dtype=dt)
    masked = batch * (n - k)
    return {
        "mae_loss": Case(
            (pred, patches, mask), (True, False, False),
            lambda a, b, m: fused_mae_loss(a, b, m, backend="triton"),
            lambda a, b, m: reference.mae_loss(a, b, m),
            2 * masked * p * elt,  # read pred and target of masked tubelets
            (2 * masked + batch * n) * p * elt,  # read both again, write grad_pred
        ),
        "patchify_gather": Case(
            (video,), (True,),
            lambda v: patchify_gather(v, CLIP.tubelet, ids, backend="triton"),
            lambda v: reference.gather_tokens(reference.patchify(v, CLIP.tubelet), ids),
            2 * batch * k * p * elt,  # read kept tubelets, write them
            (batch * k + batch * n) * p * elt,  # read their grads, write the video's
        ),
        "scatter_tokens": Case(
            (visible, fill), (True, True),
            lambda v, f: scatter_tokens(v, ids, f, n, backend="triton"),
            lambda v, f: reference.scatter_tokens(v, ids, f, n),
            batch * (k + n) * d * elt,  # read visible, write full
            batch * (n + k) * d * elt,  # read full grad, write visible grad
        ),
    }


def _fwd_bwd(fn, case: Case):
    """A closure running ``fn`` forward and backward on fresh leaves."""
    leaves = [x.detach().requires_grad_(g) for x, g in zip(case.inputs, case.needs_grad)]
    out = fn(*leaves)
    grad = torch.ones_like(out) if out.dim() == 0 else torch.randn_like(out)

    def run():
        fn(*leaves).backward(grad)
    return run


def bench_triton(ctx: Context) -> Report:
    """Forward and forward+backward of each kernel and its reference, effective GB/s."""
    rep = Report()  # a comparison, not a sweep: the table says it all
    cases = _cases(ctx)
    run_kernels = triton_usable(*cases["mae_loss"].inputs)
    if not run_kernels:
        rep.notes.append("triton kernels: skipped (need Triton and CUDA, or TRITON_INTERPRET=1);"
                         " references timed alone")
    elif not ctx.cuda:
        rep.notes.append("triton kernels ran in the CPU interpreter: their timings are not speeds")
    for name, case in cases.items():
        impls = {"reference": case.reference} | ({"triton": case.kernel} if run_kernels else {})
        times, params = {}, {}
        if run_kernels:  # a GPU run checks the kernel too: forward max |kernel - reference|
            with torch.no_grad():
                diff = case.kernel(*case.inputs).float() - case.reference(*case.inputs).float()
            params["max_abs_err_vs_reference"] = diff.abs().max().item()
        for impl, fn in impls.items():
            with torch.no_grad():
                times[impl, "fwd"] = ctx.time(lambda: fn(*case.inputs))
            times[impl, "fwd+bwd"] = ctx.time(_fwd_bwd(fn, case))
            both = case.fwd_bytes + case.bwd_bytes
            for mode, nbytes in (("fwd", case.fwd_bytes), ("fwd+bwd", both)):
                rep.results.append(throughput_row(
                    ctx, f"triton {name} {impl} {mode}", times[impl, mode], nbytes=nbytes,
                    **(params if impl == "triton" else {})))
        if run_kernels and ctx.cuda:  # interpreter times are not speeds: no ratios from them
            for mode in ("fwd", "fwd+bwd"):
                rep.ratios[f"triton {name} speedup {mode}"] = round(
                    times["reference", mode] / times["triton", mode], 4)
    return rep
