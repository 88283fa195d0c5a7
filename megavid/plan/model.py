"""Memory and step-time model of one MAE training layout.

Memory follows Korthikanti et al. 2022 (*Reducing Activation Recomputation in
Large Transformer Models*) for a dropout-free pre-LN block with flash/SDPA
attention (no ``s^2`` score matrix is stored). Step time is compute at a
stated fraction of peak, plus exposed TP, DP and PP communication, stretched
by the pipeline bubble. Every constant is named here, so ``--explain`` and
the README can quote them.
"""

from __future__ import annotations

from dataclasses import dataclass

from megavid.config import RunConfig, StageMap
from megavid.config.fp8 import least_multiple, padded
from megavid.config.presets import (
    ModelArch,
    _stack_parameters,
    count_parameters,
    num_decoded,
    num_visible,
)

GB = 1e9
HEADROOM = 0.85  # usable share of HBM: CUDA context, NCCL buffers, allocator fragmentation
MATMUL_EFFICIENCY = {"bf16": 0.55, "fp8": 0.40}  # achieved / dense peak on large GEMMs
COMM_EFFICIENCY = 0.7  # achieved / link bandwidth for NCCL collectives and p2p
RECOMPUTE_OPTIONS = ("none", "selective", "full")


@dataclass(frozen=True)
class Candidate:
    """One layout: parallel sizes, micro-batching, recompute and precision."""

    tp: int
    pp: int
    vpp: int
    dp: int
    micro_batch_size: int
    num_microbatches: int
    recompute: str = "none"  # none | selective | full
    fp8: bool = False
    sequence_parallel: bool = True  # ignored at tp=1
    distributed_optimizer: bool = True
    bf16: bool = True
    decoder_fp8: bool = False  # with fp8: the decoder's GEMMs too (model.decoder_fp8)
    fp8_align: int = 16  # FP8 GEMM alignment of the recipe (megavid.config.fp8.fp8_alignment)
    pad_to_multiple_of: int = 0  # model.pad_to_multiple_of; 0: what SP and FP8 need
    token_padding: bool = True  # off: the same layout without padding (what it costs)
    # the levers of megavid.plan.timing (parallel.cuda_graph_impl, tp_comm_overlap,
    # overlap_param_gather): CUDA graphs, TP communication overlap, parameter all-gather overlap
    cuda_graphs: bool = False
    tp_comm_overlap: bool = False
    overlap_param_gather: bool = False


@dataclass(frozen=True)
class LayerShape:
    """One transformer layer of the stack: tokens it runs on (padded), width, MLP width,
    heads, and the useful tokens among them."""

    tokens: int
    width: int
    ffn: int
    heads: int
    useful: int = 0
    fp8: bool = False
    decoder: bool = False


def mask_kwargs(cfg: RunConfig) -> dict:
    """The masking settings every count below takes, from a run config."""
    m = cfg.model
    return dict(mask_ratio=m.mask_ratio, masking=m.masking,
                decoder_mask_ratio=m.decoder_mask_ratio)


def stack_tokens(arch: ModelArch, c: Candidate | None, *, mask_ratio: float, masking: str,
                 decoder: bool, decoder_mask_ratio: float = 0.0) -> tuple[int, int]:
    """(useful, padded) tokens per clip of one stack: megavid.config.fp8's rule for ``c``
    (no layout, or ``c.token_padding`` off: unpadded)."""
    real = (num_decoded(arch.grid, mask_ratio, masking, decoder_mask_ratio) if decoder
            else num_visible(arch.grid, mask_ratio, masking))
    if c is None or not c.token_padding:
        return real, real
    split = c.tp if c.sequence_parallel and c.tp > 1 else 1
    multiple = c.pad_to_multiple_of or least_multiple(
        split=split, align=c.fp8_align if _stack_fp8(c, decoder) else 1,
        micro_batch=c.micro_batch_size)
    return real, padded(real, multiple)


def _stack_fp8(c: Candidate | None, decoder: bool) -> bool:
    return c is not None and c.fp8 and (c.decoder_fp8 or not decoder)


def stack_layers(arch: ModelArch, mask_ratio: float, masking: str,
                 c: Candidate | None = None, *, decoder_mask_ratio: float = 0.0) -> list[LayerShape]:
    """The encoder (on K visible tubelets) then the decoder (on all N, or with decoder
    masking on ``num_decoded``), in stack order, each on the token count layout ``c`` pads
    it to."""
    shapes = []
    for decoder, width, ffn, heads, depth in (
            (False, arch.hidden_size, arch.ffn_hidden_size, arch.num_attention_heads,
             arch.num_layers),
            (True, arch.decoder_hidden_size, arch.decoder_ffn_hidden_size,
             arch.decoder_num_attention_heads, arch.decoder_num_layers)):
        real, tokens = stack_tokens(arch, c, mask_ratio=mask_ratio, masking=masking,
                                    decoder=decoder, decoder_mask_ratio=decoder_mask_ratio)
        shapes += [LayerShape(tokens, width, ffn, heads, useful=real,
                              fp8=_stack_fp8(c, decoder), decoder=decoder)] * depth
    return shapes


def rank_layers(layers: list, pp: int, vpp: int, rank: int) -> list[list]:
    """Layers of each model chunk pipeline rank ``rank`` holds (the stage map's placement)."""
    return [[layers[i] for i in chunk]
            for chunk in StageMap(len(layers), pp, vpp).rank_layers(rank)]


# -- memory -------------------------------------------------------------------
def rank_parameters(arch: ModelArch, c: Candidate, rank: int) -> float:
    """Parameters on one GPU of pipeline rank ``rank``: its layers over TP, plus its ends."""
    counts = count_parameters(arch)
    shapes = ([(arch.hidden_size, arch.ffn_hidden_size)] * arch.num_layers
              + [(arch.decoder_hidden_size, arch.decoder_ffn_hidden_size)]
              * arch.decoder_num_layers)
    params = 0.0
    for chunk in rank_layers(shapes, c.pp, c.vpp, rank):
        params += sum(_stack_parameters(w, 1, f) for w, f in chunk) / c.tp
    if rank == 0:  # tubelet + position embedding (not TP-sharded)
        params += counts["encoder"] - _stack_parameters(
            arch.hidden_size, arch.num_layers, arch.ffn_hidden_size)
    if rank == c.pp - 1:  # decoder ends (embed, mask token, pos, norm, head): last rank
        params += counts["decoder"] - _stack_parameters(
            arch.decoder_hidden_size, arch.decoder_num_layers, arch.decoder_ffn_hidden_size)
    return params


def state_bytes_per_param(c: Candidate) -> float:
    """Weights + fp32 main grads + Adam (fp32 master when bf16, m, v), sharded over DP if asked.

    bf16: 2 (weight) + 4 (main grad) + 12 (master, m, v); fp32: 4 + 4 + 8. FP8 adds a
    1-byte transposed weight copy (Transformer Engine keeps it for the backward).
    """
    weights, grads = (2.0, 4.0) if c.bf16 else (4.0, 4.0)
    optimizer = 12.0 if c.bf16 else 8.0
    if c.distributed_optimizer:
        optimizer /= c.dp
    return weights + grads + optimizer + (1.0 if c.fp8 else 0.0)


def layer_activation_bytes(layer: LayerShape, c: Candidate) -> float:
    """Activations one layer saves for backward for one micro-batch (bf16 or fp32).

    Saved per layer (s tokens, b clips, h width, f MLP width), in elements:
    two LayerNorm inputs 2sbh, their outputs feeding QKV/fc1 2sbh, q, k, v and the
    attention output 4sbh, fc1 output and GELU output 2sbf: 8sbh + 2sbf. TP shards
    all but the LayerNorm regions (4sbh); sequence parallelism shards those too.
    Full recompute keeps only the layer input (sbh, sharded by SP). Each LayerNorm
    also keeps its fp32 mean and rstd (2 x 2sb x 4 bytes).
    """
    s, b, h, f = layer.tokens, c.micro_batch_size, layer.width, layer.ffn
    t = c.tp
    sp = c.sequence_parallel and t > 1
    elem = 2.0 if c.bf16 else 4.0
    if c.recompute == "full":
        return elem * s * b * h / (t if sp else 1)
    sharded = (4 * s * b * h + 2 * s * b * f) / t
    replicated = 4 * s * b * h / (t if sp else 1)
    norm_stats = 4.0 * 4 * s * b / (t if sp else 1)
    # selective recompute drops the 5 a s^2 b score term, which flash attention never stores
    return elem * (sharded + replicated) + norm_stats


def ends_activation_bytes(arch: ModelArch, c: Candidate, rank: int, *, mask_ratio: float,
                          masking: str, decoder_mask_ratio: float = 0.0) -> float:
    """What the stack's ends save per micro-batch (not TP-sharded: they are replicated).

    First rank: the visible tubelets' pixels (b K P) for the tubelet embedding's
    weight gradient. Last rank: decoder norm input and output (2 b N Dd), and the
    loss's fp32 copy of the predictions (b N P); N: the decoder's tokens (``num_decoded``).
    """
    elem = 2.0 if c.bf16 else 4.0
    b, p = c.micro_batch_size, arch.patch_dim
    n = num_decoded(arch.grid, mask_ratio, masking, decoder_mask_ratio)
    total = 0.0
    if rank == 0:
        total += elem * b * num_visible(arch.grid, mask_ratio, masking) * p
    if rank == c.pp - 1:
        total += elem * 2 * b * n * arch.decoder_hidden_size + 4.0 * b * n * p
    return total


def in_flight(c: Candidate, rank: int) -> float:
    """Micro-batches whose activations rank ``rank`` holds at the 1F1B peak, in stage units.

    1F1B: pp - rank. Interleaved (Megatron): warm-up of 2 (pp - rank - 1) + (vpp - 1) pp
    chunk micro-batches, plus the one in flight, over vpp chunks per stage.
    """
    m = c.num_microbatches
    if c.pp == 1:
        return 1.0
    if c.vpp == 1:
        return float(min(c.pp - rank, m))
    chunks = min(2 * (c.pp - rank - 1) + (c.vpp - 1) * c.pp + 1, m * c.vpp)
    return chunks / c.vpp


def rank_memory(arch: ModelArch, c: Candidate, rank: int, *, mask_ratio: float,
                masking: str, decoder_mask_ratio: float = 0.0) -> dict:
    """Bytes per GPU of pipeline rank ``rank``, by part."""
    params = rank_parameters(arch, c, rank)
    layers = stack_layers(arch, mask_ratio, masking, c, decoder_mask_ratio=decoder_mask_ratio)
    chunks = rank_layers(layers, c.pp, c.vpp, rank)
    per_mb = sum(layer_activation_bytes(l, c) for chunk in chunks for l in chunk) + \
        ends_activation_bytes(arch, c, rank, mask_ratio=mask_ratio, masking=masking,
                              decoder_mask_ratio=decoder_mask_ratio)
    acts = per_mb * in_flight(c, rank)
    if c.recompute == "full":  # one layer's full activations while it is recomputed
        biggest = max(layers, key=lambda l: l.tokens * (4 * l.width + l.ffn))
        acts += layer_activation_bytes(biggest, Candidate(**{**c.__dict__, "recompute": "none"}))
    weights = params * (2.0 if c.bf16 else 4.0) + (params if c.fp8 else 0.0)
    grads = params * 4.0
    optim = params * state_bytes_per_param(c) - weights - grads
    parts = {"parameters": params, "weights": weights, "grads": grads, "optimizer": optim,
             "activations": acts}
    parts["total"] = weights + grads + optim + acts
    return parts


def peak_memory(arch: ModelArch, c: Candidate, *, mask_ratio: float, masking: str,
                decoder_mask_ratio: float = 0.0) -> dict:
    """The fullest pipeline rank's memory breakdown (bytes) and which rank it is."""
    ranks = [rank_memory(arch, c, r, mask_ratio=mask_ratio, masking=masking,
                         decoder_mask_ratio=decoder_mask_ratio)
             for r in range(c.pp)]
    worst = max(range(c.pp), key=lambda r: ranks[r]["total"])
    return {**ranks[worst], "rank": worst}
