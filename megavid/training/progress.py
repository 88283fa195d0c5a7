"""What a person watching a run sees: console lines, TensorBoard, W&B, metrics.jsonl, plots.

Only the logging rank (global rank 0) writes; every other rank gets a
``Progress`` whose methods do nothing, so the training loop never branches.
TensorBoard and W&B get the same scalars under the same names: ``train/<metric>``,
``val/loss`` and ``data/<counter>``, and the same ``val/reconstruction`` image.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import yaml
from rich.console import Console

from megavid.config import LogConfig
from megavid.training.pictures import draw_grid, save_picture


def default_log_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def _start_wandb(cfg: LogConfig, log_dir: Path, resolved_config: dict):
    """A W&B run (rank 0 only); config validation checked that wandb is installed."""
    import wandb  # optional: pip install 'megavid[wandb]'
    save_dir = Path(cfg.wandb_save_dir) if cfg.wandb_save_dir else log_dir
    save_dir.mkdir(parents=True, exist_ok=True)
    return wandb.init(project=cfg.wandb_project, name=cfg.wandb_exp_name, dir=str(save_dir),
                      config=resolved_config)


class Progress:
    def __init__(self, log_dir: Path, cfg: LogConfig, *, total_steps: int, enabled: bool,
                 resolved_config: dict):
        self.enabled = enabled
        self.total_steps = total_steps
        self.log_interval = max(1, cfg.log_interval)
        self.plot = cfg.plot
        self.log_dir = Path(log_dir)
        self.console = Console(highlight=False, soft_wrap=True)
        self.history: list[dict] = []
        self._start = time.perf_counter()
        self._writer = self._wandb = None
        if not enabled:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.log_dir / "config.yaml").write_text(yaml.safe_dump(resolved_config, sort_keys=False))
        self._jsonl = (self.log_dir / "metrics.jsonl").open("a", buffering=1)
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir / "tensorboard"))
        if cfg.wandb_project:
            self._wandb = _start_wandb(cfg, self.log_dir, resolved_config)

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
        scalars = board_scalars(metrics)
        if self._writer is not None:
            for tag, value in scalars.items():
                self._writer.add_scalar(tag, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        if step % self.log_interval == 0 or step == self.total_steps or "val_loss" in metrics:
            val = f" | val loss {metrics['val_loss']:.4f}" if "val_loss" in metrics else ""
            self.console.print(self._line(metrics) + val + _skips(metrics.get("data", {})))

    def log_picture(self, arrays: dict, step: int, *, boards: bool, to_disk: bool) -> None:
        """A reconstruction (``pictures.reconstruction_arrays``): ``val/reconstruction`` in
        TensorBoard and W&B (``boards``), and/or ``reconstruction.png/.mp4/.npz`` in the run."""
        if not self.enabled:
            return
        title = f"step {step}, validation sample {arrays.get('sample', 0)}"
        if to_disk:
            paths = save_picture(arrays, self.log_dir / "reconstruction", title=title)
            self.console.print(f"reconstruction: {paths[0]} (and {paths[-1].name})")
        if boards and (self._writer is not None or self._wandb is not None):
            image = draw_grid(arrays, title=title)  # (H, W, 3) uint8
            if self._writer is not None:
                self._writer.add_image("val/reconstruction", image, step, dataformats="HWC")
            if self._wandb is not None:
                import wandb

                self._wandb.log({"val/reconstruction": wandb.Image(image, caption=title)},
                                step=step)

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
        if self._wandb is not None:
            self._wandb.finish()
        if self.plot and self.history:
            path = plot_loss_curve(self.history, self.log_dir / "loss_curve.png")
            self.console.print(f"loss curve: {path}")


def board_scalars(metrics: dict) -> dict[str, float]:
    """TensorBoard's and W&B's scalars of one step: ``train/<metric>``, ``val/loss``,
    ``data/<counter>``; non-finite values are left out."""
    out = {}
    for key, value in metrics.items():
        if key == "step" or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out["val/loss" if key == "val_loss" else f"train/{key}"] = value
    for key, value in metrics.get("data", {}).items():  # loader counters: data/<name>
        out[f"data/{key}"] = value
    return out


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
    ax_loss.plot(steps, [m["loss"] for m in history], color="tab:blue", label="train")
    val = [(m["step"], m["val_loss"]) for m in history if "val_loss" in m]
    if val:
        ax_loss.plot(*zip(*val), color="tab:red", marker="o", label="validation")
        ax_loss.legend()
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
