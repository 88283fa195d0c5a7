"""Entry point: ``python -m megavid.pretrain [--config FILE] [flags]``.

Thin on purpose (torchtitan's shape): parse, build the trainer, train, close.
With no arguments it runs the CPU demo: a tiny model on synthetic clips.
"""

from __future__ import annotations

import sys

from megavid.cli import parse_args


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    from megavid.parallel import runtime
    from megavid.config import ConfigError
    from megavid.training.trainer import Trainer

    try:
        trainer = Trainer(cfg)
    except ConfigError as err:
        print(f"megavid: error: {err}", file=sys.stderr)
        runtime.shutdown()
        return 2
    try:
        trainer.train()
    finally:
        trainer.close()
        runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
