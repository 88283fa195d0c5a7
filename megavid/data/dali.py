"""NVIDIA DALI decoding behind the ``VideoDecoder`` interface, on CPU or GPU.

DALI's ``fn.decoders.video`` decodes an encoded file held in memory and takes
the frame numbers to return (any order, repeats allowed), which is exactly the
``decode(path, frame_indices)`` contract. The same one-sample pipeline runs with
``device="cpu"`` (FFmpeg's software decoders inside DALI: VP8/VP9 in the
``nvidia-dali-cuda120`` wheel, no H.264/HEVC) or ``device="mixed"`` (NVDEC on
the GPU: H.264/HEVC/VP9/AV1). Frame counts come from PyAV's packet index, so a
sample's plan is the same whichever backend decodes it.

DALI 2.4's CPU decoder does not seek: asked for frames 236..296 of a 300-frame
VP9 file it decodes from frame 0 (measured: 67/157/237 ms for clips starting at
frames 0/128/236, although 128 is a keyframe). So on CPU the decoder is handed
only the packets from the keyframe before the clip to its last frame, remuxed
in memory without decoding (``frame_index.remux_segment``, ~3-5 ms), and the
frame numbers are shifted to match. The GPU path hands over the whole file and
relies on DALI's own frame index (``build_index``) to seek.

A DALI pipeline decodes a batch of samples on its own thread pool, so
``decode_many`` hands it a whole micro-batch at once (the dataset's
``__getitems__`` calls it): with ``num_threads`` threads the samples of one
batch decode in parallel inside one worker process.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Sequence

import numpy as np
import torch

from megavid.config import ConfigError, DataConfig
from megavid.config.preflight import DALI_HINT
from megavid.config.preflight import require_dali as _require_installed
from megavid.data.decode import (
    DecodeError,
    PyAVDecoder,
    UnsupportedCodec,
    VideoDecoder,
    VideoInfo,
)
from megavid.data.frame_index import SizeChanged, remux_segment
from megavid.data.media import Media, read_media

log = logging.getLogger(__name__)

CPU_CODECS = ("vp8", "vp9")  # what DALI's CPU video decoder handles in the pip wheel
MAX_BATCH = 64  # most samples one pipeline run takes (DALI batches may be smaller)


def default_threads(num_workers: int) -> int:
    """``data.dali_threads: 0``: share this process's cores (its CPU affinity, which SLURM
    sets) among the loader's worker processes."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, num_workers))


def dali_available() -> bool:
    return importlib.util.find_spec("nvidia.dali") is not None


def cuda_available() -> bool:
    return torch.cuda.is_available()


def require_dali() -> str:
    """The DALI device to use ("mixed" with CUDA, else "cpu"); a clear error without DALI."""
    _require_installed(dali_available())
    if cuda_available():
        log.info("data.decoder=dali: decoding on the GPU (DALI mixed, NVDEC)")
        return "mixed"
    log.warning("data.decoder=dali without CUDA: DALI's CPU decoder reads only %s; other "
                "files are skipped as skipped_unsupported_codec (data.decoder=auto decodes "
                "them with PyAV)", "/".join(CPU_CODECS))
    return "cpu"


class DALIDecoder:
    """Decodes chosen frames with a DALI pipeline (built lazily per process), a batch at a time."""

    def __init__(self, device: str = "cpu", num_threads: int = 1):
        if device not in ("cpu", "mixed"):
            raise ValueError(f"DALIDecoder device must be 'cpu' or 'mixed', not {device!r}")
        if device == "mixed" and not cuda_available():
            raise ConfigError("DALI GPU decoding (device='mixed') needs CUDA, and "
                              "torch.cuda.is_available() is False here; run on a GPU node, or "
                              "use data.decoder=auto (DALI CPU for VP8/VP9, PyAV for the rest)")
        if num_threads < 1:
            raise ConfigError(f"data.dali_threads: {num_threads} must be >= 1 (0 in the config "
                              "means one share of the cores per loader worker)")
        self.device, self.num_threads = device, num_threads
        self._probe = PyAVDecoder()  # frame counts, sizes and codec from the packets
        self._pipe = None  # built on first decode: DataLoader workers must not inherit it

    def supports(self, codec: str) -> bool:
        return self.device == "mixed" or codec in CPU_CODECS

    def probe(self, path: Media) -> VideoInfo:
        info = self._probe.probe(path)
        if not self.supports(info.codec):
            raise UnsupportedCodec(f"{path}: codec {info.codec!r} is not decoded by DALI on "
                                   f"{self.device} (CPU handles {CPU_CODECS}); transcode with "
                                   "`python -m megavid.data.prepare --codec vp9` or use "
                                   "data.decoder=pyav")
        return info

    def decode(self, path: Media, frame_indices: Sequence[int]) -> np.ndarray:
        """(T, H, W, 3) uint8 RGB, frames in presentation order as PyAV counts them."""
        (out,) = self.decode_many([(path, frame_indices)])
        if isinstance(out, Exception):
            raise out
        return out

    def decode_many(self, jobs: Sequence[tuple[Media, Sequence[int]]]) -> list:
        """One result per ``(path, frame_indices)`` job: its frames, or the ``DecodeError``
        (or ``IndexError``) it raised. The good jobs run as DALI batches; when a batch
        fails, its jobs run one by one so only the bad file's job carries the error."""
        results: list = [None] * len(jobs)
        ready = []  # (job number, encoded bytes, frame numbers inside them)
        for i, (path, frame_indices) in enumerate(jobs):
            try:
                try:
                    ready.append((i, *self._encoded(path, frame_indices)))
                except SizeChanged:  # DALI-CPU would write past its buffers: PyAV resizes
                    results[i] = self._probe.decode(path, frame_indices)
            except (DecodeError, IndexError) as err:
                results[i] = err
        for start in range(0, len(ready), MAX_BATCH):
            chunk = ready[start:start + MAX_BATCH]
            try:
                for (i, _, _), video in zip(chunk, self._run(chunk)):
                    results[i] = video
            except DecodeError as err:
                if len(chunk) == 1:
                    results[chunk[0][0]] = DecodeError(f"{jobs[chunk[0][0]][0]}: {err}")
                    continue
                for job in chunk:  # find the bad one(s)
                    try:
                        results[job[0]] = self._run([job])[0]
                    except DecodeError as one:
                        results[job[0]] = DecodeError(f"{jobs[job[0]][0]}: {one}")
        return results

    def _encoded(self, path: Media, frame_indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(bytes to hand DALI, the wanted frames' numbers within them)."""
        info = self.probe(path)
        wanted = np.asarray(frame_indices, dtype=np.int32)  # (T,)
        if wanted.size == 0 or wanted.min() < 0 or wanted.max() >= info.num_frames:
            raise IndexError(f"{path}: frame indices {wanted.tolist()} outside "
                             f"[0, {info.num_frames})")
        if self.device == "cpu":  # only the packets the clip needs (DALI-CPU would not seek)
            data, first = remux_segment(path, self._probe.frame_index(path), wanted)
            wanted = wanted - first
        else:
            data = read_media(path)
        return np.frombuffer(data, dtype=np.uint8), wanted  # (bytes,), (T,)

    def _run(self, chunk: list) -> list[np.ndarray]:
        """Decode a batch of (job number, bytes, frames): (T, H, W, 3) uint8 each."""
        pipe = self._pipe or self._build()
        pipe.feed_input("encoded", [encoded for _, encoded, _ in chunk])
        pipe.feed_input("frames", [wanted for _, _, wanted in chunk])
        try:
            (video,) = pipe.run()
        except (RuntimeError, IndexError, ValueError) as err:
            self._pipe = None  # a failed DALI pipeline cannot run again
            raise DecodeError(f"DALI: {str(err).strip().splitlines()[0]}") from None
        if self.device == "mixed":
            video = video.as_cpu()
        # copies: DALI reuses its output buffers on the next run
        return [np.array(video[k]) for k in range(len(chunk))]

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        # Synchronous and unprefetched: a batch in, its frames out, per call; the batch's
        # samples decode in parallel on num_threads threads.
        @pipeline_def(batch_size=MAX_BATCH, num_threads=self.num_threads, prefetch_queue_depth=1,
                      exec_async=False, exec_pipelined=False,
                      device_id=0 if self.device == "mixed" else None)
        def pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            return fn.decoders.video(encoded, device=self.device, frames=frames)

        self._pipe = pipeline()
        self._pipe.build()
        return self._pipe


class AutoDecoder:
    """``data.decoder: auto``: DALI on GPU with CUDA; else DALI-CPU for VP8/VP9; else PyAV."""

    def __init__(self, num_threads: int = 1):
        self.pyav = PyAVDecoder()
        self.dali = None
        if dali_available():
            self.dali = DALIDecoder(device="mixed" if cuda_available() else "cpu",
                                    num_threads=num_threads)
        chosen = ("DALI on GPU (mixed)" if self.dali and self.dali.device == "mixed" else
                  "DALI on CPU for VP8/VP9 files, PyAV for the rest" if self.dali else
                  f"PyAV (DALI not installed: `{DALI_HINT}` for DALI decoding)")
        log.info("data.decoder=auto: decoding with %s", chosen)

    def _backend(self, path: Media):
        info = self.pyav.probe(path)
        use_dali = self.dali is not None and self.dali.supports(info.codec)
        return info, (self.dali if use_dali else self.pyav)

    def probe(self, path: Media) -> VideoInfo:
        return self._backend(path)[0]

    def decode(self, path: Media, frame_indices: Sequence[int]) -> np.ndarray:
        return self._backend(path)[1].decode(path, frame_indices)

    def decode_many(self, jobs: Sequence[tuple[Media, Sequence[int]]]) -> list:
        """DALI's jobs as batches, PyAV's one by one; results (or errors) in job order."""
        results: list = [None] * len(jobs)
        batched = []
        for i, (path, frame_indices) in enumerate(jobs):
            try:
                backend = self._backend(path)[1]
                if backend is self.dali:
                    batched.append(i)
                else:
                    results[i] = backend.decode(path, frame_indices)
            except (DecodeError, IndexError) as err:
                results[i] = err
        if batched:
            for i, out in zip(batched, self.dali.decode_many([jobs[i] for i in batched])):
                results[i] = out
        return results


def build_decoder(name: str, dali_threads: int = 1) -> VideoDecoder:
    """The decoder backend named by ``data.decoder`` (``auto``: ``AutoDecoder``);
    ``dali_threads``: threads of a DALI pipeline."""
    if name not in DataConfig.CHOICES["decoder"]:
        raise ValueError(f"data.decoder: unknown backend {name!r}; choose one of "
                         f"{DataConfig.CHOICES['decoder']}")
    if name == "pyav":
        return PyAVDecoder()
    if name == "dali":
        return DALIDecoder(device=require_dali(), num_threads=dali_threads)
    return AutoDecoder(num_threads=dali_threads)
