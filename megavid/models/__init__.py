"""megavid's model: presets, the MAE chunks, and the feature API (``load_encoder``,
``source_arch``).

``load_encoder`` is imported on first use, so that ``megavid.models.presets``
stays cheap to import (the config and the planner read it).
"""


def __getattr__(name: str):
    if name in ("load_encoder", "source_arch", "Encoder"):
        from megavid.models import encoder

        return getattr(encoder, name)
    raise AttributeError(f"module 'megavid.models' has no attribute {name!r}")
