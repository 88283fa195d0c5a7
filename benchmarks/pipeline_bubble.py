"""Pipeline bubble of megatron-core's real schedules, measured on CPU against (p-1)/(v m + p - 1).

Each pipeline rank runs stand-in model chunks of known cost: a forward that
sleeps ``stage_ms / v`` and a backward that sleeps twice that (sleep, so four
ranks on two cores do not compete for them). A rank is busy ``m v`` chunk
forwards and backwards per step; the rest of its step time is bubble (plus
gloo p2p overhead, which the theory leaves out):

    bubble = 1 - m (t_f + t_b) / step_time        theory = (p - 1) / (v m + p - 1)

    python benchmarks/pipeline_bubble.py --out results/pipeline_bubble.json [--quick]

It relaunches itself under torchrun with 4 gloo processes (pp 2 runs with dp 2).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
WORLD = 4
SETTINGS = {  # (pp, vpp, micro-batches)
    "full": [(2, 1, 4), (2, 1, 8), (4, 1, 4), (4, 1, 8), (4, 1, 16), (4, 2, 8), (4, 2, 16)],
    "quick": [(2, 1, 4), (4, 1, 8), (4, 2, 8)],
}


class _Sleep(torch.autograd.Function):
    """Identity whose forward sleeps ``ms`` and backward ``2 ms``: a chunk of known cost."""

    @staticmethod
    def forward(ctx, x, ms):
        ctx.ms = ms
        time.sleep(ms / 1e3)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(2 * ctx.ms / 1e3)
        return grad, None


class SleepChunk(torch.nn.Module):
    """A model chunk with megatron's pipeline hooks and nothing else."""

    def __init__(self, config, ms: float):
        super().__init__()
        from megatron.core.enums import ModelType

        self.config = config
        self.model_type = ModelType.encoder_or_decoder
        self.ms = ms
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.input_tensor = None

    def set_input_tensor(self, tensor) -> None:
        self.input_tensor = tensor[0] if isinstance(tensor, (list, tuple)) else tensor

    def forward(self, x):
        x = x if self.input_tensor is None else self.input_tensor
        return _Sleep.apply(x * self.scale, self.ms)


def _measure(pp: int, vpp: int, m: int, stage_ms: float, shape, repeats: int,
             overlap: bool = False) -> float:
    """Median step seconds of one schedule on this rank (all ranks call it)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megavid.parallel import runtime

    runtime.init_model_parallel(tp=1, pp=pp, vpp=vpp if vpp > 1 else None)
    # the schedules read p2p shapes and pipeline options from a TransformerConfig
    config = TransformerConfig(num_layers=pp * vpp, hidden_size=shape[2], num_attention_heads=1,
                               pipeline_model_parallel_size=pp,
                               virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None,
                               pipeline_dtype=torch.float32,
                               overlap_p2p_comm=overlap, batch_p2p_comm=not overlap)
    chunks = [SleepChunk(config, stage_ms / vpp) for _ in range(vpp)]

    def forward_step(data_iterator, model):
        out = model(next(data_iterator))
        return out, lambda o: (o.float().mean(), {"loss": o.float().mean().detach()})

    times = []
    for _ in range(repeats + 1):  # the first run warms up the p2p connections
        data = [iter([torch.randn(*shape) for _ in range(m)]) for _ in range(vpp)]
        torch.distributed.barrier()
        start = time.perf_counter()
        get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=data if vpp > 1 else data[0],
            model=chunks if vpp > 1 else chunks[0], num_microbatches=m,
            seq_length=shape[0], micro_batch_size=shape[1], forward_only=False)
        times.append(time.perf_counter() - start)
    parallel_state.destroy_model_parallel()
    return sorted(times[1:])[len(times[1:]) // 2]


def _row(pp: int, vpp: int, m: int, overlap: bool, step: float, overhead: float,
         stage_ms: float) -> dict:
    """One results row: measured bubble fraction, its theory, and the times behind them."""
    busy = m * 3 * stage_ms / 1e3  # forward + 2x backward per micro-batch, all chunks
    theory = (pp - 1) / (vpp * m + pp - 1)
    return {"name": f"bubble pp{pp} vpp{vpp} m{m}" + (" overlap_p2p" if overlap else ""),
            "value": round(1 - busy / step, 4), "unit": "fraction", "theory": round(theory, 4),
            "step_s": round(step, 4), "ideal_s": round(busy, 4),
            "theory_step_s": round(busy / (1 - theory), 4), "overhead_s": round(overhead, 4),
            "params": {"pp": pp, "vpp": vpp, "num_microbatches": m, "overlap_p2p_comm": overlap,
                       "stage_ms_fwd": stage_ms, "stage_ms_bwd": 2 * stage_ms}}


def worker(args) -> None:
    """Runs under torchrun: every setting on every rank, rows gathered on rank 0."""
    from megavid.parallel import runtime

    runtime.init_distributed()
    rows = []
    chosen = SETTINGS["quick" if args.quick else "full"]
    settings = [(pp, vpp, m, False) for pp, vpp, m in chosen]
    settings += [(pp, vpp, m, True) for pp, vpp, m, _ in settings if vpp > 1]
    for pp, vpp, m, overlap in settings:
        step = _measure(pp, vpp, m, args.stage_ms, (8, 1, 16), args.repeats, overlap)
        slowest = [0.0] * WORLD
        torch.distributed.all_gather_object(slowest, step)
        step = max(slowest)  # the step ends when the slowest rank does
        # the same schedule with ~free chunks: what p2p and Python cost on their own
        empty = _measure(pp, vpp, m, 0.01, (8, 1, 16), args.repeats, overlap)
        torch.distributed.all_gather_object(slowest, empty)
        overhead = max(slowest)
        rows.append(_row(pp, vpp, m, overlap, step, overhead, args.stage_ms))
    if torch.distributed.get_rank() == 0:
        Path(args.rows).write_text(json.dumps(rows))
    runtime.shutdown()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="pipeline_bubble.json")
    parser.add_argument("--quick", action="store_true", help="three settings instead of seven")
    parser.add_argument("--stage-ms", type=float, default=20.0,
                        help="forward ms per stage per micro-batch (backward: twice)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rows", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from megavid.tools.bench_results import write_results

    with tempfile.TemporaryDirectory() as tmp:
        rows_path = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD),
               "--master-port", str(_free_port()), __file__, "--worker",
               "--rows", str(rows_path), "--stage-ms", str(args.stage_ms),
               "--repeats", str(args.repeats)]
        cmd += ["--quick"] if args.quick else []
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        subprocess.run(cmd, cwd=REPO, env=env,
                       check=True, timeout=600)
        rows = json.loads(rows_path.read_text())
    ratios = {f"{r['name']} measured_vs_theory": round(r["value"] / r["theory"], 3)
              for r in rows}
    obj = write_results(args.out, "benchmarks.pipeline_bubble", rows, ratios,
                        notes=["CPU gloo, sleep-based chunks: the excess over theory is p2p "
                               "and Python overhead per micro-batch (overhead_s: the same "
                               "schedule with free chunks); interleaving doubles the p2p "
                               "messages, so it suffers most on CPU"],
                        extra={"settings": {"world": WORLD, "quick": args.quick,
                                            "stage_ms_fwd": args.stage_ms}})
    for r in obj["results"]:
        print(f"{r['name']:36s} measured {r['value']:.3f}  theory {r['theory']:.3f}  "
              f"step {r['step_s']:.3f}s (theory {r['theory_step_s']:.3f}s, "
              f"free-chunk overhead {r['overhead_s']:.3f}s)")


if __name__ == "__main__":
    main()
