"""What a 4DS transformer layer is, separated from which kernels implement it.

One builder, two backends that build the same tree: ``local`` (plain PyTorch
and megatron-core's tensor-parallel linears; runs anywhere) and
``transformer_engine`` (TE's fused LayerNorm+linear and fused attention, the
path to FP8). Pre-LN blocks with biases and GELU, no causal mask; a padding mask
only when sequence-parallel padding needs one. ``qkv_bias="none"`` builds the
fused q/k/v projection without a bias while the other linears keep theirs.
"""

from __future__ import annotations

import functools

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import (
    TransformerLayer,
    TransformerLayerSubmodules,
)

from megavid.config import ConfigError
from megavid.models.attention import SDPACoreAttention
from megavid.models.norm import LayerNorm

BACKENDS = ("local", "transformer_engine")



def get_layer_spec(backend: str, *, padding_mask: bool, qkv_bias: str = "qkv") -> ModuleSpec:
    """A ``TransformerLayer`` spec for ``backend`` (``local``/``transformer_engine``): a backend
    the pre-flight's ``resolve_backend`` chose, so Transformer Engine is known to import."""
    mask_type = AttnMaskType.padding if padding_mask else AttnMaskType.no_mask
    spec = None
    if backend == "local":
        spec = _local_spec(mask_type)
    if backend == "transformer_engine":
        spec = _te_spec(mask_type)
    if spec is None:
        raise ConfigError(f"model.transformer_impl: {backend!r} is not one of {BACKENDS}")
    if qkv_bias == "none":
        attention = spec.submodules.self_attention.submodules
        attention.linear_qkv = _without_bias(attention.linear_qkv)
    return spec


def _without_bias(linear):
    """``linear`` built without a bias whatever megatron's config asks for.

    megatron-core gives linear_qkv a bias whenever the other linears have one
    (``add_bias_linear or add_qkv_bias``); an unbiased q/k/v next to biased
    projections and MLP needs the choice made here.
    """
    def build(*args, bias, **kwargs):
        return linear(*args, bias=False, **kwargs)

    build.__name__ = f"{linear.__name__}WithoutBias"
    return build


def _local_spec(mask_type: AttnMaskType) -> ModuleSpec:
    return _layer_spec(mask_type, norm=LayerNorm, qkv=ColumnParallelLinear,
                       core_attention=SDPACoreAttention, proj=RowParallelLinear,
                       fc1=ColumnParallelLinear, fc2=RowParallelLinear)


def _te_spec(mask_type: AttnMaskType) -> ModuleSpec:
    # The LayerNorms fold into TE's LayerNorm+linear modules, hence IdentityOp.
    from megatron.core.extensions.transformer_engine import (  # imports TE: optional
        TEDotProductAttention,
        TELayerNormColumnParallelLinear,
        TERowParallelLinear,
    )

    return _layer_spec(mask_type, norm=IdentityOp, qkv=TELayerNormColumnParallelLinear,
                       core_attention=TEDotProductAttention, proj=TERowParallelLinear,
                       fc1=TELayerNormColumnParallelLinear, fc2=TERowParallelLinear)


def _mlp_spec(submodules: MLPSubmodules):
    """The MLP submodule as the installed megatron-core builds it.

    megatron-core 0.18+ builds a layer's MLP through ``MLP.as_mlp_submodule``
    (its own specs pass ``partial(MLP.as_mlp_submodule, submodules=...)``) and
    re-wraps a plain ``ModuleSpec(module=MLP)`` with a warning; 0.16 has no such
    classmethod and needs the ``ModuleSpec``.
    """
    if hasattr(MLP, "as_mlp_submodule"):
        return functools.partial(MLP.as_mlp_submodule, submodules=submodules)
    return ModuleSpec(module=MLP, submodules=submodules)


def _layer_spec(mask_type: AttnMaskType, *, norm, qkv, core_attention, proj, fc1,
                fc2) -> ModuleSpec:
    """The one pre-LN block tree; the backends differ only in the classes plugged in."""
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": mask_type},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=qkv, core_attention=core_attention, linear_proj=proj),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=norm,
            mlp=_mlp_spec(MLPSubmodules(linear_fc1=fc1, linear_fc2=fc2)),
            mlp_bda=get_bias_dropout_add,
        ),
    )
