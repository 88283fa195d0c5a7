"""CPU stand-ins for megatron-core's Transformer Engine modules, for checkpoint tests.

Transformer Engine does not install without CUDA. What a TE layer means for checkpoints
is its names and its extra state: ``TELayerNormColumnParallelLinear`` holds the pre-LN
LayerNorm as ``layer_norm_weight``/``layer_norm_bias`` next to ``weight``/``bias``, and
every TE module carries ``_extra_state`` (FP8 scaling state), which megatron-core's
``make_sharded_tensors_for_checkpoint`` stores as a sharded object. These doubles have
exactly that, computing what the local spec computes (LayerNorm, then the linear), so
a model built from them stands for a TE model wherever only names and values matter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

from megavid.models.attention import SDPACoreAttention
from megavid.models.layer_specs import LayerModules, fused_norm_modules


class _ExtraState:
    """``_extra_state`` like TE's: a tensor that checkpoints carry (here: a marker)."""

    def _init_extra_state(self) -> None:
        self.fp8_marker = torch.zeros(4)

    def get_extra_state(self) -> torch.Tensor:
        return self.fp8_marker.clone()

    def set_extra_state(self, state) -> None:
        self.fp8_marker = torch.as_tensor(state).clone()


class LayerNormColumnParallelLinear(_ExtraState, ColumnParallelLinear):
    def __init__(self, input_size, output_size, *, config, **kwargs):
        super().__init__(input_size, output_size, config=config, **kwargs)
        self.eps = config.layernorm_epsilon
        self.layer_norm_weight = torch.nn.Parameter(torch.ones(input_size))
        self.layer_norm_bias = torch.nn.Parameter(torch.zeros(input_size))
        self._init_extra_state()

    def forward(self, x, *args, **kwargs):
        x = F.layer_norm(x, (x.shape[-1],), self.layer_norm_weight, self.layer_norm_bias,
                         self.eps)
        return super().forward(x, *args, **kwargs)


class RowParallel(_ExtraState, RowParallelLinear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_extra_state()


class DotProductAttention(_ExtraState, SDPACoreAttention):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_extra_state()


def te_shaped_modules() -> LayerModules:
    """``layer_specs._te_modules`` with the doubles in place of TE's classes."""
    return fused_norm_modules(norm_linear=LayerNormColumnParallelLinear,
                              core_attention=DotProductAttention, row_linear=RowParallel)
