"""Pictures of readout predictions next to the truth, for a person to look at.

One figure per task: ``depth.png`` (frame, true depth, predicted depth,
error), ``tracks.png`` (tracks drawn on frames), ``poses.png`` (camera
trajectories seen from above and from the side) and ``boxes.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _frames(num_frames: int, count: int = 4) -> list[int]:
    return sorted(set(np.linspace(0, num_frames - 1, count).round().astype(int).tolist()))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def plot_depth(path: Path, videos: np.ndarray, gt: np.ndarray, pred: np.ndarray,
               max_clips: int = 3) -> Path:
    """videos (N, T, H, W, 3), gt/pred depth (N, T, H, W) metres; the middle frame of each."""
    plt = _pyplot()
    n = min(max_clips, len(gt))
    fig, axes = plt.subplots(n, 4, figsize=(10, 2.6 * n), squeeze=False)
    t = gt.shape[1] // 2
    for row in range(n):
        valid = gt[row, t] > 0
        lo, hi = (np.percentile(gt[row, t][valid], [2, 98]) if valid.any() else (0.0, 1.0))
        error = np.where(valid, np.abs(pred[row, t] - gt[row, t]), np.nan)
        panels = [(videos[row, t], None, "frame"), (np.where(valid, gt[row, t], np.nan),
                                                     "viridis", "true depth (m)"),
                  (pred[row, t], "viridis", "predicted depth (m)"),
                  (error, "magma", "|error| (m)")]
        for ax, (image, cmap, title) in zip(axes[row], panels):
            limits = {} if cmap is None else ({"vmin": lo, "vmax": hi} if "depth" in title
                                              else {"vmin": 0, "vmax": hi - lo})
            shown = ax.imshow(image, cmap=cmap, **limits)
            if cmap is not None:
                fig.colorbar(shown, ax=ax, fraction=0.046)
            ax.set_title(f"{title}, t={t}" if row == 0 else title, fontsize=9)
            ax.axis("off")
    return _save(fig, path)


def plot_tracks(path: Path, video: np.ndarray, gt: np.ndarray, gt_visible: np.ndarray,
                pred: np.ndarray, pred_visible: np.ndarray, max_tracks: int = 12) -> Path:
    """One clip: (T, H, W, 3) frames; tracks (Q, T, 2) pixels. Circles true, crosses predicted."""
    plt = _pyplot()
    frames = _frames(video.shape[0])
    fig, axes = plt.subplots(1, len(frames), figsize=(3 * len(frames), 3.3), squeeze=False)
    colors = plt.cm.tab20(np.linspace(0, 1, max_tracks))
    q = min(max_tracks, len(gt))
    for ax, t in zip(axes[0], frames):
        ax.imshow(video[t], extent=(0, video.shape[2], video.shape[1], 0))
        for i in range(q):
            ax.plot(gt[i, :t + 1, 0], gt[i, :t + 1, 1], "-", color=colors[i], lw=1, alpha=0.6)
            ax.plot(pred[i, :t + 1, 0], pred[i, :t + 1, 1], "--", color=colors[i], lw=1)
            if gt_visible[i, t]:
                ax.plot(*gt[i, t], "o", mfc="none", mec=colors[i], ms=7, mew=1.5)
            if pred_visible[i, t]:
                ax.plot(*pred[i, t], "x", color=colors[i], ms=6, mew=1.5)
        ax.set_xlim(0, video.shape[2])
        ax.set_ylim(video.shape[1], 0)
        ax.set_title(f"frame {t}", fontsize=9)
        ax.axis("off")
    fig.suptitle("point tracks: o / solid = true, x / dashed = predicted", fontsize=10)
    return _save(fig, path)


def plot_poses(path: Path, gt: np.ndarray, pred: np.ndarray, max_clips: int = 4) -> Path:
    """Camera centres of (N, T, 4, 4) poses relative to frame 0: top view (x, z), side (z, y)."""
    plt = _pyplot()
    n = min(max_clips, len(gt))
    fig, axes = plt.subplots(2, n, figsize=(3.2 * n, 6), squeeze=False)
    for col in range(n):
        for row, (a, b, names) in enumerate([(0, 2, ("x (m)", "z (m)")),
                                             (2, 1, ("z (m)", "y (m)"))]):
            ax = axes[row, col]
            for poses, style, label in ((gt[col], "o-", "true"), (pred[col], "x--", "predicted")):
                centres = poses[:, :3, 3]
                ax.plot(centres[:, a], centres[:, b], style, ms=4, label=label)
            ax.plot(0, 0, "k*", ms=9)
            ax.set_xlabel(names[0], fontsize=8)
            ax.set_ylabel(names[1], fontsize=8)
            ax.set_aspect("equal", adjustable="datalim")
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"clip {col}: top view", fontsize=9)
                if col == 0:
                    ax.legend(fontsize=7)
            else:
                ax.invert_yaxis()  # OpenCV: y points down
                ax.set_title("side view", fontsize=9)
    fig.suptitle("camera trajectories relative to frame 0 (star)", fontsize=10)
    return _save(fig, path)


def plot_boxes(path: Path, video: np.ndarray, gt: np.ndarray, visible: np.ndarray,
               pred: np.ndarray) -> Path:
    """One clip: (T, H, W, 3) frames; boxes (M, T, 4) pixels. Solid true, dashed predicted."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    frames = _frames(video.shape[0])
    fig, axes = plt.subplots(1, len(frames), figsize=(3 * len(frames), 3.3), squeeze=False)
    colors = plt.cm.tab10(np.arange(len(gt)) % 10)
    for ax, t in zip(axes[0], frames):
        ax.imshow(video[t], extent=(0, video.shape[2], video.shape[1], 0))
        for i in range(len(gt)):
            for box, style, show in ((gt[i, t], "-", visible[i, t]), (pred[i, t], "--", True)):
                if show:
                    x0, y0, x1, y1 = box
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                           ec=colors[i], ls=style, lw=1.5))
        ax.set_xlim(0, video.shape[2])
        ax.set_ylim(video.shape[1], 0)
        ax.set_title(f"frame {t}", fontsize=9)
        ax.axis("off")
    fig.suptitle("object boxes: solid = true, dashed = predicted from the frame-0 box",
                 fontsize=10)
    return _save(fig, path)
