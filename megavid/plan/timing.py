"""Step-time estimate of one layout: compute, exposed communication, pipeline bubble.

Ranks follow megatron-core's order (TP innermost, then DP, then PP), so TP
stays inside a node (NVLink) while it fits there, DP crosses nodes once
tp x dp exceeds a node, and PP neighbours sit tp x dp ranks apart (IB).
Collectives are ring collectives: an all-reduce moves 2 (n-1)/n of the buffer
per GPU, a reduce-scatter or all-gather (n-1)/n.
"""

from __future__ import annotations

from megavid.config.presets import ModelArch
from megavid.models.flops import mae_forward_flops, mae_train_flops_per_clip
from megavid.plan.model import (
    COMM_EFFICIENCY,
    MATMUL_EFFICIENCY,
    Candidate,
    LayerShape,
    rank_layers,
    rank_parameters,
    stack_layers,
)

DP_EXPOSED = 0.5  # share of the DP grad reduce-scatter / param all-gather not hidden by overlap
# --overlap-param-gather: the all-gather of updated parameters runs under the next forward
PARAM_GATHER_OVERLAPPED_EXPOSED = 0.1
# Kernel floors. Eagerly, a kernel costs the GPU at least the host's time to issue it (Python,
# megatron-core and PyTorch dispatch, the launch): a layer whose kernels are shorter than that
# is launch-bound. Replayed from a CUDA graph, only the GPU's per-kernel start/drain remains.
HOST_S_PER_KERNEL = 10e-6
GRAPH_S_PER_KERNEL = 2e-6
# Kernels of one layer's forward: 2 LayerNorms, 4 GEMMs, attention, 2 bias+residual adds,
# bias+GELU, and under SP 2 all-gathers and 2 reduce-scatters; FP8 adds casts and amax
# reductions around each GEMM. Backward issues about twice as many.
KERNELS_PER_LAYER_FORWARD = 14
FP8_KERNELS_PER_LAYER_FORWARD = 8
# --tp-comm-overlap: share of the overlapped GEMMs' time that hides TP communication
TP_OVERLAP_EFFICIENCY = 0.8
HBM_EFFICIENCY = 0.8  # achieved / datasheet HBM bandwidth when a GEMM streams its weights
COLLECTIVE_LATENCY_S = {"nvlink": 10e-6, "ib": 25e-6}  # per NCCL collective or p2p message


def _gemm_seconds(m: int, k: int, n: int, spec: dict, c: Candidate, fp8: bool) -> float:
    """Roofline time of one (m x k) @ (k x n) GEMM: compute- or bandwidth-bound.

    The 4DS encoder sees few visible tokens (79 per clip at mask 0.95), so at small
    micro-batches its GEMMs stream weights faster than they multiply: mbs matters.
    """
    prec = "fp8" if fp8 else "bf16"
    elem = 1 if fp8 else (2 if c.bf16 else 4)
    flops = 2 * m * k * n / (spec[prec] * 1e12 * MATMUL_EFFICIENCY[prec])
    traffic = (k * n + m * k + m * n) * elem / (spec["hbm_gbs"] * 1e9 * HBM_EFFICIENCY)
    return max(flops, traffic)


def _layer_forward_seconds(layer: LayerShape, b: int, spec: dict, c: Candidate) -> tuple:
    """(linears, attention): forward seconds of one layer's four TP-sharded linears and its
    attention, at the roofline (no kernel floor)."""
    s, h, f, t = layer.tokens, layer.width, layer.ffn, c.tp
    m = s * b
    q = layer.fp8
    linears = (_gemm_seconds(m, h, 3 * h // t, spec, c, q) + _gemm_seconds(m, h // t, h, spec, c, q)
               + _gemm_seconds(m, h, f // t, spec, c, q) + _gemm_seconds(m, f // t, h, spec, c, q))
    attention = b * 4 * s * s * h / t / (spec["bf16"] * 1e12 * MATMUL_EFFICIENCY["bf16"])
    return linears, attention


def kernel_floor_seconds(layer: LayerShape, c: Candidate) -> float:
    """The least time one layer's forward can take, set by its kernel count: eagerly the
    host's issue rate, under CUDA graphs (``c.cuda_graphs``) the GPU's per-kernel cost."""
    kernels = KERNELS_PER_LAYER_FORWARD + (FP8_KERNELS_PER_LAYER_FORWARD if layer.fp8 else 0)
    return kernels * (GRAPH_S_PER_KERNEL if c.cuda_graphs else HOST_S_PER_KERNEL)


def layer_seconds(layer: LayerShape, b: int, spec: dict, c: Candidate) -> dict:
    """One layer's time per micro-batch, by part: compute (forward, backward = dgrad + wgrad,
    recompute; each pass at least its kernel floor) and exposed TP communication."""
    linears, attention = _layer_forward_seconds(layer, b, spec, c)
    forward = linears + attention
    recompute = {"none": 0.0, "selective": attention, "full": forward}[c.recompute]
    floor = kernel_floor_seconds(layer, c)
    compute = max(forward, floor) + max(2 * forward, 2 * floor) + \
        (max(recompute, floor) if c.recompute == "full" else recompute)
    comm = 0.0
    t = c.tp
    if t > 1:  # 2 all-reduces (or AG+RS pairs) forward, 2 backward, 2 more to recompute
        tp_link, tp_latency = _link(spec, t)
        volume = layer.tokens * b * layer.width * (2 if c.bf16 else 4)
        n = 4 + (2 if c.recompute == "full" else 0)
        comm = n * (2 * (t - 1) / t * volume / tp_link + 2 * tp_latency)
        if c.tp_comm_overlap and not layer.decoder:  # userbuffers: the encoder's (tp_overlap)
            passes = 3 + (1 if c.recompute == "full" else 0)
            comm -= min(comm, TP_OVERLAP_EFFICIENCY * passes * linears)
    return {"compute": compute, "tp_comm": comm}


def _link(spec: dict, group_span: int) -> tuple[float, float]:
    """(effective bytes/s, latency s) of a group spanning ``group_span`` consecutive ranks."""
    if group_span <= spec["gpus_per_node"]:
        return spec["nvlink_gbs"] * 1e9 * COMM_EFFICIENCY, COLLECTIVE_LATENCY_S["nvlink"]
    return spec["ib_gbs"] * 1e9 * COMM_EFFICIENCY, COLLECTIVE_LATENCY_S["ib"]


def rank_time(arch: ModelArch, c: Candidate, rank: int, spec: dict, *,
              mask_ratio: float, masking: str, decoder_mask_ratio: float = 0.0) -> dict:
    """Seconds one micro-batch spends on pipeline rank ``rank`` (all its chunks), by part."""
    b, t = c.micro_batch_size, c.tp
    elem = 2 if c.bf16 else 4
    attn_rate = spec["bf16"] * 1e12 * MATMUL_EFFICIENCY["bf16"]
    compute = comm = 0.0
    # on padded tokens: what runs
    layers = stack_layers(arch, mask_ratio, masking, c, decoder_mask_ratio=decoder_mask_ratio)
    for chunk in rank_layers(layers, c.pp, c.vpp, rank):
        for layer in chunk:
            part = layer_seconds(layer, b, spec, c)
            compute += part["compute"]
            comm += part["tp_comm"]
    parts = mae_forward_flops(arch, mask_ratio=mask_ratio, masking=masking,
                              decoder_mask_ratio=decoder_mask_ratio)
    ends = (parts["patch_embed"] if rank == 0 else 0) + \
           (parts["decoder_embed"] + parts["head"] if rank == c.pp - 1 else 0)
    compute += 3 * b * ends / attn_rate
    p2p = 0.0
    if c.pp > 1:  # each chunk receives/sends its activations forward and its grads backward
        span = t * c.dp * c.pp
        widest = max(l.tokens * l.width for l in layers)
        volume = widest * b * elem / (t if c.sequence_parallel and t > 1 else 1)
        bandwidth, latency = _link(spec, span)
        p2p = c.vpp * 2 * (volume / bandwidth + latency)
    return {"compute": compute, "tp_comm": comm, "pp_p2p": p2p, "total": compute + comm + p2p}


def dp_time(arch: ModelArch, c: Candidate, spec: dict) -> float:
    """Exposed seconds of the gradient reduction (and parameter all-gather) over DP."""
    if c.dp == 1:
        return 0.0
    params = max(rank_parameters(arch, c, r) for r in range(c.pp))
    frac = (c.dp - 1) / c.dp
    grad_bytes, param_bytes = 4.0, (2.0 if c.bf16 else 4.0)
    bandwidth = _link(spec, c.tp * c.dp)[0]
    if not c.distributed_optimizer:  # all-reduce grads
        return DP_EXPOSED * 2 * frac * params * grad_bytes / bandwidth
    # reduce-scatter grads, all-gather updated params (under the next forward with the lever)
    gather = PARAM_GATHER_OVERLAPPED_EXPOSED if c.overlap_param_gather else DP_EXPOSED
    return (DP_EXPOSED * grad_bytes + gather * param_bytes) * frac * params / bandwidth


def step_time(arch: ModelArch, c: Candidate, spec: dict, *, mask_ratio: float,
              masking: str, global_batch_size: int, decoder_mask_ratio: float = 0.0) -> dict:
    """Seconds per optimizer step, by part, and MFU against the bf16 dense peak."""
    ranks = [rank_time(arch, c, r, spec, mask_ratio=mask_ratio, masking=masking,
                       decoder_mask_ratio=decoder_mask_ratio)
             for r in range(c.pp)]
    slowest = max(ranks, key=lambda r: r["total"])
    m, p, v = c.num_microbatches, c.pp, c.vpp
    bubble = (p - 1) / (v * m + p - 1)
    pipeline = slowest["total"] * m / (1 - bubble)  # (v m + p - 1) slots of total / v
    dp = dp_time(arch, c, spec)
    # Adam reads weight, grad, master, m, v and writes weight, master, m, v: ~32 B/param
    params = max(rank_parameters(arch, c, r) for r in range(c.pp))
    shard = params / c.dp if c.distributed_optimizer else params
    optimizer = shard * 32 / (spec["hbm_gbs"] * 1e9 * HBM_EFFICIENCY)
    step = pipeline + dp + optimizer
    # useful FLOPs only: MFU does not count the padding (its time is in ``step``)
    model_flops = mae_train_flops_per_clip(arch, mask_ratio=mask_ratio, masking=masking,
                                           decoder_mask_ratio=decoder_mask_ratio) \
        * global_batch_size
    world = c.tp * c.pp * c.dp
    mfu = model_flops / (step * world * spec["bf16"] * 1e12)
    return {"per_microbatch": slowest, "bubble": bubble, "pipeline": pipeline, "dp": dp,
            "optimizer": optimizer, "step": step, "mfu": mfu, "model_flops": model_flops}
