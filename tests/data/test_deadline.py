"""data.decode_timeout_s: a decode that never returns is given up within the deadline, counted
as skipped_timeout, and the stream is the one a file failing at once gives; resume stays exact."""

from __future__ import annotations

import ctypes
import shutil
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from megavid.cli import parse_args
from megavid.config import ConfigError, DataConfig
from megavid.data.dataset import VideoClipDataset
from megavid.data.deadline import POLL_S, DecodeClock
from megavid.data.decode import DecodeError, PyAVDecoder
from megavid.data.loader import SKIP_REASONS, VideoLoader
from megavid.data.synthetic import ramp_frames
from tests.data.helpers import ARCH, make_loader

DEADLINE = 2.0  # seconds, for these tests: 10x a demo sample's decode on a loaded 2-core machine
SLACK = 3.0  # what a restart may add on a loaded 2-core machine (fork + one micro-batch)


def hangs(path) -> bool:
    return "hang" in Path(str(path)).name


def block_forever() -> None:
    """A hang in C code holding the GIL: no signal handler or thread of this process runs again."""
    ctypes.PyDLL(None).sleep(3600)


class HangingDecoder(PyAVDecoder):
    """PyAV, but reading a ``hang*`` file blocks forever (module-level: workers unpickle it)."""

    def decode(self, path, frame_indices):
        if hangs(path):
            block_forever()
        return super().decode(path, frame_indices)


class FailingDecoder(PyAVDecoder):
    """The reference: a ``hang*`` file fails at once (skipped_corrupt) instead."""

    def decode(self, path, frame_indices):
        if hangs(path):
            raise DecodeError(f"{path}: fails at once")
        return super().decode(path, frame_indices)


class BatchMixin:
    """A ``decode_many`` (as DALI's): one hanging file blocks the whole batch."""

    def decode_many(self, jobs):
        out = []
        for path, frames in jobs:
            try:
                out.append(self.decode(path, frames))
            except DecodeError as err:
                out.append(err)
        return out


class HangingBatchDecoder(BatchMixin, HangingDecoder):
    pass


class FailingBatchDecoder(BatchMixin, FailingDecoder):
    pass


@pytest.fixture
def hang_dir(video_dir) -> Path:
    """The six demo clips and one more (a copy) whose decode never returns."""
    shutil.copy(sorted(video_dir.rglob("clip_*.mp4"))[0], video_dir / "hang.mp4")
    return video_dir


def video_loader(folder: Path | list[Path], decoder, *, decode_timeout_s: float = DEADLINE,
                 start_step: int = 0) -> VideoLoader:
    files = sorted(folder.rglob("*.mp4")) if isinstance(folder, Path) else folder
    dataset = VideoClipDataset(files, decoder=decoder, num_frames=ARCH.num_frames,
                               image_size=ARCH.image_size, frame_stride=2, value_range="unit",
                               seed=7)
    return VideoLoader(dataset, global_batch_size=8, micro_batch_size=2, dp_rank=0, dp_size=1,
                       num_workers=2, seed=7, start_step=start_step,
                       decode_timeout_s=decode_timeout_s)


def timed_take(loader, n: int) -> tuple[list[dict], list[float]]:
    """``n`` micro-batches and how long the rank waited for each."""
    it, batches, waits = iter(loader), [], []
    for _ in range(n):
        start = time.perf_counter()
        batches.append(next(it))
        waits.append(time.perf_counter() - start)
    return batches, waits


def assert_same_stream(got: list[dict], want: list[dict]) -> None:
    for a, b in zip(got, want, strict=True):
        assert a["index"].equal(b["index"]) and a["video"].equal(b["video"])


@pytest.mark.parametrize("hanging, failing, restarts", [
    (HangingDecoder, FailingDecoder, 1),
    # a batch decode that hangs names no file: it is redone one by one, which names it
    (HangingBatchDecoder, FailingBatchDecoder, 2),
], ids=["one_by_one", "batched"])
def test_hanging_decode_is_skipped_within_the_deadline(hang_dir, hanging, failing, restarts):
    # 7 files, 8 positions: every file is met once as its own position's first choice
    reference = video_loader(hang_dir, failing())
    want, _ = timed_take(reference, 4)
    loader = video_loader(hang_dir, hanging())
    got, waits = timed_take(loader, 4)
    assert max(waits) < restarts * DEADLINE + SLACK, waits
    assert loader.restarts == restarts
    assert_same_stream(got, want)  # the replaced samples are those a failing file gets
    assert reference.stats["skipped_corrupt"] == 1 and reference.stats["replaced"] >= 1
    assert loader.stats == {**reference.stats, "skipped_corrupt": 0, "skipped_timeout": 1}
    assert loader.file_events == [("skipped_timeout", str(hang_dir / "hang.mp4"))]
    assert loader.state_dict() == {"step": 1, "micro_batch": 0}  # 4 handed out: exact


def test_resume_after_a_timeout_is_exact(hang_dir):
    want, _ = timed_take(video_loader(hang_dir, FailingDecoder()), 15)
    loader = video_loader(hang_dir, HangingDecoder())
    it = iter(loader)
    first = [next(it) for _ in range(6)]  # the hang is in step 0: a restart in between
    state = loader.state_dict()
    assert state == {"step": 1, "micro_batch": 2}
    rest = [next(it) for _ in range(2)]
    del it
    assert_same_stream(first + rest, want[:8])
    resumed = video_loader(hang_dir, FailingDecoder())
    resumed.load_state_dict(state)
    assert_same_stream(timed_take(resumed, 2)[0], rest)
    # The rank keeps the mark: a new pass (14 positions: epoch 3 whole) skips the file at once.
    again, waits = timed_take(loader, 7)
    assert_same_stream(again, want[8:])
    assert max(waits) < DEADLINE and loader.restarts == 1


def test_a_slow_real_file_times_out(tmp_path, demo_clips):
    # A real H.264 stream whose packets take libav (and the frame index) ~7 s to walk on an
    # idle core: given up at the deadline, like a hang, while the demo clips read in ~0.1 s.
    slow = write_slow_stream(tmp_path / "slow.h264", packets=2_000_000)
    files = [demo_clips[0], slow, demo_clips[1]]
    loader = video_loader(files, PyAVDecoder())
    batches, waits = timed_take(loader, 2)
    assert loader.file_events == [("skipped_timeout", str(slow))] and loader.restarts == 1
    assert [int(i) for mb in batches for i in mb["index"]] == [0, 1, 2, 3]
    assert max(waits) < DEADLINE + SLACK


def write_slow_stream(path: Path, packets: int) -> Path:
    """An Annex-B H.264 file: the parameter sets, then an 8-frame 16x16 GOP (IDR + 7 P) over
    and over, ``packets`` frames in all (16 bytes each): cheap to write, slow to demux."""
    base = path.with_name("gop.h264")
    with av.open(str(base), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.height = stream.width = 16
        stream.pix_fmt, stream.options = "yuv420p", {"bframes": "0", "keyint": "8"}
        for image in ramp_frames(8, 16, 16):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    units = [b"\x00\x00\x00\x01" + u for u in base.read_bytes().split(b"\x00\x00\x00\x01") if u]
    kinds = [u[4] & 0x1F for u in units]  # NAL unit types: 7/8 parameter sets, 5 IDR, 1 P
    head = b"".join(u for u, k in zip(units, kinds) if k in (7, 8))
    gop = b"".join(u for u, k in zip(units, kinds) if k in (1, 5))
    path.write_bytes(head + gop * (packets // (kinds.count(1) + kinds.count(5))))
    base.unlink()
    return path


def test_no_deadline_leaves_the_loader_as_it_was(video_dir):
    loader = make_loader(video_dir, num_workers=2, decode_timeout_s=0)
    assert loader.decode_timeout_s == 0
    batch = next(iter(loader))
    assert loader.dataset.clock is None and batch["video"].shape[0] == 2


def test_deadline_settings_are_checked():
    assert DataConfig(num_workers=1).resolved_decode_timeout_s() == 30.0
    assert DataConfig(num_workers=0).resolved_decode_timeout_s() == 0.0  # unset: none there
    with pytest.raises(ConfigError, match=r"data\.decode_timeout_s \(--decode-timeout-s\): -1"):
        DataConfig(decode_timeout_s=-1).check()
    with pytest.raises(ConfigError, match=r"needs data\.num_workers >= 1.*--decode-timeout-s 0"):
        DataConfig(num_workers=0, decode_timeout_s=5).check()
    DataConfig(num_workers=0, decode_timeout_s=0).check()
    assert parse_args(["--decode-timeout-s", "5"]).data.decode_timeout_s == 5.0
    assert "skipped_timeout" in SKIP_REASONS and POLL_S <= 0.1


def test_clock_names_the_overdue_decode():
    clock = DecodeClock(2)
    clock.rows[1] = torch.tensor([17.0, 3.0, time.monotonic() - 5.0], dtype=torch.float64)
    (late,) = clock.overruns(1.0)
    assert (late.worker, late.position, late.file_id) == (1, 17, 3) and late.seconds > 4.9
    assert clock.overruns(10.0) == []
    assert np.all(clock.rows[0].numpy() == 0)
