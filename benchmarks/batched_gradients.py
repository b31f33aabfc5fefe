"""Several prompts per backward (``gradient.prompts_per_backward``): speed and ranking fidelity.

Scoring runs one forward and backward per prompt over its K responses, then projects ``.grad``.
The batched path runs P prompts' shared-prefix passes as one left-padded forward and one
backward, and takes each prompt's projected gradient from the factorized projector's layer hooks
(LoGra-style ``P_out (sum_t delta_t a_t^T) P_in^T`` per covered linear layer; embeddings, the tied
lm_head and the norms count-sketched per prompt); no weight gradient is formed. It needs the
factorized projector, so it changes the features against today's count-sketch default.

Two parts, both with the default model at its default gradient settings (bf16 autocast where the
CPU has bf16 units), one thread:

- **speed**: the first ``--speed-prompts`` pool prompts with a gradient, prompts per second
  (gradient and projection seconds) of today's path (count-sketch k = 8192, one prompt per
  backward), the factorized projector one prompt per backward (``.grad`` then ``project``), its
  hooks on one prompt per backward, and the hooks on P = 2, 4 (``--groups``) prompts per
  backward. The paths take turns on each group of prompts (same machine state), and the batched
  features are compared with the one-prompt factorized ones (cosine).
- **fidelity** (the setup of benchmarks/autocast_fidelity.py): for every pool prompt with a
  gradient the exact POPI cosine with each target's mean gradient (fp32 gradient over all
  parameters, float64 dot products and norms), and the cosines of count-sketch k = 8192 and the
  factorized projector k = 8192 applied to that fp32 gradient, and of the batched path as it
  would score (bf16 autocast, ``--per-backward`` prompts per backward, factorized k = 8192);
  Spearman of each against the exact cosines per target (acceptance >= 0.99 per target) and
  top-10 % overlap of the fused selection.

    OMP_NUM_THREADS=1 python benchmarks/batched_gradients.py --make-rollouts --cap 8

``--make-rollouts`` samples the suite's pool (``--cap`` prompts per family) and targets with the
default model (K = 8, T = 0.5, 40 new tokens, as the selection_quality cells) into
``--work/rollouts``; ``--rollouts DIR`` reads existing ones (``pool/``, ``targets/NAME/``).
Resumable (per-prompt results under ``--work``); writes benchmarks/results/batched_gradients.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cropi.bench import print_table, write_result

K_PROJ = 8192


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def truncated(item: Any, k: int | None) -> Any:
    if k is None or len(item.response_ids) <= k:
        return item
    return dataclasses.replace(item, response_ids=item.response_ids[:k], response_text=item.response_text[:k],
                               rewards=item.rewards[:k], logprobs=item.logprobs[:k])


def make_rollouts(args: argparse.Namespace) -> Path:
    from cropi.bench.selection_cells import collect_cell
    from cropi.config import RolloutConfig
    from cropi.model.loading import load_model, load_tokenizer
    from cropi.rollout.collect import make_policy

    cdir = Path(args.work) / "cell"
    cache: dict[str, Any] = {}

    def policy() -> Any:
        if "p" not in cache:
            cfg = RolloutConfig(temperature=0.5, max_new_tokens=40)
            cache["p"] = make_policy(load_model("default", "fp32"), load_tokenizer("default"), cfg)
        return cache["p"]

    t0 = time.perf_counter()
    collect_cell(cdir, args.suite, cap=args.cap, suite_seed=0, k=8, temperature=0.5, max_new_tokens=40,
                 rollout_seed=0, policy_fn=policy)
    print(f"rollouts in {cdir / 'rollouts'} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return cdir / "rollouts"


class Scorer:
    """The model, its parameters and the two projectors (count-sketch, factorized), k = 8192."""

    def __init__(self, cache_gb: float) -> None:
        import torch

        from cropi.config import GradientConfig, ProjectionConfig
        from cropi.influence.pipeline import prepare_scoring
        from cropi.influence.projection.factorized import FactorizedProjector
        from cropi.model.loading import load_model, load_tokenizer

        self.torch = torch
        self.model = load_model("default", "fp32")
        self.pad_id = int(load_tokenizer("default").pad_token_id)
        setup = prepare_scoring(self.model, GradientConfig(),
                                ProjectionConfig(kind="countsketch", k=K_PROJ, seed=0, cache_gb=cache_gb))
        self.cfg = setup.gradient  # autocast resolved for this CPU
        self.fp32 = dataclasses.replace(self.cfg, autocast_bf16=False)
        self.params, self.countsketch = setup.params, setup.projector
        self.factorized = FactorizedProjector.from_model(
            self.model, ProjectionConfig(kind="factorized", k=K_PROJ, seed=0),
            params=list(zip(self.params.names, self.params.params)))

    def one(self, item: Any, proj: Any, cfg: Any = None) -> tuple[np.ndarray, float, float]:
        """Today's path: one backward, ``.grad``, ``proj.project``: (feature, grad s, project s)."""
        from cropi.influence.pipeline import Timings, prompt_feature

        tm = Timings()
        f = prompt_feature(self.model, self.params, proj, item, cfg or self.cfg, self.pad_id, tm)
        assert f is not None
        return f, tm.grad, tm.project

    def batched(self, items: list[Any], cfg: Any = None) -> tuple[list[np.ndarray], float, float]:
        from cropi.influence.pipeline import Timings, batch_features

        tm = Timings()
        feats = batch_features(self.model, self.params, self.factorized, items, cfg or self.cfg,
                               self.pad_id, tm)
        return feats, tm.grad, tm.project

    def exact(self, item: Any) -> list[Any]:
        """fp32 gradient over all parameters (tensors, cloned)."""
        from cropi.influence.popi import popi_backward

        self.params.zero_grad()
        popi_backward(self.model, item, self.fp32, self.pad_id)
        return [g.detach().clone() for g in self.params.grads()]


def padding(pool: list[Any], groups: list[int]) -> dict[str, Any]:
    """Token positions the continuation pass computes for the pool prompts with a gradient: real
    ones (1 + response length per row), one prompt per backward (K rows padded to the prompt's
    longest response) and P prompts per backward (all rows padded to the group's longest)."""
    items = [it for it in pool if not it.zero_grad]
    width = [1 + max(len(r) for r in it.response_ids) for it in items]
    rows = [len(it.response_ids) for it in items]
    real = sum(sum(1 + len(r) for r in it.response_ids) for it in items)
    out: dict[str, Any] = {"n_prompts": len(items), "real": real,
                           "prefix": sum(len(it.prompt_ids) - 1 for it in items),
                           "padded_1": sum(w * r for w, r in zip(width, rows))}
    for p in groups:
        out[f"padded_{p}"] = sum(max(width[i:i + p]) * sum(rows[i:i + p]) for i in range(0, len(items), p))
    print("continuation positions (real, then padded one prompt / P prompts per backward):",
          {k: v for k, v in out.items() if k != "n_prompts"}, flush=True)
    return out


def speed(sc: Scorer, pool: list[Any], n: int, groups: list[int]) -> dict[str, Any]:
    """Seconds per prompt of each path. The paths take turns on each chunk of max(groups)
    prompts, in an order rotated from chunk to chunk; wall-clock (gradient + projection, as
    ``Timings`` counts them) and the process's CPU seconds (less sensitive to other jobs on a
    shared machine) are both kept, and the speed-up against today is given as the median over
    chunks of the per-chunk ratio (and over all chunks together)."""
    from cropi.influence.popi import fits_one_backward

    items = [it for it in pool if not it.zero_grad and fits_one_backward(it, sc.cfg)][:n]
    big = max(groups)
    items = items[:len(items) - len(items) % big]
    today = "countsketch, 1 per backward (today)"
    paths = [today, "factorized, 1 per backward (.grad)",
             "factorized hooks, 1 per backward"] + [f"factorized hooks, {p} per backward" for p in groups]
    wall = {p: [] for p in paths}  # per chunk
    cpu = {p: [] for p in paths}
    feats: dict[str, dict[str, np.ndarray]] = {p: {} for p in paths}
    sc.batched(items[:2])  # warm-up: tables, matrices, allocator
    sc.one(items[0], sc.countsketch)
    sc.one(items[0], sc.factorized)
    for c, s in enumerate(range(0, len(items), big)):
        chunk = items[s:s + big]
        for p in paths[c % len(paths):] + paths[:c % len(paths)]:
            w, c0 = 0.0, time.process_time()
            if "(today)" in p or "(.grad)" in p:
                proj = sc.countsketch if "(today)" in p else sc.factorized
                for it in chunk:
                    f, g, pr = sc.one(it, proj)
                    feats[p][it.id] = f
                    w += g + pr
            else:
                per = 1 if p.endswith(", 1 per backward") else int(p.split(", ")[1].split()[0])
                for j in range(0, len(chunk), per):
                    fs, g, pr = sc.batched(chunk[j:j + per])
                    feats[p].update({it.id: f for it, f in zip(chunk[j:j + per], fs)})
                    w += g + pr
            wall[p].append(w)
            cpu[p].append(time.process_time() - c0)
        print(f"speed: {s + len(chunk)} of {len(items)} prompts", flush=True)
    ids = [it.id for it in items]
    ref = np.stack([feats["factorized, 1 per backward (.grad)"][i] for i in ids])
    rows = []
    out: dict[str, Any] = {"n_prompts": len(items), "chunk": big, "paths": {}}
    for p in paths:
        f = np.stack([feats[p][i] for i in ids])
        cos = None if p == today else float(np.min(np.sum(f * ref, 1) / (np.linalg.norm(f, axis=1)
                                                                       * np.linalg.norm(ref, axis=1))))
        rec = {"wall_s": sum(wall[p]), "cpu_s": sum(cpu[p]),
               "wall_s_per_prompt": sum(wall[p]) / len(items), "cpu_s_per_prompt": sum(cpu[p]) / len(items),
               "prompts_per_s_wall": len(items) / sum(wall[p]), "prompts_per_s_cpu": len(items) / sum(cpu[p]),
               "speedup_vs_today_wall": sum(wall[today]) / sum(wall[p]),
               "speedup_vs_today_cpu": sum(cpu[today]) / sum(cpu[p]),
               "speedup_vs_today_cpu_per_chunk": [a / b for a, b in zip(cpu[today], cpu[p])],
               "speedup_vs_today_cpu_median": float(np.median([a / b for a, b in zip(cpu[today], cpu[p])])),
               "min_cos_vs_factorized_1_per_backward": cos}
        out["paths"][p] = rec
        rows.append([p, rec["wall_s_per_prompt"], rec["cpu_s_per_prompt"], rec["prompts_per_s_cpu"],
                     rec["speedup_vs_today_cpu_median"], min(rec["speedup_vs_today_cpu_per_chunk"]),
                     max(rec["speedup_vs_today_cpu_per_chunk"]), "-" if cos is None else cos])
    print_table(["path", "wall s/prompt", "cpu s/prompt", "prompts/cpu-s", "vs today (median)", "min", "max",
                 "min cos vs factorized .grad"], rows)
    return out


def fidelity(sc: Scorer, pool: list[Any], targets: dict[str, list[Any]], work: Path,
             per_backward: int) -> dict[str, Any]:
    torch = sc.torch
    from cropi.influence.popi import backward_batches, fits_one_backward
    from cropi.select import fuse, order_desc

    kinds = ("countsketch_fp32", "factorized_fp32", "batched")

    def new_path(items: list[Any]) -> dict[str, np.ndarray]:
        """The batched path's features of ``items`` (with a gradient), as compute_features groups them."""
        out: dict[str, np.ndarray] = {}
        for g in backward_batches(items, sc.cfg, per_backward):
            chunk = [items[j] for j in g]
            if len(chunk) == 1 and not fits_one_backward(chunk[0], sc.cfg):
                out[chunk[0].id] = sc.one(chunk[0], sc.factorized)[0]
            else:
                for it, f in zip(chunk, sc.batched(chunk)[0]):
                    out[it.id] = f
        return out

    def sketches(g: list[Any]) -> dict[str, np.ndarray]:
        return {"countsketch_fp32": sc.countsketch.project(g).double().numpy(),
                "factorized_fp32": sc.factorized.project(g).double().numpy()}

    tmean: dict[str, list[Any]] = {}
    tsk: dict[str, dict[str, Any]] = {}
    for t, items in targets.items():
        f = work / f"target_{t}.pt"
        if f.exists():
            saved = torch.load(f, weights_only=False)  # this benchmark's own cache
            tmean[t], tsk[t] = saved["mean"], saved["sketch"]
            continue
        items = [it for it in items if not it.zero_grad]
        acc, sk = None, {k: [] for k in kinds}
        for it in items:
            g = sc.exact(it)
            acc = [x.double() for x in g] if acc is None else [a + x.double() for a, x in zip(acc, g)]
            for k, v in sketches(g).items():
                sk[k].append(v)
        sk["batched"] = list(new_path(items).values())
        assert acc is not None, f"target {t}: no prompt with a gradient"
        tmean[t] = [a / len(items) for a in acc]
        tsk[t] = {k: np.mean(v, 0) for k, v in sk.items()} | {"n": len(items)}
        torch.save({"mean": tmean[t], "sketch": tsk[t]}, f)
        print(f"target {t}: {len(items)} prompts with a gradient", flush=True)
    tnorm = {t: float(torch.sqrt(sum((m * m).sum() for m in ms))) for t, ms in tmean.items()}
    tnames = sorted(targets)
    todo = [it for it in pool if not it.zero_grad and not (work / f"pool_{it.id}.npz").exists()]
    for s in range(0, len(todo), per_backward):
        chunk = todo[s:s + per_backward]
        new = new_path(chunk)
        for it in chunk:
            g = sc.exact(it)
            gn = float(torch.sqrt(sum((x.double() ** 2).sum() for x in g)))
            feats = sketches(g) | {"batched": new[it.id].astype(np.float64)}
            rec: dict[str, Any] = {"source": np.array(it.source)}
            for t in tnames:
                dot = sum(float((x.double() * m).sum()) for x, m in zip(g, tmean[t]))
                rec[f"exact_{t}"] = np.array(dot / (gn * tnorm[t]))
                for k in kinds:
                    m = tsk[t][k]
                    rec[f"{k}_{t}"] = np.array(float(feats[k] @ m / (np.linalg.norm(feats[k]) * np.linalg.norm(m))))
            np.savez(work / f"pool_{it.id}.npz", **rec)
        print(f"fidelity: {s + len(chunk)} of {len(todo)} pool prompts", flush=True)
    ids = [it.id for it in pool if not it.zero_grad]
    rows = {i: dict(np.load(work / f"pool_{i}.npz")) for i in ids}
    n_select = max(1, round(0.1 * len(pool)))
    cos = {k: {t: np.array([float(rows[i][f"{k}_{t}"]) for i in ids]) for t in tnames}
           for k in ("exact", *kinds)}
    res: dict[str, Any] = {"n_pool": len(pool), "n_grad": len(ids), "n_select": n_select,
                           "targets": {t: int(tsk[t]["n"]) for t in tnames}, "per_target": {}}
    table = []
    for t in tnames:
        res["per_target"][t] = {f"spearman_{k}_vs_exact": spearman(cos[k][t], cos["exact"][t]) for k in kinds}
        res["per_target"][t]["max_abs_cos_err_batched"] = float(np.max(np.abs(cos["batched"][t] - cos["exact"][t])))
        table += [[t, k, res["per_target"][t][f"spearman_{k}_vs_exact"]] for k in kinds]
    top = {k: set(order_desc(fuse(cos[k], n_select))[:n_select].tolist()) for k in cos}
    res["top10_overlap_vs_exact"] = {k: len(top[k] & top["exact"]) / n_select for k in kinds}
    res["passes_0.99"] = {k: all(res["per_target"][t][f"spearman_{k}_vs_exact"] >= 0.99 for t in tnames)
                          for k in kinds}
    print_table(["target", "features", "Spearman vs exact"], table)
    print("top-10% overlap vs exact", res["top10_overlap_vs_exact"])
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", help="existing rollouts (pool/, targets/NAME/)")
    ap.add_argument("--make-rollouts", action="store_true", help="sample them into --work/cell/rollouts")
    ap.add_argument("--suite", default="arith-ladder")
    ap.add_argument("--cap", type=int, default=8, help="pool prompts per family (--make-rollouts)")
    ap.add_argument("--k-use", type=int, default=8)
    ap.add_argument("--max-targets", type=int, default=100)
    ap.add_argument("--speed-prompts", type=int, default=16)
    ap.add_argument("--groups", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--per-backward", type=int, default=4, help="prompts per backward of the fidelity's batched path")
    ap.add_argument("--skip", nargs="*", default=[], choices=["speed", "fidelity"])
    ap.add_argument("--work", default="runs/batched_gradients")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-gb", type=float, default=1.2)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from cropi.rollout.store import load_rollouts

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    root = make_rollouts(args) if args.make_rollouts else Path(args.rollouts)
    pool = [truncated(it, args.k_use) for it in load_rollouts(root / "pool")]
    tnames = sorted(p.name for p in (root / "targets").iterdir() if p.is_dir())
    targets = {t: [truncated(it, args.k_use) for it in load_rollouts(root / "targets" / t)][:args.max_targets]
               for t in tnames}
    sc = Scorer(args.cache_gb)
    res: dict[str, Any] = {"args": vars(args), "autocast_bf16": sc.cfg.autocast_bf16, "k": K_PROJ,
                           "factorized_layout": {"k_linear": sc.factorized.k_lin,
                                                 "k_rest": sc.factorized.k - sc.factorized.k_lin,
                                                 "factor": sc.factorized.factor,
                                                 "n_blocks": len(sc.factorized.blocks),
                                                 "rest_params": len(sc.factorized.rest_names)},
                           "load_start": os.getloadavg()}
    res["continuation_positions"] = padding(pool, sorted(args.groups))
    if "speed" not in args.skip:
        res["speed"] = speed(sc, pool, args.speed_prompts, sorted(args.groups))
    if "fidelity" not in args.skip:
        fdir = work / "fidelity"
        fdir.mkdir(exist_ok=True)
        res["fidelity"] = fidelity(sc, pool, targets, fdir, args.per_backward)
    res["load_end"] = os.getloadavg()
    write_result("batched_gradients", res)


if __name__ == "__main__":
    main()
