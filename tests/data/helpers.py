"""Helpers for the data tests: a loader over a folder, taking micro-batches, the bad folder
(its clip makers live in ``megavid.data.synthetic``, shared with the fuzzer)."""

from __future__ import annotations

from pathlib import Path

from megavid.config import DataConfig
from megavid.config.presets import get_preset
from megavid.data import build_train_loader
from megavid.data.synthetic import (  # noqa: F401 (the tests import them from here)
    CODECS,
    SUFFIX,
    moving_frames,
    ramp_frames,
    write_audio_only,
    write_rotated_video,
    write_truncated,
    write_unknown_codec,
    write_vfr_video,
    write_video,
)

ARCH = get_preset("demo")  # 8 frames of 64x64
CLIP_FRAMES, CLIP_SIZE = 32, (80, 96)


def make_loader(folder: Path, *, dp_rank: int = 0, dp_size: int = 1, global_batch_size: int = 8,
                micro_batch_size: int = 2, num_workers: int = 0, seed: int = 7,
                start_step: int = 0, **data):
    cfg = DataConfig(path=str(folder), num_workers=num_workers, **data)
    return build_train_loader(cfg, ARCH, global_batch_size=global_batch_size,
                              micro_batch_size=micro_batch_size, dp_rank=dp_rank,
                              dp_size=dp_size, seed=seed, start_step=start_step)


def take(loader, n: int) -> list[dict]:
    """The first ``n`` micro-batches of a fresh iterator over ``loader``."""
    it = iter(loader)
    return [next(it) for _ in range(n)]


# One folder with every kind of bad or odd input the loader has a policy for. Sorted order
# matters: a skipped file's sample moves to the next file, and every bad file sits between
# the policy files and o_good, so one pass (16 positions = one epoch) meets each file once as
# its own position's file and the per-sample counters are exact too.
POLICY_FILES = {"b_odd.webm": "odd_size_resized", "c_rotated.webm": "rotated_upright",
                "d_vfr.webm": "vfr_resampled", "e_padded.webm": "padded_short"}
BAD_FILES = {
    "f_empty.webm": "skipped_empty",
    "g_truncated.mp4": "skipped_truncated",
    "h_truncated.webm": "skipped_truncated",
    "i_garbage.webm": "skipped_corrupt",
    "j_text.mp4": "skipped_corrupt",
    "k_audio_only.mp4": "skipped_no_video",
    "l_unknown_codec.mp4": "skipped_unsupported_codec",
    "m_short.webm": "skipped_too_short",
    "n_tiny.webm": "skipped_too_small",
}


def make_bad_folder(root: Path) -> Path:
    """Three good VP9 clips, four usable by a policy, nine bad: 16 files."""
    root.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(("a_good.webm", "o_good.webm", "p_good.webm")):
        write_video(root / name, ramp_frames(32, 80, 96, seed=seed))
    write_video(root / "b_odd.webm", ramp_frames(32, 79, 95, seed=6))
    write_rotated_video(root / "c_rotated.webm", ramp_frames(32, 80, 96, seed=5), -90)
    write_vfr_video(root / "d_vfr.webm", ramp_frames(32, 80, 96, seed=4), [20, 60])
    write_video(root / "e_padded.webm", ramp_frames(6, 80, 96, seed=3))  # 4 <= 6 < 8 frames
    (root / "f_empty.webm").write_bytes(b"")
    write_truncated(root / "g_truncated.mp4", ramp_frames(32, 80, 96), codec="h264")
    write_truncated(root / "h_truncated.webm", ramp_frames(32, 80, 96), codec="vp9")
    (root / "i_garbage.webm").write_bytes(b"\x00\x01garbage" * 300)
    (root / "j_text.mp4").write_text("this is a text file, not a video\n" * 20)
    write_audio_only(root / "k_audio_only.mp4")
    write_unknown_codec(root / "l_unknown_codec.mp4", ramp_frames(16, 64, 64))
    write_video(root / "m_short.webm", ramp_frames(3, 80, 96))  # < 4 of the demo's 8 frames
    write_video(root / "n_tiny.webm", ramp_frames(32, 12, 14))  # short side 12 < 64 / 4
    return root


def expected_counts(epochs: int = 1) -> dict[str, int]:
    """Every counter after ``epochs`` full passes over ``make_bad_folder`` (demo preset):
    skipped_* count files (once, however often met); the rest count samples."""
    counts = {"clips": 16 * epochs, "replaced": len(BAD_FILES) * epochs, "stride_lowered": 0}
    for counter in BAD_FILES.values():
        counts[counter] = counts.get(counter, 0) + 1
    for counter in POLICY_FILES.values():
        counts[counter] = epochs
    return counts
