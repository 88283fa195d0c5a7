"""megavid: a Megatron-style trainer for 4DS video masked auto-encoders."""

from megavid import quiet

__version__ = "0.1.0"

quiet.install()  # before any megavid module imports megatron-core (see megavid/quiet.py)
