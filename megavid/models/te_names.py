"""Transformer Engine's parameter names against the local spec's: the one mapping.

TE fuses each pre-LN LayerNorm into the linear after it (``TELayerNormColumnParallelLinear``),
so a TE layer holds ``self_attention.linear_qkv.layer_norm_weight`` where the local spec
holds ``input_layernorm.weight``; every TE module also carries ``_extra_state`` (its FP8
scaling state: amax history and scales). Everything that outlives a run speaks the local
names, whichever backend trained the model: checkpoints (the TE spec's
``sharded_state_dict_keys_map``, megatron-core's own renaming hook), layout-free names
(converters, ``load_encoder``, initialisation). So a GPU run's checkpoint is evaluated,
converted or resumed on CPU with the local spec, and a local checkpoint resumes on TE.
"""

from __future__ import annotations

# prefixes inside a transformer layer, TE's -> the local spec's
TE_TO_LOCAL = {
    "self_attention.linear_qkv.layer_norm_": "input_layernorm.",
    "mlp.linear_fc1.layer_norm_": "pre_mlp_layernorm.",
}
FP8_STATE = "_extra_state"  # the suffix of a TE module's FP8 scaling state


def _rename(name: str, mapping: dict[str, str]) -> str:
    for old, new in mapping.items():
        at = name.find(old)
        if at == 0 or (at > 0 and name[at - 1] == "."):
            return name[:at] + new + name[at + len(old):]
    return name


def to_local(name: str) -> str:
    """``encoder.layers.3.mlp.linear_fc1.layer_norm_bias`` -> ``...pre_mlp_layernorm.bias``."""
    return _rename(name, TE_TO_LOCAL)


def to_te(name: str) -> str:
    """The inverse of ``to_local``: the name a TE layer gives a local parameter."""
    return _rename(name, {local: te for te, local in TE_TO_LOCAL.items()})


def is_fp8_state(name: str) -> bool:
    """A TE module's FP8 scaling state (no tensor of the model's function)."""
    return name.endswith(FP8_STATE)
