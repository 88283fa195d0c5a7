"""Entry point: ``python -m megavid.pretrain [--config FILE] [flags]``.

Thin on purpose (torchtitan's shape): parse, build the trainer, train, close.
With no arguments it runs the CPU demo: a tiny model on synthetic clips.
"""

from __future__ import annotations

import os
import sys

from megavid.parallel import lifeline

lifeline.bind_rank()  # first: the imports below take seconds, and the launcher may die in them

from megavid import faults
from megavid.cli import parse_args
from megavid.config import ConfigError
from megavid.parallel import runtime
from megavid.training.checkpoint_dirs import CheckpointError
from megavid.training.trainer import CollectiveFailed, Trainer, TrainingStopped


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        trainer = Trainer(cfg)
    except (ConfigError, CheckpointError, faults.FaultSpecError) as err:
        print(f"megavid: error: {err}", file=sys.stderr)
        runtime.shutdown()
        return 2
    try:
        trainer.train()
    except TrainingStopped as err:
        print(f"megavid: stopped: {err}", file=sys.stderr)
        return 1
    except CollectiveFailed as err:
        # the process group is unusable: leave without the collective clean-up that would hang
        print(f"megavid: error: {err}", file=sys.stderr, flush=True)
        os._exit(3)
    finally:
        trainer.close()
        runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
