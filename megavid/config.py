"""Run configuration: the one schema, with its defaults and validation.

A run is described by a YAML file loaded into these dataclasses; command-line
flags (``megavid/cli.py``) override single fields. Every field is documented
where it is declared and validated in ``validate`` (layout checks that need the
world size live in ``megavid/parallel/layout.py``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, get_args, get_origin, get_type_hints

import yaml

from megavid.models.presets import ModelArch, get_preset


class ConfigError(ValueError):
    """A setting that cannot work; the message names the field or flag and the fix."""


@dataclass
class ModelConfig:
    preset: str = "4ds-b"  # a row of megavid/models/presets.py
    arch: dict = field(default_factory=dict)  # per-field overrides of the preset's ModelArch
    mask_ratio: float = 0.95  # fraction of tubelets hidden from the encoder
    masking: str = "random"  # random | tube (same spatial mask in every frame)
    norm_pix_loss: bool = True  # regress per-tubelet normalised pixels (MAE's default)
    # mae: normalise each tubelet over all its values, / sqrt(var + 1e-6) (MAE, 4DS);
    # videomae: each tubelet's channels separately, / (std + 1e-6) (VideoMAE, HF's loss)
    norm_pix_style: str = "mae"
    # -- architecture options: together with preset/arch they define the function the model
    # computes, so checkpoints carry them (ARCH_FIELDS) and --load restores them. Defaults are
    # megavid's original model; `python -m megavid.tools.convert` sets them for 4DS / VideoMAE.
    layernorm_epsilon: float = 1e-6  # eps of every LayerNorm (4DS: 1e-6; HF VideoMAE: 1e-12)
    # eps of the decoder's final LayerNorm; None = layernorm_epsilon (HF VideoMAE: torch's 1e-5)
    decoder_norm_epsilon: Optional[float] = None
    encoder_final_norm: bool = False  # 4DS encoders have none; VideoMAE has one (no mean pooling)
    gelu: str = "exact"  # exact | tanh: MLP activation (4DS: tanh approximation; VideoMAE: exact)
    # qkv | qv | none: which attention input projections carry a bias (4DS: qkv; VideoMAE: qv).
    # "qv" keeps megatron's fused bias with its k slice fixed at zero (zero gradient, see
    # megavid/models/mae.py); a bias on k adds the same q.b_k to every score of a query, which the
    # softmax ignores, so it is exactly a model without one. "none" builds the projection unbiased.
    qkv_bias: str = "qkv"
    # learned | sincos: encoder and decoder position embeddings, a learned table or VideoMAE's
    # fixed 1-D sinusoids over the raster token index (a buffer: not trained, not checkpointed)
    pos_embed: str = "learned"
    # none | imagenet: what the encoder does to its input video first. imagenet: (x - mean) / std
    # with ImageNet's mean/std, as VideoMAE's processor does, on [0,1] input (data.value_range=unit);
    # reconstruction targets stay the raw input, as in VideoMAE's loss. 4DS: none.
    pixel_norm: str = "none"
    decoder_embed_bias: bool = True  # bias of the encoder-to-decoder projection (HF VideoMAE: none)
    transformer_impl: str = "auto"  # local | transformer_engine | auto (TE when CUDA and TE exist)
    init_std: float = 0.02  # std of the truncated-normal init of linear weights and embeddings
    kernels: str = "torch"  # torch | triton | auto: MAE loss and patchify/scatter (kernels/)

    def resolved_arch(self) -> ModelArch:
        try:
            arch = get_preset(self.preset)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        unknown = set(self.arch) - {f.name for f in fields(ModelArch)}
        if unknown:
            raise ConfigError(
                f"model.arch: unknown field(s) {sorted(unknown)}; "
                f"valid: {[f.name for f in fields(ModelArch)]}"
            )
        changes = {k: tuple(v) if k == "tubelet" else v for k, v in self.arch.items()}
        return arch.replace(**changes)


# The ModelConfig fields that define the function the model computes (its shape and ops):
# written into every checkpoint and restored from it by --load (see load_config).
ARCH_FIELDS = ("preset", "arch", "layernorm_epsilon", "decoder_norm_epsilon", "encoder_final_norm",
               "gelu", "qkv_bias", "pos_embed", "pixel_norm", "decoder_embed_bias")


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None  # model chunks per pipeline rank
    sequence_parallel: bool = False  # shard LayerNorm/dropout activations along tokens (needs tp>1)
    use_distributed_optimizer: bool = False  # ZeRO-1 style sharding of optimizer state over DP
    overlap_grad_reduce: bool = False
    # a collective not completed within this many minutes fails, naming the unresponsive ranks
    distributed_timeout_minutes: float = 10.0


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


def _from_dict(cls, data: dict, where: str):
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
            kwargs[name] = _from_dict(hint, value or {}, f"{where}.{name}".lstrip("."))
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


def config_from_dict(data: dict) -> RunConfig:
    """A validated RunConfig from ``RunConfig.to_dict()``'s form (a checkpoint's config)."""
    cfg = _from_dict(RunConfig, data, "")
    validate(cfg)
    return cfg


def load_config(path: Optional[str | Path] = None, overrides: Optional[dict] = None) -> RunConfig:
    """YAML file (optional) + dotted overrides like {"parallel.tensor_model_parallel_size": 2}."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--config: no such file {path}")
        data = yaml.safe_load(path.read_text()) or {}
    # --load restores the architecture the checkpoint was saved with; explicit flags still win
    load = (overrides or {}).get("checkpoint.load") or (data.get("checkpoint") or {}).get("load")
    if load:
        arch = saved_arch(load)
        if arch:
            data["model"] = {**(data.get("model") or {}), **arch}
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})
        if data[section] is None:
            data[section] = {}
        data[section][key] = value
    cfg = _from_dict(RunConfig, data, "")
    validate(cfg)
    return cfg


def saved_arch(load: str | Path) -> dict:
    """The architecture fields (ARCH_FIELDS) a checkpoint was saved with; {} if unreadable.

    ``load`` is what --load takes (a save root with ``latest``, or an ``iter_*``
    directory). Errors are left to the trainer's load, which names them properly.
    """
    from megavid.training.checkpoint_dirs import resolve_load_dir
    from megavid.training.common_state import read_common

    try:
        directory, _ = resolve_load_dir(load, fallback=True)
        model = read_common(directory)["config"]["model"]
    except Exception:  # missing, damaged or foreign: the trainer's load names the problem
        return {}
    return {key: model[key] for key in ARCH_FIELDS if key in model}


_CHOICES = {
    "model.masking": ("random", "tube"),
    "model.transformer_impl": ("auto", "local", "transformer_engine"),
    "model.kernels": ("torch", "triton", "auto"),
    "model.norm_pix_style": ("mae", "videomae"),
    "model.gelu": ("exact", "tanh"),
    "model.qkv_bias": ("qkv", "qv", "none"),
    "model.pos_embed": ("learned", "sincos"),
    "model.pixel_norm": ("none", "imagenet"),
    "train.precision": ("fp32", "bf16"),
    "train.fp8": (None, "hybrid", "e4m3"),
    "train.recompute": (None, "full", "selective"),
    "data.value_range": ("unit", "imagenet"),
    "data.decoder": ("auto", "dali", "pyav"),  # auto: DALI-GPU, else DALI-CPU for VP8/9, else PyAV
}


def validate(cfg: RunConfig) -> None:
    """Checks that need no process group; each message names the field and the fix."""
    for dotted, choices in _CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"{dotted}: {value!r} is not one of {choices}")
    arch = cfg.model.resolved_arch()
    if not 0.0 <= cfg.model.mask_ratio < 1.0:
        raise ConfigError(f"model.mask_ratio: {cfg.model.mask_ratio} must be in [0, 1)")
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
        (arch.decoder_hidden_size, arch.decoder_num_attention_heads, "decoder_num_attention_heads"),
    ):
        if width % heads:
            raise ConfigError(f"model.arch.{name}: {heads} does not divide the width {width}")
    from megavid.models.masking import num_visible

    if num_visible(arch.grid, cfg.model.mask_ratio, cfg.model.masking) < 1:
        raise ConfigError(
            f"model.mask_ratio: {cfg.model.mask_ratio} leaves no visible tubelet of "
            f"{arch.num_tokens}; lower it"
        )
    _validate_arch_options(cfg)
    tc = cfg.train
    if tc.micro_batch_size < 1 or tc.global_batch_size < 1 or tc.train_iters < 1:
        raise ConfigError("train: micro_batch_size, global_batch_size and train_iters must be >= 1")
    if tc.lr_warmup_iters < 0:
        raise ConfigError(f"--lr-warmup-iters {tc.lr_warmup_iters} must be >= 0")
    if tc.eval_interval < 0 or tc.eval_iters < 0:
        raise ConfigError(f"--eval-interval {tc.eval_interval} and --eval-iters {tc.eval_iters} "
                          "must be >= 0 (--eval-iters 0: no validation; --eval-interval 0: only "
                          "after the last step)")
    _validate_logging(cfg)
    if not 0 <= tc.min_lr <= tc.lr:
        raise ConfigError(
            f"train.min_lr {tc.min_lr} must be between 0 and --lr {tc.lr} (the schedule decays "
            f"from --lr to it); for a run at --lr 0 also pass --set train.min_lr=0"
        )
    if tc.global_batch_size % tc.micro_batch_size:
        raise ConfigError(
            f"--global-batch-size {tc.global_batch_size} is not a multiple of "
            f"--micro-batch-size {tc.micro_batch_size}"
        )
    if tc.fp8 is not None and cfg.model.transformer_impl == "local":
        raise ConfigError(
            "--fp8 needs the Transformer Engine layer spec; set model.transformer_impl to "
            "'transformer_engine' or 'auto', or drop --fp8"
        )
    ck = cfg.checkpoint
    if ck.save_interval < 0 or ck.keep_last < 1:
        raise ConfigError("checkpoint: save_interval must be >= 0 and keep_last >= 1")
    if ck.save_interval and not ck.save:
        raise ConfigError("--save-interval needs --save DIR")
    par = cfg.parallel
    if par.sequence_parallel and par.tensor_model_parallel_size == 1:
        raise ConfigError("--sp needs --tp > 1 (sequence parallelism shards along the TP group)")
    if par.virtual_pipeline_model_parallel_size is not None:
        if par.virtual_pipeline_model_parallel_size < 1:
            raise ConfigError("--vpp must be >= 1")
        if par.pipeline_model_parallel_size < 2 and par.virtual_pipeline_model_parallel_size > 1:
            raise ConfigError("--vpp > 1 needs --pp > 1 (interleaving splits each pipeline rank)")


def _validate_logging(cfg: RunConfig) -> None:
    data, log = cfg.data, cfg.log
    if not 0.0 <= data.valid_fraction < 1.0:
        raise ConfigError(f"data.valid_fraction: {data.valid_fraction} must be in [0, 1) (the "
                          "share of --data's clips held out for validation)")
    if data.valid_path is not None and data.valid_fraction:
        raise ConfigError("--valid-data and data.valid_fraction both name validation clips; "
                          "drop one (data.valid_fraction=0 keeps all of --data for training)")
    if log.log_images_interval < 0:
        raise ConfigError(f"--log-images-interval {log.log_images_interval} must be >= 0")
    if (log.wandb_exp_name or log.wandb_save_dir) and not log.wandb_project:
        raise ConfigError("--wandb-exp-name/--wandb-save-dir need --wandb-project NAME")
    if log.wandb_project and importlib.util.find_spec("wandb") is None:
        raise ConfigError("--wandb-project needs Weights & Biases: pip install 'megavid[wandb]' "
                          "(or drop --wandb-project)")


def has_validation(cfg: RunConfig) -> bool:
    """Whether the run computes a validation loss: clips to validate on and eval_iters > 0."""
    return bool(cfg.data.valid_path or cfg.data.valid_fraction) and cfg.train.eval_iters > 0


def _validate_arch_options(cfg: RunConfig) -> None:
    model = cfg.model
    for name in ("layernorm_epsilon", "decoder_norm_epsilon"):
        value = getattr(model, name)
        if value is not None and not value > 0:
            raise ConfigError(f"model.{name}: {value} must be > 0 (4DS: 1e-6, VideoMAE: 1e-12)")
    if model.pixel_norm == "imagenet" and model.resolved_arch().channels != 3:
        raise ConfigError("model.pixel_norm=imagenet needs RGB input (model.arch.channels=3)")
    if model.pixel_norm == "imagenet" and cfg.data.value_range == "imagenet":
        raise ConfigError(
            "model.pixel_norm=imagenet normalises the input itself: set data.value_range=unit "
            "(or model.pixel_norm=none) so that clips are not normalised twice"
        )
