"""Frozen encoders for inference: read any source, run it at any depth in any TP/PP layout.

``load_encoder`` and ``source_arch`` are what evaluation, feature extraction,
the reconstruction pictures and the converters share (``megavid.eval``,
``python -m megavid.features``).
"""

from megavid.inference.encoder import Encoder, load_encoder, resize_chunk
from megavid.inference.sources import read_source, source_arch

__all__ = ["Encoder", "load_encoder", "read_source", "resize_chunk", "source_arch"]
