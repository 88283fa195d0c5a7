"""The warnings megavid hides, in one place: true, known, and nothing a user can act on.

``megavid/__init__.py`` installs these filters, so they are in force before any
megavid module imports megatron-core, whichever command starts (``pretrain``,
``tools.convert``, ``features``, ``eval``, ``visualize``) and in the tests. What
they hide, megavid says instead in one start-up line (``megavid.training.trainer``
prints the backend, kernels, decoder and library versions it chose).

Each entry is narrow: a message pattern and its category. Warnings a user can
act on (a data file skipped, DALI's CPU decoder limits, a loss spike) still show.
"""

from __future__ import annotations

import warnings

# (message regex matched at the start, no ':' (pytest's filter syntax), category, why)
KNOWN_NOISE = (
    # megatron-core, at import: no Transformer Engine / apex on this machine, so it uses its
    # local kernels; megavid's start-up line names the backend instead
    (r"Transformer Engine and Apex are not installed", UserWarning, "optional kernels"),
    (r"Apex is not installed", UserWarning, "optional kernels"),
    # megatron-core's TransformerConfig with its own default cuda_graph_scope
    (r"full scope is deprecated", UserWarning, "megatron-core default"),
    # megatron-core's dist_checkpointing builds torch ShardedTensors for its metadata
    (r"Please use DTensor instead and we are deprecating ShardedTensor", FutureWarning,
     "megatron-core internals"),
    # ... and loads them with torch.distributed.checkpoint's old entry point
    (r"`load_state_dict` is deprecated and will be removed", FutureWarning,
     "megatron-core internals"),
    # megatron-core calls torch's renamed collectives
    (r".*all_gather_into_tensor.* is deprecated", FutureWarning, "megatron-core internals"),
    (r".*reduce_scatter_tensor.* is deprecated", FutureWarning, "megatron-core internals"),
    # megatron-core's @torch.jit.script fusions, at import
    (r"`torch.jit.script_method` is deprecated", DeprecationWarning, "megatron-core internals"),
    # megatron-core 0.16 announcing its next API (shown only under pytest, as all
    # DeprecationWarnings outside __main__); for megavid's maintainers at the next pin
    (r"MLP requires ffn_hidden_size, but it was not provided", DeprecationWarning,
     "megatron-core API notice"),
    (r".*tp_group is None, using default tp group", DeprecationWarning,
     "megatron-core API notice"),
    # an import-time notice inside megatron-core's own package layout
    (r"The following imports from `dynamic_context.py`", DeprecationWarning,
     "megatron-core internals"),
)


# Advice that is right on GPUs (the SLURM renderer sets the variable there) and means
# nothing without CUDA: hidden only when the CPU bridge runs (megavid.parallel.runtime)
CPU_ONLY_NOISE = (
    (r"When using async grad allreduce it is recommended to set the environment variable "
     r"CUDA_DEVICE_MAX_CONNECTIONS", UserWarning, "no CUDA streams on CPU"),
)


def install(*, cpu: bool = False) -> None:
    """Add the filters (idempotent: ``warnings.filterwarnings`` drops exact duplicates);
    ``cpu``: also those that only a run without CUDA may ignore."""
    for message, category, _ in KNOWN_NOISE + (CPU_ONLY_NOISE if cpu else ()):
        warnings.filterwarnings("ignore", message=message, category=category)
