"""Typed configuration: one dataclass per subsystem, nested in :class:`RunConfig`.

The CLI and YAML files are two views of the same objects. Every field carries help text in its
metadata; ``__post_init__`` validates values and says how to fix them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cropi.utils.errors import CropiError


def opt(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _check(cond: bool, section: str, name: str, msg: str) -> None:
    if not cond:
        raise CropiError(msg, field=f"{section}.{name}")


@dataclass
class ModelConfig:
    path: str = opt("default", "HF causal LM: 'default' (embedded SmolLM2-135M-Instruct), a local "
                    "folder or a hub id (when online)")
    system_prompt: str | None = opt(None, "system message prepended to every prompt (None: the "
                                    "chat template's default)")
    device: str = opt("auto", "auto, cpu or cuda")

    def __post_init__(self) -> None:
        _check(self.device in ("auto", "cpu", "cuda"), "model", "device", "use auto, cpu or cuda")


@dataclass
class DataConfig:
    suite: str | None = opt("default", "built-in task suite (see `cropi suites`); None to use files")
    seed: int = opt(0, "seed of the built-in suite's generation")
    pool: str | None = opt(None, "training pool: .jsonl, .parquet, HF dataset folder or "
                           "hf:NAME[:CONFIG[:SPLIT]][?FIELD=COLUMN&...]")
    targets: dict[str, str] = opt({}, "target (validation) sets: name -> file or hf: name")
    tests: dict[str, str] = opt({}, "test sets: name -> file or hf: name (names starting with "
                                "'target' count as targeted)")
    converter: str = opt("auto", "row layout of the files: auto, cropi, verl or gsm8k")
    max_prompt_chars: int = opt(100_000, "refuse a prompt longer than this many characters (all messages) "
                                "at load time, before any model work")

    def __post_init__(self) -> None:
        _check(self.suite is not None or self.pool is not None, "data", "suite",
               "give a built-in suite or a pool file")
        _check(self.max_prompt_chars >= 1, "data", "max_prompt_chars", "must be >= 1")


@dataclass
class RolloutConfig:
    k_pool: int = opt(8, "responses per pool prompt")
    k_target: int = opt(8, "responses per target prompt (the paper: 32; 8 cuts the target rollouts "
                        "4x, docs/speed.md)")
    k_first: int | None = opt(4, "adaptive K: sample this many responses per prompt first and the "
                              "rest (up to k_pool / k_target) only for prompts whose rewards are still "
                              "mixed; a prompt whose first rewards are all equal stops there (None: all "
                              "K at once)")
    temperature: float = opt(0.5, "sampling temperature of beta's rollouts (0.5, the paper's: its "
                             "selections hold far more target-family prompts than at 1.0, docs/influence.md)")
    top_p: float = opt(1.0, "nucleus sampling threshold")
    max_new_tokens: int = opt(64, "maximum response length in tokens")
    batch_size: int = opt(64, "sequences decoded together")
    chunk_rows: int = opt(256, "first-round responses per sampler call, stored part and seed: a call "
                          "decodes batch_size rows at a time and admits its next prompts as rows end, "
                          "so a chunk of several batches keeps the batch full (docs/speed.md)")
    dtype: str = opt("auto", "generation dtype (rollouts, evaluation): auto (bf16 where the device "
                            "computes it natively: CUDA, CPUs with AVX512-BF16 or AMX; fp32 elsewhere), "
                            "bf16 or fp32")
    backend: str = opt("hf", "sampler backend: hf (cropi's decode loop) or a registered engine such as "
                       "vllm (pip install vllm)")
    gpu_memory_utilization: float = opt(0.5, "vllm: share of GPU memory for the engine (the rest holds the fp32 model)")
    seed: int = opt(0, "sampling seed")
    logprobs: str = opt("gradient", "which prompts get beta's log-probs: gradient (those "
                        "with mixed rewards, the only ones any stage scores) or all (also beta's NLL "
                        "of the others in the selection analysis)")
    logprob_pass: str = opt("auto", "where beta's log-probs and the analysis' prompt embeddings come "
                            "from: auto (from the sampling itself where cropi's decode loop samples from "
                            "the fp32 model, rollout.dtype fp32 or auto on a CPU without native bf16: the "
                            "same fp32 values, no second pass; a teacher-forced fp32 pass and an "
                            "embedding pass elsewhere) or always (those passes everywhere)")

    def __post_init__(self) -> None:
        _check(self.logprobs in ("gradient", "all"), "rollout", "logprobs", "use gradient or all")
        _check(self.logprob_pass in ("auto", "always"), "rollout", "logprob_pass", "use auto or always")
        _check(self.k_pool >= 2, "rollout", "k_pool", "need at least 2 responses for an advantage")
        _check(self.k_target >= 2, "rollout", "k_target", "need at least 2 responses")
        _check(self.k_first is None or self.k_first >= 2, "rollout", "k_first",
               "need at least 2 responses to see mixed rewards (or None)")
        _check(self.temperature > 0, "rollout", "temperature", "must be > 0")
        _check(0 < self.top_p <= 1, "rollout", "top_p", "must be in (0, 1]")
        _check(self.max_new_tokens >= 1, "rollout", "max_new_tokens", "must be >= 1")
        _check(self.batch_size >= 1, "rollout", "batch_size", "must be >= 1")
        _check(self.chunk_rows >= 1, "rollout", "chunk_rows", "must be >= 1")
        _check(self.dtype in ("auto", "bf16", "fp32"), "rollout", "dtype", "use auto, bf16 or fp32")
        _check(0 < self.gpu_memory_utilization < 1, "rollout", "gpu_memory_utilization", "must be in (0, 1)")


@dataclass
class EvalConfig:
    greedy: bool = opt(True, "report greedy accuracy")
    samples: int = opt(4, "responses per item for mean@k sampled accuracy (0 disables)")
    temperature: float = opt(1.0, "sampling temperature for mean@k")
    max_new_tokens: int = opt(64, "maximum response length")
    batch_size: int = opt(64, "sequences per generation batch")
    max_items: int | None = opt(None, "evaluate at most this many items per test set")
    seed: int = opt(1234, "sampling seed")
    untargeted: str = opt("every", "when the untargeted test sets are evaluated: every (at every "
                          "evaluation) or stage_end (at step 0 and at each stage's end; the targeted "
                          "sets keep curriculum.eval_every)")

    def __post_init__(self) -> None:
        _check(self.untargeted in ("every", "stage_end"), "eval", "untargeted", "use every or stage_end")
        _check(self.samples >= 0, "eval", "samples", "must be >= 0")
        _check(self.greedy or self.samples > 0, "eval", "greedy", "enable greedy or samples > 0")


@dataclass
class GradientConfig:
    params: str = opt("all", "which parameters: all, lora, or filter (see include/exclude)")
    include: str | None = opt(None, "regex: keep parameters whose name matches (params=filter)")
    exclude: str | None = opt(None, "regex: drop parameters whose name matches (params=filter), "
                              "e.g. 'embed|norm'")
    lora_rank: int = opt(8, "LoRA rank when params=lora")
    clip_eps: float | None = opt(None, "PPO clip epsilon on the ratio (None: no clipping)")
    advantage: str = opt("grpo", "grpo (group-normalised) or reweighted (importance-weighted moments)")
    mode: str = opt("offpolicy", "offpolicy (POPI on stored beta rollouts) or onpolicy (fresh samples)")
    max_batch_tokens: int = opt(4096, "token budget of one forward/backward micro-batch")
    concat_responses: bool = opt(True, "run a prompt's responses as one sequence after the prompt, each "
                                 "attending to the prompt and itself only (no padding); false: one row "
                                 "per response, padded to the longest (the earlier pass)")
    autocast_bf16: bool | None = opt(None, "bf16 autocast in the gradient pass (fp32 parameters, gradients "
                                     "and accumulation); None: on where bf16 is fast (CUDA with bf16, "
                                     "CPUs with AVX512-BF16 or AMX), off elsewhere")
    prompts_per_backward: int = opt(1, "prompts per forward/backward pass; > 1 takes per-prompt "
                                    "gradients from layer hooks (projection.kind factorized only; "
                                    "other kinds keep 1); 1: one backward per prompt")

    def __post_init__(self) -> None:
        _check(self.params in ("all", "lora", "filter"), "gradient", "params", "use all, lora or filter")
        _check(self.advantage in ("grpo", "reweighted"), "gradient", "advantage", "use grpo or reweighted")
        _check(self.mode in ("offpolicy", "onpolicy"), "gradient", "mode", "use offpolicy or onpolicy")
        _check(self.clip_eps is None or self.clip_eps > 0, "gradient", "clip_eps", "must be > 0 or None")
        _check(self.max_batch_tokens >= 16, "gradient", "max_batch_tokens", "must be >= 16")
        _check(self.prompts_per_backward >= 1, "gradient", "prompts_per_backward", "must be >= 1")


@dataclass
class ProjectionConfig:
    kind: str = opt("countsketch", "projector (a registered kind; `cropi score --help` lists them)")
    k: int = opt(8192, "projected dimension")
    sparse_ratio: float = opt(1.0, "fraction of coordinates kept before the JL map (sparse-jl)")
    distribution: str = opt("rademacher", "JL entries: rademacher or gaussian (sparse-jl)")
    seed: int = opt(0, "projection seed (the matrix is regenerated from it, never stored)")
    store_dtype: str = opt("fp16", "feature store dtype: fp16 or fp32")
    cache_gb: float = opt(2.0, "memory (on the gradients' device) for regenerated random tables; "
                               "count-sketch needs 4 bytes per coordinate (about 6 GB for a 1.5B model)")

    def __post_init__(self) -> None:
        _check(self.k >= 1, "projection", "k", "must be >= 1")
        _check(0 < self.sparse_ratio <= 1, "projection", "sparse_ratio", "must be in (0, 1]")
        _check(self.distribution in ("rademacher", "gaussian"), "projection", "distribution",
               "use rademacher or gaussian")
        _check(self.store_dtype in ("fp16", "fp32"), "projection", "store_dtype", "use fp16 or fp32")
        _check(self.cache_gb >= 0, "projection", "cache_gb", "must be >= 0 (0 regenerates every table on use)")


@dataclass
class ScoreConfig:
    target_max: int = opt(100, "at most this many target prompts (seeded sample) per target mean")
    scorer: str = opt("paper", "how a pool gradient is compared with a target's: a registered scorer, "
                      "paper = cosine with the target mean (docs/influence.md, 'Scorers')")
    scorer_options: dict[str, Any] = opt({}, "options of the scorer, e.g. {reduce: max} for "
                                         "differential or {neighbours: 5} for knn")
    drift: bool = opt(True, "stages > 0: measure each pool prompt's ESS/K of its importance weights "
                      "(from the local gradient pass's forward; a forward pass of its own with resample_below_ess, "
                      "a shortlist or the ray backend; column ess, metrics event drift)")
    resample_below_ess: float | None = opt(None, "stages > 0: re-sample prompts whose ESS/K is below "
                                           "this with the current policy before scoring (None: never)")
    shortlist: float | None = opt(None, "stages > 0: re-score only a shortlist, the previous stage's best "
                                  "shortlist x budget prompts and as many again with the lowest ESS/K; "
                                  "the others get no score that stage (None: re-score the whole pool)")
    fusion: str = opt("rrf", "fusion of several targets: rrf (reciprocal rank), max or mean "
                      "(cropi.select.FUSIONS)")
    seed: int = opt(0, "seed of the target sample")
    backend: str = opt("local", "where gradients are computed: local (this process) or a registered "
                       "backend such as ray (sharded over Ray workers)")
    workers: int = opt(0, "ray: number of shards/workers (0 = one per GPU in the cluster, else one per CPU)")
    ray_address: str | None = opt(None, "ray: cluster address (None = RAY_ADDRESS or a local cluster)")
    worker_cpus: float = opt(1.0, "ray: CPUs per worker (also its torch threads)")
    worker_gpus: float | None = opt(None, "ray: GPUs per worker (None = 1 when the cluster has GPUs, else 0)")

    def __post_init__(self) -> None:
        _check(self.resample_below_ess is None or 0 < self.resample_below_ess <= 1, "score",
               "resample_below_ess", "must be in (0, 1] or None")
        _check(self.target_max >= 1, "score", "target_max", "must be >= 1")
        _check(self.shortlist is None or self.shortlist >= 1, "score", "shortlist",
               "must be >= 1 (a multiple of the selection budget) or None")
        _check(self.workers >= 0, "score", "workers", "must be >= 0 (0 = automatic)")
        _check(self.worker_cpus > 0, "score", "worker_cpus", "must be > 0")
        _check(self.worker_gpus is None or self.worker_gpus >= 0, "score", "worker_gpus", "must be >= 0")


@dataclass
class SelectConfig:
    policy: str = opt("influence", "selection policy: a registered name (`cropi select --help` lists "
                      "them; oracle: the target families' own pool prompts, an upper bound)")
    ratio: float = opt(0.10, "fraction of the pool kept per stage")
    seed: int = opt(0, "seed for random policies")
    options: dict[str, Any] = opt({}, "options of the difficulty- and diversity-aware policies "
                                  "(influence-quota, -window, -mmr, -cap, -window-mmr), e.g. {window: "
                                  "[0.1, 0.6], window_step: 0.05} or {mmr_lambda: 0.5, space: gradient} "
                                  "(docs/influence.md, 'What the selection picks')")
    analysis: bool = opt(True, "compare the selection with the prompts with a gradient and the pool "
                         "(entropy, pass rate, level, similarity to the targets; selection.json "
                         "'analysis'); the embedding similarity runs beta (or the named encoder) "
                         "over the prompts once per run")
    embedding_model: str | None = opt(None, "prompt embeddings for the similarity analysis and the "
                                      "embedding-space policies, one space for every stage: None = beta, the "
                                      "initial model (mean-pooled last hidden state of the templated "
                                      "prompt), or a Hugging Face encoder (local folder or hub id)")

    def __post_init__(self) -> None:
        _check(0 < self.ratio <= 1, "select", "ratio", "must be in (0, 1]")


@dataclass
class TrainConfig:
    steps_per_stage: int = opt(20, "GRPO steps per stage")
    learning_rate: float = opt(2e-5, "learning rate")
    prompts_per_step: int = opt(4, "prompts per GRPO step")
    samples_per_prompt: int = opt(8, "on-policy samples per prompt")
    max_new_tokens: int = opt(48, "maximum completion length")
    temperature: float = opt(1.0, "sampling temperature")
    beta: float = opt(0.0, "KL coefficient (0: no reference model)")
    clip_eps: float = opt(0.2, "PPO clip epsilon")
    lora: bool = opt(False, "train LoRA adapters instead of all parameters")
    lora_rank: int = opt(8, "LoRA rank r of the adapters (with train.lora)")
    lora_alpha: float = opt(16.0, "LoRA alpha: the adapter update is scaled by lora_alpha / lora_rank")
    bf16: bool = opt(False, "bf16 mixed precision")
    generation_dtype: str = opt("auto", "dtype of the copy of the policy that samples each GRPO step's completions: "
                                "auto (bf16 where the device computes it natively, fp32 elsewhere), bf16 or fp32")
    reset_optimizer: bool = opt(False, "reset optimizer state at each stage")
    seed: int = opt(0, "training seed")

    def __post_init__(self) -> None:
        _check(self.steps_per_stage >= 1, "train", "steps_per_stage", "must be >= 1")
        _check(self.samples_per_prompt >= 2, "train", "samples_per_prompt", "must be >= 2")
        _check(self.learning_rate > 0, "train", "learning_rate", "must be > 0")
        _check(self.lora_rank >= 1, "train", "lora_rank", "must be >= 1")
        _check(self.lora_alpha > 0, "train", "lora_alpha", "must be > 0")
        _check(self.generation_dtype in ("auto", "bf16", "fp32"), "train", "generation_dtype",
               "use auto, bf16 or fp32")


@dataclass
class CurriculumConfig:
    stages: int = opt(2, "number of stages")
    eval_every: int = opt(10, "evaluate every this many RL steps")
    keep_checkpoints: bool = opt(False, "keep every stage's checkpoint (default: only the latest)")
    tensorboard: bool = opt(True, "also write metrics to RUN/tensorboard/ when tensorboard is installed")

    def __post_init__(self) -> None:
        _check(self.stages >= 1, "curriculum", "stages", "must be >= 1")
        _check(self.eval_every >= 1, "curriculum", "eval_every", "must be >= 1")


@dataclass
class RunConfig:
    name: str = opt("cropi", "run name (folder under out_dir)")
    out_dir: str = opt("runs", "parent folder of run directories")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gradient: GradientConfig = field(default_factory=GradientConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name


def _resolve_type(tp: Any) -> Any:
    if isinstance(tp, str):
        tp = eval(tp, vars(typing) | globals())  # annotations are strings (PEP 563)
    return tp


LEGACY_KEYS = {"seed"}
"""Top-level keys that configs written by earlier versions hold and that are read no more (``seed``:
a base seed nothing used; the seeds are ``rollout.seed``, ``train.seed``, ``select.seed`` ...)."""


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build a (nested) config dataclass from a mapping; unknown keys are errors."""
    if not isinstance(data, dict):
        raise CropiError("must be a mapping", field=where or cls.__name__)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    if cls is RunConfig:
        data = {k: v for k, v in data.items() if k not in LEGACY_KEYS}
    for key, value in data.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            raise CropiError(f"unknown key {name!r}", fix=f"known keys: {', '.join(fields)}")
        tp = _resolve_type(fields[key].type)
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value or {}, name)
        else:
            kwargs[key] = _coerce(value, tp, name)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise CropiError(f"must be {tp.__name__}, got {value!r}", field=name)
    if origin is dict and not isinstance(value, dict):
        raise CropiError("must be a mapping", field=name)
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def read_config_data(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds (only the keys it names), unvalidated."""
    path = Path(path)
    if not path.exists():
        raise CropiError("does not exist", file=path)
    from cropi.utils.text import read_text_utf8  # not UTF-8: one line naming the file and line

    try:
        data = yaml.safe_load(read_text_utf8(path)) or {}
    except yaml.YAMLError as exc:
        raise CropiError(f"is not valid YAML ({exc})", file=path) from None
    if not isinstance(data, dict):
        raise CropiError("must be a YAML mapping of config sections", file=path,
                         fix="see `cropi config` for the keys")
    return data


def load_config(path: str | Path) -> RunConfig:
    data = read_config_data(path)
    try:
        return from_dict(RunConfig, data)
    except CropiError as exc:
        raise CropiError(str(exc), file=path) from None


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
