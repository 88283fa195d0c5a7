"""Compute-side microbenchmarks: GEMM, attention, LayerNorm, patch embedding.

Shapes come from the 4DS preset table, so each number maps to a layer of a
model megavid trains. Default sizes are small on CPU (``--quick`` smaller).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from megavid.kernels import patchify_gather, reference, triton_usable
from megavid.kernels.bench.common import Context, Report, element_size, throughput_row
from torch.nn.attention import SDPBackend, sdpa_kernel

from megavid.config.presets import PRESETS

MASK_RATIOS = (0.75, 0.8, 0.85, 0.9, 0.95)
CLIP = PRESETS["4ds-b"]  # 16x224x224 clips, 2x16x16 tubelets: 1568 tokens of 1536 pixels


def _4ds_presets(quick: bool, cpu: bool) -> dict:
    names = [n for n in PRESETS if n.startswith("4ds-")]
    if quick:
        names = ["4ds-s", "4ds-b"]
    elif cpu:
        names = [n for n in names if n != "4ds-j"]
    return {n: PRESETS[n] for n in names}


def _te():
    """transformer_engine.pytorch when importable on a CUDA device, else None."""
    if not torch.cuda.is_available() or importlib.util.find_spec("transformer_engine") is None:
        return None
    try:
        import transformer_engine.pytorch as te
    except Exception:  # a TE that does not load is the same as none here
        return None
    return te


def bench_gemm(ctx: Context) -> Report:
    """The four GEMMs of a transformer block for every 4DS width, BF16 (+FP8 via TE)."""
    rep = Report(plots={"gemm": ("GEMM throughput per 4DS width", "width", "TFLOP/s", {})})
    m = 8192 if ctx.cuda else (128 if ctx.quick else 512)  # tokens per GEMM
    dtypes = [torch.bfloat16] + ([] if ctx.cuda else [torch.float32])
    te = _te()
    if te is None:
        rep.notes.append("gemm fp8: skipped (Transformer Engine not importable on a CUDA device)")
    for preset, arch in _4ds_presets(ctx.quick, not ctx.cuda).items():
        d, ffn = arch.hidden_size, arch.ffn_hidden_size
        shapes = {"qkv": (d, 3 * d), "proj": (d, d), "fc1": (d, ffn), "fc2": (ffn, d)}
        for layer, (k, n) in shapes.items():
            for dtype in dtypes:
                a = torch.randn(m, k, device=ctx.device, dtype=dtype)
                b = torch.randn(k, n, device=ctx.device, dtype=dtype)
                sec = ctx.time(lambda: torch.mm(a, b))
                tag = "bf16" if dtype == torch.bfloat16 else "fp32"
                rep.results.append(throughput_row(
                    ctx, f"gemm {tag} {preset} {layer}", sec, flops=2 * m * k * n, peak_dtype=dtype,
                    m=m, k=k, n=n))
                rep.add_point("gemm", f"{layer} {tag}", d, rep.results[-1]["value"])
            if te is not None:
                _gemm_fp8(ctx, te, rep, f"{preset} {layer}", d, (m, k, n))
    return rep


def _gemm_fp8(ctx: Context, te, rep: Report, label: str, width: int, mkn: tuple) -> None:
    """One TE Linear under FP8 autocast (delayed scaling); failures become notes."""
    m, k, n = mkn
    try:
        from transformer_engine.common.recipe import DelayedScaling

        lin = te.Linear(k, n, bias=False, params_dtype=torch.bfloat16, device=ctx.device)
        x = torch.randn(m, k, device=ctx.device, dtype=torch.bfloat16)
        autocast = getattr(te, "fp8_autocast", None)

        def run():
            with (autocast(enabled=True, fp8_recipe=DelayedScaling()) if autocast
                  else te.autocast(enabled=True, recipe=DelayedScaling())):
                lin(x)

        sec = ctx.time(run)
    except Exception as err:  # FP8 needs Hopper or newer; report, never fail the sweep
        rep.notes.append(f"gemm fp8 {label}: skipped ({type(err).__name__}: {err})"[:300])
        return
    rep.results.append(throughput_row(
        ctx, f"gemm fp8 {label}", sec, flops=2 * m * k * n, peak_dtype="fp8", m=m, k=k, n=n))
    rep.add_point("gemm", f"{label.split()[1]} fp8", width, rep.results[-1]["value"])


def _sdpa_backends() -> dict:
    return {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def _attention_fns(q, k, v, heads: int, head_dim: int) -> dict:
    """name -> callable(q, k, v) for every backend that runs on this device."""

    fns = {}
    for name, backend in _sdpa_backends().items():
        def run(q, k, v, backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)
        try:
            run(q, k, v)
        except Exception:  # "no available kernel" for this device, dtype or head dim
            continue
        fns[f"sdpa-{name}"] = run
    te = _te()
    if te is not None:
        try:
            dpa = te.DotProductAttention(heads, head_dim, qkv_format="bshd", attn_mask_type="no_mask")
            to_bshd = lambda t: t.transpose(1, 2)  # noqa: E731 (B, H, S, D) -> (B, S, H, D)
            fns["te-fused"] = lambda q, k, v: dpa(to_bshd(q), to_bshd(k), to_bshd(v))
            fns["te-fused"](q, k, v)
        except Exception:
            fns.pop("te-fused", None)
    return fns


def bench_attention(ctx: Context, preset: str | None = None) -> Report:
    """Encoder self-attention over the visible tokens, for MAE mask ratios 0.75-0.95."""
    arch = PRESETS[preset or "4ds-l"]
    heads, head_dim = arch.num_attention_heads, arch.hidden_size // arch.num_attention_heads
    batch = 32 if ctx.cuda else (1 if ctx.quick else 2)
    modes = ("fwd",) if ctx.quick else ("fwd", "fwd+bwd")
    rep = Report(plots={"attention": (
        f"Attention, {preset or '4ds-l'} ({heads}x{head_dim}), batch {batch}",
        f"mask ratio (visible share of the {CLIP.num_tokens}-token clip)", "TFLOP/s", {})})
    seen, times = set(), {}
    for ratio in MASK_RATIOS:
        seq = round(CLIP.num_tokens * (1 - ratio))
        q, k, v = (torch.randn(batch, heads, seq, head_dim, device=ctx.device, dtype=ctx.dtype)
                   for _ in range(3))
        fns = _attention_fns(q, k, v, heads, head_dim)
        seen |= fns.keys()
        fwd_flops = 4 * batch * heads * seq * seq * head_dim  # QK^T and PV
        for name, fn in fns.items():
            for mode in modes:
                call = _with_backward(fn, q, k, v) if mode == "fwd+bwd" else (lambda: fn(q, k, v))
                sec = ctx.time(call)
                flops = fwd_flops * (3.5 if mode == "fwd+bwd" else 1.0)  # bwd = 2.5x fwd
                times[name, mode, ratio] = sec
                rep.results.append(throughput_row(
                    ctx, f"attention {name} {mode} mask={ratio}", sec, flops=flops,
                    batch=batch, seq=seq, heads=heads, head_dim=head_dim))
                rep.add_point("attention", f"{name} {mode}", ratio, rep.results[-1]["value"])
    missing = sorted({f"sdpa-{n}" for n in _sdpa_backends()} - seen)
    if missing:
        rep.notes.append(f"attention: unavailable on {ctx.device.type}: {', '.join(missing)}")
    if "te-fused" not in seen:
        rep.notes.append("attention te-fused: skipped (Transformer Engine not usable here)")
    for (name, mode, ratio), sec in times.items():  # speedup over the math backend at 0.75
        base = times.get(("sdpa-math", mode, ratio))
        if ratio == MASK_RATIOS[0] and base and name != "sdpa-math":
            rep.ratios[f"attention {name}_vs_sdpa-math {mode} mask={ratio}"] = round(base / sec, 4)
    return rep


def _with_backward(fn, q, k, v):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    grad = torch.randn_like(fn(q, k, v))  # TE returns (B, S, H*D), SDPA (B, H, S, D)

    def run():
        fn(q, k, v).backward(grad)
    return run


def bench_layernorm(ctx: Context) -> Report:
    """LayerNorm over (tokens, width) for the 4DS widths: memory bound, so GB/s."""
    rep = Report(plots={"layernorm": ("LayerNorm bandwidth", "width", "GB/s", {})})
    tokens = 16384 if ctx.cuda else (1024 if ctx.quick else 4096)
    te = _te()
    widths = sorted({a.hidden_size for a in _4ds_presets(ctx.quick, not ctx.cuda).values()})
    for d in widths:
        x = torch.randn(tokens, d, device=ctx.device, dtype=ctx.dtype)
        impls = {"torch": torch.nn.LayerNorm(d, device=ctx.device, dtype=ctx.dtype)}
        if te is not None:
            impls["te"] = te.LayerNorm(d, params_dtype=ctx.dtype, device=ctx.device)
        elt = element_size(ctx.dtype)
        for name, norm in impls.items():
            fwd = ctx.time(lambda: norm(x))
            rep.results.append(throughput_row(
                ctx, f"layernorm {name} fwd d={d}", fwd, nbytes=2 * tokens * d * elt, tokens=tokens))
            rep.add_point("layernorm", f"{name} fwd", d, rep.results[-1]["value"])
            if not ctx.quick:
                xg, grad = x.detach().requires_grad_(), torch.randn_like(x)
                both = ctx.time(lambda: norm(xg).backward(grad))
                rep.results.append(throughput_row(  # fwd: x, y; bwd: x, dy, dx
                    ctx, f"layernorm {name} fwd+bwd d={d}", both, nbytes=5 * tokens * d * elt,
                    tokens=tokens))
                rep.add_point("layernorm", f"{name} fwd+bwd", d, rep.results[-1]["value"])
    if te is None:
        rep.notes.append("layernorm te: skipped (Transformer Engine not usable here)")
    return rep


def bench_patch_embed(ctx: Context) -> Report:
    """Tubelet embedding: Conv3d vs Linear on patches, and Linear on the kept 25% only."""
    rep = Report(plots={"patch_embed": ("Tubelet embedding", "width", "TFLOP/s", {})})
    batch = 8 if ctx.cuda else 1
    t, h, w = CLIP.tubelet
    n, p, c = CLIP.num_tokens, CLIP.patch_dim, CLIP.channels
    kept = round(n * (1 - MASK_RATIOS[0]))
    video = torch.randn(batch, CLIP.num_frames, CLIP.image_size, CLIP.image_size, c,
                        device=ctx.device, dtype=ctx.dtype)  # (B, T, H, W, C), as 4DS
    video_cf = video.permute(0, 4, 1, 2, 3).contiguous()  # (B, C, T, H, W) for Conv3d
    patches = reference.patchify(video, CLIP.tubelet)  # (B, N, P)
    ids = torch.stack([torch.randperm(n, device=ctx.device)[:kept] for _ in range(batch)])

    gather_backend = "triton" if triton_usable(video) else "torch"

    for preset, arch in _4ds_presets(ctx.quick, not ctx.cuda).items():
        d = arch.hidden_size
        conv = torch.nn.Conv3d(c, d, (t, h, w), stride=(t, h, w), device=ctx.device, dtype=ctx.dtype)
        lin = torch.nn.Linear(p, d, device=ctx.device, dtype=ctx.dtype)
        variants = {
            "conv3d": (lambda: conv(video_cf), n),
            "linear": (lambda: lin(patches), n),
            "patchify+linear": (lambda: lin(reference.patchify(video, CLIP.tubelet)), n),
            "gather+linear": (lambda: lin(patchify_gather(video, CLIP.tubelet, ids)), kept),
        }
        times = {}
        for name, (fn, tokens) in variants.items():
            with torch.no_grad():
                times[name] = ctx.time(fn)
            extra = {"gather_backend": gather_backend} if name.startswith("gather") else {}
            rep.results.append(throughput_row(
                ctx, f"patch_embed {name} {preset}", times[name], flops=2 * batch * tokens * p * d,
                batch=batch, tokens=tokens, width=d, **extra))
            rep.add_point("patch_embed", name, d, rep.results[-1]["value"])
        rep.ratios[f"patch_embed linear_vs_conv3d {preset}"] = round(
            times["conv3d"] / times["linear"], 4)
        rep.ratios[f"patch_embed gather+linear_vs_conv3d {preset}"] = round(
            times["conv3d"] / times["gather+linear"], 4)
    return rep
