"""GPU scoring at 1.5B scale: POPI gradients + projection per prompt on CUDA, and CPU/CUDA equality.

A randomly initialised Qwen2-1.5B-architecture model is built from a ``Qwen2Config`` (hidden 1536,
28 layers, 12 heads, 2 KV heads, intermediate 8960, vocab 151936, tied embeddings: d = 1.54e9);
no weights are downloaded. As in the scoring pipeline the parameters stay fp32 and the forward
runs under bf16 autocast (``GradientConfig.autocast_bf16``), so gradients accumulate in fp32.

Synthetic rollouts: --n-prompts prompts x --k-resp responses x --resp-len tokens of random ids,
rewards random 0/1 with both values in every prompt, behaviour log-probs from the library's
teacher-forced pass (``response_logprobs``) on the same model.

For each projector (countsketch, sparse-jl r=0.1, factorized, none = the full gradient) the
library's ``prompt_feature`` runs on every prompt: the first is a warm-up (it also fills the
projector's table cache) and is excluded; the rest are timed, each projector within --time-box
seconds. Reported: seconds per prompt (grad / project split), prompts/s, peak GPU memory
(``torch.cuda.max_memory_allocated``, reset before each projector; it includes the cached tables).
sparse-jl regenerates k x r x d random numbers on the CPU per call (1.3e12 for the full model): it
is run only when its measured estimate fits the time box, else reported as "not run (est. ...)".
``none`` beyond ``IDENTITY_MAX_D`` coordinates is the flattened fp32 gradient on the device.

Equality: one random fp32 vector of --eq-dim coordinates (split into uneven tensors) is projected
by each projector on the CPU and on CUDA with the same seed; max abs diff and relative error
(max abs diff / max |cpu|) must be ~0 (float summation order only).

The result also records ``versions`` (python, torch and its CUDA, cuDNN, transformers, GPU, driver)
and ``commit_given`` (``CROPI_GIT_COMMIT``, for a copied checkout whose .git is missing or stale).
scripts/gpu-check.sh runs this after the CUDA tests.

    .venv/bin/python benchmarks/gpu_scoring.py                # CUDA, about 70 s on one H200
    .venv/bin/python benchmarks/gpu_scoring.py --tiny         # same code, tiny model on the CPU
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from cropi.bench import print_table, write_result
from cropi.bench.sparse_jl import estimate_sparse_jl
from cropi.config import GradientConfig, ProjectionConfig
from cropi.influence.params import ParamSet, select_params
from cropi.influence.pipeline import Timings, prompt_feature
from cropi.influence.popi import popi_backward
from cropi.influence.projection import IDENTITY_MAX_D, make_projector
from cropi.influence.projection.factorized import FactorizedProjector
from cropi.model.logprobs import response_logprobs
from cropi.rollout.store import PromptRollouts

PAD_ID = 0
QWEN2_1P5B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, intermediate_size=8960, vocab_size=151936)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=2048)


# ------------------------------------------------------------------------------------ setup
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(arch: dict[str, int], device: torch.device, seed: int) -> torch.nn.Module:
    """Random Qwen2 causal LM in fp32, initialised directly on ``device`` (fast on CUDA)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**arch, tie_word_embeddings=True, max_position_embeddings=4096,
                      rms_norm_eps=1e-6, pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    return model.float().eval()


def synthetic_items(model: torch.nn.Module, n: int, k: int, resp_len: int, prompt_len: int,
                    vocab: int, seed: int) -> list[PromptRollouts]:
    """n prompts x k responses of random ids; rewards with both 0 and 1; teacher-forced log-probs."""
    gen = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        prompt = torch.randint(3, vocab, (prompt_len,), generator=gen).tolist()
        resps = [torch.randint(3, vocab, (resp_len,), generator=gen).tolist() for _ in range(k)]
        rewards = (torch.rand(k, generator=gen) < 0.5).float()
        rewards[torch.randperm(k, generator=gen)[:2]] = torch.tensor([0.0, 1.0])
        lps = response_logprobs(model, [prompt] * k, resps, PAD_ID)
        items.append(PromptRollouts(f"p{i}", "synthetic", None, prompt, resps, [""] * k,
                                    rewards.numpy(), [np.asarray(lp, np.float32) for lp in lps]))
    return items


# --------------------------------------------------------------------------------- projectors
def make(kind: str, model: torch.nn.Module, params: ParamSet, k: int, seed: int,
         cache_bytes: int) -> Any:
    if kind == "factorized":
        return FactorizedProjector.from_model(model, ProjectionConfig(kind=kind, k=k, seed=seed),
                                              params=list(zip(params.names, params.params)),
                                              cache_bytes=cache_bytes)
    cfg = ProjectionConfig(kind=kind, k=k, seed=seed, sparse_ratio=0.1 if kind == "sparse-jl" else 1.0)
    return make_projector(cfg, params.dim, cache_bytes=cache_bytes)


class FullGradient:
    """``none`` past ``IDENTITY_MAX_D``: the flattened fp32 gradient, kept on its device."""

    kind = "none"

    def __init__(self, d: int) -> None:
        self.k = self.d = d

    def project(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([g.reshape(-1).float() for g in grads])


def versions(device: torch.device) -> dict[str, Any]:
    """Software and GPU versions the numbers were measured with (driver from ``nvidia-smi``)."""
    import transformers

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                           "transformers": transformers.__version__, "numpy": np.__version__,
                           "gpu": None, "gpu_capability": None, "gpu_memory_gb": None, "driver": None}
    if device.type == "cuda":
        prop = torch.cuda.get_device_properties(device)
        out.update(gpu=prop.name, gpu_capability=f"{prop.major}.{prop.minor}",
                   gpu_memory_gb=prop.total_memory / 2**30)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            out["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, IndexError):
            pass
    return out


# ---------------------------------------------------------------------------------- timing
def peak_gb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return None


def feature(model: torch.nn.Module, params: ParamSet, proj: Any, item: PromptRollouts,
            gcfg: GradientConfig, tm: Timings) -> torch.Tensor | np.ndarray | None:
    """The library's ``prompt_feature``; ``FullGradient`` stays on the device (d floats)."""
    if not isinstance(proj, FullGradient):
        return prompt_feature(model, params, proj, item, gcfg, PAD_ID, tm)
    t0 = time.perf_counter()
    params.zero_grad()
    popi_backward(model, item, gcfg, PAD_ID)
    sync(params.params[0].device)
    t1 = time.perf_counter()
    flat = proj.project(params.grads())
    sync(flat.device)
    tm.grad, tm.project = tm.grad + t1 - t0, tm.project + time.perf_counter() - t1
    return flat


def check(feat: torch.Tensor | np.ndarray | None) -> bool:
    """A feature exists, is finite and is not all zero (every synthetic prompt has signal)."""
    if feat is None:
        return False
    f = torch.as_tensor(feat)
    return bool(f.isfinite().all()) and bool(f.abs().sum() > 0)


def run_projector(name: str, build: Callable[[], Any], model: torch.nn.Module, params: ParamSet,
                  items: Sequence[PromptRollouts], gcfg: GradientConfig, device: torch.device,
                  time_box: float) -> dict[str, Any]:
    """Warm-up on items[0] (excluded), then items[1:] until ``time_box`` seconds are spent."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    proj = build()
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    ok = [check(feature(model, params, proj, items[0], gcfg, Timings()))]
    sync(device)
    warm_s = time.perf_counter() - t
    tm, start = Timings(), time.perf_counter()
    for it in items[1:]:
        ok.append(check(feature(model, params, proj, it, gcfg, tm)))  # features are not kept
        tm.n_prompts += 1
        if time.perf_counter() - start > time_box:
            break
    params.zero_grad()
    n = tm.n_prompts
    total = tm.grad + tm.project
    cache = getattr(getattr(proj, "rest", proj), "cache", None)
    row = {"method": name, "k": proj.k, "d": params.dim, "n_timed": n, "build_s": build_s,
           "warmup_s": warm_s, "grad_s": tm.grad / n, "project_s": tm.project / n,
           "s_per_prompt": total / n, "prompts_per_s": n / total, "peak_gpu_gb": peak_gb(device),
           "cached_tables_gb": cache.used / 2**30 if cache is not None else 0.0,
           "features_finite_nonzero": all(ok),
           "status": "ok" if n == len(items) - 1 else f"time-boxed at {n} of {len(items) - 1}"}
    print(f"[{name}] {row['s_per_prompt']:.3f} s/prompt, peak {row['peak_gpu_gb']} GB", flush=True)
    del proj
    return row


# -------------------------------------------------------------------------------- equality
def equality(kinds: Sequence[str], k: int, d: int, seed: int, device: torch.device,
             reference: torch.device) -> list[dict[str, Any]]:
    """Project one random fp32 vector of ``d`` coordinates on ``reference`` and on ``device``."""
    gen = torch.Generator().manual_seed(seed + 1)
    # uneven tensors shaped like a model's: two linear weights, a vector, an embedding-like rest
    cols = 256
    a, b = (d // 3) // cols, (d // 6) // cols
    shapes = [("l1.weight", (a, cols)), ("norm.weight", (cols,)), ("l2.weight", (b, cols))]
    shapes.append(("emb.weight", (d - (a + b + 1) * cols,)))
    vec = [torch.randn(*s, generator=gen) for _, s in shapes]
    rows = []
    for kind in kinds:
        if kind == "none" and d > IDENTITY_MAX_D:
            continue
        def build(kind: str = kind) -> Any:  # a fresh instance per device: no shared table cache
            if kind == "factorized":
                return FactorizedProjector(shapes, {"l1.weight": "l1", "l2.weight": "l2"}, k, seed)
            r = 0.1 if kind == "sparse-jl" else 1.0
            return make_projector(ProjectionConfig(kind=kind, k=k, seed=seed, sparse_ratio=r), d)
        t = time.perf_counter()
        proj = build()
        ref = proj.project([v.to(reference) for v in vec]).double().cpu()
        got = build().project([v.to(device) for v in vec]).double().cpu()
        diff = float((got - ref).abs().max())
        rows.append({"projector": kind, "k": proj.k, "d": d, "devices": f"{reference.type} vs {device.type}",
                     "max_abs_diff": diff, "rel_err": diff / max(float(ref.abs().max()), 1e-30),
                     "seconds": time.perf_counter() - t})
        print(f"[equality {kind}] max abs diff {diff:.3g}", flush=True)
    return rows


# ------------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny Qwen2 on the CPU (smoke test)")
    ap.add_argument("--n-prompts", type=int, default=None, help="default 16 (tiny: 4)")
    ap.add_argument("--k-resp", type=int, default=8, help="responses per prompt")
    ap.add_argument("--resp-len", type=int, default=None, help="tokens per response (512; tiny: 24)")
    ap.add_argument("--prompt-len", type=int, default=None, help="prompt tokens (64; tiny: 8)")
    ap.add_argument("--k", type=int, default=None, help="projected dimension (8192; tiny: 512)")
    ap.add_argument("--projectors", default="countsketch,sparse-jl,factorized,none")
    ap.add_argument("--time-box", type=float, default=None, help="s per projector (60; tiny: 10)")
    ap.add_argument("--max-batch-tokens", type=int, default=8192,
                    help="gradient micro-batch token budget (8 x 576 tokens fit in one)")
    ap.add_argument("--cache-gb", type=float, default=16.0,
                    help="projector table cache (count-sketch tables of 1.5B coords: 12.3 GB)")
    ap.add_argument("--eq-dim", type=int, default=None, help="equality vector size (3e6; tiny: 3e5)")
    ap.add_argument("--max-total", type=float, default=420.0,
                    help="skip the remaining projectors once this many seconds have passed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="result name (gpu_scoring / gpu_scoring_tiny)")
    args = ap.parse_args()
    tiny = args.tiny
    for name, full, small in (("n_prompts", 16, 4), ("resp_len", 512, 24), ("prompt_len", 64, 8),
                              ("k", 8192, 512), ("time_box", 60.0, 10.0), ("eq_dim", 3_000_000, 300_000),
                              ("out", "gpu_scoring", "gpu_scoring_tiny")):
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else full)
    return args


def main() -> None:
    args = parse_args()
    t_start = time.perf_counter()
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("gpu_scoring needs CUDA; use --tiny for the CPU smoke test")
    device = torch.device("cpu" if args.tiny else "cuda")
    print(f"versions: {versions(device)}", flush=True)
    arch = TINY if args.tiny else QWEN2_1P5B
    model = build_model(arch, device, args.seed)
    gcfg = GradientConfig(autocast_bf16=device.type == "cuda", max_batch_tokens=args.max_batch_tokens)
    params = select_params(model, gcfg)
    t = time.perf_counter()
    items = synthetic_items(model, args.n_prompts, args.k_resp, args.resp_len, args.prompt_len,
                            arch["vocab_size"], args.seed)
    setup_s = time.perf_counter() - t_start
    print(f"model d={params.dim:,} on {device}; rollouts {args.n_prompts} x {args.k_resp} x "
          f"{args.resp_len} (log-probs {time.perf_counter() - t:.1f} s)", flush=True)

    rows, cache = [], int(args.cache_gb * 2**30)
    for kind in args.projectors.split(","):
        name = {"countsketch": f"countsketch k={args.k}", "sparse-jl": f"sparse-jl r=0.1 k={args.k}",
                "factorized": f"factorized k={args.k}", "none": "none (full gradient)"}[kind]
        if time.perf_counter() - t_start > args.max_total:
            rows.append({"method": name, "status": f"skipped (--max-total {args.max_total:.0f} s)"})
            continue
        if kind == "sparse-jl":
            est = estimate_sparse_jl(params.dim, args.k, 0.1, args.seed, device)
            if est["per_call_s"] * 2 > args.time_box:  # warm-up + one timed prompt must fit
                rows.append({"method": name, "estimate": est,
                             "status": f"not run (est. {est['per_call_s']:.3g} s/prompt)"})
                print(f"[{name}] not run: est. {est['per_call_s']:.3g} s/prompt", flush=True)
                continue
        if kind == "none" and params.dim > IDENTITY_MAX_D:
            build: Callable[[], Any] = lambda: FullGradient(params.dim)  # noqa: E731
        else:
            build = lambda kind=kind: make(kind, model, params, args.k, args.seed, cache)  # noqa: E731
        try:
            rows.append(run_projector(name, build, model, params, items, gcfg, device, args.time_box))
        except torch.cuda.OutOfMemoryError as exc:
            params.zero_grad()
            rows.append({"method": name, "status": f"out of memory: {str(exc).splitlines()[0]}"})

    kinds = args.projectors.split(",")
    if device.type == "cuda":
        eq = equality(kinds, args.k, args.eq_dim, args.seed, device, torch.device("cpu"))
    else:  # no CUDA: the same code path, CPU against a fresh CPU projection (determinism only)
        eq = equality(kinds, args.k, args.eq_dim, args.seed, device, device)

    print()
    print_table(["method", "k", "s/prompt", "grad s", "project s", "prompts/s", "peak GPU GB",
                 "tables GB", "n", "status"],
                [[r["method"], r.get("k", ""), r.get("s_per_prompt", ""), r.get("grad_s", ""),
                  r.get("project_s", ""), r.get("prompts_per_s", ""),
                  "" if r.get("peak_gpu_gb") is None else r["peak_gpu_gb"],
                  r.get("cached_tables_gb", ""), r.get("n_timed", ""), r["status"]] for r in rows])
    print()
    print_table(["projector", "k", "d", "devices", "max abs diff", "rel err"],
                [[r["projector"], r["k"], r["d"], r["devices"], r["max_abs_diff"], r["rel_err"]]
                 for r in eq])
    total = time.perf_counter() - t_start
    print(f"\ntotal {total:.0f} s (setup {setup_s:.0f} s)")
    path = write_result(args.out, {
        "args": vars(args), "device": str(device), "versions": versions(device),
        "commit_given": os.environ.get("CROPI_GIT_COMMIT"),  # where the copy has no .git
        "arch": arch, "d": params.dim,
        "gradient": {"autocast_bf16": gcfg.autocast_bf16, "max_batch_tokens": gcfg.max_batch_tokens,
                     "param_dtype": "fp32"},
        "rows": rows, "equality": eq, "setup_s": setup_s, "total_s": total,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
