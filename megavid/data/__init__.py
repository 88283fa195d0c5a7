"""Training data: sources, the global sample stream, video decoding, augmentation, demo clips.

``build_train_loader`` is what the trainer calls; ``ensure_demo_clips`` makes
the synthetic clips a run uses when ``data.path`` is unset.
"""

from megavid.data.dali import build_decoder
from megavid.data.decode import DecodeError, PyAVDecoder, VideoDecoder, VideoInfo
from megavid.data.demo_clips import ensure_demo_clips
from megavid.data.loader import (
    VALID_SEED,
    VideoLoader,
    build_train_loader,
    build_valid_loader,
)
from megavid.data.sources import Clip, list_clips

__all__ = [
    "Clip", "DecodeError", "PyAVDecoder", "VideoDecoder", "VideoInfo", "VideoLoader",
    "VALID_SEED", "build_decoder", "build_train_loader", "build_valid_loader", "ensure_demo_clips",
    "list_clips",
]
