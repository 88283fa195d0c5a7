"""megavid's model: the MAE chunks on megatron-core, their layer specs, layout-free
initialisation and state, and the 4DS / Hugging Face weight formats. Sizes are
``megavid.config.presets``; loading a frozen encoder is ``megavid.inference``.
"""
