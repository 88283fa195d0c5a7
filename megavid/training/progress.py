"""What a person watching a run sees: console lines, TensorBoard, metrics.jsonl, a plot.

Only the logging rank (global rank 0) writes; every other rank gets a
``Progress`` whose methods do nothing, so the training loop never branches.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import yaml
from rich.console import Console


def default_log_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


class Progress:
    def __init__(self, log_dir: Path, *, total_steps: int, tensorboard: bool, plot: bool,
                 log_interval: int, enabled: bool, resolved_config: dict):
        self.enabled = enabled
        self.total_steps = total_steps
        self.log_interval = max(1, log_interval)
        self.plot = plot
        self.log_dir = Path(log_dir)
        self.console = Console(highlight=False, soft_wrap=True)
        self.history: list[dict] = []
        self._start = time.perf_counter()
        self._writer = None
        if not enabled:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "config.yaml").write_text(yaml.safe_dump(resolved_config, sort_keys=False))
        self._jsonl = (self.log_dir / "metrics.jsonl").open("a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir / "tensorboard"))

    def info(self, message: str) -> None:
        if self.enabled:
            self.console.print(message)

    def log_step(self, metrics: dict) -> None:
        """One optimizer step: ``step``, ``loss``, ``grad_norm``, ``lr``, throughput... and
        ``data``, the loader's counters (totals so far, see ``megavid.data.stats``)."""
        if not self.enabled:
            return
        self.history.append(metrics)
        self._jsonl.write(json.dumps(metrics) + "\n")
        step = metrics["step"]
        if self._writer is not None:
            for key, value in metrics.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._writer.add_scalar(f"train/{key}", value, step)
            for key, value in metrics.get("data", {}).items():  # loader counters: data/<name>
                self._writer.add_scalar(f"data/{key}", value, step)
        if step % self.log_interval == 0 or step == self.total_steps:
            self.console.print(self._line(metrics) + _skips(metrics.get("data", {})))

    def _line(self, m: dict) -> str:
        elapsed = time.perf_counter() - self._start
        eta = elapsed / m["step"] * (self.total_steps - m["step"])
        width = len(str(self.total_steps))
        return (
            f"step {m['step']:>{width}}/{self.total_steps} | loss {m['loss']:.4f} | "
            f"grad {m['grad_norm']:.3f} | lr {m['lr']:.2e} | "
            f"{m['clips_per_s']:.1f} clips/s | {m['tokens_per_s']:.0f} tok/s | "
            f"{m['model_tflops_per_device']:.3g} TFLOP/s/dev | MFU {100 * m['mfu']:.1f}% | "
            f"{m['step_time_s'] * 1e3:.0f} ms/step | ETA {_duration(eta)}"
        )

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        if self._writer is not None:
            self._writer.close()
        if self.plot and self.history:
            path = plot_loss_curve(self.history, self.log_dir / "loss_curve.png")
            self.console.print(f"loss curve: {path}")


def _skips(data: dict) -> str:
    """`` | skipped 3 files: corrupt 2, empty 1`` (totals so far), or nothing if none."""
    skips = {k.removeprefix("skipped_"): v for k, v in data.items()
             if k.startswith("skipped_") and v}
    if not skips:
        return ""
    return (f" | skipped {sum(skips.values())} files: "
            + ", ".join(f"{k} {v}" for k, v in skips.items()))


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def plot_loss_curve(history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in history]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(7, 5), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1]})
    ax_loss.plot(steps, [m["loss"] for m in history], color="tab:blue")
    ax_loss.set_ylabel("MAE loss")
    ax_loss.grid(alpha=0.3)
    ax_lr.plot(steps, [m["lr"] for m in history], color="tab:orange")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
