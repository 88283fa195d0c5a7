"""The 4DS video MAE as pipeline model chunks.

The model is one sequence of ``Le + Ld`` transformer layers: the encoder (on
visible tubelets only) followed by the MAE decoder (on all tubelets). A chunk
owns a contiguous range of it and the pieces around its ends:

- ``pre_process`` (first chunk): optional pixel normalisation, tubelet
  embedding, position embedding, gather of the visible tokens;
- the transition (the chunk holding decoder layer 0): optional encoder norm,
  projection to the decoder width, mask tokens scattered in, decoder position
  embedding (on all N tubelets, or with ``model.decoder_mask_ratio`` on the
  visible ones plus the subset of masked ones the loss covers);
- ``post_process`` (last chunk): decoder norm and the pixel head.

Between chunks only ``[s, b, h]`` hidden states travel (s differs between
encoder and decoder, so the schedules run with ``variable_seq_lengths``).
Masks are recomputed on every chunk from the batch (``megavid.models.masking``).

Each stack zero-pads ``s`` to its token multiple (``megavid.config.fp8``: what
sequence parallelism's split over the TP group and FP8's GEMM alignment need, or
``model.pad_to_multiple_of``): 4DS's 79 visible tokens become 80 at TP=2+SP or
under FP8 at micro-batch 1; padded keys are masked out of attention and padded
outputs dropped, so the result is exactly that of the unpadded model.

The architecture options of ``ModelConfig`` (GELU flavour, q/k/v biases,
learned or sinusoidal position embeddings, final norms, pixel normalisation)
cover 4DS and VideoMAE; ``megavid.tools.convert`` maps their weights here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.utils import replace_prefix_for_sharding
from megatron.core.enums import ModelType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlock,
    TransformerBlockSubmodules,
)
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import (
    ensure_metadata_has_dp_cp_group,
    make_sharded_tensors_for_checkpoint,
    sharded_state_dict_default,
)

import megavid.kernels as kernels
from megavid.config import ModelConfig
from megavid.config.fp8 import padded
from megavid.config.presets import ModelArch
from megavid.models.norm import LayerNorm
from megavid.models.posembed import sincos_table

# Layout-free names of the MAE decoder's tensors (absent from encoder-only weights)
DECODER_PREFIXES = ("decoder_embed.", "mask_token", "decoder_pos_embed", "decoder.",
                    "decoder_norm.", "head.")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def qkv_bias_mask(num_heads: int, head_dim: int) -> torch.Tensor:
    """(3 * heads * head_dim,) 1 on q and v, 0 on k, in megatron's fused qkv row order.

    megatron-core's linear_qkv rows are interleaved per head (one query group per
    head): ``[q_0, k_0, v_0, q_1, k_1, v_1, ...]``, each ``head_dim`` long; TP
    splits them contiguously, i.e. by whole heads.
    """
    one = torch.ones(head_dim)
    return torch.cat([one, torch.zeros(head_dim), one]).repeat(num_heads)


def _fix_k_bias_at_zero(linear_qkv, num_heads: int, head_dim: int) -> None:
    """``qkv_bias="qv"``: the k slice of the fused bias gets no gradient, so it stays 0.

    A k bias adds ``q . b_k`` to every score of a query alike, so the softmax
    ignores it and its true gradient is 0; masking the gradient also removes
    rounding noise that Adam would otherwise amplify into updates.
    """
    bias = linear_qkv.bias
    mask = qkv_bias_mask(num_heads, head_dim).to(device=bias.device, dtype=bias.dtype)
    with torch.no_grad():
        bias.mul_(mask)
    bias.register_hook(lambda grad: grad * mask.to(device=grad.device, dtype=grad.dtype))


def _block(config: TransformerConfig, spec: ModuleSpec, n: int, first: int, vp_stage):
    """A TransformerBlock of ``n`` layers whose layer numbers start at ``first + 1``."""
    if n == 0:
        return None
    block = TransformerBlock(
        config,
        TransformerBlockSubmodules(layer_specs=[spec] * n, layer_norm=None),
        pre_process=True,  # hidden states are passed in; this chunk handles pipeline input
        post_process=False,
        post_layer_norm=False,
        vp_stage=vp_stage,
    )
    for i, layer in enumerate(block.layers):
        # megatron numbers layers by its own even split; ours is the stack position
        layer.layer_number = first + i + 1
    return block


class VideoMAEChunk(MegatronModule):
    """Layers ``[first, last)`` of the encoder+decoder stack, with their ends."""

    def __init__(
        self,
        *,
        arch: ModelArch,
        encoder_config: TransformerConfig,
        decoder_config: TransformerConfig,
        encoder_spec: ModuleSpec,
        decoder_spec: ModuleSpec,
        first: int,
        last: int,
        model_cfg: ModelConfig,
        pad_multiples: tuple[int, int],
        vp_stage: int | None = None,
        kernel_backend: str = "torch",
    ):
        super().__init__(config=encoder_config)
        num_enc = arch.num_layers
        self.arch = arch
        self.model_type = ModelType.encoder_or_decoder
        self.share_embeddings_and_output_weights = False
        self.pre_process = first == 0
        self.post_process = last == num_enc + arch.decoder_num_layers
        self.has_transition = first <= num_enc < last
        self.first_encoder_layer = min(first, num_enc)
        self.first_decoder_layer = max(first, num_enc) - num_enc
        self.encoder_multiple, self.decoder_multiple = pad_multiples  # tokens per clip
        self.kernel_backend = kernel_backend  # kernels/: Triton or the PyTorch reference
        self.vp_stage = vp_stage  # read by megatron-core's Float16Module
        self.input_tensor = None
        self.model_cfg = model_cfg
        d, dd, n, p = arch.hidden_size, arch.decoder_hidden_size, arch.num_tokens, arch.patch_dim

        if self.pre_process:
            self.patch_embed = torch.nn.Linear(p, d)  # == Conv3d(kernel=stride=tubelet)
            self._position_table("pos_embed", n, d)
            imagenet = model_cfg.pixel_norm == "imagenet"
            for name, value in (("pixel_mean", IMAGENET_MEAN), ("pixel_std", IMAGENET_STD)):
                self.register_buffer(name, torch.tensor(value) if imagenet else None,
                                     persistent=False)
        self.encoder = _block(encoder_config, encoder_spec,
                              max(0, min(last, num_enc) - first), self.first_encoder_layer,
                              vp_stage)
        if self.has_transition:
            if model_cfg.encoder_final_norm:
                self.encoder_norm = LayerNorm(encoder_config, d, encoder_config.layernorm_epsilon)
            else:
                self.encoder_norm = None
            self.decoder_embed = torch.nn.Linear(d, dd, bias=model_cfg.decoder_embed_bias)
            self.mask_token = torch.nn.Parameter(torch.zeros(dd))
            self._position_table("decoder_pos_embed", n, dd)
        self.decoder = _block(decoder_config, decoder_spec,
                              max(0, last - max(first, num_enc)), self.first_decoder_layer,
                              vp_stage)
        if self.post_process:
            eps = model_cfg.decoder_norm_epsilon or decoder_config.layernorm_epsilon
            self.decoder_norm = LayerNorm(decoder_config, dd, eps)
            self.head = torch.nn.Linear(dd, p)
        if model_cfg.qkv_bias == "qv":
            for block in (self.encoder, self.decoder):
                for layer in block.layers if block is not None else ():
                    attention = layer.self_attention
                    _fix_k_bias_at_zero(attention.linear_qkv,
                                        attention.num_attention_heads_per_partition,
                                        attention.hidden_size_per_attention_head)

    def _position_table(self, name: str, n: int, width: int) -> None:
        """A learned (N, width) parameter, or the fixed sinusoids as a non-checkpointed buffer."""
        if self.model_cfg.pos_embed == "sincos":
            self.register_buffer(name, sincos_table(n, width), persistent=False)
        else:
            self.register_parameter(name, torch.nn.Parameter(torch.zeros(n, width)))

    def set_input_tensor(self, input_tensor) -> None:
        """Pipeline hook: the previous chunk's output, [s, b, h]."""
        if isinstance(input_tensor, (list, tuple)):
            input_tensor = input_tensor[0]
        self.input_tensor = input_tensor

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (),
                           metadata: dict | None = None) -> dict:
        """Checkpoint view in layout-free names: each stack's layers are one global tensor.

        megatron-core's ``TransformerBlock.sharded_state_dict`` assumes its own even
        layer split; this chunk owns an arbitrary range of the encoder+decoder stack,
        so the layers are stacked here by their position in their whole stack.
        """
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        tp_group = parallel_state.get_tensor_model_parallel_group()  # replicas across TP too
        own = {}
        self._save_to_state_dict(own, "", keep_vars=True)  # pos_embed, mask_token, ...
        result = make_sharded_tensors_for_checkpoint(
            own, prefix, sharded_offsets=sharded_offsets, tp_group=tp_group,
            dp_cp_group=metadata["dp_cp_group"])
        depth = {"encoder": self.arch.num_layers, "decoder": self.arch.decoder_num_layers}
        first = {"encoder": self.first_encoder_layer, "decoder": self.first_decoder_layer}
        for name, module in self.named_children():
            if name not in depth:
                result.update(sharded_state_dict_default(module, f"{prefix}{name}.",
                                                         sharded_offsets, metadata,
                                                         tp_group=tp_group))
                continue
            for i, layer in enumerate(module.layers):
                local = f"{prefix}{name}.layers.{i}."
                layer_sd = layer.sharded_state_dict(
                    local, (*sharded_offsets, (0, first[name] + i, depth[name])), metadata)
                replace_prefix_for_sharding(layer_sd, local, f"{prefix}{name}.layers.")
                result.update(layer_sd)
        return result

    # -- padding and sequence-parallel plumbing -----------------------------
    @staticmethod
    def _pad_mask(s: int, b: int, multiple: int, device) -> torch.Tensor | None:
        """[b, 1, 1, s_padded] True on padding keys, or None when there is none."""
        s_pad = padded(s, multiple)
        if s_pad == s:
            return None
        mask = torch.zeros(b, 1, 1, s_pad, dtype=torch.bool, device=device)
        mask[..., s:] = True
        return mask

    def _to_stack(self, x: torch.Tensor, multiple: int) -> torch.Tensor:
        """(B, S, H) replicated -> [S_pad(/tp), B, H] as the transformer stack wants."""
        x = x.transpose(0, 1).contiguous()  # [S, B, H]
        s_pad = padded(x.shape[0], multiple)
        if s_pad != x.shape[0]:
            x = F.pad(x, (0, 0, 0, 0, 0, s_pad - x.shape[0]))
        if self.config.sequence_parallel:
            x = tensor_parallel.scatter_to_sequence_parallel_region(x)
        return x

    def _from_stack(self, x: torch.Tensor, s: int) -> torch.Tensor:
        """[S_pad(/tp), B, H] -> (B, S, H) replicated, padding dropped."""
        if self.config.sequence_parallel:
            x = tensor_parallel.gather_from_sequence_parallel_region(
                x, tensor_parallel_output_grad=False
            )
        return x[:s].transpose(0, 1)

    # -- forward ----------------------------------------------------------
    def embed(self, video: torch.Tensor, ids_keep: torch.Tensor | None) -> torch.Tensor:
        """(B, T, H, W, C), (B, K) -> (B, K, D) embedded tokens; ``ids_keep=None``: all N."""
        if self.pixel_mean is not None:
            video = (video - self.pixel_mean) / self.pixel_std
        visible = kernels.patchify_gather(video, self.arch.tubelet, ids_keep,
                                          backend=self.kernel_backend)  # (B, K, P)
        pos = self.pos_embed if ids_keep is None else self.pos_embed[ids_keep]
        x = self.patch_embed(visible)  # (B, K, D)
        return x + pos.to(x.dtype)

    def forward(self, video: torch.Tensor | None, ids_keep: torch.Tensor,
                ids_decode: torch.Tensor | None = None) -> torch.Tensor:
        """video (B, T, H, W, C) on the first chunk; ids_keep (B, K) everywhere; ids_decode
        (B, S), ascending and holding ids_keep: the tokens the decoder runs on (None: all N,
        ``masking.make_decoder_masks``).

        Returns the next chunk's input [s, b, h], or on the last chunk the
        predicted tubelets (B, S, P), S = N without ids_decode.
        """
        b, k = ids_keep.shape
        n = self.arch.num_tokens if ids_decode is None else ids_decode.shape[1]
        if self.pre_process:
            hidden = self._to_stack(self.embed(video, ids_keep),
                                    self.encoder_multiple)  # [K_pad(/tp), B, D]
        else:
            hidden = self.input_tensor
        if self.encoder is not None:
            mask = self._pad_mask(k, b, self.encoder_multiple, hidden.device)
            hidden = self.encoder(hidden, attention_mask=mask)
        if self.has_transition:
            if self.encoder_norm is not None:
                hidden = self.encoder_norm(hidden)
            x = self.decoder_embed(self._from_stack(hidden, k))  # (B, K, Dd)
            if ids_decode is None:
                slots, pos = ids_keep, self.decoder_pos_embed  # (N, Dd)
            else:  # where each visible token sits among the decoded ones
                slots = torch.searchsorted(ids_decode.contiguous(), ids_keep)
                pos = self.decoder_pos_embed[ids_decode]  # (B, S, Dd)
            x = kernels.scatter_tokens(x, slots, self.mask_token, n,
                                       backend=self.kernel_backend)  # (B, S, Dd)
            x = x + pos
            hidden = self._to_stack(x, self.decoder_multiple)  # [S_pad(/tp), B, Dd]
        if self.decoder is not None:
            mask = self._pad_mask(n, b, self.decoder_multiple, hidden.device)
            hidden = self.decoder(hidden, attention_mask=mask)
        if not self.post_process:
            return hidden
        hidden = self.decoder_norm(hidden)
        return self.head(self._from_stack(hidden, n))  # (B, S, P)
