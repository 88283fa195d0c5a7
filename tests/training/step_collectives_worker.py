"""One rank of ``test_step_collectives``: train a few steps, counting collectives and host syncs.

    torchrun --nproc-per-node 2 -m tests.training.step_collectives_worker OUT.json [key=value ...]

Every ``torch.distributed`` collective and every host read of a tensor (``item``,
``tolist``, ``cpu``, ``numpy``, ``int()``, ``float()``, ``bool()``) is counted by who called
it: the first frame outside torch (and outside this file and the CPU compatibility
layer, which only forwards torch calls) names the megavid module, ``megatron`` or ``other``. A call inside another counted call (``all_gather_object`` runs
``all_gather``) counts once, as the outer one. Counts are kept per optimizer step of
``Trainer.train``, from the start of one step to the start of the next (so the
stop-request agreement after a step counts with that step). Rank 0 writes the JSON.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import Counter

import torch
import torch.distributed as dist

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
               "reduce_scatter", "broadcast", "all_gather_object", "broadcast_object_list",
               "gather", "scatter", "reduce", "all_to_all", "all_to_all_single", "barrier",
               "monitored_barrier", "send", "recv", "batch_isend_irecv")
# isend/irecv are not wrapped: P2POp checks its op is the very function (pipeline sends
# go through batch_isend_irecv, counted)
HOST_READS = ("item", "tolist", "cpu", "numpy", "__int__", "__float__", "__bool__")

PASS_THROUGH = "megavid.parallel.cpu_compat"  # forwards torch calls on CPU: not the caller

_state = threading.local()
counts: dict[int, Counter] = {}
current = {"step": 0}


def _owner(frame) -> str:
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (name.startswith("torch") or name in (__name__, "__main__", PASS_THROUGH)):
            top = name.split(".")[0]
            if top == "megavid":  # the module, and with COUNT_WHERE=1 the line
                return f"{name}:{frame.f_lineno}" if os.environ.get("COUNT_WHERE") else name
            return "megatron" if top == "megatron" else "other"
        frame = frame.f_back
    return "other"


def _counted(kind: str, name: str, fn):
    def wrapper(*args, **kwargs):
        if getattr(_state, "inside", False):
            return fn(*args, **kwargs)
        _state.inside = True
        try:
            owner = _owner(sys._getframe(1))
            counts.setdefault(current["step"], Counter())[f"{kind}:{owner}:{name}"] += 1
            return fn(*args, **kwargs)
        finally:
            _state.inside = False
    return wrapper


def install() -> None:
    for name in COLLECTIVES:
        if hasattr(dist, name):
            setattr(dist, name, _counted("collective", name, getattr(dist, name)))
    for name in HOST_READS:
        setattr(torch.Tensor, name, _counted("sync", name, getattr(torch.Tensor, name)))


install()  # before megavid and megatron-core bind any names

from megavid.config import load_config  # noqa: E402
from megavid.training.trainer import Trainer  # noqa: E402


def main(out: str, *overrides: str) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    settings = {"model.preset": "tiny", "data.mock": True, "train.train_iters": 6,
                "train.lr_warmup_iters": 1, "train.global_batch_size": 8,
                "train.micro_batch_size": 2, "log.log_interval": 100,
                "log.tensorboard": False, "log.plot": False,
                "log.log_dir": os.path.join(os.path.dirname(out), "run")}
    for item in overrides:
        key, value = item.split("=", 1)
        settings[key] = json.loads(value)
    trainer = Trainer(load_config(overrides=settings))
    trainer.loader.file_events = []  # the video loader's counters: DataStats takes part

    guarded = trainer._guarded_step

    def step_start():
        current["step"] = trainer.step + 1
        return guarded()

    trainer._guarded_step = step_start
    try:
        trainer.train()
    finally:
        trainer.close()
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({str(k): dict(v) for k, v in counts.items()}, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
