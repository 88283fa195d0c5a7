"""Run configuration: the one schema, with its defaults and each section's own rules.

A run is described by a YAML file loaded into these dataclasses
(``megavid.config.loading``); command-line flags (``megavid/cli.py``) override
single fields. Every field is documented where it is declared, and each section
checks its own fields in ``check``; rules joining sections, the world size or the
machine are the pre-flight's (``megavid.config.preflight``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, ClassVar, Optional, get_args, get_origin, get_type_hints

from megavid.config.presets import ModelArch, get_preset, num_visible


class ConfigError(ValueError):
    """A setting that cannot work; the message names the field or flag and the fix."""


def _check_choices(section, name: str) -> None:
    """Each field listed in the section's CHOICES holds one of its values."""
    for key, choices in section.CHOICES.items():
        value = getattr(section, key)
        if value not in choices:
            raise ConfigError(f"{name}.{key}: {value!r} is not one of {choices}")



ARCH = {"arch": True}  # metadata of the ModelConfig fields that are part of the architecture


@dataclass
class ModelConfig:
    preset: str = field(default="4ds-b", metadata=ARCH)  # a row of megavid/config/presets.py
    # per-field overrides of the preset's ModelArch
    arch: dict = field(default_factory=dict, metadata=ARCH)
    mask_ratio: float = 0.95  # fraction of tubelets hidden from the encoder
    masking: str = "random"  # random | tube (same spatial mask in every frame)
    # fraction of the masked tubelets the decoder leaves out (VideoMAE V2's "dual masking"): it
    # runs on the visible tubelets plus the rest of the masked ones, which alone are in the loss;
    # drawn per sample from (seed, sample index) like the encoder mask. 0 = all N (MAE, 4DS);
    # VideoMAE V2: 0.5. Training only: validation and pictures reconstruct every tubelet
    decoder_mask_ratio: float = 0.0
    norm_pix_loss: bool = True  # regress per-tubelet normalised pixels (MAE's default)
    # mae: normalise each tubelet over all its values, / sqrt(var + 1e-6) (MAE, 4DS);
    # videomae: each tubelet's channels separately, / (std + 1e-6) (VideoMAE, HF's loss)
    norm_pix_style: str = "mae"
    # -- architecture options: together with preset/arch they define the function the model
    # computes, so checkpoints carry them (metadata=ARCH) and --load restores them. Defaults are
    # megavid's original model; `python -m megavid.tools.convert` sets them for 4DS / VideoMAE.
    # eps of every LayerNorm (4DS: 1e-6; HF VideoMAE: 1e-12)
    layernorm_epsilon: float = field(default=1e-6, metadata=ARCH)
    # eps of the decoder's final LayerNorm; None = layernorm_epsilon (HF VideoMAE: torch's 1e-5)
    decoder_norm_epsilon: Optional[float] = field(default=None, metadata=ARCH)
    # 4DS encoders have none; VideoMAE has one (no mean pooling)
    encoder_final_norm: bool = field(default=False, metadata=ARCH)
    # exact | tanh: MLP activation (4DS: tanh approximation; VideoMAE: exact)
    gelu: str = field(default="exact", metadata=ARCH)
    # qkv | qv | none: which attention input projections carry a bias (4DS: qkv; VideoMAE: qv).
    # "qv" keeps megatron's fused bias with its k slice fixed at zero (zero gradient, see
    # megavid/models/mae.py); a bias on k adds the same q.b_k to every score of a query, which the
    # softmax ignores, so it is exactly a model without one. "none" builds the projection unbiased.
    qkv_bias: str = field(default="qkv", metadata=ARCH)
    # learned | sincos: encoder and decoder position embeddings, a learned table or VideoMAE's
    # fixed 1-D sinusoids over the raster token index (a buffer: not trained, not checkpointed)
    pos_embed: str = field(default="learned", metadata=ARCH)
    # none | imagenet: what the encoder does to its input video first. imagenet: (x - mean) / std
    # with ImageNet's mean/std, as VideoMAE's processor does, on [0,1] input (data.value_range=unit);
    # reconstruction targets stay the raw input, as in VideoMAE's loss. 4DS: none.
    pixel_norm: str = field(default="none", metadata=ARCH)
    # bias of the encoder-to-decoder projection (HF VideoMAE: none)
    decoder_embed_bias: bool = field(default=True, metadata=ARCH)
    transformer_impl: str = "auto"  # local | transformer_engine | auto (TE when CUDA and TE exist)
    init_std: float = 0.02  # std of the truncated-normal init of linear weights and embeddings
    kernels: str = "torch"  # torch | triton | auto: MAE loss and patchify/scatter (kernels/)
    # tokens per clip of each stack are zero-padded to a multiple of this (padded keys are
    # masked out of attention, padded outputs dropped: the result does not change);
    # 0 = the least multiple that sequence parallelism and FP8 need (megavid/config/fp8.py)
    pad_to_multiple_of: int = 0
    # the decoder's GEMMs in FP8 too (with --fp8). Off: at width 512 its GEMMs are too
    # narrow for FP8 to pay for its casts, and they produce the regression targets' values
    decoder_fp8: bool = False

    CHOICES: ClassVar[dict] = {
        "masking": ("random", "tube"),
        "transformer_impl": ("auto", "local", "transformer_engine"),
        "kernels": ("torch", "triton", "auto"),
        "norm_pix_style": ("mae", "videomae"),
        "gelu": ("exact", "tanh"),
        "qkv_bias": ("qkv", "qv", "none"),
        "pos_embed": ("learned", "sincos"),
        "pixel_norm": ("none", "imagenet"),
    }

    def check(self) -> None:
        _check_choices(self, "model")
        arch = self.resolved_arch()
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError(f"model.mask_ratio: {self.mask_ratio} must be in [0, 1)")
        if arch.num_layers < 1 or arch.decoder_num_layers < 1:
            raise ConfigError("model.arch: num_layers and decoder_num_layers must be >= 1")
        t, h, w = arch.tubelet
        if arch.num_frames % t or arch.image_size % h or arch.image_size % w:
            raise ConfigError(
                f"model.arch: clip {arch.num_frames}x{arch.image_size}x{arch.image_size} is not "
                f"divisible into {t}x{h}x{w} tubelets; change num_frames/image_size or tubelet"
            )
        for width, heads, name in (
            (arch.hidden_size, arch.num_attention_heads, "num_attention_heads"),
            (arch.decoder_hidden_size, arch.decoder_num_attention_heads,
             "decoder_num_attention_heads"),
        ):
            if width % heads:
                raise ConfigError(f"model.arch.{name}: {heads} does not divide the width {width}")
        if num_visible(arch.grid, self.mask_ratio, self.masking) < 1:
            raise ConfigError(
                f"model.mask_ratio: {self.mask_ratio} leaves no visible tubelet of "
                f"{arch.num_tokens}; lower it"
            )
        if not 0.0 <= self.decoder_mask_ratio < 1.0:  # < 1 keeps >= 1 masked tubelet decoded
            raise ConfigError(f"model.decoder_mask_ratio: {self.decoder_mask_ratio} must be in "
                              "[0, 1) (0: the decoder reconstructs every masked tubelet)")
        for name in ("layernorm_epsilon", "decoder_norm_epsilon"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"model.{name}: {value} must be > 0 (4DS: 1e-6, VideoMAE: 1e-12)")
        if self.pad_to_multiple_of < 0:
            raise ConfigError(f"model.pad_to_multiple_of: {self.pad_to_multiple_of} must be >= 0 "
                              "(0: the least multiple sequence parallelism and FP8 need)")
        if self.pixel_norm == "imagenet" and arch.channels != 3:
            raise ConfigError("model.pixel_norm=imagenet needs RGB input (model.arch.channels=3)")

    def resolved_arch(self) -> ModelArch:
        """The preset with ``arch``'s overrides (frozen; resolved once per distinct pair)."""
        changes = tuple(sorted((k, tuple(v) if k == "tubelet" else v)
                               for k, v in self.arch.items()))
        try:
            return _resolve_arch(self.preset, changes)
        except TypeError:  # unhashable: a list or mapping where ModelArch takes a number
            raise ConfigError(f"model.arch: {dict(self.arch)} must map fields to numbers "
                              "(tubelet: a list of three)") from None


@lru_cache(maxsize=64)
def _resolve_arch(preset: str, changes: tuple) -> ModelArch:
    try:
        arch = get_preset(preset)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    unknown = {k for k, _ in changes} - {f.name for f in fields(ModelArch)}
    if unknown:
        raise ConfigError(
            f"model.arch: unknown field(s) {sorted(unknown)}; "
            f"valid: {[f.name for f in fields(ModelArch)]}"
        )
    return arch.replace(**dict(changes))


# The ModelConfig fields that define the function the model computes (its shape and ops),
# tagged ARCH where they are declared: written into every checkpoint, restored by --load.
ARCH_FIELDS = tuple(f.name for f in fields(ModelConfig) if f.metadata.get("arch"))


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None  # model chunks per pipeline rank
    sequence_parallel: bool = False  # shard LayerNorm/dropout activations along tokens (needs tp>1)
    use_distributed_optimizer: bool = False  # ZeRO-1 style sharding of optimizer state over DP
    overlap_grad_reduce: bool = False
    # all-gather the updated parameters during the next step's forward instead of at the end
    # of the optimizer step (megatron-core's overlap_param_gather; needs the distributed optimizer)
    overlap_param_gather: bool = False
    # overlap the encoder's TP all-gathers/reduce-scatters with its GEMMs through Transformer
    # Engine's userbuffers (megatron-core's tp_comm_overlap; TE on CUDA, --tp > 1 with --sp).
    # The decoder's TP collectives stay unoverlapped: TE registers one buffer shape per job.
    tp_comm_overlap: bool = False
    # none | local: megatron-core's per-layer CUDA graphs, captured by its pipeline schedules
    # after cuda_graph_warmup_steps (the token counts per stack are static, as graphs need)
    cuda_graph_impl: str = "none"
    # a collective not completed within this many minutes fails, naming the unresponsive ranks
    distributed_timeout_minutes: float = 10.0

    CHOICES: ClassVar[dict] = {"cuda_graph_impl": ("none", "local", "transformer_engine")}

    def check(self) -> None:
        _check_choices(self, "parallel")
        if self.cuda_graph_impl == "transformer_engine":
            raise ConfigError(
                "--cuda-graph-impl transformer_engine is not supported: megatron-core's "
                "TECudaGraphHelper builds every layer's static inputs from one sequence length and "
                "a causal mask, and megavid's encoder and decoder differ in both; use "
                "--cuda-graph-impl local")
        if self.overlap_param_gather and not self.use_distributed_optimizer:
            raise ConfigError("--overlap-param-gather needs --use-distributed-optimizer (the "
                              "sharded optimizer is what all-gathers the parameters)")
        if self.tp_comm_overlap and not (self.tensor_model_parallel_size > 1
                                         and self.sequence_parallel):
            raise ConfigError("--tp-comm-overlap needs --tp > 1 with --sp (it overlaps the "
                              "sequence-parallel all-gathers and reduce-scatters)")
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ConfigError("--sp needs --tp > 1 (sequence parallelism shards along the TP "
                              "group)")
        vpp = self.virtual_pipeline_model_parallel_size
        if vpp is not None:
            if vpp < 1:
                raise ConfigError("--vpp must be >= 1")
            if self.pipeline_model_parallel_size < 2 and vpp > 1:
                raise ConfigError("--vpp > 1 needs --pp > 1 (interleaving splits each pipeline "
                                  "rank)")


@dataclass
class TrainConfig:
    train_iters: int = 50
    micro_batch_size: int = 2
    global_batch_size: int = 8
    lr: float = 1.5e-3
    min_lr: float = 1e-5
    # linear warm-up steps; a run shorter than that warms up over train_iters - 1 steps
    # instead, with one line saying so (resolved_warmup_iters)
    lr_warmup_iters: int = 5
    weight_decay: float = 0.05
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    clip_grad: float = 1.0  # global grad-norm clip; 0 disables
    seed: int = 1234
    precision: str = "fp32"  # fp32 | bf16
    fp8: Optional[str] = None  # None | hybrid | e4m3 (Transformer Engine only)
    # how FP8 scales are chosen (megatron-core's fp8_recipe): delayed (amax history),
    # tensorwise (current per-tensor scaling), blockwise (1x128/128x128 blocks, Hopper+),
    # mxfp8 (32-element blocks, Blackwell)
    fp8_recipe: str = "delayed"
    # keep the weights in FP8 and all-gather them in FP8 (megatron-core's fp8_param;
    # needs --use-distributed-optimizer, as in Megatron-LM)
    fp8_param_gather: bool = False
    # the first and last encoder layers stay in BF16 under --fp8 (megatron-core's fields;
    # "last" is the encoder's last, whose output is the features; the decoder follows
    # model.decoder_fp8). Not with the delayed recipe (megatron-core refuses it).
    first_last_layers_bf16: bool = False
    num_layers_at_start_in_bf16: int = 1
    num_layers_at_end_in_bf16: int = 1
    recompute: Optional[str] = None  # None | full | selective
    max_consecutive_skips: int = 5  # stop after this many non-finite steps in a row
    loss_spike_factor: float = 3.0  # log a spike when loss > factor x its running mean
    inject_nan_steps: list = field(default_factory=list)  # NaN loss at these steps (megavid.faults)
    # validation loss every eval_interval steps and after the last one, over eval_iters global
    # batches of the validation clips (Megatron-LM's flags and defaults); it runs only when
    # there are validation clips (data.valid_path or data.valid_fraction). eval_interval 0:
    # only after the last step; eval_iters 0: never
    eval_interval: int = 1000
    eval_iters: int = 100

    CHOICES: ClassVar[dict] = {
        "precision": ("fp32", "bf16"),
        "fp8": (None, "hybrid", "e4m3"),
        "fp8_recipe": ("delayed", "tensorwise", "blockwise", "mxfp8"),
        "recompute": (None, "full", "selective"),
    }

    def check(self) -> None:
        _check_choices(self, "train")
        if self.micro_batch_size < 1 or self.global_batch_size < 1 or self.train_iters < 1:
            raise ConfigError("train: micro_batch_size, global_batch_size and train_iters must be "
                              ">= 1")
        if self.num_layers_at_start_in_bf16 < 0 or self.num_layers_at_end_in_bf16 < 0:
            raise ConfigError("--num-layers-at-start-in-bf16/--num-layers-at-end-in-bf16 must be "
                              ">= 0")
        if self.lr_warmup_iters < 0:
            raise ConfigError(f"--lr-warmup-iters {self.lr_warmup_iters} must be >= 0")
        if self.eval_interval < 0 or self.eval_iters < 0:
            raise ConfigError(f"--eval-interval {self.eval_interval} and --eval-iters "
                              f"{self.eval_iters} must be >= 0 (--eval-iters 0: no validation; "
                              "--eval-interval 0: only after the last step)")
        if not 0 <= self.min_lr <= self.lr:
            raise ConfigError(
                f"train.min_lr {self.min_lr} must be between 0 and --lr {self.lr} (the schedule "
                f"decays from --lr to it); for a run at --lr 0 also pass --set train.min_lr=0"
            )

    def resolved_warmup_iters(self) -> int:
        """The warm-up the schedule uses: megatron-core's scheduler needs warm-up < decay
        steps (= train_iters), so a run shorter than its warm-up warms up over all but its
        last step (Megatron-LM stops on that assertion instead)."""
        return min(self.lr_warmup_iters, self.train_iters - 1)


@dataclass
class DataConfig:
    path: Optional[str] = None  # folder of videos; None = the demo clips (made on first use)
    num_workers: int = 1  # decoding worker processes per rank
    frame_stride: int = 2  # take every k-th frame
    value_range: str = "unit"  # unit ([0,1], 4DS) | imagenet (mean/std, VideoMAE)
    demo_clips: int = 32  # how many demo clips to synthesise
    cache_dir: str = "~/.cache/megavid"
    mock: bool = False  # random clips made in memory: step timing and parity tests, no decoding
    decoder: str = "pyav"  # pyav (FFmpeg, CPU) | dali (CPU: VP8/VP9; GPU: NVDEC) | auto: see data/dali.py
    # threads of each worker's DALI pipeline (a micro-batch's clips decode in parallel on them);
    # 0 = the cores divided among the loader's worker processes
    dali_threads: int = 0
    # validation clips (same forms as path); their frames and crop are fixed (centred), and
    # sample i of the validation stream is always masked the same way, whatever --seed says
    valid_path: Optional[str] = None
    # with no valid_path: this fraction of path's clips (or of the demo clips) is held out of
    # training as the validation set, chosen by a hash of each file's name (deterministic)
    valid_fraction: float = 0.0
    # seconds one sample's decode may take before its file is abandoned as skipped_timeout and
    # the worker replaced (a hang inside libav cannot be interrupted); 0 = no deadline; unset:
    # DEFAULT_DECODE_TIMEOUT_S with workers, none without (a deadline needs num_workers >= 1:
    # the rank itself cannot be rescued from a hang, see data/deadline.py)
    decode_timeout_s: Optional[float] = None
    DEFAULT_DECODE_TIMEOUT_S: ClassVar[float] = 30.0

    def resolved_decode_timeout_s(self) -> float:
        """The decode deadline in force: the set value, else the default where workers decode."""
        if self.decode_timeout_s is not None:
            return self.decode_timeout_s
        return self.DEFAULT_DECODE_TIMEOUT_S if self.num_workers else 0.0

    CHOICES: ClassVar[dict] = {
        "value_range": ("unit", "imagenet"),
        "decoder": ("auto", "dali", "pyav"),  # auto: DALI-GPU, else DALI-CPU for VP8/9, else PyAV
    }

    def check(self) -> None:
        _check_choices(self, "data")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers (--num-workers): {self.num_workers} must be >= 0")
        if self.frame_stride < 1:
            raise ConfigError(f"data.frame_stride: {self.frame_stride} must be >= 1")
        if self.path is None and self.demo_clips < 1:
            raise ConfigError(f"data.demo_clips: {self.demo_clips} must be >= 1 (or set --data)")
        if self.dali_threads < 0:
            raise ConfigError(f"data.dali_threads: {self.dali_threads} must be >= 0 (0: the "
                              "cores divided among data.num_workers)")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ConfigError(f"data.valid_fraction: {self.valid_fraction} must be in [0, 1) (the "
                              "share of --data's clips held out for validation)")
        if self.valid_path is not None and self.valid_fraction:
            raise ConfigError("--valid-data and data.valid_fraction both name validation clips; "
                              "drop one (data.valid_fraction=0 keeps all of --data for training)")
        if self.decode_timeout_s is not None and self.decode_timeout_s < 0:
            raise ConfigError(f"data.decode_timeout_s (--decode-timeout-s): {self.decode_timeout_s} "
                              "must be >= 0 (0: no deadline)")
        if self.decode_timeout_s and self.num_workers == 0:
            raise ConfigError("data.decode_timeout_s (--decode-timeout-s) needs data.num_workers >= "
                              "1: a decode hung inside libav cannot be interrupted in the rank; set "
                              "--num-workers 1, or --decode-timeout-s 0 to decode without a deadline")


@dataclass
class CheckpointConfig:
    save: Optional[str] = None  # directory of checkpoints (iter_NNNNNNN/ + latest)
    save_interval: int = 0  # optimizer steps between saves; 0 = only at the end / on preemption
    load: Optional[str] = None  # resume from <load>/latest (or a given iter_* directory)
    # load only the model weights from --load and start at step 0 (fresh optimizer, schedule and
    # data stream); checkpoints that hold only weights (megavid.tools.convert) always load so
    finetune: bool = False
    keep_last: int = 3  # complete checkpoints kept; older ones are deleted
    async_save: bool = False  # write shards in a background process while training goes on
    load_fallback: bool = True  # if latest is damaged, load the newest complete older one
    requeue_on_preempt: bool = False  # after a SIGUSR1 save: scontrol requeue $SLURM_JOB_ID
    exit_duration_in_mins: Optional[float] = None  # save and exit after this wall-clock budget

    def check(self) -> None:
        if self.save_interval < 0 or self.keep_last < 1:
            raise ConfigError("checkpoint: save_interval must be >= 0 and keep_last >= 1")
        if self.save_interval and not self.save:
            raise ConfigError("--save-interval needs --save DIR")


@dataclass
class LogConfig:
    log_dir: Optional[str] = None  # None = runs/<timestamp>
    log_interval: int = 1  # optimizer steps between console lines
    tensorboard: bool = True
    # at the end: loss_curve.png, and with validation clips reconstruction.png/.mp4 (the
    # model's reconstruction of the first validation clip, as `megavid.visualize` draws it)
    plot: bool = True
    # every N steps, the same reconstruction grid to TensorBoard and W&B; 0 = never
    log_images_interval: int = 0
    wandb_project: Optional[str] = None  # log to Weights & Biases (pip install 'megavid[wandb]')
    wandb_exp_name: Optional[str] = None  # the W&B run's name (default: W&B's)
    wandb_save_dir: Optional[str] = None  # where W&B writes its files (default: <log_dir>)

    def check(self) -> None:
        if self.log_images_interval < 0:
            raise ConfigError(f"--log-images-interval {self.log_images_interval} must be >= 0")
        if (self.wandb_exp_name or self.wandb_save_dir) and not self.wandb_project:
            raise ConfigError("--wandb-exp-name/--wandb-save-dir need --wandb-project NAME")
        if self.wandb_project and importlib.util.find_spec("wandb") is None:
            raise ConfigError("--wandb-project needs Weights & Biases: pip install "
                              "'megavid[wandb]' (or drop --wandb-project)")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Each section's own rules, in declaration order (cross-section ones: preflight)."""
        for section in fields(self):
            getattr(self, section.name).check()


def from_dict(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value or {}, f"{where}.{name}".lstrip("."))
        else:
            kwargs[name] = _coerce(value, hint, f"{where}.{name}".lstrip("."))
    return cls(**kwargs)


def _coerce(value: Any, hint, where: str):
    """Accept YAML/CLI scalars for a typed field, with an error naming the field."""
    if value is None:
        return None
    base = hint
    if get_origin(hint) is not None and type(None) in get_args(hint):  # Optional[T]
        base = next(a for a in get_args(hint) if a is not type(None))
    if base in (int, float, str, bool):
        if base is bool and isinstance(value, str):
            lowered = value.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"{where}: expected true/false, got {value!r}")
            return lowered in ("true", "1", "yes")
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return base(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {base.__name__}, got {value!r}") from None
    return value


def has_validation(cfg: RunConfig) -> bool:
    """Whether the run computes a validation loss: clips to validate on and eval_iters > 0."""
    return bool(cfg.data.valid_path or cfg.data.valid_fraction) and cfg.train.eval_iters > 0
