"""Typed configuration of a training run, mirrored one-to-one by ``configs/train.yaml``.

Every dataclass validates itself in ``__post_init__`` (a ``ValueError`` naming the offending values), so a bad
config is a one-line error before any model is built.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from chronoedit.models.spec import MODEL_PRESETS, ModelSpec
from chronoedit.runtime import RuntimeConfig

TRAIN_DTYPES = ("float32", "bfloat16")  # what training computes and stores in
# DiffSynth's LoRA targets for Wan (their "q,k,v,o,ffn.0,ffn.2"), in our module names without the block prefix.
DEFAULT_LORA_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "ffn.0", "ffn.2")
LORA_TARGETS = (
    *(f"self_attn.{p}" for p in "qkvo"),
    *(f"cross_attn.{p}" for p in ("q", "k", "v", "o", "k_img", "v_img")),
    "ffn.0",
    "ffn.2",
)


def _check(problems: list[str], what: str) -> None:
    if problems:
        raise ValueError(f"invalid {what}: " + "; ".join(problems))


def _dtype(name: str, what: str, problems: list[str]) -> None:
    if name not in TRAIN_DTYPES:
        problems.append(f"{what}={name!r} must be one of {sorted(TRAIN_DTYPES)}")


@dataclass
class LoRAConfig:
    rank: int = 32
    alpha: float = 32.0  # scale alpha / rank
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))  # module names inside a block
    blocks: list[int] | None = None  # None: every block
    init_seed: int = 0  # lora_A init (Kaiming-uniform); lora_B starts at zero

    def __post_init__(self) -> None:
        problems = []
        if self.rank < 1:
            problems.append(f"rank={self.rank} must be >= 1")
        if self.alpha <= 0:
            problems.append(f"alpha={self.alpha} must be > 0")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets:
            problems.append(f"targets {unknown or '[]'} are not among {list(LORA_TARGETS)}")
        _check(problems, "lora config")


@dataclass
class TimestepConfig:
    # σ_base ~ distribution on [0, 1], then σ = shift·σ_base / (1 + (shift − 1)·σ_base); timestep = 1000·σ.
    # uniform: U(0, 1); logit_normal: sigmoid(N(logit_mean, logit_std²)); discrete: one of the 1000 grid points
    # linspace(1, 0, 1001)[:-1], uniformly (DiffSynth's training schedule).
    distribution: str = "uniform"
    shift: float = 5.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    weighting: str = "none"  # none | bell: DiffSynth's per-timestep weight exp(−2((t − 500)/1000)²), mean 1
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        problems = []
        if self.distribution not in ("uniform", "logit_normal", "discrete"):
            problems.append(f"distribution={self.distribution!r} must be uniform, logit_normal or discrete")
        if not self.shift > 0:
            problems.append(f"shift={self.shift} must be > 0")
        if not self.logit_std > 0:
            problems.append(f"logit_std={self.logit_std} must be > 0")
        if self.weighting not in ("none", "bell"):
            problems.append(f"weighting={self.weighting!r} must be none or bell")
        if self.num_train_timesteps < 1:
            problems.append(f"num_train_timesteps={self.num_train_timesteps} must be >= 1")
        _check(problems, "timestep config")


@dataclass
class ObjectiveConfig:
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    # MSE over every latent frame, frame 0 (the input image, also given through the condition) included, as
    # DiffSynth's recipe does; false: frame 0 is left out of the loss.
    loss_on_input_frame: bool = True
    text_dropout: float = 0.0  # probability of training a sample on the empty prompt's embedding (for CFG)

    def __post_init__(self) -> None:
        _check([] if 0 <= self.text_dropout <= 1 else [f"text_dropout={self.text_dropout} not in [0, 1]"], "objective")


@dataclass
class SyntheticConfig:
    """Random latents and embeddings, made from a seed (for tests and CPU debug runs; no files needed)."""

    pairs: int = 4
    videos: int = 0  # 8-latent-frame video-prior examples
    height: int = 8  # latent size (the image is 8× larger)
    width: int = 8
    text_tokens: int = 16  # real (non-padding) text tokens per prompt
    image_tokens: int = 257
    seed: int = 0

    def __post_init__(self) -> None:
        sizes = ("height", "width", "text_tokens", "image_tokens")
        problems = [f"{k}={getattr(self, k)} must be >= 1" for k in sizes if getattr(self, k) < 1]
        if self.pairs < 0 or self.videos < 0 or self.pairs + self.videos == 0:
            problems.append(f"pairs={self.pairs}, videos={self.videos}: need >= 0 each and at least one example")
        if self.height % 2 or self.width % 2:
            problems.append(f"latent size {self.height}x{self.width} must be even (patch 2×2)")
        _check(problems, "synthetic data config")


@dataclass
class DataConfig:
    # exactly one source: a pre-encoded dataset folder (train/preencode.py), or synthetic latents
    cache: str | None = None
    synthetic: SyntheticConfig | None = field(default_factory=SyntheticConfig)
    video_ratio: float = 0.0  # fraction of steps that train on video-prior clips (8 latent frames) instead of pairs
    seed: int = 0  # data order (one permutation per epoch) and the pair/video choice of each step

    def __post_init__(self) -> None:
        problems = [] if 0 <= self.video_ratio <= 1 else [f"video_ratio={self.video_ratio} not in [0, 1]"]
        if (self.cache is None) == (self.synthetic is None):
            problems.append(
                "set exactly one data source: data.cache=<pre-encoded folder> (with data.synthetic=null) or "
                "data.synthetic"
            )
        _check(problems, "data config")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping (the norm is still logged)
    warmup_steps: int = 0  # linear warm-up from 0
    schedule: str = "constant"  # constant | cosine (to min_lr_ratio·lr at the last step)
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)
        problems = []
        if not self.lr > 0:
            problems.append(f"lr={self.lr} must be > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas={self.betas} must be two numbers in [0, 1)")
        if self.grad_clip < 0 or self.warmup_steps < 0 or self.weight_decay < 0 or not self.eps > 0:
            problems.append("grad_clip, warmup_steps and weight_decay must be >= 0 and eps > 0")
        if self.schedule not in ("constant", "cosine"):
            problems.append(f"schedule={self.schedule!r} must be constant or cosine")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio={self.min_lr_ratio} not in [0, 1]")
        _check(problems, "optimizer config")


@dataclass
class EMAConfig:
    enabled: bool = False
    decay: float = 0.999
    export: bool = True  # export the EMA weights (instead of the raw ones) at the end

    def __post_init__(self) -> None:
        _check([] if 0 < self.decay < 1 else [f"decay={self.decay} not in (0, 1)"], "ema config")


@dataclass
class PrecisionConfig:
    compute: str = "bfloat16"  # autocast dtype of the forward/backward; float32 = no autocast
    frozen: str = "bfloat16"  # storage of the frozen base weights in LoRA training (fp32 islands stay fp32)
    fsdp_param: str = "float32"  # dtype FSDP all-gathers parameters in (bfloat16 halves the traffic; the
    # fp32 islands — modulation, norms, time embedding — are then gathered in bf16 too)
    fsdp_reduce: str = "float32"  # gradient reduce-scatter dtype

    def __post_init__(self) -> None:
        problems: list[str] = []
        for k in ("compute", "frozen", "fsdp_param", "fsdp_reduce"):
            _dtype(getattr(self, k), k, problems)
        _check(problems, "precision config")


@dataclass
class ParallelConfig:
    # With several processes the model is under FSDP2 (fully_shard per block, then the root), sharded over
    # shard_size ranks (-1: all) and replicated world/shard_size times (HSDP; shard_size=1: plain data parallel).
    shard_size: int = -1
    reshard_after_forward: bool = True
    activation_checkpointing: bool = True
    backend: str = "auto"  # process-group backend: auto = nccl on CUDA, gloo on CPU

    def __post_init__(self) -> None:
        problems = []
        if self.shard_size == 0 or self.shard_size < -1:
            problems.append(f"shard_size={self.shard_size} must be -1 or >= 1")
        if self.backend not in ("auto", "nccl", "gloo"):
            problems.append(f"backend={self.backend!r} must be auto, nccl or gloo")
        _check(problems, "parallel config")


@dataclass
class CheckpointConfig:
    every: int = 500  # steps between checkpoints (0: only at the end)
    keep: int = 3  # newest complete checkpoints kept (older ones are deleted)
    export_dtype: str = "bfloat16"  # of the exported weights (full fine-tuning) / LoRA
    export_every: int = 0  # full training: also export to exports/step_NNNNNN every N steps (0: only at the end)

    def __post_init__(self) -> None:
        ok = self.every >= 0 and self.keep >= 1 and self.export_every >= 0
        problems = [] if ok else [f"every={self.every} >= 0, keep={self.keep} >= 1, export_every >= 0"]
        _dtype(self.export_dtype, "export_dtype", problems)
        _check(problems, "checkpoint config")


@dataclass
class TrainConfig:
    mode: str = "lora"  # lora | full
    # "tiny" (no weights: init=random), a diffusers ChronoEdit folder, a native folder, a transformer folder or
    # one Wan-named .safetensors file. null: not chosen yet (the 14B experiments leave it to the command line).
    checkpoint: str | None = "tiny"
    model: ModelSpec = field(default_factory=lambda: copy.deepcopy(MODEL_PRESETS["tiny"]))  # group configs/model/
    init: str = "auto"  # auto | random | checkpoint (auto: random for checkpoint=tiny, else the checkpoint's)
    init_seed: int = 0  # weights of init=random (the same seed as train/preencode.py's init_seed)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)  # device, attention, compile
    steps: int = 1000
    batch_size: int = 1  # global batch (all processes, all accumulation micro-steps)
    micro_batch_size: int = 1  # samples per forward per process; accumulation = batch / (world · micro)
    seed: int = 0  # noise and timestep draws: a function of (seed, step, sample slot), never of the rank
    log_every: int = 1
    run_dir: str | None = None  # None: Hydra's run folder (outputs/<date>/<time>)
    resume: bool = False  # continue from the newest complete checkpoint in run_dir
    overwrite: bool = False  # allow starting afresh in a non-empty run_dir (its old checkpoints are removed)

    def __post_init__(self) -> None:
        from chronoedit.checkpoint.architecture import named_checkpoint

        self.checkpoint = named_checkpoint(self.checkpoint)
        problems = []
        if self.mode not in ("lora", "full"):
            problems.append(f"mode={self.mode!r} must be lora or full")
        if self.steps < 1 or self.batch_size < 1 or self.micro_batch_size < 1 or self.log_every < 1:
            problems.append("steps, batch_size, micro_batch_size and log_every must be >= 1")
        elif self.batch_size % self.micro_batch_size:
            problems.append(
                f"batch_size={self.batch_size} is not a multiple of micro_batch_size={self.micro_batch_size}"
            )
        if self.resume and self.overwrite:
            problems.append("resume=true and overwrite=true exclude each other")
        if self.checkpoint is None:
            problems.append("checkpoint is not set: pass checkpoint=<ChronoEdit checkpoint> (or tiny)")
        rt = self.runtime
        if rt.dtype != "auto" or rt.offload or rt.cfg_batched:
            problems.append("runtime.dtype/offload/cfg_batched are inference settings (training: precision.*)")
        if rt.step_cache != "none":
            problems.append(f"runtime.step_cache={rt.step_cache!r} is an inference setting (training: none)")
        _check(problems, "training config")

    def check_world(self, world_size: int) -> int:
        """Gradient-accumulation steps for ``world_size`` processes (a ValueError if the batch does not divide)."""
        per_step = world_size * self.micro_batch_size
        if self.batch_size % per_step:
            raise ValueError(
                f"batch_size={self.batch_size} must be a multiple of world_size × micro_batch_size = "
                f"{world_size} × {self.micro_batch_size}"
            )
        shard = world_size if self.parallel.shard_size == -1 else self.parallel.shard_size
        if world_size % shard:
            raise ValueError(f"parallel.shard_size={shard} does not divide the world size {world_size}")
        return self.batch_size // per_step
