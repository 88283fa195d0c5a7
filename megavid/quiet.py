"""The warnings megavid hides, in one place: true, known, and nothing a user can act on.

``megavid/__init__.py`` installs these filters, so they are in force before any
megavid module imports megatron-core, whichever command starts (``pretrain``,
``tools.convert``, ``features``, ``eval``, ``visualize``) and in the tests. What
they hide, megavid says instead in one start-up line (``megavid.training.trainer``
prints the backend, kernels, decoder and library versions it chose).

Each entry is narrow: a message pattern and its category (or, for megatron-core's
log lines, its logger and a part of the message). Warnings a user can
act on (a data file skipped, DALI's CPU decoder limits, a loss spike) still show.
"""

from __future__ import annotations

import logging
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
    # megatron-core 0.19's get_megatron_optimizer imports its (unused here) MIMO model class
    (r"MimoModelConfig is experimental", UserWarning, "megatron-core internals"),
    # megatron-core 0.19 reads torch_dist files in one process (no_dist=True) with positional
    # arguments: torch notes both at every checkpoint load
    (r"torch.distributed is disabled, unavailable or uninitialized", UserWarning,
     "megatron-core internals"),
    (r"The argument order of load has been changed", UserWarning, "megatron-core internals"),
)

# megatron-core log lines (logging, not warnings) of the same kind: (logger, message part, why)
KNOWN_LOG_NOISE = (
    # 0.17+ calls its own asynchronous writer ("mcore", which megavid chooses explicitly, see
    # training/checkpoint._async_writer) deprecated whenever it runs, synchronous saves included
    ("megatron.core.dist_checkpointing.strategies.torch", "async save is deprecated",
     "megatron-core internals"),
    # 0.17+ reading a 0.16 checkpoint's common.pt, which it still does by itself
    ("megatron.core.dist_checkpointing.strategies.common", "load_common is deprecated",
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
    for name, part, _ in KNOWN_LOG_NOISE:
        logger = logging.getLogger(name)
        if not any(getattr(f, "part", None) == part for f in logger.filters):
            logger.addFilter(_DropLine(part))


class _DropLine(logging.Filter):
    """Drops the log records that contain ``part``."""

    def __init__(self, part: str):
        super().__init__()
        self.part = part

    def filter(self, record: logging.LogRecord) -> bool:
        return self.part not in record.getMessage()
