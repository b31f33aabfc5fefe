"""Projection fidelity: exact POPI cosines (all 134.5M parameters, float64) vs projected ones.

For every pool prompt with a non-zero POPI gradient (docs/concepts.md#popi-gradient) the exact gradient is computed
once (fp32 accumulate) and fed to every projector of the grid; the exact cosine with each target's
mean gradient is computed in float64 from per-tensor dot products and norms (target means are exact
float64 tensors over the target prompts with a non-zero gradient, at most --max-targets; no pool
gradient is ever stored). Per projector: Spearman / Pearson of projected vs exact cosines per
target, mean abs cosine error, and precision@10% = overlap of the top-10% sets of the fused RRF
ranking (``cropi.influence.scores.fuse``, n_select = round(0.1 * n_pool)).

Grid: countsketch k in {1024, 4096, 8192, 32768} (fp32 accumulate; plus the k=8192 features
rounded to fp16 as the feature store keeps them); sparse-jl (Rademacher, the paper's P S g) with
r in {1, 0.3, 0.1, 0.01} x k in {1024, 4096, 8192, 32768}; factorized (LoGra) k in {1024, 4096,
8192}; the authors' pipeline emulation (gradient cast to bf16 then fp16, fp16-accumulating
count-sketch with fp16 ``index_add_``, k = 8192 and 32768; fp16 sparse-jl at r=0.1, k=8192); and
"exact, embeddings+norms excluded" vs exact all-params.

Sparse-jl regenerates k*r*d random numbers per call. The script times one library call of the
cheapest cell (r=0.01, k=1024) on a real gradient, then runs a cell only when its estimated cost
fits --max-seconds-per-cell. Cells that run are evaluated *batched*: the masked gradient S g (r*d
values, independent of k) of every prompt is saved to disk during the single gradient pass, and
each sub-block of P is generated once for all prompts (one GEMM). This gives the same features as
per-prompt ``SparseJLProjector.project`` calls (checked against the timed call, reported in the
JSON). Cells over budget are reported "not run (est. ...)" with the per-call and batched estimates.

Resumable: per-prompt results (dot products, norms, features per config, masked gradients) are
written under benchmarks/results/fidelity_parts/<targets-key>/ as they are computed; a rerun skips
finished prompts and cells. The masked gradients (``masked_r*/``, r*d*4 bytes per prompt: 160 MB at
r=0.3) are only read by the batched cells; once ``cells/<cell>.npz`` exist they may be deleted.
Writes benchmarks/results/projection_fidelity.json.

    .venv/bin/python benchmarks/projection_fidelity.py [--rollouts runs/bench/rollouts]
        [--max-prompts N] [--max-targets 100] [--max-seconds-per-cell 300]
        [--threads 1]
    nohup .venv/bin/python benchmarks/projection_fidelity.py --threads 1 \
        > benchmarks/results/fidelity.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from cropi.bench import RESULTS, print_table, write_result
from cropi.config import GradientConfig, ProjectionConfig
from cropi.influence.params import ParamSet, select_params
from cropi.influence.popi import popi_backward
from cropi.influence.projection import CountSketchProjector, make_projector
from cropi.influence.projection.core import iter_chunks
from cropi.influence.projection.factorized import FactorizedProjector
from cropi.influence.projection.jl import SparseJLProjector
from cropi.select.fusion import fuse, order_desc
from cropi.model.loading import load_model, load_tokenizer
from cropi.rollout.store import PromptRollouts, load_rollouts
from cropi.utils.hashing import fingerprint

PARTS = RESULTS / "fidelity_parts"
EXCLUDE = re.compile("embed|norm")
CS_KS = (1024, 4096, 8192, 32768)
JL_RS = (1.0, 0.3, 0.1, 0.01)
JL_KS = (1024, 4096, 8192, 32768)
FACT_KS = (1024, 4096, 8192)
AUTHORS_CS_KS = (8192, 32768)
AUTHORS_JL = (0.1, 8192)
CHEAP_JL = (0.01, 1024)
GradFn = Callable[[Sequence[torch.Tensor]], np.ndarray]


@dataclass
class Cell:
    """One row of the grid. ``mode``: online (per prompt), batched (sparse-jl), derived, exact."""

    name: str
    family: str
    k: int | None
    r: float | None = None
    mode: str = "online"
    status: str = "run"
    est: dict[str, float] = field(default_factory=dict)


@dataclass
class Ctx:
    """What the gradient pass needs."""

    model: torch.nn.Module
    params: ParamSet
    pad_id: int
    gcfg: GradientConfig
    online: dict[str, GradFn]
    mask_rs: list[float]
    seed: int
    dir: Path
    underflow: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------------------- grid
def jl_name(r: float, k: int, fp16: bool = False) -> str:
    return f"{'authors-jl16' if fp16 else 'sparse-jl'}-r{r:g}-k{k}"


def grid() -> list[Cell]:
    """Every row of the table, in print order."""
    cells = [Cell("exact-excl-embed-norm", "exact, embeddings+norms excluded", None, mode="exact")]
    cells += [Cell(f"countsketch-k{k}", "countsketch fp32", k) for k in CS_KS]
    cells.append(Cell("countsketch-k8192-stored16", "countsketch fp32, features stored fp16", 8192,
                      mode="derived"))
    cells += [Cell(jl_name(r, k), "sparse-jl rademacher", k, r, mode="batched")
              for r in JL_RS for k in JL_KS]
    cells += [Cell(f"factorized-k{k}", "factorized (LoGra) + countsketch rest", k) for k in FACT_KS]
    cells += [Cell(f"authors-cs16-k{k}", "bf16->fp16 grad, fp16 countsketch", k)
              for k in AUTHORS_CS_KS]
    r, k = AUTHORS_JL
    cells.append(Cell(jl_name(r, k, True), "bf16->fp16 grad, fp16 sparse-jl", k, r, mode="batched"))
    return cells


# ------------------------------------------------------------------------------- projections
def countsketch_fp16(proj: CountSketchProjector, grads: Sequence[torch.Tensor],
                     underflow: list[float] | None = None) -> np.ndarray:
    """Authors' emulation: g -> bf16 -> fp16, count-sketch accumulated in fp16 (``index_add_``)."""
    out = torch.zeros(proj.k, dtype=torch.float16)
    lost = nonzero = 0
    for c, pieces in iter_chunks(grads, proj.d, proj.chunk, batched=False):
        bucket, sign = proj.bucket_sign(c, out.device)
        for off, x in pieces:
            n = x.shape[1]
            x16 = x[0].to(torch.bfloat16).to(torch.float16)
            if underflow is not None:
                nz = x[0] != 0
                nonzero += int(nz.sum())
                lost += int((nz & (x16 == 0)).sum())
            out.index_add_(0, bucket[off:off + n], x16 * sign[off:off + n].half())
    if underflow is not None and nonzero:
        underflow.append(lost / nonzero)
    return out.float().numpy()


def build_online(model: torch.nn.Module, params: ParamSet, seed: int, cache_bytes: int,
                 ctx_underflow: list[float]) -> dict[str, GradFn]:
    """Per-prompt projectors: countsketch, factorized, authors' fp16 count-sketch."""
    d = params.dim
    budget, cs = cache_bytes, {}
    for k in (8192, 32768, 4096, 1024):  # table caches (8 bytes/coordinate) by priority
        need = 8 * d
        cache = need if need <= budget else 0
        budget -= cache
        cs[k] = make_projector(ProjectionConfig(kind="countsketch", k=k, seed=seed), d,
                               cache_bytes=cache + 2**20)
    fns: dict[str, GradFn] = {}
    for k in CS_KS:
        fns[f"countsketch-k{k}"] = lambda g, p=cs[k]: p.project(g).numpy()
    named = list(zip(params.names, params.params))
    for k in FACT_KS:
        fp = FactorizedProjector.from_model(model, ProjectionConfig(kind="factorized", k=k, seed=seed),
                                            params=named, cache_bytes=2**28)
        fns[f"factorized-k{k}"] = lambda g, p=fp: p.project(g).numpy()
    for k in AUTHORS_CS_KS:
        under = ctx_underflow if k == 8192 else None
        fns[f"authors-cs16-k{k}"] = lambda g, p=cs[k], u=under: countsketch_fp16(p, g, u)
    return fns


def masked_values(r: float, seed: int, grads: Sequence[torch.Tensor], d: int) -> np.ndarray:
    """S g: the kept coordinates of sparse-jl's mask at ratio r (same for every k), float32."""
    proj = SparseJLProjector(1, d, seed, sparse_ratio=r, cache_bytes=0)
    vals = []
    for c, pieces in iter_chunks(grads, d, proj.chunk, batched=False):
        kept = proj._kept(c) if r < 1 else None
        vals.append(proj._gather(kept, [(off, x.detach()) for off, x in pieces])[0])
    return torch.cat(vals).numpy()


def batched_jl(k: int, r: float, seed: int, files: Sequence[Path], d: int,
               fp16: bool = False) -> np.ndarray:
    """Sparse-jl features [B, k] of saved masked gradients; each P block generated once.

    fp32: ``out.addmm_(S g, P_block)`` as ``SparseJLProjector._apply`` does. fp16 (authors'
    emulation): values cast bf16 -> fp16, blocks in fp16, per-row fp16 GEMV added into an fp16 out.
    """
    proj = SparseJLProjector(k, d, seed, sparse_ratio=r, cache_bytes=0)
    vecs = [np.load(f, mmap_mode="r") for f in files]
    out = torch.zeros(len(files), k, dtype=torch.float16 if fp16 else torch.float32)
    pos = 0
    for c in range(proj.n_chunks):
        n_c = proj._kept(c).numel() if r < 1 else proj.chunk_len(c)
        v = torch.from_numpy(np.stack([np.asarray(x[pos:pos + n_c]) for x in vecs]))
        pos += n_c
        if fp16:
            v = v.to(torch.bfloat16).to(torch.float16)
        for b, s in enumerate(range(0, n_c, proj.block_cols)):
            e = min(s + proj.block_cols, n_c)
            m = proj._block(c, b, e - s)
            if fp16:
                m = m.half()
                for row in range(len(files)):
                    out[row] += (v[row:row + 1, s:e] @ m)[0]
            else:
                out.addmm_(v[:, s:e], m)
    if pos != vecs[0].shape[0]:
        raise RuntimeError(f"masked vectors hold {vecs[0].shape[0]} values, the mask {pos}")
    return out.float().numpy()


# ------------------------------------------------------------------------------- part files
def load_part(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        return {}
    with np.load(path) as z:
        return {key: z[key] for key in z.files}


def save_npz(path: Path, data: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **data)
    os.replace(tmp, path)


def save_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def mask_path(ctx_dir: Path, part: Path, r: float) -> Path:
    return ctx_dir / f"masked_r{r:g}" / (part.stem + ".npy")


# ----------------------------------------------------------------------------- gradient pass
def gradient(ctx: Ctx, item: PromptRollouts) -> tuple[list[torch.Tensor], float]:
    t = time.perf_counter()
    ctx.params.zero_grad()
    if not popi_backward(ctx.model, item, ctx.gcfg, ctx.pad_id):
        raise RuntimeError(f"prompt {item.id} has a zero gradient")
    return ctx.params.grads(), time.perf_counter() - t


def exact_stats(grads: Sequence[torch.Tensor], means: Sequence[Sequence[torch.Tensor]]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per-tensor float64 dot products with each target mean [T, n] and squared norms [n]."""
    dots = np.zeros((len(means), len(grads)))
    sq = np.zeros(len(grads))
    for i, g in enumerate(grads):
        gd = g.detach().reshape(-1).double()
        sq[i] = float(torch.dot(gd, gd))
        for t, m in enumerate(means):
            dots[t, i] = float(torch.dot(gd, m[i].reshape(-1)))
    return dots, sq


def process_prompt(ctx: Ctx, item: PromptRollouts, path: Path,
                   means: Sequence[Sequence[torch.Tensor]] | None = None,
                   acc: list[torch.Tensor] | None = None) -> bool:
    """Fill ``path`` with what is missing for this prompt; add g to ``acc`` (float64) if given."""
    part = load_part(path)
    need = [n for n in ctx.online if f"feat__{n}" not in part]
    need_r = [r for r in ctx.mask_rs if not mask_path(ctx.dir, path, r).exists()]
    need_dots = means is not None and "dots" not in part
    if not (need or need_r or need_dots or acc is not None):
        return False
    grads, grad_s = gradient(ctx, item)
    part.update(id=np.array(item.id), grad_s=np.array(grad_s))
    if acc is not None:
        for a, g in zip(acc, grads):
            a.add_(g.detach().double())
    if need_dots:
        t = time.perf_counter()
        part["dots"], part["sq"] = exact_stats(grads, means)
        part["exact_s"] = np.array(time.perf_counter() - t)
    for name in need:
        t = time.perf_counter()
        part[f"feat__{name}"] = ctx.online[name](grads).astype(np.float32)
        part[f"time__{name}"] = np.array(time.perf_counter() - t)
        if name == "authors-cs16-k8192" and ctx.underflow:
            part["fp16_underflow"] = np.array(ctx.underflow[-1])
    for r in need_r:
        t = time.perf_counter()
        save_npy(mask_path(ctx.dir, path, r), masked_values(r, ctx.seed, grads, ctx.params.dim))
        part[f"mask_s__r{r:g}"] = np.array(time.perf_counter() - t)
    save_npz(path, part)
    ctx.params.zero_grad()
    return True


def target_pass(ctx: Ctx, name: str, items: Sequence[PromptRollouts], idx: Sequence[int]
                ) -> tuple[list[torch.Tensor], list[Path]]:
    """Exact float64 mean gradient of one target set (always recomputed) and its part files."""
    acc = [torch.zeros(p.shape, dtype=torch.float64) for p in ctx.params.params]
    paths = []
    for n, i in enumerate(idx):
        path = ctx.dir / f"t-{name}_{i:04d}.npz"
        t = time.perf_counter()
        process_prompt(ctx, items[i], path, acc=acc)
        paths.append(path)
        print(f"[target {name}] {n + 1}/{len(idx)} {items[i].id} {time.perf_counter() - t:.1f}s",
              flush=True)
    for a in acc:
        a.div_(len(idx))
    return acc, paths


def pool_pass(ctx: Ctx, items: Sequence[PromptRollouts], means: Sequence[Sequence[torch.Tensor]]
              ) -> list[Path | None]:
    """Per pool prompt: its part file (None for zero-gradient prompts)."""
    paths: list[Path | None] = []
    n_nz = sum(not it.zero_grad for it in items)
    done = 0
    for i, item in enumerate(items):
        if item.zero_grad:
            paths.append(None)
            continue
        path = ctx.dir / f"pool_{i:04d}.npz"
        t = time.perf_counter()
        ran = process_prompt(ctx, item, path, means=means)
        done += 1
        print(f"[pool] {done}/{n_nz} {item.id} {'computed' if ran else 'cached'} "
              f"{time.perf_counter() - t:.1f}s", flush=True)
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------- sparse-jl plan
def measure_jl(ctx: Ctx, grads: Sequence[torch.Tensor], n_rows: int) -> dict[str, Any]:
    """Time one library call of the cheap cell and the batched GEMM / fp16 GEMV rates."""
    r, k = CHEAP_JL
    d = ctx.params.dim
    proj = SparseJLProjector(k, d, ctx.seed, sparse_ratio=r, cache_bytes=2**27)
    t = time.perf_counter()
    feat = proj.project(grads).numpy()
    call_s = time.perf_counter() - t
    cols = proj.block_cols
    v, m = torch.randn(n_rows, cols), proj._block(0, 0, cols)
    t = time.perf_counter()
    torch.zeros(n_rows, k).addmm_(v, m)
    gemm_row = (time.perf_counter() - t) / (cols * k * n_rows)
    v16, m16 = v[:1].half(), m.half()
    t = time.perf_counter()
    _ = v16 @ m16
    gemv16 = (time.perf_counter() - t) / (cols * k)
    entries = k * r * d
    return {"cheap_cell": jl_name(r, k), "call_s": call_s, "entries": entries,
            "s_per_entry_call": call_s / entries, "gemm_s_per_entry_row": gemm_row,
            "fp16_gemv_s_per_entry": gemv16, "n_rows": n_rows, "cheap_feature": feat.tolist()}


def plan_jl(cells: list[Cell], cost: dict[str, Any], d: int, n_rows: int, budget: float) -> None:
    """Set status and estimates of the batched (sparse-jl) cells from the measured rates."""
    for cell in cells:
        if cell.mode != "batched":
            continue
        entries = cell.k * cell.r * d
        fp16 = cell.name.startswith("authors")
        per_call = entries * cost["s_per_entry_call"]
        if fp16:  # the fp16 GEMV replaces the fp32 one, per prompt
            per_call += entries * cost["fp16_gemv_s_per_entry"]
            batched = entries * (cost["s_per_entry_call"] + n_rows * cost["fp16_gemv_s_per_entry"])
        else:
            batched = entries * (cost["s_per_entry_call"] + n_rows * cost["gemm_s_per_entry_row"])
        mask_gb = cell.r * d * 4 * n_rows / 1e9
        cell.est = {"per_call_s": per_call, "per_call_total_s": per_call * n_rows,
                    "batched_total_s": batched, "masked_disk_gb": mask_gb}
        if batched > budget:
            cell.status = (f"not run (est. {per_call:.0f} s/prompt per call; "
                           f"{batched:.0f} s batched over {n_rows} prompts > {budget:.0f} s)")


def batched_done(ctx_dir: Path, cell: Cell, n_rows: int) -> bool:
    """True when the cell's batched features exist for all ``n_rows`` prompts (masks not needed)."""
    part = load_part(ctx_dir / "cells" / f"{cell.name}.npz")
    return "feats" in part and part["feats"].shape[0] == n_rows


def run_batched(cells: Sequence[Cell], ctx: Ctx, files: Sequence[Path]) -> dict[str, np.ndarray]:
    """Features [n_files, k] of every runnable sparse-jl cell (cached under ctx.dir/cells)."""
    out = {}
    for cell in cells:
        if cell.mode != "batched" or cell.status != "run":
            continue
        path = ctx.dir / "cells" / f"{cell.name}.npz"
        part = load_part(path)
        if "feats" not in part or part["feats"].shape[0] != len(files):
            t = time.perf_counter()
            masks = [mask_path(ctx.dir, f, cell.r) for f in files]
            feats = batched_jl(cell.k, cell.r, ctx.seed, masks, ctx.params.dim,
                               fp16=cell.name.startswith("authors"))
            part = {"feats": feats, "seconds": np.array(time.perf_counter() - t)}
            save_npz(path, part)
            print(f"[sparse-jl] {cell.name}: {float(part['seconds']):.0f}s", flush=True)
        cell.est["batched_measured_s"] = float(part["seconds"])
        out[cell.name] = part["feats"]
    return out


# --------------------------------------------------------------------------------- analysis
def compare(exact: dict[str, np.ndarray], approx: dict[str, np.ndarray], n_select: int
            ) -> dict[str, Any]:
    """Spearman, Pearson, mean abs error per target; precision@10% of the fused RRF top sets."""
    per: dict[str, Any] = {}
    for t in exact:
        ok = np.isfinite(exact[t]) & np.isfinite(approx[t])
        x, y = exact[t][ok], approx[t][ok]
        per[t] = {"spearman": float(stats.spearmanr(x, y)[0]), "pearson": float(np.corrcoef(x, y)[0, 1]),
                  "mean_abs_err": float(np.mean(np.abs(x - y))), "n": int(ok.sum())}
    top_e = set(order_desc(fuse(exact, n_select))[:n_select].tolist())
    top_a = set(order_desc(fuse(approx, n_select))[:n_select].tolist())
    return {"per_target": per, "precision_at_10pct": len(top_e & top_a) / n_select,
            "n_select": n_select,
            "mean_abs_err": float(np.mean([p["mean_abs_err"] for p in per.values()]))}


def exact_cosines(parts: Sequence[dict[str, np.ndarray] | None], msq: np.ndarray,
                  keep: np.ndarray, targets: Sequence[str]) -> dict[str, np.ndarray]:
    """Exact float64 cosines over the tensors in ``keep`` (NaN for zero-gradient prompts)."""
    out = {t: np.full(len(parts), np.nan) for t in targets}
    for i, p in enumerate(parts):
        if p is None:
            continue
        gn = math.sqrt(p["sq"][keep].sum())
        for j, t in enumerate(targets):
            out[t][i] = p["dots"][j][keep].sum() / (gn * math.sqrt(msq[j][keep].sum()))
    return out


def projected_cosines(pool: Sequence[np.ndarray | None], tmeans: dict[str, np.ndarray]
                      ) -> dict[str, np.ndarray]:
    out = {t: np.full(len(pool), np.nan) for t in tmeans}
    for t, m in tmeans.items():
        for i, f in enumerate(pool):
            if f is not None:
                f = f.astype(np.float64)
                out[t][i] = f @ m / (np.linalg.norm(f) * np.linalg.norm(m))
    return out


def cell_features(cell: Cell, tparts: dict[str, list[dict]], pparts: list[dict | None],
                  batched: dict[str, np.ndarray]) -> tuple[dict[str, list], list]:
    """(target name -> list of target features, pool features or None) for one cell."""
    if cell.mode == "batched":
        feats, n = batched[cell.name], 0
        tf: dict[str, list] = {}
        for t, parts in tparts.items():
            tf[t] = list(feats[n:n + len(parts)])
            n += len(parts)
        pool = []
        for p in pparts:
            pool.append(None if p is None else feats[n])
            n += p is not None
        return tf, pool
    key = "feat__countsketch-k8192" if cell.mode == "derived" else f"feat__{cell.name}"
    cast = (lambda a: a.astype(np.float16)) if cell.mode == "derived" else (lambda a: a)
    tf = {t: [cast(p[key]) for p in parts] for t, parts in tparts.items()}
    return tf, [None if p is None else cast(p[key]) for p in pparts]


def cell_timing(cell: Cell, pparts: list[dict | None], tparts: dict[str, list[dict]],
                n_rows: int) -> float | None:
    """Mean projection seconds per prompt (batched cells: measured total / prompts)."""
    if cell.mode == "batched":
        return cell.est.get("batched_measured_s", float("nan")) / n_rows
    if cell.mode != "online":
        return None
    rows = [p for p in pparts if p is not None] + [p for ps in tparts.values() for p in ps]
    return float(np.mean([float(p[f"time__{cell.name}"]) for p in rows]))


def check_batched(cost: dict[str, Any], batched: dict[str, np.ndarray], row: int) -> float | None:
    """Relative L2 difference of the batched cheap cell vs the timed per-prompt library call."""
    feats = batched.get(cost["cheap_cell"])
    if feats is None:
        return None
    ref = np.asarray(cost["cheap_feature"], dtype=np.float64)
    return float(np.linalg.norm(feats[row].astype(np.float64) - ref) / np.linalg.norm(ref))


def analyse(cells: Sequence[Cell], tparts: dict[str, list[dict]], pparts: list[dict | None],
            msq: np.ndarray, names: Sequence[str], batched: dict[str, np.ndarray]) -> dict[str, Any]:
    """Metrics of every cell against the exact all-parameter cosines."""
    keep_all = np.ones(len(names), dtype=bool)
    keep_excl = np.array([not EXCLUDE.search(n) for n in names])
    targets = list(tparts)
    exact = exact_cosines(pparts, msq, keep_all, targets)
    excl = exact_cosines(pparts, msq, keep_excl, targets)
    n_select = round(0.1 * len(pparts))
    n_rows = sum(p is not None for p in pparts) + sum(len(v) for v in tparts.values())
    rows = []
    for cell in cells:
        row: dict[str, Any] = {**asdict(cell), "store_bytes_per_prompt": 2 * cell.k if cell.k else None}
        if cell.mode == "exact":
            row["metrics"] = compare(exact, excl, n_select)
        elif cell.status == "run":
            tf, pool = cell_features(cell, tparts, pparts, batched)
            tmeans = {t: np.mean(np.stack(v).astype(np.float64), axis=0) for t, v in tf.items()}
            finite = all(np.isfinite(f).all() for f in pool if f is not None)
            row["metrics"] = {**compare(exact, projected_cosines(pool, tmeans), n_select),
                              "all_finite": bool(finite)}
            row["proj_s_per_prompt"] = cell_timing(cell, pparts, tparts, n_rows)
        rows.append(row)
    ex = {t: v[np.isfinite(v)] for t, v in exact.items()}
    summary = {t: {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
                   "std": float(v.std())} for t, v in ex.items()}
    return {"cells": rows, "exact_cos": summary, "n_select": n_select,
            "exact_cos_values": {t: [None if not np.isfinite(x) else float(x) for x in v]
                                 for t, v in exact.items()}}


def print_results(res: dict[str, Any], targets: Sequence[str]) -> None:
    headers = ["cell", "k", "store/prompt", "proj s/prompt", *[f"rho {t}" for t in targets],
               "P@10%", "mean|dcos|", "status"]
    rows = []
    for c in res["cells"]:
        m = c.get("metrics")
        store = f"{c['store_bytes_per_prompt'] / 1024:g} KiB" if c["k"] else "-"
        s = c.get("proj_s_per_prompt")
        if m is None:
            rows.append([c["name"], c["k"] or "-", store, "-", *["-"] * len(targets), "-", "-",
                         c["status"]])
            continue
        rows.append([c["name"], c["k"] or "-", store, "-" if s is None else round(s, 3),
                     *[round(m["per_target"][t]["spearman"], 4) for t in targets],
                     round(m["precision_at_10pct"], 3), round(m["mean_abs_err"], 5), c["status"]])
    print_table(headers, rows)
    for t, s in res["exact_cos"].items():
        print(f"exact cos {t}: mean {s['mean']:+.4f} std {s['std']:.4f} "
              f"range [{s['min']:+.4f}, {s['max']:+.4f}]")


def choose_targets(items: Sequence[PromptRollouts], max_n: int, seed: int) -> list[int]:
    """Target prompts with a non-zero gradient; a seeded sample of max_n if more (as target_mean)."""
    valid = np.array([i for i, it in enumerate(items) if not it.zero_grad], dtype=np.int64)
    if valid.size > max_n:
        valid = np.sort(np.random.default_rng(seed).choice(valid, size=max_n, replace=False))
    return valid.tolist()


def get_cost(ctx: Ctx, path: Path, item: PromptRollouts, n_rows: int) -> dict[str, Any]:
    """Sparse-jl cost measurement (cached in ``path``)."""
    if path.exists():
        return json.loads(path.read_text())
    grads, _ = gradient(ctx, item)
    cost = {**measure_jl(ctx, grads, n_rows), "prompt": item.id}
    ctx.params.zero_grad()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cost))
    return cost


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", default="runs/bench/rollouts")
    ap.add_argument("--max-prompts", type=int, default=None, help="first N pool prompts")
    ap.add_argument("--max-targets", type=int, default=100, help="target prompts per target mean")
    ap.add_argument("--max-seconds-per-cell", type=float, default=300.0,
                    help="budget of one sparse-jl cell over all prompts (estimated before running)")
    ap.add_argument("--cache-gb", type=float, default=2.2, help="count-sketch table cache budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's); 1 avoids oversubscription on a shared machine")
    ap.add_argument("--out", default="projection_fidelity", help="result name under benchmarks/results")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start, load = time.perf_counter(), {"start": os.getloadavg()}
    tok = load_tokenizer("default")
    model = load_model("default", "fp32")
    params = select_params(model, GradientConfig())
    root = Path(args.rollouts)
    pool = load_rollouts(root / "pool")[:args.max_prompts]
    tsets = {p.name: load_rollouts(p) for p in sorted((root / "targets").iterdir()) if p.is_dir()}
    tidx = {t: choose_targets(v, args.max_targets, args.seed) for t, v in tsets.items()}
    tidx = {t: v for t, v in tidx.items() if v or print(f"target {t}: no non-zero gradient, skipped")}
    key = fingerprint({"targets": {t: [tsets[t][i].id for i in v] for t, v in tidx.items()},
                       "seed": args.seed, "d": params.dim, "rollouts": str(root.resolve())})
    n_rows = sum(map(len, tidx.values())) + sum(not it.zero_grad for it in pool)
    ctx = Ctx(model, params, tok.pad_token_id, GradientConfig(), {}, [], args.seed, PARTS / key)
    first = next(iter(tidx))
    cost = get_cost(ctx, ctx.dir / "jl_cost.json", tsets[first][tidx[first][0]], n_rows)
    cells = grid()
    plan_jl(cells, cost, params.dim, n_rows, args.max_seconds_per_cell)
    ctx.mask_rs = sorted({c.r for c in cells if c.mode == "batched" and c.status == "run"
                          and not batched_done(ctx.dir, c, n_rows)})
    ctx.online = build_online(model, params, args.seed, int(args.cache_gb * 2**30), ctx.underflow)
    print(f"d={params.dim} pool={len(pool)} rows={n_rows} targets={ {t: len(v) for t, v in tidx.items()} } "
          f"parts={ctx.dir} sparse-jl r to mask: {ctx.mask_rs}", flush=True)
    means, tpaths = {}, {}
    for t, idx in tidx.items():
        means[t], tpaths[t] = target_pass(ctx, t, tsets[t], idx)
    msq = np.array([[float(torch.dot(m.reshape(-1), m.reshape(-1))) for m in means[t]] for t in tidx])
    load["after_targets"] = os.getloadavg()
    ppaths = pool_pass(ctx, pool, [means[t] for t in tidx])
    del means
    load["after_pool"] = os.getloadavg()
    files = [p for t in tidx for p in tpaths[t]] + [p for p in ppaths if p is not None]
    batched = run_batched(cells, ctx, files)
    load["end"] = os.getloadavg()
    tparts = {t: [load_part(p) for p in v] for t, v in tpaths.items()}
    pparts = [None if p is None else load_part(p) for p in ppaths]
    res = analyse(cells, tparts, pparts, msq, params.names, batched)
    print_results(res, list(tidx))
    timing = {k: float(np.mean([float(p[k]) for p in pparts if p is not None and k in p]))
              for k in ("grad_s", "exact_s")}
    under = [float(p["fp16_underflow"]) for ps in [*tparts.values(), pparts] for p in ps
             if p is not None and "fp16_underflow" in p]
    payload = {**res, "args": vars(args), "d": params.dim, "n_pool": len(pool),
               "n_pool_nonzero": sum(p is not None for p in pparts),
               "targets": {t: [tsets[t][i].id for i in v] for t, v in tidx.items()},
               "jl_cost": {k: v for k, v in cost.items() if k != "cheap_feature"},
               "batched_vs_call_rel_l2": check_batched(cost, batched, 0),
               "timing_mean_s_per_pool_prompt": timing, "fp16_underflow_mean": 
               float(np.mean(under)) if under else None, "load_avg": load,
               "exact_store_bytes_per_prompt": 4 * params.dim, "parts_dir": str(ctx.dir),
               "wall_s_this_run": time.perf_counter() - t_start}
    print(f"pool grad {timing['grad_s']:.2f} s/prompt, exact dots {timing['exact_s']:.2f} s/prompt; "
          f"fp16 underflow {payload['fp16_underflow_mean']}; load {load}")
    print(f"wrote {write_result(args.out, payload)}")


if __name__ == "__main__":
    main()
