"""Selection quality of influence scorers at stage 0 (no training): does the top 10 % hold the
target families, and is it stable across independent rollout draws?

For each cell (suite, temperature): beta rolls out every pool and target prompt at K=16
(``--k``; max_new_tokens 40 and bf16 generation, as the demo), the 16 responses are split into
two disjoint halves A (responses 0..7) and B (8..15) -- two independent K=8 draws of everything --
and for every prompt the script stores, per half, the projected sums of per-response gradients
over its correct and its incorrect responses:

    S_{h,c} = P sum_{k in half h, R_k = c} grad (1/|tau_k|) sum_t rho_kt     (c in {1, 0})

(count-sketch k=8192, bf16 autocast, fp32 accumulation: the demo's settings; one backward per
non-empty group). With binary rewards the POPI gradient (method: A_k = (R_k - mean)/(std + 1e-4),
g = -(1/K) sum_k A_k G_k) of ANY subset of a prompt's responses is a fixed linear combination of
those sums, so the K=8 feature of half A, of half B and the K=16 feature of all responses are
reconstructed exactly (projection is linear); the first prompt is checked against
``popi_backward`` on its half (cosine reported). Four group backwards cost about 1.2x two half
backwards on this CPU; per-response features (one backward + projection per response) measured
2.5x and were not used.

Then, per scorer variant of :mod:`cropi.influence.scorers` and the baselines (random, pass-rate =
random among 0 < p < 1, learnability = top p(1-p), which is also "pass rate closest to 0.5"),
per target and fused (RRF, budget N = round(0.10 |pool|)):

- relevant share of the picks (relevant: pool prompt whose ``source`` is the target's family;
  fused: any target's family), the share among pool prompts with a gradient in that draw, the
  share in the whole pool, enrichment = picks share / gradient share, per half and their mean,
  with 95 % bootstrap CIs over pool prompts (scores held fixed, the same resample for both halves);
- related share (pool families from the same reasoning-gym generator as the target family);
- stability between halves: Spearman of the per-target scores over prompts with a gradient in
  both, and top-N overlap |A & B| / N (bootstrap CIs over prompts);
- the same metrics for K=16 features (one draw: 2x the rollouts, no stability);
- cost: rollout seconds (K=16; a K=8 draw is about half), gradient and projection seconds.

Resumable: rollouts (cropi ``collect``, per chunk) and features (one file per prompt) live under
``--work`` (default runs/selection_quality); a finished cell is skipped unless ``--reanalyse``;
the results JSON is rewritten after every cell.

    OMP_NUM_THREADS=1 nohup .venv/bin/python benchmarks/selection_quality.py --threads 1 \\
        --suite default-small --temperature 0.5 1.0 > runs/selection_quality.log 2>&1 &

``--cap N`` keeps at most N pool prompts per family (cell key ``SUITE-capN/...``): the way to
measure a big suite (``arith-ladder``: 288 pool prompts) within the budget. Several processes may
run different cells at once; each merges its cells into the result file under a lock.

The cells' files and draws are :mod:`cropi.bench.selection_cells`, the group sums and the
features rebuilt from them :mod:`cropi.influence.group_sums`, the metrics
:mod:`cropi.report.selection_quality`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cropi.bench import load_result, lock_path, print_table, result_path, write_result
from cropi.bench.selection_cells import (Draw, cell_data, cell_dir, cell_name, collect_cell, family_of,
                                         load_groups, make_draws, run_scorers, scorer_grid, suite_label,
                                         suite_spec)
from cropi.influence.group_sums import group_backward, half_features
from cropi.report.selection_quality import (ci95, fused_rule, hypergeom_interval, learnability_expected,
                                            overlap, rank_rule, selection_metrics, top_n)
from cropi.utils.locking import locked

N_BOOT = 1000


# ----------------------------------------------------------------------------------- data phase
@dataclass
class Scorer:
    """What the feature pass needs: model, parameters, projector, gradient config, pad id."""

    model: Any
    params: Any
    projector: Any
    gcfg: Any
    pad_id: int


def prompt_groups(sc: Scorer, item: Any, half: int) -> tuple[np.ndarray, dict[str, float]]:
    """``[4, k]`` float32: S_{A,1}, S_{A,0}, S_{B,1}, S_{B,0} (zeros for empty groups and for a
    prompt whose K rewards are all equal)."""
    r = np.asarray(item.rewards, dtype=np.float64)
    if not np.all((r == 0) | (r == 1)):
        raise ValueError(f"{item.id}: rewards must be binary, got {sorted(set(r.tolist()))}")
    out = np.zeros((4, sc.projector.k), dtype=np.float32)
    t = {"grad_s": 0.0, "project_s": 0.0, "n_groups": 0}
    if np.all(r == r[0]):
        return out, t
    halves = (range(0, half), range(half, len(r)))
    for h, rng in enumerate(halves):
        for c_i, c in enumerate((1.0, 0.0)):
            idx = [i for i in rng if r[i] == c]
            if not idx:
                continue
            t0 = time.perf_counter()
            sc.params.zero_grad()
            group_backward(sc.model, item, idx, sc.gcfg, sc.pad_id)
            t1 = time.perf_counter()
            out[2 * h + c_i] = sc.projector.project(sc.params.grads()).detach().float().cpu().numpy()
            t["grad_s"] += t1 - t0
            t["project_s"] += time.perf_counter() - t1
            t["n_groups"] += 1
    sc.params.zero_grad()
    return out, t


def features(sc: Scorer, items: Sequence[Any], folder: Path, half: int) -> dict[str, float]:
    """One ``<id>.npz`` per prompt (groups [4, k] + timings); existing files are skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    tot = {"grad_s": 0.0, "project_s": 0.0, "n_groups": 0, "computed": 0}
    for i, it in enumerate(items):
        path = folder / f"{it.id}.npz"
        if path.exists():
            continue
        groups, t = prompt_groups(sc, it, half)
        tmp = folder / f".tmp-{it.id}.npz"
        np.savez(tmp, groups=groups, **{key: np.array(v) for key, v in t.items()})
        os.replace(tmp, path)
        for key in t:
            tot[key] += t[key]
        tot["computed"] += 1
        if (i + 1) % 16 == 0:
            print(f"  features {folder.name}: {i + 1}/{len(items)} ({time.strftime('%H:%M:%S')}, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
    return tot


def check_reconstruction(sc: Scorer, items: Sequence[Any], groups: np.ndarray, half: int) -> dict[str, Any]:
    """Cosine between the reconstructed half-A feature and ``popi_backward`` on half A (one prompt)."""
    from cropi.influence.popi import popi_backward
    from cropi.rollout.store import PromptRollouts

    for i, it in enumerate(items):
        r = np.asarray(it.rewards[:half])
        if np.all(r == r[0]):
            continue
        sub = PromptRollouts(it.id, it.source, it.level, it.prompt_ids, it.response_ids[:half],
                             it.response_text[:half], np.asarray(it.rewards[:half]), it.logprobs[:half])
        sc.params.zero_grad()
        popi_backward(sc.model, sub, sc.gcfg, sc.pad_id)
        ref = sc.projector.project(sc.params.grads()).detach().double().cpu().numpy()
        sc.params.zero_grad()
        rec = half_features(groups[i:i + 1], np.asarray(it.rewards, np.float64)[None], half)["A"][0]
        cos = float(rec @ ref / (np.linalg.norm(rec) * np.linalg.norm(ref)))
        rel = float(np.linalg.norm(rec - ref) / np.linalg.norm(ref))
        return {"id": it.id, "cosine": cos, "rel_l2": rel}
    return {"id": None}


# -------------------------------------------------------------------------------- analysis
def analyse(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Every metric of one cell (see the module docstring)."""
    half = args.k // 2
    draws = make_draws(data, half)
    n_pool = data["pool_source"].size
    n = max(1, round(0.10 * n_pool))
    src = data["pool_source"]
    rel_t = {t: src == fam for t, fam in data["target_family"].items()}
    rel_any = np.isin(src, list(data["target_family"].values()))
    related_t = {t: np.isin(src, data["related"][t]) if data["related"][t] else None for t in rel_t}
    rng = np.random.default_rng(args.boot_seed)
    boot = rng.integers(0, n_pool, size=(args.n_boot, n_pool))
    zero = {d: draws[d].zero for d in draws}
    t0 = time.perf_counter()
    scores = {d: run_scorers(draws[d], args.target_max, args.score_seed) for d in draws}
    score_s = (time.perf_counter() - t0) / len(draws)
    out: dict[str, Any] = {"budget": n, "n_pool": n_pool, "score_s_per_draw_all_variants": score_s,
                           "pool_families": {f: int((src == f).sum()) for f in np.unique(src)},
                           "n_grad": {d: int((~zero[d]).sum()) for d in draws},
                           "n_grad_both_halves": int((~zero["A"] & ~zero["B"]).sum()),
                           "target_n_grad": {d: {t: int((~draws[d].target_zero[t]).sum())
                                                 for t in draws[d].targets} for d in draws},
                           "family_pass_rate": {f: float(data["pool_rewards"][src == f].mean())
                                                for f in np.unique(src)},
                           "scorers": {}, "baselines": {}}
    out["diagnostics"] = diagnostics(draws, scores, rel_t, src)
    out["noise_split"] = noise_split(draws, rel_t, rel_any, related_t, n, boot[:300], src, args)
    labels = [lab for lab, _, _ in scorer_grid()]
    for lab in labels:
        res: dict[str, Any] = {}
        per_t = {t: {d: scores[d][lab][t] for d in draws} for t in rel_t}
        for t in rel_t:
            res[t] = selection_metrics(rank_rule(per_t[t], n), ("A", "B"), zero, rel_t[t], related_t[t], n,
                                    boot, {d: per_t[t][d] for d in ("A", "B")}, src)
            res[t]["k16"] = selection_metrics(rank_rule(per_t[t], n), ("full",), zero, rel_t[t],
                                           related_t[t], n, boot[:300], None, src)["per_draw"]["full"]
        res["fused"] = selection_metrics(fused_rule(per_t, n), ("A", "B"), zero, rel_any, None, n, boot,
                                      None, src)
        res["fused"]["k16"] = selection_metrics(fused_rule(per_t, n), ("full",), zero, rel_any, None, n,
                                             boot[:300], None, src)["per_draw"]["full"]
        out["scorers"][lab] = res
        print(f"  analysed {lab} ({time.strftime('%H:%M:%S')})", flush=True)
    # paired differences to the paper's scorer (same bootstrap resamples of pool prompts)
    for key in [*rel_t, "fused"]:
        ref = out["scorers"]["paper"][key]
        for lab in labels:
            m = out["scorers"][lab][key]
            m["vs_paper"] = {"diff": m["enrichment_mean_halves"] - ref["enrichment_mean_halves"],
                             "ci": ci95(m["bootstrap"] - ref["bootstrap"])}
    for lab in labels:
        for key in [*rel_t, "fused"]:
            out["scorers"][lab][key].pop("bootstrap")
    # baselines: learnability = top p(1-p) (= pass rate closest to 0.5); ties broken at random
    # (expected share over tie orders for the point value, one fixed random order in bootstraps)
    pr = {d: draws[d].pass_rate for d in draws}
    tieb = np.random.default_rng(7).permutation(n_pool)
    learn = {d: np.where(zero[d], np.nan, pr[d] * (1 - pr[d]) + 1e-9 * tieb / n_pool) for d in draws}
    # stability of learnability: Spearman of the raw p(1-p) (ties averaged), not of the shared
    # tie-break order; "overlap" below uses that shared order and is therefore optimistic, see
    # "overlap_expected_over_ties" (independent tie orders in A and B)
    learn_raw = {d: np.where(zero[d], np.nan, pr[d] * (1 - pr[d])) for d in ("A", "B")}
    for name, masks in (("per_target", rel_t), ("fused", {"fused": rel_any})):
        for t, rel in masks.items():
            rl = related_t.get(t) if name == "per_target" else None
            m = selection_metrics(rank_rule(learn, n), ("A", "B"), zero, rel, rl, n, boot,
                               learn_raw, src)
            m["k16"] = selection_metrics(rank_rule(learn, n), ("full",), zero, rel, rl, n, boot[:300],
                                      None, src)["per_draw"]["full"]
            for d in ("A", "B", "full"):
                dd = m["per_draw"][d] if d != "full" else m["k16"]
                dd["share_expected_over_ties"] = learnability_expected(pr[d], zero[d], rel, n)
            ovs = []
            for s in range(200):  # expected overlap between halves over random tie orders
                tb = np.random.default_rng(100 + s).random(n_pool)
                a = top_n(np.where(zero["A"], np.nan, pr["A"] * (1 - pr["A"]) + 1e-9 * tb), n)
                b = top_n(np.where(zero["B"], np.nan, pr["B"] * (1 - pr["B"]) + 1e-9 * tb[::-1]), n)
                ovs.append(overlap(a, b, n))
            m["overlap_expected_over_ties"] = float(np.mean(ovs))
            m.pop("bootstrap")
            out["baselines"].setdefault("learnability", {})[t] = m
            # random among prompts with a gradient (= the paper's Pass Rate: 0 < p < 1) and random
            # over the whole pool: expected share (analytic), 95 % interval of one draw (hypergeometric)
            rnd = {}
            for d in ("A", "B", "full"):
                nz = ~zero[d]
                M, R = int(nz.sum()), int(rel[nz].sum())
                rnd[d] = {"share": R / M if M else None, "enrichment": 1.0,
                          "share_interval_one_draw": hypergeom_interval(M, R, min(n, M)),
                          "share_pool": float(rel.mean()),
                          "pool_random_share": float(rel.mean()),
                          "pool_random_enrichment": float(rel.mean()) / (R / M) if R else None,
                          "expected_overlap_between_halves": min(n, M) / M if M else None}
            out["baselines"].setdefault("random", {})[t] = rnd
    return out


def diagnostics(draws: dict[str, Draw], scores: dict[str, Any], rel_t: dict[str, np.ndarray],
                src: np.ndarray) -> dict[str, Any]:
    """The shared direction (cosines with the pool mean), the noise proxy's validity (does
    1/n1 + 1/n0 predict the squared A-B score difference?) and family-level stability."""
    from scipy.stats import spearmanr

    from cropi.influence.scorers import noise_proxy, pool_mean

    out: dict[str, Any] = {}
    for key, d in draws.items():
        m = pool_mean(d.pool, d.zero)
        ok = ~d.zero
        u = d.pool[ok] / np.linalg.norm(d.pool[ok], axis=1, keepdims=True)
        c = u @ (m / np.linalg.norm(m))
        tm = {t: f[~d.target_zero[t]].mean(0) for t, f in d.targets.items()}
        out[key] = {"cos_pool_rows_with_pool_mean": {"mean": float(c.mean()), "min": float(c.min()),
                                                     "max": float(c.max())},
                    "cos_target_mean_with_pool_mean": {t: float(v @ m / np.linalg.norm(v) / np.linalg.norm(m))
                                                       for t, v in tm.items()}}
        names = list(tm)
        if len(names) == 2:
            a, b = tm[names[0]], tm[names[1]]
            out[key]["cos_between_target_means"] = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    va = noise_proxy(draws["A"].n_correct, draws["A"].k)
    vb = noise_proxy(draws["B"].n_correct, draws["B"].k)
    both = np.isfinite(va) & np.isfinite(vb)
    noise = {}
    for lab in ("paper", "centred"):
        for t in rel_t:
            diff2 = (scores["A"][lab][t] - scores["B"][lab][t]) ** 2
            ok = both & np.isfinite(diff2)
            noise[f"{lab}/{t}"] = float(spearmanr(diff2[ok], (va + vb)[ok]).statistic) if ok.sum() > 3 else None
    out["spearman_sq_half_difference_vs_noise_proxy"] = noise
    fam = {}
    for lab in ("paper", "centred", "differential"):
        for t in rel_t:
            means = {}
            for key in ("A", "B"):
                s_ = scores[key][lab][t]
                means[key] = {f: float(np.nanmean(s_[src == f])) for f in np.unique(src)
                              if np.isfinite(s_[src == f]).sum() >= 2}
            common = sorted(set(means["A"]) & set(means["B"]))
            fam[f"{lab}/{t}"] = {
                "spearman_family_means_A_vs_B": float(spearmanr([means["A"][f] for f in common],
                                                                 [means["B"][f] for f in common]).statistic)
                if len(common) >= 3 else None,
                "family_means": {k_: v for k_, v in means.items()}}
    out["family_level"] = fam
    return out


NOISE_SPLIT_LABELS = ("paper", "differential", "centred", "centred-unit", "unitmean")


def noise_split(draws: dict[str, Draw], rel_t: dict[str, np.ndarray], rel_any: np.ndarray,
                related_t: dict[str, np.ndarray | None], n: int, boot: np.ndarray, src: np.ndarray,
                args: argparse.Namespace) -> dict[str, Any]:
    """Which side's rollout noise limits stability? Mixed draws: pool half A / B against the
    K=16 target means ("pool_noise": only the pool differs between the two; its enrichment is
    that of a K=8 pool with K=16 targets), and the K=16 pool against target half A / B
    ("target_noise": only the targets differ)."""
    import dataclasses

    mixed = {
        "pool_noise": {h: dataclasses.replace(draws[h], targets=draws["full"].targets,
                                              target_zero=draws["full"].target_zero) for h in ("A", "B")},
        "target_noise": {h: dataclasses.replace(draws["full"], targets=draws[h].targets,
                                                target_zero=draws[h].target_zero) for h in ("A", "B")},
    }
    out: dict[str, Any] = {}
    keep = ("enrichment_mean_halves", "enrichment_mean_halves_ci", "share_mean_halves", "spearman",
            "spearman_ci", "overlap", "overlap_ci", "n_both")
    for kind, pair in mixed.items():
        sc = {h: run_scorers(pair[h], args.target_max, args.score_seed) for h in pair}
        zero = {h: pair[h].zero for h in pair}
        out[kind] = {}
        for lab in NOISE_SPLIT_LABELS:
            per_t = {t: {h: sc[h][lab][t] for h in pair} for t in rel_t}
            res = {}
            for t in rel_t:
                m = selection_metrics(rank_rule(per_t[t], n), ("A", "B"), zero, rel_t[t], related_t[t], n, boot,
                                   per_t[t], src)
                res[t] = {k_: m.get(k_) for k_ in keep}
            m = selection_metrics(fused_rule(per_t, n), ("A", "B"), zero, rel_any, None, n, boot, None, src)
            res["fused"] = {k_: m.get(k_) for k_ in keep}
            out[kind][lab] = res
    return out


# ------------------------------------------------------------------------------------- cells
def run_cell(args: argparse.Namespace, suite: str, temperature: float, state: dict[str, Any]) -> dict[str, Any]:
    import torch

    from cropi.config import GradientConfig, ProjectionConfig, RolloutConfig
    from cropi.influence.pipeline import prepare_scoring
    from cropi.model.loading import load_model, load_tokenizer
    from cropi.rollout.collect import make_policy

    cdir = cell_dir(Path(args.work), suite_label(suite, args.cap), temperature, args.k, args.rollout_seed)
    print(f"== cell {suite} T={temperature:g} K={args.k} in {cdir} ({time.strftime('%H:%M:%S')})", flush=True)
    load = {"start": os.getloadavg()}
    cache: dict[str, Any] = {}

    def policy():
        if "policy" not in cache:
            tok = load_tokenizer("default")
            model = load_model("default", "fp32")
            cfg = RolloutConfig(temperature=temperature, max_new_tokens=args.max_new_tokens)
            cache["policy"] = make_policy(model, tok, cfg)
        return cache["policy"]

    timing_file = cdir / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    sets, roll_s = collect_cell(cdir, suite, cap=args.cap, suite_seed=args.suite_seed, k=args.k,
                                temperature=temperature, max_new_tokens=args.max_new_tokens,
                                rollout_seed=args.rollout_seed, policy_fn=policy)
    if "policy" in cache:  # something was sampled in this process (model load included)
        timing["rollout_s"] = timing.get("rollout_s", 0.0) + roll_s
    timing["rollout_sequences"] = sum(len(v) for v in sets.values()) * args.k
    load["after_rollouts"] = os.getloadavg()
    _write_json(timing_file, timing)
    half = args.k // 2
    feat_dir = cdir / "groups"
    pending = any(not (feat_dir / name / f"{it.id}.npz").exists() for name, v in sets.items() for it in v)
    recon = timing.get("reconstruction_check")
    if pending or recon is None:
        pol = policy()
        gcfg = GradientConfig(autocast_bf16=True)
        setup = prepare_scoring(pol.model, gcfg, ProjectionConfig(kind="countsketch", k=8192, seed=0,
                                                                  cache_gb=args.cache_gb))
        sc = Scorer(setup.model, setup.params, setup.projector, gcfg, pol.pad_id)
        for name, items in sets.items():
            t = features(sc, items, feat_dir / name, half)
            for key in ("grad_s", "project_s", "n_groups"):
                timing[f"{key}_this_run"] = timing.get(f"{key}_this_run", 0.0) + t[key]
            _write_json(timing_file, timing)
        if recon is None:
            g, _ = load_groups(sets["pool"], feat_dir / "pool")
            timing["reconstruction_check"] = check_reconstruction(sc, sets["pool"], g, half)
            _write_json(timing_file, timing)
        setup.release()
        cache.clear()
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    load["after_features"] = os.getloadavg()
    data, cost = cell_data(sets, feat_dir, half)
    data["target_family"], data["related"] = family_of(suite_spec(suite, args.cap))
    res = analyse(data, args)
    grad_s = sum(c["grad_s"] for c in cost.values())
    proj_s = sum(c["project_s"] for c in cost.values())
    res["cost"] = {"rollout_s_K16": timing.get("rollout_s"), "rollout_sequences": timing["rollout_sequences"],
                   "rollout_s_K8_estimate": None if timing.get("rollout_s") is None else timing["rollout_s"] / 2,
                   "grad_s_all_groups": grad_s, "project_s_all_groups": proj_s,
                   "groups": sum(c["n_groups"] for c in cost.values()),
                   "note": "group backwards cover both halves and give the K=16 features too; a K=8 "
                           "draw scored the usual way costs about half of grad_s + project_s "
                           "(one backward of 8 responses per prompt instead of two group "
                           "backwards: a little less)",
                   "score_s_per_draw_all_variants": res.pop("score_s_per_draw_all_variants")}
    res["reconstruction_check"] = timing.get("reconstruction_check")
    res["load_avg"] = load
    res["target_family"], res["related"] = data["target_family"], data["related"]
    return res


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


def _f(x: Any, nd: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def print_cell(key: str, res: dict[str, Any]) -> None:
    targets = list(res["target_family"])
    print(f"\n{key}: budget {res['budget']} of {res['n_pool']}; prompts with a gradient "
          f"A {res['n_grad']['A']}, B {res['n_grad']['B']}, K16 {res['n_grad']['full']}")
    heads = ["scorer"] + [f"enr {t}" for t in targets] + ["enr fused", "[CI]", "enr16 fused"] + \
        [f"rho {t}" for t in targets] + [f"ovl {t}" for t in targets] + ["ovl fused"]
    rows = []
    for lab, r in list(res["scorers"].items()) + [("learnability", {
            **res["baselines"]["learnability"], "fused": res["baselines"]["learnability"]["fused"]})]:
        ci = r["fused"].get("enrichment_mean_halves_ci", [None, None])
        rows.append([lab] + [_f(r[t]["enrichment_mean_halves"]) for t in targets]
                    + [_f(r["fused"]["enrichment_mean_halves"]), f"[{_f(ci[0])},{_f(ci[1])}]",
                       _f(r["fused"]["k16"]["enrichment"])]
                    + [_f(r[t].get("spearman")) for t in targets]
                    + [_f(r[t].get("overlap")) for t in targets] + [_f(r["fused"].get("overlap"))])
    print_table(heads, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", nargs="+", default=["default-small"])
    ap.add_argument("--cap", type=int, default=None,
                    help="at most this many prompts per pool family (big suites; targets stay whole)")
    ap.add_argument("--temperature", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--k", type=int, default=16, help="responses per prompt (split into two halves)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="selection_quality", help="result name under benchmarks/results")
    ap.add_argument("--work", default="runs/selection_quality", help="rollouts and features")
    ap.add_argument("--suite-seed", type=int, default=0)
    ap.add_argument("--rollout-seed", type=int, default=0)
    ap.add_argument("--score-seed", type=int, default=0)
    ap.add_argument("--target-max", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=N_BOOT)
    ap.add_argument("--boot-seed", type=int, default=0)
    ap.add_argument("--cache-gb", type=float, default=1.2, help="count-sketch table cache")
    ap.add_argument("--reanalyse", action="store_true", help="recompute finished cells' metrics")
    args = ap.parse_args()
    if args.k % 2:
        ap.error("--k must be even")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    prev = load_result(args.out) or {}
    cells = prev.get("cells", {})
    # earlier invocations that wrote this file (the header only holds the latest one)
    history = prev.get("history", [])
    if "command" in prev:
        entry = {k_: prev.get(k_) for k_ in ("command", "started", "date", "wall_s", "git")}
        entry["load_avg"] = [prev.get("machine", {}).get("load_avg_start"),
                             prev.get("machine", {}).get("load_avg_end")]
        entry["cells"] = sorted(prev.get("cells", {}))
        if entry not in history:
            history.append(entry)
    for suite in args.suite:
        for temp in args.temperature:
            key = f"{suite_label(suite, args.cap)}/" + cell_name(temp, args.k, args.rollout_seed).replace("-", "/")
            if key in cells and not args.reanalyse:
                print(f"skip {key} (done)")
                continue
            t0 = time.perf_counter()
            try:
                res = run_cell(args, suite, temp, {})
            except Exception:  # keep going with the next cell; a rerun resumes this one
                traceback.print_exc()
                continue
            res["cell_wall_s_this_run"] = time.perf_counter() - t0
            res["args"] = {k_: v for k_, v in vars(args).items() if k_ not in ("suite", "temperature")}
            # another process may be running other cells into this file
            with locked(lock_path(args.out)):
                path = result_path(args.out)
                if path.exists():  # the file's cells are newer than the ones read at start
                    cells = {**cells, **json.loads(path.read_text()).get("cells", {})}
                cells[key] = res
                payload = {"args": vars(args), "torch_threads": torch.get_num_threads(),
                           "definitions": DEFINITIONS, "scorer_grid": scorer_grid(), "history": history,
                           "cells": cells}
                path = write_result(args.out, payload)
            print_cell(key, res)
            print(f"wrote {path}", flush=True)


DEFINITIONS = {
    "relevant": "pool prompt whose source equals the target set's family (fused: any target's family)",
    "related": "pool families from the same reasoning-gym generator as the target family",
    "share": "relevant prompts among the picks / picks",
    "share_grad": "relevant prompts among pool prompts with a non-zero gradient in that draw",
    "enrichment": "share / share_grad",
    "picks": "top round(0.10 * |pool|) by score (NaN never picked; fused: RRF over targets)",
    "halves": "A = responses 0..K/2-1, B = K/2..K-1 of every pool and target prompt: two "
              "independent K/2 draws; full = all K responses",
    "spearman": "per-target scores of A vs B over pool prompts with a gradient in both",
    "overlap": "|top(A) & top(B)| / budget",
    "ci": "95 % percentile bootstrap over pool prompts (scores fixed; same resample for A and B)",
}

if __name__ == "__main__":
    main()
