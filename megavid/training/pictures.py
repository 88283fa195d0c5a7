"""Reconstruction pictures: what the MAE saw, what it predicted, and how far off it was.

``reconstruction_arrays`` turns one clip, its mask and the model's predicted
tubelets into the four rows of the picture (original, masked input,
reconstruction, per-pixel error); ``draw_grid`` draws them with one column per
frame, ``write_mp4`` plays the rows side by side. ``megavid.visualize`` and the
trainer (``--log-images-interval``, and the end of a run with validation clips)
both use them.

With ``norm_pix_loss`` the model predicts each tubelet normalised by its own
mean and std; as VideoMAE's visualisation does, the reconstruction is brought
back to pixels with the *target* tubelet's statistics (``mae``: over the whole
tubelet; ``videomae``: per channel), and the picture says so. The error row is
the loss's own squared error (in normalised units under ``norm_pix_loss``),
averaged over channels, on masked tubelets only; its mean over masked pixels is
the clip's MAE loss, which the title prints.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from megavid.config.presets import ModelArch
from megavid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from megavid.kernels.reference import (
    normalize_patches,
    normalize_patches_per_channel,
    patchify,
    unpatchify,
)

EPS = 1e-6  # the loss's: normalize_patches adds it to the variance, the per-channel form to the std
MASKED_GREY = 0.5  # what a hidden tubelet looks like in the masked-input row


def _to_pixels(patches: torch.Tensor, pred: torch.Tensor, channels: int, norm_pix: bool,
               style: str) -> torch.Tensor:
    """Predicted tubelets (N, P) in the pixel space of ``patches`` (N, P)."""
    if not norm_pix:
        return pred
    if style == "videomae":  # per tubelet and channel, / (std + eps)
        x = patches.reshape(patches.shape[0], -1, channels)  # (N, thw, C)
        mean = x.mean(dim=1, keepdim=True)
        std = x.var(dim=1, unbiased=True, keepdim=True).sqrt() + EPS
        return (pred.reshape(x.shape) * std + mean).reshape(pred.shape)
    mean = patches.mean(dim=-1, keepdim=True)  # (N, 1)
    std = (patches.var(dim=-1, unbiased=True, keepdim=True) + EPS).sqrt()
    return pred * std + mean


def _display(video: torch.Tensor, value_range: str) -> np.ndarray:
    """(T, H, W, C) model input -> float32 RGB in [0, 1] for showing."""
    if value_range == "imagenet":
        video = video * torch.tensor(IMAGENET_STD) + torch.tensor(IMAGENET_MEAN)
    return video.clamp(0, 1).numpy().astype(np.float32)


def reconstruction_arrays(video: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, *,
                          arch: ModelArch, norm_pix: bool, norm_pix_style: str = "mae",
                          value_range: str = "unit") -> dict:
    """The picture's data for one clip.

    video (T, H, W, C) as the model saw it; pred (N, P) the model's output; mask (N,)
    bool, True = hidden. Returns float32 arrays ``original``, ``masked``,
    ``reconstruction`` (T, H, W, C) in [0, 1]; ``error`` (T, H, W), 0 on visible
    tubelets; ``pixel_mask`` (T, H, W) bool; and ``loss``, the MAE loss of the clip.
    """
    video, pred = video.float().cpu(), pred.float().cpu()
    mask = mask.bool().cpu()
    patches = patchify(video[None], arch.tubelet)[0]  # (N, P)
    if not norm_pix:
        target = patches
    elif norm_pix_style == "videomae":
        target = normalize_patches_per_channel(patches[None], arch.channels)[0]
    else:
        target = normalize_patches(patches[None])[0]
    squared = (pred - target).pow(2)  # (N, P), the loss's terms
    hidden = mask[:, None]  # (N, 1)
    recon = torch.where(hidden, _to_pixels(patches, pred, arch.channels, norm_pix,
                                           norm_pix_style), patches)

    def frames(x: torch.Tensor) -> torch.Tensor:  # (N, P) -> (T, H, W, C)
        return unpatchify(x[None], arch.tubelet, arch.grid, arch.channels)[0]

    error = frames(torch.where(hidden, squared, torch.zeros_like(squared))).mean(dim=-1)
    pixel_mask = frames(hidden.expand_as(patches).float())[..., 0] > 0.5  # (T, H, W)
    original = _display(video, value_range)
    masked_frames = original.copy()
    masked_frames[pixel_mask.numpy()] = MASKED_GREY
    return {
        "original": original,
        "masked": masked_frames,
        "reconstruction": _display(frames(recon), value_range),
        "error": error.numpy().astype(np.float32),
        "pixel_mask": pixel_mask.numpy(),
        "loss": float(squared[mask].mean()) if mask.any() else 0.0,
        "visible": int((~mask).sum()), "tokens": int(mask.numel()),
        "norm_pix": bool(norm_pix), "norm_pix_style": norm_pix_style,
    }


def error_scale(arrays: dict) -> float:
    """One colour scale for every frame's error: the 99th percentile of the masked pixels'."""
    values = arrays["error"][arrays["pixel_mask"]]
    return float(np.percentile(values, 99)) if values.size and values.max() > 0 else 1.0


def draw_grid(arrays: dict, path: Path | None = None, *, title: str = "") -> np.ndarray:
    """The grid (rows: original, masked input, reconstruction, error; columns: frames) as
    an (H, W, 3) uint8 image, also written to ``path`` as a PNG when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = arrays["original"].shape[0]
    vmax = error_scale(arrays)
    recon_label = "reconstruction"
    if arrays["norm_pix"]:
        recon_label += "\n(un-normalised with\neach tubelet's own\nmean/std)"
    rows = [("original", arrays["original"]),
            (f"masked input\n({arrays['visible']} of {arrays['tokens']}\ntubelets visible)",
             arrays["masked"]),
            (recon_label + "\n+ visible input", arrays["reconstruction"]),
            ("squared error" + ("\n(normalised\npixels)" if arrays["norm_pix"] else ""),
             arrays["error"])]
    cell = 1.3  # inches per frame
    fig = plt.figure(figsize=(cell * frames + 2.1, cell * len(rows) + 0.75))
    grid = fig.add_gridspec(len(rows), frames + 1, width_ratios=[1] * frames + [0.07],
                            left=1.45 / (cell * frames + 2.1), right=0.96, bottom=0.02,
                            top=1 - 0.7 / (cell * len(rows) + 0.75), wspace=0.04, hspace=0.05)
    cmap = matplotlib.colormaps["inferno"].with_extremes(bad="white")  # visible: no error shown
    image = None
    for r, (label, data) in enumerate(rows):
        for t in range(frames):
            ax = fig.add_subplot(grid[r, t])
            if r == len(rows) - 1:
                shown = np.ma.masked_where(~arrays["pixel_mask"][t], data[t])
                image = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
            else:
                ax.imshow(data[t], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {t}", fontsize=8)
            if t == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center", labelpad=4)
    bar = fig.colorbar(image, cax=fig.add_subplot(grid[len(rows) - 1, frames]))
    bar.ax.tick_params(labelsize=6)
    loss_text = (f"MAE loss {arrays['loss']:.4f} = mean squared error over masked pixels"
                 f"{' (normalised targets)' if arrays['norm_pix'] else ''}; visible tubelets "
                 "white in the error row")
    fig.suptitle(f"{title}\n{loss_text}" if title else loss_text, fontsize=8.5)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=fig.dpi)  # the same pixels as ``rgb``
    plt.close(fig)
    return rgb


def _colormap(error: np.ndarray, vmax: float) -> np.ndarray:
    import matplotlib

    return matplotlib.colormaps["inferno"](np.clip(error / vmax, 0, 1))[..., :3]


def write_mp4(arrays: dict, path: Path, *, fps: int = 4, min_height: int = 192) -> Path:
    """The four rows side by side (original | masked | reconstruction | error), one video
    frame per clip frame, upscaled (nearest) to at least ``min_height`` pixels."""
    import av

    error = _colormap(arrays["error"], error_scale(arrays))
    strip = np.concatenate([arrays["original"], arrays["masked"], arrays["reconstruction"],
                            error], axis=2)  # (T, H, 4W, 3)
    scale = max(1, -(-min_height // strip.shape[1]))
    strip = strip.repeat(scale, axis=1).repeat(scale, axis=2)
    strip = (strip[:, : strip.shape[1] // 2 * 2, : strip.shape[2] // 2 * 2] * 255 + 0.5)
    strip = strip.clip(0, 255).astype(np.uint8)  # even sides for yuv420p
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = strip.shape[2], strip.shape[1], "yuv420p"
        stream.options = {"crf": "18"}
        for frame in strip:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return Path(path)


def save_picture(arrays: dict, stem: Path, *, title: str = "", video: bool = True) -> list[Path]:
    """``stem.png`` (the grid), ``stem.npz`` (its data) and, with ``video``, ``stem.mp4``."""
    stem = Path(stem)
    draw_grid(arrays, stem.with_suffix(".png"), title=title)
    np.savez_compressed(stem.with_suffix(".npz"), **{
        k: v for k, v in arrays.items() if isinstance(v, (np.ndarray, float, int, bool))})
    paths = [stem.with_suffix(".png"), stem.with_suffix(".npz")]
    if video:
        paths.append(write_mp4(arrays, stem.with_suffix(".mp4")))
    return paths
