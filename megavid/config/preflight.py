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

import dataclasses
import importlib.util
from dataclasses import dataclass
from functools import lru_cache

import torch
from packaging.version import Version

from megavid.config import fp8 as fp8_rules
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
    backend: str = "local"  # the layer backend the pre-flight chose (local | transformer_engine)


@dataclass(frozen=True)
class Machine:
    """What this machine offers the run: CUDA (and its GPU), Transformer Engine, DALI."""

    cuda: bool
    transformer_engine: bool
    dali: bool
    gpu_name: str | None = None
    capability: tuple[int, int] | None = None  # CUDA compute capability of GPU 0
    cuda_version: str | None = None  # torch's CUDA (torch.version.cuda)
    te_version: str | None = None

    @classmethod
    def detect(cls) -> "Machine":
        cuda = torch.cuda.is_available()
        te_version = transformer_engine_version()
        return cls(cuda=cuda, transformer_engine=te_version is not None,
                   dali=importlib.util.find_spec("nvidia.dali") is not None,
                   gpu_name=torch.cuda.get_device_name(0) if cuda else None,
                   capability=tuple(torch.cuda.get_device_capability(0)) if cuda else None,
                   cuda_version=torch.version.cuda, te_version=te_version)


@lru_cache(maxsize=None)
def transformer_engine_version() -> str | None:
    """Transformer Engine's version if it imports (with its CUDA parts), else None."""
    try:
        import transformer_engine  # optional, CUDA-only
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # ImportError, or a TE build that cannot find CUDA
        return None
    return str(getattr(transformer_engine, "__version__", "0"))


# -- rules without the world size: what load_config runs ------------------------------------------
def validate(cfg: RunConfig) -> None:
    """Each section's own rules, then those joining sections; no process group, no machine."""
    cfg.check()
    if cfg.train.fp8 is not None and cfg.model.transformer_impl == "local":
        raise ConfigError(
            "--fp8 needs the Transformer Engine layer spec; set model.transformer_impl to "
            "'transformer_engine' or 'auto', or drop --fp8"
        )
    check_fp8_config(cfg)
    check_padding(cfg)
    if cfg.model.pixel_norm == "imagenet" and cfg.data.value_range == "imagenet":
        raise ConfigError(
            "model.pixel_norm=imagenet normalises the input itself: set data.value_range=unit "
            "(or model.pixel_norm=none) so that clips are not normalised twice"
        )


def check_fp8_config(cfg: RunConfig) -> None:
    """The FP8 flags agree with each other, the optimizer and the encoder's depth."""
    tc, model = cfg.train, cfg.model
    if tc.fp8 is None:
        for flag, on in (("--fp8-param-gather", tc.fp8_param_gather),
                         ("--first-last-layers-bf16", tc.first_last_layers_bf16),
                         ("model.decoder_fp8", model.decoder_fp8)):
            if on:
                raise ConfigError(f"{flag} needs --fp8 (hybrid or e4m3); add --fp8 or drop {flag}")
        return
    if tc.fp8_param_gather and not cfg.parallel.use_distributed_optimizer:
        raise ConfigError("--fp8-param-gather needs --use-distributed-optimizer (Megatron-LM's "
                          "rule: the sharded optimizer keeps the FP8 weights' main copies)")
    arch = model.resolved_arch()
    if tc.first_last_layers_bf16:
        if tc.fp8_recipe == "delayed":
            raise ConfigError("--first-last-layers-bf16 does not work with --fp8-recipe delayed "
                              "(megatron-core: delayed scaling reduces amax over the whole "
                              "stack); use --fp8-recipe tensorwise, blockwise or mxfp8")
        start, end = tc.num_layers_at_start_in_bf16, tc.num_layers_at_end_in_bf16
        if start + end > arch.num_layers:
            raise ConfigError(f"--num-layers-at-start-in-bf16 {start} + "
                              f"--num-layers-at-end-in-bf16 {end} exceed the encoder's "
                              f"{arch.num_layers} layers")
        # megatron-core caps each count at the layers per pipeline stage, and megavid counts
        # the decoder's layers among the "last" ones (builder.transformer_config)
        per_stage = (arch.num_layers + arch.decoder_num_layers) // \
            cfg.parallel.pipeline_model_parallel_size
        if max(start, end + arch.decoder_num_layers) > per_stage:
            raise ConfigError(
                f"--num-layers-at-start-in-bf16 {start} / --num-layers-at-end-in-bf16 {end}: "
                f"megatron-core allows at most {per_stage} BF16 layers at each end per pipeline "
                f"stage, and the end count includes the decoder's {arch.decoder_num_layers} "
                "layers; lower them or --pp")


def check_fp8_widths(cfg: RunConfig) -> None:
    """Each FP8 stack's GEMM operands have column counts TE accepts (after the layout rules,
    which say first whether --tp divides the widths at all)."""
    tc = cfg.train
    for decoder in (False, True):
        if not fp8_rules.stack_fp8(cfg, decoder=decoder):
            continue
        align = fp8_rules.fp8_alignment(tc.fp8_recipe)
        widths = fp8_rules.fp8_gemm_widths(cfg, decoder=decoder)
        bad = {name: n for name, n in widths.items() if n % align}
        if bad:
            stack = "decoder (model.decoder_fp8)" if decoder else "encoder"
            raise ConfigError(
                f"--fp8 --fp8-recipe {tc.fp8_recipe}: the {stack}'s GEMM widths per TP rank "
                f"{bad} must be multiples of {align}; change --tp or the model's widths")


def check_padding(cfg: RunConfig) -> None:
    """model.pad_to_multiple_of, when set, is a multiple of what SP and FP8 need."""
    chosen = cfg.model.pad_to_multiple_of
    if not chosen:
        return
    for decoder in (False, True):
        need = fp8_rules.automatic_multiple(cfg, decoder=decoder)
        if chosen % need:
            stack = "decoder" if decoder else "encoder"
            raise ConfigError(
                f"model.pad_to_multiple_of: {chosen} is not a multiple of {need}, which the "
                f"{stack} needs (sequence parallelism x FP8 alignment at --micro-batch-size "
                f"{cfg.train.micro_batch_size}); use a multiple of {need}, or 0 (automatic)")


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


def check_fp8_machine(recipe: str, machine: Machine) -> None:
    """The GPU and Transformer Engine can run ``recipe`` (after resolve_backend: TE, CUDA)."""
    if machine.capability is not None:
        problem = fp8_rules.recipe_problem(recipe, machine.capability, machine.cuda_version)
        if problem:
            major, minor = machine.capability
            raise ConfigError(
                f"--fp8-recipe {recipe} cannot run on {machine.gpu_name} (compute capability "
                f"{major}.{minor}, CUDA {machine.cuda_version}): {problem}; pick another "
                "--fp8-recipe or drop --fp8")
    need = fp8_rules.MIN_TE_VERSION.get(recipe)
    if need and machine.te_version and Version(machine.te_version) < Version(need):
        raise ConfigError(f"--fp8-recipe {recipe} needs Transformer Engine >= {need} "
                          f"(megatron-core's rule), this machine has {machine.te_version}; "
                          "upgrade TE or pick --fp8-recipe delayed")


def check_overlap_machine(cfg: RunConfig, backend: str, machine: Machine) -> None:
    """CUDA graphs need CUDA; TP communication overlap needs Transformer Engine on CUDA."""
    par = cfg.parallel
    if par.cuda_graph_impl != "none" and not machine.cuda:
        raise ConfigError(f"--cuda-graph-impl {par.cuda_graph_impl} needs CUDA (graphs replay "
                          "captured GPU kernels); drop it on this machine")
    if par.tp_comm_overlap and backend != "transformer_engine":
        raise ConfigError("--tp-comm-overlap needs the Transformer Engine layer spec on CUDA "
                          f"(TE's userbuffers; {TE_HINT}); drop --tp-comm-overlap")


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
    check_fp8_widths(cfg)
    backend = resolve_backend(cfg.model.transformer_impl, fp8=cfg.train.fp8, machine=machine)
    if cfg.train.fp8 is not None:
        check_fp8_machine(cfg.train.fp8_recipe, machine)
    check_overlap_machine(cfg, backend, machine)
    if cfg.data.decoder == "dali" and not cfg.data.mock:
        require_dali(machine.dali)
    return dataclasses.replace(layout, backend=backend)
