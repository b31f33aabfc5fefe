"""Does bf16 autocast in the POPI gradient pass rank prompts like the float64 reference?

Scoring computes one POPI gradient per prompt (a forward and backward over its K responses) and
projects it. With ``gradient.autocast_bf16`` the forward and backward run in bf16 (parameters,
gradients and their accumulation stay fp32): faster on CPUs with bf16 matrix units, at some cost
in precision. This benchmark decides whether it can be the default: for every pool prompt with a
gradient it computes

- the **reference**: the fp32 gradient over all parameters, its exact cosine with each target's
  mean fp32 gradient, with per-tensor dot products and norms accumulated in float64 (no
  projection);
- **fp32 + count-sketch**: the same gradient projected (count-sketch, k = 8192), cosine with the
  mean of the targets' projected fp32 gradients (what scoring does without autocast);
- **bf16 autocast + count-sketch**: the gradient recomputed under autocast (pool and targets),
  projected the same way (what scoring does with autocast);

and reports per target the Spearman of each projected cosine against the reference (acceptance:
>= 0.99 for every target), the top-10 % overlap of the fused (RRF) selection against the
reference's, and the seconds per gradient of both passes.

    OMP_NUM_THREADS=1 python benchmarks/autocast_fidelity.py --rollouts DIR --threads 1

DIR holds cropi rollouts: ``pool/`` and ``targets/NAME/`` (a ``cropi rollout`` run's
``rollouts/`` folder, or a selection_quality cell's). ``--k-use 8`` scores each prompt from its
first 8 responses (a K=16 store read as the K=8 draw scoring uses). Resumable: per-prompt results
under ``--work``; writes benchmarks/results/autocast_fidelity.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cropi.bench import write_result


def truncated(item: Any, k: int | None) -> Any:
    if k is None:
        return item
    return dataclasses.replace(item, response_ids=item.response_ids[:k], response_text=item.response_text[:k],
                               rewards=item.rewards[:k], logprobs=item.logprobs[:k])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rollouts", required=True)
    ap.add_argument("--k-use", type=int, default=8)
    ap.add_argument("--model", default="default", help="model folder (default: the embedded model)")
    ap.add_argument("--out", default="autocast_fidelity", help="result name under benchmarks/results")
    ap.add_argument("--max-targets", type=int, default=100, help="target prompts per set (mean gradient)")
    ap.add_argument("--work", default="runs/autocast_fidelity")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-gb", type=float, default=1.2)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from cropi.config import GradientConfig, ProjectionConfig
    from cropi.influence.pipeline import prepare_scoring
    from cropi.influence.popi import popi_backward
    from cropi.model.loading import load_model, load_tokenizer
    from cropi.rollout.store import load_rollouts
    from cropi.select import fuse, order_desc

    torch.set_num_threads(args.threads)
    root = Path(args.rollouts)
    pool = [truncated(it, args.k_use) for it in load_rollouts(root / "pool")]
    tnames = sorted(p.name for p in (root / "targets").iterdir() if p.is_dir())
    targets = {t: [truncated(it, args.k_use) for it in load_rollouts(root / "targets" / t)][:args.max_targets]
               for t in tnames}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(args.model)
    model = load_model(args.model, "fp32")
    pad_id = int(tok.pad_token_id)  # as Policy.pad_id
    g32, g16 = GradientConfig(autocast_bf16=False), GradientConfig(autocast_bf16=True)
    setup = prepare_scoring(model, g32, ProjectionConfig(kind="countsketch", k=8192, seed=0,
                                                         cache_gb=args.cache_gb))
    params, proj = setup.params, setup.projector
    secs = {"fp32": [], "bf16": []}

    def both(item: Any) -> tuple[list[torch.Tensor], np.ndarray, np.ndarray]:
        """fp32 gradient (tensors), its sketch, and the autocast gradient's sketch."""
        out = []
        for name, cfg in (("bf16", g16), ("fp32", g32)):  # fp32 last: its .grad is kept
            params.zero_grad()
            t0 = time.perf_counter()
            popi_backward(setup.model, item, cfg, pad_id)
            secs[name].append(time.perf_counter() - t0)
            out.append(proj.project(params.grads()).detach().double().cpu().numpy())
        return [g.detach().clone() for g in params.grads()], out[1], out[0]

    # targets: mean fp32 gradient (exact), mean sketches (fp32, bf16); cached on disk
    tmeans: dict[str, list[torch.Tensor]] = {}
    tsk: dict[str, dict[str, np.ndarray]] = {}
    for t, items in targets.items():
        f = work / f"target_{t}.pt"
        if f.exists():
            saved = torch.load(f)
            tmeans[t], tsk[t] = saved["mean"], saved["sketch"]
            continue
        acc = None
        s32, s16 = [], []
        for it in items:
            if it.zero_grad:
                continue
            g, a, b = both(it)
            acc = g if acc is None else [x + y for x, y in zip(acc, g)]
            s32.append(a), s16.append(b)
        assert acc is not None, f"target {t}: no prompt with a gradient"
        tmeans[t] = [x / len(s32) for x in acc]
        tsk[t] = {"fp32": np.mean(s32, 0), "bf16": np.mean(s16, 0), "n": len(s32)}
        torch.save({"mean": tmeans[t], "sketch": tsk[t]}, f)
        print(f"target {t}: {len(s32)} prompts with a gradient", flush=True)
    tnorm = {t: float(np.sqrt(sum(float((m.double() ** 2).sum()) for m in ms))) for t, ms in tmeans.items()}

    rows: dict[str, dict[str, Any]] = {}
    for it in pool:
        if it.zero_grad:
            continue
        f = work / f"pool_{it.id}.npz"
        if f.exists():
            rows[it.id] = dict(np.load(f))
            continue
        g, a, b = both(it)
        gn = float(np.sqrt(sum(float((x.double() ** 2).sum()) for x in g)))
        rec = {"source": np.array(it.source)}
        for t in tnames:
            dot = sum(float((x.double() * m.double()).sum()) for x, m in zip(g, tmeans[t]))
            rec[f"exact_{t}"] = np.array(dot / (gn * tnorm[t]))
            for name, feat in (("fp32", a), ("bf16", b)):
                m = tsk[t][name]
                rec[f"{name}_{t}"] = np.array(float(feat @ m / (np.linalg.norm(feat) * np.linalg.norm(m))))
        np.savez(f, **rec)
        rows[it.id] = rec
    ids = sorted(rows)
    n_select = max(1, round(0.1 * len(pool)))
    res: dict[str, Any] = {"args": vars(args), "n_pool": len(pool), "n_grad": len(ids), "n_select": n_select,
                           "targets": {t: int(tsk[t]["n"]) for t in tnames}, "per_target": {}}
    cos = {kind: {t: np.array([float(rows[i][f"{kind}_{t}"]) for i in ids]) for t in tnames}
           for kind in ("exact", "fp32", "bf16")}
    for t in tnames:
        res["per_target"][t] = {
            "spearman_fp32_vs_exact": spearman(cos["fp32"][t], cos["exact"][t]),
            "spearman_bf16_vs_exact": spearman(cos["bf16"][t], cos["exact"][t]),
            "spearman_bf16_vs_fp32": spearman(cos["bf16"][t], cos["fp32"][t]),
            "max_abs_cos_err_bf16": float(np.max(np.abs(cos["bf16"][t] - cos["exact"][t]))),
        }
    top = {kind: set(order_desc(fuse(cos[kind], n_select))[:n_select].tolist()) for kind in cos}
    res["top10_overlap_vs_exact"] = {k: len(top[k] & top["exact"]) / n_select for k in ("fp32", "bf16")}
    res["seconds_per_gradient"] = {k: float(np.median(v)) if v else None for k, v in secs.items()}
    if secs["fp32"] and secs["bf16"]:
        res["autocast_speedup"] = res["seconds_per_gradient"]["fp32"] / res["seconds_per_gradient"]["bf16"]
    for t, r in res["per_target"].items():
        print(t, {k: round(v, 4) for k, v in r.items()})
    print("top-10% overlap vs exact", res["top10_overlap_vs_exact"], "s/gradient", res["seconds_per_gradient"])
    write_result(args.out, res)


if __name__ == "__main__":
    main()
