"""The stage map: which pipeline rank and model chunk hold each layer.

A stack of ``num_layers`` layers (encoder + decoder when training, the encoder
alone for feature extraction) is cut into ``pp * vpp`` equal contiguous chunks;
chunk ``c`` lives on pipeline rank ``c % pp`` as its model chunk ``c // pp``
(megatron-core's interleaved order). The builder, the feature API, the
checkpoint code and the planner all read placement from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from megavid.config.schema import ConfigError


@dataclass(frozen=True)
class StageMap:
    num_layers: int
    pp: int = 1
    vpp: int = 1

    def __post_init__(self):
        if self.num_layers % (self.pp * self.vpp):
            raise ConfigError(
                f"--pp {self.pp} x --vpp {self.vpp} = {self.pp * self.vpp} chunks do not divide "
                f"the {self.num_layers} layers; pick pp*vpp dividing the layer count")

    @property
    def num_chunks(self) -> int:
        return self.pp * self.vpp

    @property
    def layers_per_chunk(self) -> int:
        return self.num_layers // self.num_chunks

    def chunk_layers(self, chunk: int) -> range:
        """Layers of global chunk ``chunk`` (0 .. pp*vpp - 1)."""
        size = self.layers_per_chunk
        return range(chunk * size, (chunk + 1) * size)

    def rank_chunks(self, pp_rank: int) -> list[int]:
        """Global chunks of pipeline rank ``pp_rank``, in its model-chunk order."""
        return [v * self.pp + pp_rank for v in range(self.vpp)]

    def rank_layers(self, pp_rank: int) -> list[range]:
        """Layers of each model chunk of pipeline rank ``pp_rank``."""
        return [self.chunk_layers(c) for c in self.rank_chunks(pp_rank)]

    def owner(self, layer: int) -> tuple[int, int]:
        """(pipeline rank, model chunk index on it) of layer ``layer``."""
        chunk = layer // self.layers_per_chunk
        return chunk % self.pp, chunk // self.pp
