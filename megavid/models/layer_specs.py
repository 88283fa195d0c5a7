"""What a 4DS transformer layer is, separated from which kernels implement it.

One builder, two backends that build the same tree: ``local`` (plain PyTorch
and megatron-core's tensor-parallel linears; runs anywhere) and
``transformer_engine`` (TE's fused LayerNorm+linear and fused attention, the
path to FP8). Pre-LN blocks with biases and GELU, no causal mask; a padding mask
only when token padding needs one. ``qkv_bias="none"`` builds the
fused q/k/v projection without a bias while the other linears keep theirs.

Both backends checkpoint under the local names (``megavid.models.te_names``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

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
from megavid.models.te_names import TE_TO_LOCAL


@dataclass(frozen=True)
class LayerModules:
    """The classes a backend plugs into the one block tree, and its checkpoint renaming."""

    norm: type
    qkv: type
    core_attention: type
    proj: type
    fc1: type
    fc2: type
    # megatron-core's TransformerLayer renames these prefixes in sharded state dicts
    sharded_keys_map: dict = field(default_factory=dict)


def _local_modules() -> LayerModules:
    return LayerModules(norm=LayerNorm, qkv=ColumnParallelLinear, core_attention=SDPACoreAttention,
                        proj=RowParallelLinear, fc1=ColumnParallelLinear, fc2=RowParallelLinear)


def fused_norm_modules(*, norm_linear: type, core_attention: type,
                       row_linear: type) -> LayerModules:
    """Transformer Engine's layer shape: each LayerNorm folds into the linear after it (so
    the norms are IdentityOp), whose LayerNorm parameters checkpoint under the local names."""
    return LayerModules(norm=IdentityOp, qkv=norm_linear, core_attention=core_attention,
                        proj=row_linear, fc1=norm_linear, fc2=row_linear,
                        sharded_keys_map=dict(TE_TO_LOCAL))


def _te_modules() -> LayerModules:
    from megatron.core.extensions.transformer_engine import (  # imports TE: optional
        TEDotProductAttention,
        TELayerNormColumnParallelLinear,
        TERowParallelLinear,
    )

    return fused_norm_modules(norm_linear=TELayerNormColumnParallelLinear,
                              core_attention=TEDotProductAttention, row_linear=TERowParallelLinear)


BACKENDS = {"local": _local_modules, "transformer_engine": _te_modules}


def get_layer_spec(backend: str, *, padding_mask: bool, qkv_bias: str = "qkv") -> ModuleSpec:
    """A ``TransformerLayer`` spec for ``backend`` (``local``/``transformer_engine``): a backend
    the pre-flight's ``resolve_backend`` chose, so Transformer Engine is known to import."""
    mask_type = AttnMaskType.padding if padding_mask else AttnMaskType.no_mask
    if backend not in BACKENDS:
        raise ConfigError(f"model.transformer_impl: {backend!r} is not one of {tuple(BACKENDS)}")
    spec = _layer_spec(mask_type, BACKENDS[backend]())
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


def _layer_spec(mask_type: AttnMaskType, m: LayerModules) -> ModuleSpec:
    """The one pre-LN block tree; the backends differ only in the classes plugged in."""
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=m.norm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": mask_type},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=m.qkv, core_attention=m.core_attention, linear_proj=m.proj),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=m.norm,
            mlp=_mlp_spec(MLPSubmodules(linear_fc1=m.fc1, linear_fc2=m.fc2)),
            mlp_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map=dict(m.sharded_keys_map),
        ),
    )
