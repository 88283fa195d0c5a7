"""The pre-flight: every rule that spans sections, the world size or the machine, run once
before any process group exists.

Each section of the schema checks its own fields (``RunConfig.check``); what needs
more than one section, the number of processes or what this machine has lives
here, so a bad run costs a second and one line naming the flag and the fix,
instead of a queue wait and a stack trace on 256 GPUs. ``validate`` is the part
a config file can be checked against anywhere; ``preflight`` adds the layout
and the machine.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache

import torch

from megavid.config.presets import ModelArch
from megavid.config.schema import ConfigError, RunConfig

TE_HINT = ("pip install 'megavid[te]' on a CUDA machine, or use NVIDIA's PyTorch container")
DALI_HINT = "pip install nvidia-dali-cuda120"  # or -cuda130: the wheel matching the CUDA driver


class LayoutError(ConfigError):
    pass


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    vpp: int
    dp: int
    micro_batch_size: int
    num_microbatches: int  # per data-parallel rank and optimizer step


@dataclass(frozen=True)
class Machine:
    """What this machine offers the run: CUDA, Transformer Engine, DALI."""

    cuda: bool
    transformer_engine: bool
    dali: bool

    @classmethod
    def detect(cls) -> "Machine":
        return cls(cuda=torch.cuda.is_available(), transformer_engine=transformer_engine_usable(),
                   dali=importlib.util.find_spec("nvidia.dali") is not None)


@lru_cache(maxsize=None)
def transformer_engine_usable() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401  optional, CUDA-only
    except Exception:  # ImportError, or a TE build that cannot find CUDA
        return False
    return True


# -- rules without the world size: what load_config runs ------------------------------------------
def validate(cfg: RunConfig) -> None:
    """Each section's own rules, then those joining sections; no process group, no machine."""
    cfg.check()
    if cfg.train.fp8 is not None and cfg.model.transformer_impl == "local":
        raise ConfigError(
            "--fp8 needs the Transformer Engine layer spec; set model.transformer_impl to "
            "'transformer_engine' or 'auto', or drop --fp8"
        )
    if cfg.model.pixel_norm == "imagenet" and cfg.data.value_range == "imagenet":
        raise ConfigError(
            "model.pixel_norm=imagenet normalises the input itself: set data.value_range=unit "
            "(or model.pixel_norm=none) so that clips are not normalised twice"
        )


# -- the layout ----------------------------------------------------------------------------------
def check_world_split(world_size: int, tp: int, pp: int) -> int:
    """Data-parallel size of ``world_size`` processes in TP x PP model replicas."""
    if tp < 1 or pp < 1:
        raise LayoutError("--tp and --pp must be >= 1")
    if world_size % (tp * pp):
        raise LayoutError(
            f"world size {world_size} is not divisible by --tp {tp} x --pp {pp} = {tp * pp}; "
            "change --tp/--pp or the number of processes"
        )
    return world_size // (tp * pp)


def check_model_split(arch: ModelArch, tp: int, pp: int, vpp: int = 1, *,
                      decoder: bool = True) -> None:
    """TP must divide each head count and FFN width it shards, PP x VPP the layers it
    cuts; ``decoder=False`` checks the encoder alone (feature extraction)."""
    heads = [(arch.num_attention_heads, "num_attention_heads")]
    widths = [(arch.ffn_hidden_size, "ffn_hidden_size")]
    layers, which = arch.num_layers, "of the encoder"
    if decoder:
        heads.append((arch.decoder_num_attention_heads, "decoder_num_attention_heads"))
        widths.append((arch.decoder_ffn_hidden_size, "decoder_ffn_hidden_size"))
        layers += arch.decoder_num_layers
        which = f"(encoder {arch.num_layers} + decoder {arch.decoder_num_layers})"
    for count, flag in heads:
        if count % tp:
            raise LayoutError(
                f"--tp {tp} does not divide model.arch.{flag}={count}; pick a --tp that divides it"
            )
    for width, flag in widths:
        if width % tp:
            raise LayoutError(f"--tp {tp} does not divide model.arch.{flag}={width}")
    if layers % (pp * vpp):
        raise LayoutError(
            f"--pp {pp} x --vpp {vpp} = {pp * vpp} does not divide the {layers} layers {which}; "
            "pick pp*vpp dividing the layer count"
        )


def micro_batches_per_step(global_batch_size: int, micro_batch_size: int, dp: int) -> int:
    """Micro-batches per data-parallel rank and optimizer step: the global-batch rule."""
    per_step = micro_batch_size * dp
    if global_batch_size % per_step:
        raise LayoutError(
            f"--global-batch-size {global_batch_size} is not a multiple of "
            f"--micro-batch-size {micro_batch_size} x data-parallel size {dp} = {per_step}"
        )
    return global_batch_size // per_step


def resolve_layout(cfg: RunConfig, world_size: int) -> Layout:
    """Derive DP and micro-batches per step from the config and world size."""
    par, tc = cfg.parallel, cfg.train
    tp, pp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    vpp = par.virtual_pipeline_model_parallel_size or 1
    dp = check_world_split(world_size, tp, pp)
    check_model_split(cfg.model.resolved_arch(), tp, pp, vpp)
    num_microbatches = micro_batches_per_step(tc.global_batch_size, tc.micro_batch_size, dp)
    if vpp > 1 and num_microbatches % pp:
        raise LayoutError(
            f"interleaved pipelining (--vpp {vpp}) needs micro-batches per step "
            f"({num_microbatches}) to be a multiple of --pp {pp}; raise --global-batch-size"
        )
    return Layout(tp, pp, vpp, dp, tc.micro_batch_size, num_microbatches)


# -- the machine ---------------------------------------------------------------------------------
def resolve_backend(requested: str, *, fp8: str | None = None,
                    machine: Machine | None = None) -> str:
    """The layer backend: ``auto`` -> Transformer Engine when CUDA and TE are both present."""
    machine = machine or Machine.detect()
    backend = requested
    if requested == "auto":
        backend = "transformer_engine" if machine.cuda and machine.transformer_engine else "local"
    if fp8 is not None and backend != "transformer_engine":
        raise ConfigError(
            f"--fp8 {fp8} needs Transformer Engine on a CUDA machine ({TE_HINT}); drop --fp8 "
            "to train in bf16/fp32"
        )
    if backend == "transformer_engine" and not machine.transformer_engine:
        raise ConfigError(
            f"model.transformer_impl=transformer_engine needs Transformer Engine ({TE_HINT}); "
            "use transformer_impl=local otherwise"
        )
    return backend


def require_dali(installed: bool) -> None:
    """data.decoder=dali needs DALI installed (on CPU it decodes VP8/VP9 only)."""
    if not installed:
        raise ConfigError(f"data.decoder: 'dali' needs NVIDIA DALI, which is not installed; "
                          f"run `{DALI_HINT}`, or set data.decoder to 'auto' or 'pyav'")


def preflight(cfg: RunConfig, world_size: int, machine: Machine | None = None) -> Layout:
    """Every rule a run must pass, before any process group: the config, the layout of
    ``world_size`` processes, and what ``machine`` (default: this one) offers."""
    machine = machine or Machine.detect()
    validate(cfg)
    layout = resolve_layout(cfg, world_size)
    resolve_backend(cfg.model.transformer_impl, fp8=cfg.train.fp8, machine=machine)
    if cfg.data.decoder == "dali" and not cfg.data.mock:
        require_dali(machine.dali)
    return layout
