"""Scoring throughput: prompts/s (K=8) and the time split grad / project / store per projector.

On the default model and the first --n-prompts non-zero-gradient pool prompts of the rollouts,
side by side in one run:

- ``popi gradient only``: ``popi_backward`` (batched fwd+bwd, logits_to_keep), no projection;
- ``countsketch k=8192``: ``compute_features`` with the hash tables cached in memory (their
  one-time build is timed separately and reported, not counted per prompt);
- ``factorized k=8192``: per-prompt path (full ``.grad``, then ``FactorizedProjector.project``);
- ``factorized hooks, per prompt``: ``FactorizedHooks`` around ``popi_backward`` with the covered
  linear weights frozen (their weight-gradient GEMMs are skipped; the hooks give the projected
  linear blocks, the remainder is count-sketched from ``.grad``); checked against the per-prompt path;
- ``factorized hooks, batched``: --hooks-batch prompts in one backward (POPI loss summed over
  prompts). Only the linear blocks are per prompt; the remainder (tied embedding + norms) has no
  per-prompt gradient in one backward, so these features are incomplete (said in the table);
- ``sparse-jl r=0.1 k=8192``: run only if its estimate (a few P blocks timed, extrapolated to all
  blocks) fits --max-seconds, else "not run (est. ...)";
- ``naive``: per prompt one fwd+bwd over its K responses with FULL logits, ``torch.cat`` of all
  gradients into one vector, then a dense Gaussian k x d projection generated block by block. The
  dense projection of all d = 134.5M coordinates is far too slow: the first --naive-m coordinates
  are projected and timed (on --naive-timed prompts) and the time is extrapolated linearly to d
  ("extrapolated" in the table and JSON).

Targets (the issue): projection <= 10 % of scoring time; the fastest exact-enough path >= 5x the
naive baseline (fidelity from benchmarks/results/projection_fidelity.json when present). Timings
are meaningless when other jobs use the 2 cores: the 1-minute load average is recorded before and
after every method (--wait-idle waits up to N s for load < 1.5 before starting).

    .venv/bin/python benchmarks/scoring_throughput.py [--rollouts runs/bench/rollouts]
        [--n-prompts 24] [--k 8192] [--naive-m 65536] [--wait-idle 0]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cropi.bench import load_result, print_table, write_result
from cropi.bench.sparse_jl import estimate_sparse_jl
from cropi.config import GradientConfig, ProjectionConfig
from cropi.influence.features import FeatureStore
from cropi.influence.params import ParamSet, select_params
from cropi.influence.pipeline import Timings, compute_features
from cropi.influence.popi import grpo_advantages, popi_backward
from cropi.influence.projection import make_projector
from cropi.influence.projection.factorized import FactorizedProjector
from cropi.influence.projection.factorized_hooks import FactorizedHooks
from cropi.model.loading import load_model, load_tokenizer
from cropi.model.logprobs import pack, token_logprobs
from cropi.rollout.store import PromptRollouts, load_rollouts
from cropi.utils.errors import CropiError

IDLE_LOAD = 1.5


def load1() -> float:
    return os.getloadavg()[0]


def cpu_busy(seconds: float = 5.0) -> float:
    """Fraction of all cores busy over ``seconds`` (from /proc/stat; NaN where unavailable)."""
    def sample() -> tuple[int, int]:
        vals = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(vals), vals[3] + vals[4]  # total, idle + iowait
    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except OSError:
        return float("nan")
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def wait_idle(max_wait: float) -> dict[str, Any]:
    """Wait up to ``max_wait`` s for load1 < IDLE_LOAD and < 25 % of the cores busy."""
    t = time.perf_counter()
    busy = cpu_busy()
    while (load1() >= IDLE_LOAD or not busy < 0.25) and time.perf_counter() - t < max_wait:
        time.sleep(10)
        busy = cpu_busy()
    return {"waited_s": time.perf_counter() - t, "load_at_start": os.getloadavg(),
            "cpu_busy_at_start": busy, "idle": load1() < IDLE_LOAD and busy < 0.25}


def summary(name: str, tm: Timings, n: int, load: tuple[float, float], **extra: Any) -> dict[str, Any]:
    total = tm.grad + tm.project + tm.store
    return {"method": name, "n_prompts": n, "grad_s": tm.grad / n, "project_s": tm.project / n,
            "store_s": tm.store / n, "s_per_prompt": total / n, "prompts_per_s": n / total,
            "project_share": tm.project / total, "load1_before_after": load, **extra}


def timed(fn: Callable[[], tuple[Timings, dict[str, Any]]], name: str, n: int) -> dict[str, Any]:
    before = load1()
    tm, extra = fn()
    print(f"[{name}] {(tm.grad + tm.project + tm.store) / n:.3f} s/prompt", flush=True)
    return summary(name, tm, n, (before, load1()), **extra)


def open_store(root: Path, name: str, items: Sequence[PromptRollouts], k: int) -> FeatureStore:
    return FeatureStore.open(root / name, [it.id for it in items], k, "fp16", {"bench": name},
                             overwrite=True)


# ----------------------------------------------------------------------------- our paths
def grad_only(model: torch.nn.Module, params: ParamSet, items: Sequence[PromptRollouts],
              gcfg: GradientConfig, pad_id: int) -> tuple[Timings, dict[str, Any]]:
    tm = Timings()
    for it in items:
        t = time.perf_counter()
        params.zero_grad()
        popi_backward(model, it, gcfg, pad_id)
        tm.grad += time.perf_counter() - t
    params.zero_grad()
    return tm, {}


def warm_tables(proj: Any) -> float:
    """Build a count-sketch's cached tables for every chunk; seconds."""
    t = time.perf_counter()
    for c in range(proj.n_chunks):
        proj.codes(c)
    return time.perf_counter() - t


def pipeline(model: torch.nn.Module, params: ParamSet, proj: Any, items: Sequence[PromptRollouts],
             gcfg: GradientConfig, pad_id: int, root: Path, name: str
             ) -> tuple[Timings, dict[str, Any]]:
    """The library's ``compute_features`` into a fp16 feature store."""
    store = open_store(root, name, items, proj.k)
    tm = compute_features(model, params, proj, items, store, gcfg, pad_id, name=name)
    _, feats, _ = store.read()
    store.close()
    return tm, {"features": feats}


def hooks_per_prompt(model: torch.nn.Module, params: ParamSet, proj: FactorizedProjector,
                     items: Sequence[PromptRollouts], gcfg: GradientConfig, pad_id: int,
                     root: Path) -> tuple[Timings, dict[str, Any]]:
    """FactorizedHooks around popi_backward, covered linear weights frozen (one prompt each)."""
    linear = {b.param for b in proj.blocks}
    frozen = [p for n, p in zip(params.names, params.params) if n in linear]
    store = open_store(root, "hooks", items, proj.k)
    tm, feats = Timings(), []
    try:
        for p in frozen:
            p.requires_grad_(False)
        for it in items:
            t0 = time.perf_counter()
            params.zero_grad()
            rows = torch.zeros(len(it.response_ids), dtype=torch.long)
            with FactorizedHooks(model, proj, rows, 1) as hooks:
                popi_backward(model, it, gcfg, pad_id)
            t1 = time.perf_counter()
            feat = hooks.features().numpy()
            t2 = time.perf_counter()
            store.write([it.id], feat, [False])
            tm.grad, tm.project = tm.grad + t1 - t0, tm.project + t2 - t1
            tm.store += time.perf_counter() - t2
            feats.append(feat[0])
    finally:
        for p in frozen:
            p.requires_grad_(True)
        params.zero_grad()
        store.close()
    return tm, {"features": np.stack(feats)}


def popi_multi_loss(model: torch.nn.Module, items: Sequence[PromptRollouts], pad_id: int
                    ) -> torch.Tensor:
    """Sum over prompts of the POPI loss (as ``popi.surrogate``, no clipping), one forward."""
    prompts, resps, adv, inv_k, old_lp = [], [], [], [], []
    for it in items:
        k = len(it.response_ids)
        prompts += [it.prompt_ids] * k
        resps += it.response_ids
        adv.append(grpo_advantages(torch.as_tensor(it.rewards, dtype=torch.float32)))
        inv_k += [1.0 / k] * k
        old_lp += it.logprobs
    batch = pack(prompts, resps, pad_id)
    old = torch.zeros_like(batch.response_mask)
    for j, lp in enumerate(old_lp):
        old[j, :len(lp)] = torch.as_tensor(lp)
    new = token_logprobs(model, batch)
    lens = batch.response_mask.sum(-1).clamp(min=1)
    ratio = torch.exp(new.float() - old) * batch.response_mask
    obj = (ratio * torch.cat(adv).unsqueeze(-1)).sum(-1) / lens
    return -(obj * torch.as_tensor(inv_k)).sum()


def hooks_batched(model: torch.nn.Module, params: ParamSet, proj: FactorizedProjector,
                  items: Sequence[PromptRollouts], pad_id: int, group: int
                  ) -> tuple[Timings, dict[str, Any]]:
    """``group`` prompts per backward; per-prompt LINEAR features only (no remainder)."""
    linear = {b.param for b in proj.blocks}
    frozen = [p for n, p in zip(params.names, params.params) if n in linear]
    tm, feats = Timings(), []
    try:
        for p in frozen:
            p.requires_grad_(False)
        for s in range(0, len(items), group):
            chunk = items[s:s + group]
            rows = torch.cat([torch.full((len(it.response_ids),), j, dtype=torch.long)
                              for j, it in enumerate(chunk)])
            t0 = time.perf_counter()
            params.zero_grad()
            with FactorizedHooks(model, proj, rows, len(chunk)) as hooks:
                popi_multi_loss(model, chunk, pad_id).backward()
            t1 = time.perf_counter()
            feats.append(hooks.linear_features().numpy())
            tm.grad, tm.project = tm.grad + t1 - t0, tm.project + time.perf_counter() - t1
    finally:
        for p in frozen:
            p.requires_grad_(True)
        params.zero_grad()
    return tm, {"linear_features": np.concatenate(feats)}


# --------------------------------------------------------------------------------- naive path
def naive_backward(model: torch.nn.Module, item: PromptRollouts, pad_id: int) -> None:
    """POPI loss with FULL logits (no logits_to_keep), one fwd+bwd over the K responses."""
    batch = pack([item.prompt_ids] * len(item.response_ids), item.response_ids, pad_id)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, use_cache=False)
    p_len, r_len = batch.input_ids.shape[1] - batch.response_len, batch.response_len
    logp = torch.log_softmax(out.logits[:, p_len - 1:p_len - 1 + r_len].float(), dim=-1)
    new = logp.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1) * batch.response_mask
    old = torch.zeros_like(new)
    for j, lp in enumerate(item.logprobs):
        old[j, :len(lp)] = torch.as_tensor(lp)
    adv = grpo_advantages(torch.as_tensor(item.rewards, dtype=torch.float32))
    ratio = torch.exp(new - old) * batch.response_mask
    obj = (ratio * adv.unsqueeze(-1)).sum(-1) / batch.response_mask.sum(-1).clamp(min=1)
    (-obj.sum() / len(item.response_ids)).backward()


def dense_gaussian(flat: torch.Tensor, k: int, m: int, seed: int) -> float:
    """Seconds to project flat[:m] with a dense N(0, 1/k) map generated block by block."""
    gen = torch.Generator().manual_seed(seed)
    cols = max(1, 2**26 // k)
    out = torch.zeros(k)
    t = time.perf_counter()
    for s in range(0, m, cols):
        e = min(s + cols, m)
        out.addmv_(torch.randn(e - s, k, generator=gen).T, flat[s:e], alpha=1 / math.sqrt(k))
    return time.perf_counter() - t


def naive(model: torch.nn.Module, params: ParamSet, items: Sequence[PromptRollouts], pad_id: int,
          k: int, m: int, n_dense: int) -> tuple[Timings, dict[str, Any]]:
    """Full-logits fwd+bwd, torch.cat flatten, dense projection (first m coords, extrapolated)."""
    tm, flat_s, dense = Timings(), 0.0, []
    d = params.dim
    for i, it in enumerate(items):
        t0 = time.perf_counter()
        params.zero_grad()
        naive_backward(model, it, pad_id)
        t1 = time.perf_counter()
        flat = torch.cat([g.reshape(-1) for g in params.grads()])
        t2 = time.perf_counter()
        tm.grad, flat_s = tm.grad + t1 - t0, flat_s + t2 - t1
        if i < n_dense:
            dense.append(dense_gaussian(flat, k, m, seed=i) * d / m)
        del flat
    n = len(items)
    dense_s = float(np.mean(dense))
    tm.project = flat_s + dense_s * n
    params.zero_grad()
    return tm, {"flatten_s": flat_s / n, "dense_project_s_extrapolated": dense_s,
                "dense_measured_coords": m, "dense_timed_prompts": len(dense),
                "note": f"dense projection extrapolated linearly from {m} to {d} coordinates"}


def naive_check(model: torch.nn.Module, params: ParamSet, item: PromptRollouts,
                gcfg: GradientConfig, pad_id: int) -> float:
    """Cosine of the naive (full-logits) gradient with popi_backward's, one prompt."""
    params.zero_grad()
    naive_backward(model, item, pad_id)
    a = torch.cat([g.reshape(-1).double() for g in params.grads()])
    params.zero_grad()
    popi_backward(model, item, gcfg, pad_id)
    b = torch.cat([g.reshape(-1).double() for g in params.grads()])
    params.zero_grad()
    return float(a @ b / (a.norm() * b.norm()))


# --------------------------------------------------------------------------- sparse-jl estimate
def fidelity_of(cell: str) -> dict[str, Any] | None:
    """Spearman (min over targets) and precision@10% of a cell in projection_fidelity.json."""
    res = load_result("projection_fidelity")
    for c in (res or {}).get("cells", []):
        if c["name"] == cell and c.get("metrics"):
            m = c["metrics"]
            return {"min_spearman": min(t["spearman"] for t in m["per_target"].values()),
                    "precision_at_10pct": m["precision_at_10pct"], "mean_abs_err": m["mean_abs_err"]}
    return None


def cos_rows(a: np.ndarray, b: np.ndarray) -> list[float]:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).tolist()


# -------------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", default="runs/bench/rollouts")
    ap.add_argument("--n-prompts", type=int, default=24, help="first N non-zero pool prompts")
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's); 1 avoids oversubscription on a shared machine")
    ap.add_argument("--naive-m", type=int, default=2**16, help="coordinates of the timed dense projection")
    ap.add_argument("--naive-timed", type=int, default=2, help="prompts whose dense projection is timed")
    ap.add_argument("--hooks-batch", type=int, default=4, help="prompts per backward, batched hooks")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="budget of the sparse-jl row")
    ap.add_argument("--wait-idle", type=float, default=0.0, help="wait up to N s for load < 1.5")
    ap.add_argument("--out", default="scoring_throughput")
    return ap.parse_args()


def run_methods(args: argparse.Namespace, model: torch.nn.Module, params: ParamSet,
                items: Sequence[PromptRollouts], pad_id: int, root: Path) -> list[dict[str, Any]]:
    gcfg, n, k = GradientConfig(), len(items), args.k
    rows = [timed(lambda: grad_only(model, params, items, gcfg, pad_id), "popi gradient only", n)]
    cs = make_projector(ProjectionConfig(kind="countsketch", k=k, seed=args.seed), params.dim)
    build = warm_tables(cs)
    rows.append(timed(lambda: pipeline(model, params, cs, items, gcfg, pad_id, root, "cs"),
                      f"countsketch k={k} (tables cached)", n))
    rows[-1]["one_time_build_s"] = build
    del cs
    fp = FactorizedProjector.from_model(model, ProjectionConfig(kind="factorized", k=k, seed=args.seed),
                                        params=list(zip(params.names, params.params)))
    build = warm_tables(fp.rest) if fp.rest is not None else 0.0
    rows.append(timed(lambda: pipeline(model, params, fp, items, gcfg, pad_id, root, "fact"),
                      f"factorized k={k}, per prompt", n))
    rows[-1]["one_time_build_s"] = build
    try:
        rows.append(timed(lambda: hooks_per_prompt(model, params, fp, items, gcfg, pad_id, root),
                          f"factorized k={k}, hooks per prompt", n))
        rows[-1]["cos_vs_per_prompt_path"] = cos_rows(rows[-1]["features"], rows[-2]["features"])
    except CropiError as exc:
        rows.append({"method": f"factorized k={k}, hooks per prompt", "status": f"failed: {exc}"})
    try:
        rows.append(timed(lambda: hooks_batched(model, params, fp, items, pad_id, args.hooks_batch),
                          f"factorized hooks, {args.hooks_batch} prompts/backward (linear only)", n))
        ref = rows[2]["features"][:, :fp.k_lin]
        rows[-1]["cos_vs_per_prompt_path_linear"] = cos_rows(rows[-1]["linear_features"], ref)
        rows[-1]["note"] = (f"linear blocks only ({fp.k_lin} of {fp.k} dims): the remainder (tied "
                            "embedding + norms) has no per-prompt gradient in one batched backward")
    except CropiError as exc:
        rows.append({"method": "factorized hooks batched", "status": f"failed: {exc}"})
    est = estimate_sparse_jl(params.dim, k, 0.1, args.seed)
    jl = {"method": f"sparse-jl r=0.1 k={k}", "estimate": est}
    if est["per_call_s"] * n <= args.max_seconds:
        proj = make_projector(ProjectionConfig(kind="sparse-jl", k=k, sparse_ratio=0.1, seed=args.seed),
                              params.dim, cache_bytes=2**28)
        jl = {**timed(lambda: pipeline(model, params, proj, items, gcfg, pad_id, root, "jl"),
                      jl["method"], n), "estimate": est}
    else:
        jl["status"] = f"not run (est. {est['per_call_s']:.0f} s/prompt, {est['note']})"
    rows.append(jl)
    rows.append(timed(lambda: naive(model, params, items, pad_id, k, args.naive_m, args.naive_timed),
                      f"naive (full logits, cat, dense Gaussian k={k}; extrapolated)", n))
    return rows


def report(rows: list[dict[str, Any]], k: int) -> None:
    naive_s = rows[-1]["s_per_prompt"]
    naive_grad_s = rows[-1]["grad_s"] + rows[-1]["flatten_s"]  # naive without its projection
    fid = {f"countsketch k={k}": fidelity_of(f"countsketch-k{k}"),  # same features as these rows
           f"factorized k={k}": fidelity_of(f"factorized-k{k}")}
    table = []
    for r in rows:
        if "s_per_prompt" not in r:
            table.append([r["method"], *["-"] * 8, r.get("status", "")])
            continue
        r["speedup_vs_naive"] = naive_s / r["s_per_prompt"]
        r["speedup_vs_naive_without_projection"] = naive_grad_s / r["s_per_prompt"]
        r["project_share_le_10pct"] = r["project_share"] <= 0.10
        r["speedup_ge_5x"] = r["speedup_vs_naive"] >= 5
        r["fidelity"] = next((v for key, v in fid.items() if r["method"].startswith(key)), None)
        table.append([r["method"], round(r["prompts_per_s"], 3), round(r["s_per_prompt"], 3),
                      round(r["grad_s"], 3), round(r["project_s"], 3), round(r["store_s"], 4),
                      f"{100 * r['project_share']:.1f}%", f"{r['speedup_vs_naive']:.1f}x",
                      f"{r['speedup_vs_naive_without_projection']:.2f}x",
                      r.get("status", r.get("note", ""))[:60]])
    print_table(["method", "prompts/s", "s/prompt", "grad", "project", "store", "proj share",
                 "vs naive", "vs naive w/o proj", "note"], table)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    idle = wait_idle(args.wait_idle)
    print(f"load average at start: {idle['load_at_start']} (idle={idle['idle']})", flush=True)
    tok = load_tokenizer("default")
    model = load_model("default", "fp32")
    params = select_params(model, GradientConfig())
    items = [it for it in load_rollouts(Path(args.rollouts) / "pool") if not it.zero_grad]
    items = items[:args.n_prompts]
    pad_id = tok.pad_token_id
    check = naive_check(model, params, items[0], GradientConfig(), pad_id)  # also warms up
    root = Path(tempfile.mkdtemp(prefix="cropi-throughput-"))
    try:
        rows = run_methods(args, model, params, items, pad_id, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(rows, args.k)
    for r in rows:
        r.pop("features", None), r.pop("linear_features", None)
    payload = {"args": vars(args), "d": params.dim, "K": [len(it.response_ids) for it in items],
               "n_tokens_mean": float(np.mean([sum(map(len, it.response_ids)) for it in items])),
               "naive_vs_popi_grad_cos": check, "load": {**idle, "load_at_end": os.getloadavg()},
               "rows": rows}
    print(f"naive vs popi gradient cosine {check:.8f}; load at end {os.getloadavg()}")
    print(f"wrote {write_result(args.out, payload)}")


if __name__ == "__main__":
    main()
