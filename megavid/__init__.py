"""megavid: a Megatron-style trainer for 4DS video masked auto-encoders."""

__version__ = "0.1.0"
