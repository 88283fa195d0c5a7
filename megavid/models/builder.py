"""Build this rank's model chunks from a run config.

The encoder+decoder stack of ``Le + Ld`` layers is placed by the stage map
(``megavid.config.stages``: ``pp * vpp`` equal contiguous chunks in megatron-core's
interleaved order). Parameter values are
then set by ``megavid.models.initialization``, which makes them independent of the
layout.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.transformer.transformer_config import TransformerConfig

from megavid.config import ModelConfig, RunConfig, StageMap
from megavid.config.fp8 import stack_fp8, stack_tokens, token_multiple
from megavid.config.preflight import check_model_split
from megavid.config.presets import ModelArch
from megavid.models.layer_specs import get_layer_spec
from megavid.models.mae import VideoMAEChunk


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (JAX/Flax's ``nn.gelu`` default, used by 4DS)."""
    return torch.nn.functional.gelu(x, approximate="tanh")


def _fp8_fields(cfg: RunConfig, *, decoder: bool) -> dict:
    """megatron-core's FP8 fields for one stack (none when it runs without FP8).

    BF16 first/last layers are the encoder's: megatron-core decides per layer with
    ``layer_no < num_layers_at_start_in_bf16`` and ``layer_no >= num_layers -
    num_layers_at_end_in_bf16`` where ``num_layers`` is the whole stack's (encoder +
    decoder, see ``total_layers``) and an encoder layer's number is its position, so
    the decoder's layers are added to the end count. The decoder's config has no
    BF16 layers: model.decoder_fp8 switches all of it.
    """
    tc = cfg.train
    if not stack_fp8(cfg, decoder=decoder):
        return {}
    fields = dict(fp8=tc.fp8, fp8_recipe=tc.fp8_recipe, fp8_param=tc.fp8_param_gather)
    if tc.first_last_layers_bf16 and not decoder:
        fields.update(first_last_layers_bf16=True,
                      num_layers_at_start_in_bf16=tc.num_layers_at_start_in_bf16,
                      num_layers_at_end_in_bf16=tc.num_layers_at_end_in_bf16
                      + cfg.model.resolved_arch().decoder_num_layers)
    return fields


def transformer_config(cfg: RunConfig, *, width: int, ffn: int, heads: int,
                       total_layers: int, decoder: bool = False,
                       backend: str = "local") -> TransformerConfig:
    """A megatron-core TransformerConfig for the encoder's or the decoder's stack."""
    par, tc = cfg.parallel, cfg.train
    dtype = torch.bfloat16 if tc.precision == "bf16" else torch.float32
    recompute = {}
    if tc.recompute == "full":
        recompute = dict(recompute_granularity="full", recompute_method="uniform",
                         recompute_num_layers=1)
    elif tc.recompute == "selective":
        recompute = dict(recompute_granularity="selective")
    vpp = par.virtual_pipeline_model_parallel_size
    return TransformerConfig(
        num_layers=total_layers,  # the whole stack: megatron checks divisibility on it
        hidden_size=width,
        ffn_hidden_size=ffn,
        num_attention_heads=heads,
        add_bias_linear=True,
        add_qkv_bias=cfg.model.qkv_bias != "none",  # "none": see layer_specs._without_bias
        gated_linear_unit=False,
        activation_func=gelu_tanh if cfg.model.gelu == "tanh" else torch.nn.functional.gelu,
        normalization="LayerNorm",
        layernorm_epsilon=cfg.model.layernorm_epsilon,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=par.tensor_model_parallel_size,
        pipeline_model_parallel_size=par.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=vpp if vpp and vpp > 1 else None,
        sequence_parallel=par.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=tc.precision == "bf16",
        variable_seq_lengths=True,  # encoder and decoder chunks send different shapes
        # no MoE; the default dispatcher refuses variable lengths (0.16.1 and 0.19.2)
        moe_token_dispatcher_type="alltoall",
        # megatron-core 0.16's initialisation alone tags TP-sharded parameters (partition
        # dim, which grad-norm and checkpointing need; 0.19 tags them either way);
        # megavid.models.initialization sets the values.
        perform_initialization=True,
        init_method=torch.nn.init.zeros_,
        output_layer_init_method=torch.nn.init.zeros_,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        deallocate_pipeline_outputs=True,
        # batched, PP=2 interleaving crosses activations and gradients (0.16.1 and 0.19.2)
        batch_p2p_comm=False,
        # TP overlap: the encoder only (TE's userbuffers have one shape, megavid.parallel.tp_overlap)
        tp_comm_overlap=par.tp_comm_overlap and not decoder,
        cuda_graph_impl=par.cuda_graph_impl,
        # TE modules under CUDA graphs need TE's graph-safe RNG tracker (as Megatron-LM sets it)
        use_te_rng_tracker=par.cuda_graph_impl != "none" and backend == "transformer_engine",
        **recompute,
        **_fp8_fields(cfg, decoder=decoder),
    )


def build_model_chunks(cfg: RunConfig, arch: ModelArch | None = None, *,
                       backend: str = "local") -> list[VideoMAEChunk]:
    """This rank's chunks (one, or ``vpp`` with interleaving), uninitialised.

    ``backend`` is the layer backend the pre-flight chose (``Layout.backend``); tools
    that only run a model on this machine keep the default, the local spec.
    """
    arch = arch or cfg.model.resolved_arch()
    par = cfg.parallel
    pp, vpp = par.pipeline_model_parallel_size, par.virtual_pipeline_model_parallel_size or 1
    total = arch.num_layers + arch.decoder_num_layers
    stages = StageMap(total, pp, vpp)
    enc_cfg = transformer_config(cfg, width=arch.hidden_size, ffn=arch.ffn_hidden_size,
                                 heads=arch.num_attention_heads, total_layers=total,
                                 backend=backend)
    dec_cfg = transformer_config(cfg, width=arch.decoder_hidden_size,
                                 ffn=arch.decoder_ffn_hidden_size,
                                 heads=arch.decoder_num_attention_heads, total_layers=total,
                                 decoder=True, backend=backend)
    qkv_bias = cfg.model.qkv_bias
    tokens = stack_tokens(cfg)  # {"encoder": (tokens, padded), "decoder": ...}
    enc_spec, dec_spec = (get_layer_spec(backend, padding_mask=padded != real, qkv_bias=qkv_bias)
                          for real, padded in (tokens["encoder"], tokens["decoder"]))
    multiples = (token_multiple(cfg, decoder=False), token_multiple(cfg, decoder=True))
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    chunks = []
    for v, layers in enumerate(stages.rank_layers(pp_rank)):
        first, last = layers.start, layers.stop
        chunks.append(VideoMAEChunk(
            arch=arch, encoder_config=enc_cfg, decoder_config=dec_cfg,
            encoder_spec=enc_spec, decoder_spec=dec_spec, first=first, last=last,
            model_cfg=cfg.model, pad_multiples=multiples,
            vp_stage=v if vpp > 1 else None, kernel_backend=cfg.model.kernels,
        ))
    return chunks


def build_encoder_chunk(model_cfg: ModelConfig) -> VideoMAEChunk:
    """This pipeline rank's part of the encoder alone, for inference (the feature API).

    The layout is megatron-core's current parallel state: the encoder's layers are
    cut into ``pp`` equal contiguous parts, each TP-sharded; no sequence
    parallelism, no decoder. Uses the local layer spec, whose parameter names the
    converters and ``load_layout_free_state`` speak.
    """
    arch = model_cfg.resolved_arch()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    check_model_split(arch, tp, pp, decoder=False)
    cfg = RunConfig(model=model_cfg)
    cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size = tp, pp
    config = transformer_config(cfg, width=arch.hidden_size, ffn=arch.ffn_hidden_size,
                                heads=arch.num_attention_heads, total_layers=arch.num_layers)
    spec = get_layer_spec("local", padding_mask=False, qkv_bias=model_cfg.qkv_bias)
    (layers,) = StageMap(arch.num_layers, pp).rank_layers(
        parallel_state.get_pipeline_model_parallel_rank())
    return VideoMAEChunk(arch=arch, encoder_config=config, decoder_config=config,
                         encoder_spec=spec, decoder_spec=spec, first=layers.start, last=layers.stop,
                         model_cfg=model_cfg, pad_multiples=(1, 1), kernel_backend="torch")
