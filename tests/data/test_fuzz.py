"""Fuzzing the decode path: mutated real clips are usable or skipped with a reason, never a
crash, a dead worker or a hang (``megavid.data.fuzz``; the long run: benchmarks/fuzz_decode.py)."""

from __future__ import annotations

import itertools

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megavid.data import fuzz
from megavid.data.dali import DALIDecoder, dali_available
from megavid.data.dataset import VideoClipDataset
from megavid.data.decode import PyAVDecoder
from megavid.data.frame_index import vpx_frame_sizes
from megavid.data.loader import SKIP_REASONS
from tests.data.helpers import make_loader, take

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_names = itertools.count()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    return fuzz.seed_clips(tmp_path_factory.mktemp("seeds"))


@pytest.fixture(scope="module")
def decoders():
    """One of each, for every example (their frame-index caches are keyed by path, and every
    mutated file gets a new one)."""
    out = {"pyav": PyAVDecoder()}
    if dali_available():
        out["dali"] = DALIDecoder(device="cpu")
    return out


def write_mutant(folder, seed, kinds, rng_seed):
    data, done = fuzz.mutate(seed.read_bytes(), np.random.default_rng(rng_seed), kinds)
    path = folder / f"m{next(_names):05d}{seed.suffix}"
    path.write_bytes(data)
    return path, done


@FUZZ
@given(which=st.integers(0, 6), rng_seed=st.integers(0, 2**32 - 1),
       kinds=st.lists(st.sampled_from(sorted(fuzz.MUTATIONS)), min_size=1, max_size=3))
def test_mutated_clips_are_used_or_skipped(seeds, decoders, tmp_path, which, rng_seed, kinds):
    # 120 examples x (PyAV, and DALI-CPU for WebM): about 12 s on 2 cores
    seed = seeds[which % len(seeds)]
    path, done = write_mutant(tmp_path, seed, kinds, rng_seed)
    outcome = fuzz.check_file(path, seeds[0], decoder=decoders["pyav"])
    assert outcome == "usable" or outcome in SKIP_REASONS, (done, outcome)
    if "dali" in decoders and seed.suffix == ".webm":
        outcome = fuzz.check_file(path, seeds[1], decoder=decoders["dali"])
        assert outcome == "usable" or outcome in SKIP_REASONS, (done, outcome)


def test_structure_aware_mutations_edit_what_they_say(seeds):
    mp4, webm = seeds[0].read_bytes(), seeds[1].read_bytes()
    assert {b"moov", b"trak", b"stsd", b"avc1"} <= {kind for _, _, kind in fuzz.mp4_boxes(mp4)}
    assert {0x18538067, 0x1F43B675, fuzz.EBML_CODEC_ID} <= \
        {ident for _, ident, *_ in fuzz.ebml_elements(webm)}
    swapped, (what,) = fuzz.mutate(mp4, np.random.default_rng(1), ["codec_swap"])
    assert len(swapped) == len(mp4) and what.startswith("codec_swap(avc1->")
    resized, (what,) = fuzz.mutate(webm, np.random.default_rng(2), ["ebml_size"])
    assert len(resized) == len(webm) and resized != webm and what.startswith("ebml_size(")


def test_mutated_folder_through_the_loader_with_workers(seeds, tmp_path):
    # 60 mutated files and one good clip, one epoch through 2 workers with the deadline on:
    # every position is delivered, every file is counted once, nothing stalls (~3 s)
    folder = tmp_path / "fuzz"
    files = fuzz.mutated_files(seeds, folder, 60, seed=5)
    (folder / "zz_good.mp4").write_bytes(seeds[0].read_bytes())
    loader = make_loader(folder, num_workers=2, decode_timeout_s=10, global_batch_size=62)
    batches = take(loader, 31)
    assert sorted(int(i) for mb in batches for i in mb["index"]) == list(range(62))
    assert all(bool(mb["video"].isfinite().all()) for mb in batches)
    skipped = sum(loader.stats[k] for k in SKIP_REASONS)
    assert 0 < skipped <= len(files) and loader.stats["skipped_timeout"] == 0
    assert loader.restarts == 0 and loader.stats["clips"] == 62


def with_keyframe_width(path, out, width: int, keyframe: int = 1):
    """``path`` (profile-0 VP9 WebM) with its ``keyframe``-th keyframe declaring ``width``:
    the one bit the fuzzer flipped to crash DALI-CPU (bits 36..51 of a keyframe header)."""
    data = bytearray(path.read_bytes())
    with av.open(str(path)) as container:
        keys = [bytes(p) for p in container.demux(video=0) if p.size and p.is_keyframe]
    start = data.find(keys[keyframe]) * 8 + 36  # marker/profile/flags, sync code, colour
    for k in range(16):
        bit, value = start + k, ((width - 1) >> (15 - k)) & 1
        data[bit // 8] = (data[bit // 8] & ~(0x80 >> bit % 8)) | (value << 7 - bit % 8)
    out.write_bytes(bytes(data))
    return out


def test_vp9_frame_sizes_are_read_from_the_headers(seeds, tmp_path):
    with av.open(str(seeds[1])) as container:  # vp9.webm: 96x80, a keyframe every 8 frames
        sizes = [vpx_frame_sizes("vp9", bytes(p)) for p in container.demux(video=0) if p.size]
    assert [s for s in sizes if s] == [[(96, 80)]] * 3
    wide = with_keyframe_width(seeds[1], tmp_path / "wide.webm", 128)
    with av.open(str(wide)) as container:
        sizes = [vpx_frame_sizes("vp9", bytes(p)) for p in container.demux(video=0) if p.size]
    assert [s for s in sizes if s] == [[(96, 80)], [(128, 80)], [(96, 80)]]


@pytest.mark.skipif(not dali_available(), reason="DALI not installed")
def test_dali_hands_a_mid_stream_size_change_to_pyav(seeds, tmp_path):
    # Crash found by the fuzzer: a bit flip made the second keyframe of a 95x79 VP9 clip
    # 127 wide; PyAV resizes it, DALI-CPU segfaulted. Now DALI gives such clips to PyAV.
    wide = with_keyframe_width(seeds[3], tmp_path / "odd_wide.webm", 127)
    kw = dict(num_frames=8, image_size=64, frame_stride=2, value_range="unit", seed=0)
    for start in range(3):  # clips from the first, second and third GOP
        pyav = VideoClipDataset([wide], decoder=PyAVDecoder(), **kw)
        dali = VideoClipDataset([wide], decoder=DALIDecoder(device="cpu"), **kw)
        assert dali[start]["video"].equal(pyav[start]["video"])
