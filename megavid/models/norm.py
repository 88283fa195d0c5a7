"""LayerNorm that megatron-core's sequence parallelism can use.

megatron-core's ``WrappedTorchNorm`` refuses sequence parallelism; the only
thing SP needs from a norm is that its parameters carry ``sequence_parallel``,
so ``finalize_model_grads`` all-reduces their gradients over the TP group
(each TP rank saw a different slice of the tokens).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig


class LayerNorm(torch.nn.LayerNorm):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-6):
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype)
        for param in self.parameters():
            param.sequence_parallel = config.sequence_parallel
