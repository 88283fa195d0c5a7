"""Core attention on ``torch.nn.functional.scaled_dot_product_attention``.

Drop-in for megatron-core's ``DotProductAttention`` in the local layer spec:
same constructor and ``[s, b, heads, head_dim] -> [s, b, heads*head_dim]``
contract, but PyTorch picks the fused kernel (flash / memory-efficient / math)
instead of materialising the score matrix through megatron's baddbmm path.
MAE attention is bidirectional; the only mask is the key-padding mask that
sequence-parallel padding needs.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class SDPACoreAttention(MegatronModule):
    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection=None,
    ):
        super().__init__(config=config)
        if attn_mask_type not in (AttnMaskType.no_mask, AttnMaskType.padding):
            raise ValueError(f"SDPACoreAttention is bidirectional; got {attn_mask_type}")
        self.softmax_scale = softmax_scale
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,  # [sq, b, np, hn]
        key: torch.Tensor,  # [sk, b, np, hn]
        value: torch.Tensor,  # [sk, b, np, hn]
        attention_mask: Optional[torch.Tensor],  # [b, 1, 1, sk] bool, True = padding
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias=None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))  # [b, np, s, hn]
        keep = None if attention_mask is None else ~attention_mask
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keep,
            dropout_p=self.dropout_p if self.training else 0.0,
            scale=self.softmax_scale,
        )  # [b, np, sq, hn]
        sq, b = out.shape[2], out.shape[0]
        return out.permute(2, 0, 1, 3).reshape(sq, b, -1)  # [sq, b, np*hn]
