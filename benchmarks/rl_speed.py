"""Round 1 vs now: GRPO step, rollout batch, greedy evaluation and POPI scoring, side by side.

Every task runs in both configurations on the same machine state: the two are interleaved (each
repetition alternates which goes first), so load from other jobs affects both alike.

    round1  TRL's own GRPO path (fp32 generation, the padded batch through the fused LM head),
            transformers ``generate`` for rollouts and evaluation (every row kept to the end, the
            packed fp32 log-prob pass, evaluation in file order), the packed POPI pass
    new     bf16 shadow generation + shared-prefix loss pass (``grpo_speed.FAST``), the ``decode`` loop
            (each prompt once, finished rows dropped), shared-prefix log-probs and POPI pass,
            evaluation batched by prompt length

Defaults: the default model and suite; a GRPO step of 2 prompts x 8 samples x <= 40 tokens; a
rollout batch of 8 prompts x K=8 x <= 64 tokens; 400 greedy test items x <= 64 tokens; POPI
gradients (all parameters, count-sketch k=8192) of 4 pool prompts with K=8. Also printed: the
bf16 and fp32 matmul throughput of this CPU, the model FLOPs of a step, and the mean token-level
KL(bf16 || fp32) of the policy on bf16-sampled responses (the off-policyness of bf16 sampling).
Results go to benchmarks/results/rl_speed.json after every cell; a rerun with the same arguments
skips the cells already there (``--fresh`` starts over).

    python benchmarks/rl_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cropi.bench import load_result, print_table, write_result
from cropi.bench.timing import StepTimer, matmul_gflops, timed_eval, timed_rollout

NAME = "rl_speed"
CONFIGS = ("round1", "new")


# ----------------------------------------------------------------------------- reference numbers
def model_params(model: torch.nn.Module) -> int:
    """Parameters a token's forward multiplies by: all but the input embedding (tied or not,
    the LM head counts once)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return total if emb is head else total - emb.numel()


# ----------------------------------------------------------------------------- GRPO step
def grpo_cell(config: str, records, args, rep: int, n_params: int) -> dict[str, Any]:
    from cropi.config import TrainConfig
    from cropi.train import grpo, grpo_speed

    cfg = TrainConfig(steps_per_stage=args.grpo_steps, prompts_per_step=2, samples_per_prompt=8,
                      max_new_tokens=40, seed=rep)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp, timer.patched():
        res = grpo.train_stage(args.model, Path(tmp) / "ck", records, cfg, device="cpu",
                               speed=grpo_speed.FAST if config == "new" else grpo_speed.ROUND1)
    t = timer.t
    steps = []
    for i, entry in enumerate(res.log):
        total = float(entry["step_seconds"])
        gen, rew = t["_generate"][i], t["_calculate_rewards"][i]
        prep, fwd, ts = t["_generate_and_score_completions"][i], t["_compute_loss"][i], t["training_step"][i]
        comp = float(entry.get("completions/mean_length", 0.0))
        n_seq = cfg.prompts_per_step * cfg.samples_per_prompt
        steps.append({"step_s": total, "generation_s": gen, "reward_s": rew, "prepare_other_s": prep - gen - rew,
                      "forward_s": fwd, "backward_s": ts - prep - fwd, "optimizer_s": total - ts,
                      "completion_mean_tokens": comp, "completion_tokens": comp * n_seq,
                      "loss": entry.get("loss"), "reward": entry.get("reward")})
    return {"steps": steps}


# ----------------------------------------------------------------------------- rollouts
def policies(model, tok):
    from cropi.config import RolloutConfig
    from cropi.rollout.collect import make_policy

    cfg = RolloutConfig()
    return {"round1": make_policy(model, tok, cfg, fast=False), "new": make_policy(model, tok, cfg)}


def rollout_cell(policy, records, args, rep: int) -> dict[str, Any]:
    from cropi.config import RolloutConfig

    cfg = RolloutConfig(k_pool=8, max_new_tokens=64, batch_size=64)
    return timed_rollout(policy, records[:args.rollout_prompts], 8, cfg, 1000 + rep)


# ----------------------------------------------------------------------------- evaluation
def eval_cell(policy, tests, config: str, args) -> dict[str, Any]:
    """The first ``args.eval_items`` test items, in the sets' order."""
    cut, n = {}, 0
    for name, recs in tests.items():
        cut[name] = list(recs)[:max(0, args.eval_items - n)]
        n += len(cut[name])
    out = timed_eval(policy, cut, by_length=config == "new")
    out["rewards"] = out.pop("verdicts")  # this file's name for them
    return out


# ----------------------------------------------------------------------------- scoring
def score_cell(model, items, config: str, autocast: bool, pad_id: int) -> dict[str, Any]:
    from cropi.config import GradientConfig, ProjectionConfig
    from cropi.influence import pipeline, popi
    from cropi.influence.pipeline import Timings, prepare_scoring, prompt_feature

    gcfg = GradientConfig(autocast_bf16=autocast)
    setup = prepare_scoring(model, gcfg, ProjectionConfig(kind="countsketch", k=8192))
    timings = Timings()
    original = pipeline.popi_backward
    pipeline.popi_backward = functools.partial(popi.popi_backward, shared_prefix=config != "round1")
    try:
        for it in items:
            prompt_feature(model, setup.params, setup.projector, it, gcfg, pad_id, timings)
    finally:
        pipeline.popi_backward = original
        setup.release()
    n = len(items) - timings.n_zero_grad
    return {"grad_s": timings.grad, "project_s": timings.project, "prompts": n,
            "s_per_prompt": (timings.grad + timings.project) / max(1, n)}


# ----------------------------------------------------------------------------- KL of bf16 sampling
def bf16_kl(model, tok, records, n_prompts: int = 8, k: int = 8) -> dict[str, Any]:
    """Mean over sampled response tokens of KL(pi_bf16 || pi_fp32)(. | s, a_<t), temperature 1."""
    from cropi.model.logprobs import pack
    from cropi.model.template import prompt_token_ids
    from cropi.rollout.decode import decode
    from cropi.rollout.sampler import eos_token_ids

    bf = copy.deepcopy(model).to(torch.bfloat16).eval()
    prompts = [prompt_token_ids(tok, r.prompt) for r in records[:n_prompts]]
    resp = decode(bf, prompts, k, 40, eos_token_ids(model, tok), tok.pad_token_id, seed=0)
    flat_p = [p for p in prompts for _ in range(k)]
    kls, lr = [], []
    for i in range(0, len(flat_p), 16):
        batch = pack(flat_p[i:i + 16], resp[i:i + 16], tok.pad_token_id)
        r_len = batch.response_len
        with torch.no_grad():
            lf = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, logits_to_keep=r_len + 1).logits[:, :r_len].float()
            lb = bf(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids, logits_to_keep=r_len + 1).logits[:, :r_len].float()
        lpf, lpb = lf.log_softmax(-1), lb.log_softmax(-1)
        kl = (lpb.exp() * (lpb - lpf)).sum(-1)
        m = batch.response_mask.bool()
        kls.append(kl[m])
        tokens = batch.response_ids.unsqueeze(-1)
        lr.append((lpb.gather(-1, tokens) - lpf.gather(-1, tokens)).squeeze(-1)[m])
    kl_all, lr_all = torch.cat(kls), torch.cat(lr)
    return {"tokens": int(kl_all.numel()), "mean_kl": float(kl_all.mean()), "max_kl": float(kl_all.max()),
            "mean_abs_logratio_sampled": float(lr_all.abs().mean()),
            "mean_logratio_sampled": float(lr_all.mean())}


# ----------------------------------------------------------------------------- main
def summarize(cells: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def med(task: str, cfg: str, f) -> float | None:
        vals = [v for key, c in cells.items() if key.startswith(f"{task}/{cfg}/") for v in f(c)]
        return float(statistics.median(vals)) if vals else None

    g = {c: {k: med("grpo", c, lambda x, k=k: [s[k] for s in x["steps"]])
             for k in ("step_s", "generation_s", "reward_s", "prepare_other_s", "forward_s", "backward_s",
                       "optimizer_s", "completion_mean_tokens")} for c in CONFIGS}
    r = {c: med("rollout", c, lambda x: [x["tokens_per_s"]]) for c in CONFIGS}
    e = {c: med("eval", c, lambda x: [x["items_per_s"]]) for c in CONFIGS}
    acc = {c: med("eval", c, lambda x: [x["accuracy"]]) for c in CONFIGS}
    s = {c: med("score", c, lambda x: [x["s_per_prompt"]]) for c in ("round1", "new", "new_bf16")}
    ratio = lambda a, b: (a / b) if a and b else None  # noqa: E731
    out["grpo"] = {**g, "speedup": ratio(g["round1"]["step_s"], g["new"]["step_s"]),
                   "speedup_by_part": {k: ratio(g["round1"][k], g["new"][k]) for k in g["new"]
                                       if k.endswith("_s")}}
    out["rollout_tokens_per_s"] = {**r, "speedup": ratio(r["new"], r["round1"])}
    out["eval_items_per_s"] = {**e, "speedup": ratio(e["new"], e["round1"]), "accuracy": acc}
    diffs = [key for key in cells if key.startswith("eval/new/")]
    if diffs and any(k.startswith("eval/round1/") for k in cells):
        a = cells[diffs[0]]["rewards"]
        b = cells[next(k for k in cells if k.startswith("eval/round1/"))]["rewards"]
        out["eval_items_per_s"]["items_differing"] = sum(a[k] != b.get(k) for k in a)
    out["score_s_per_prompt"] = {**s, "speedup": ratio(s["round1"], s["new"]),
                                 "speedup_bf16": ratio(s["round1"], s["new_bf16"])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--reps", type=int, default=2, help="repetitions of every cell per configuration")
    ap.add_argument("--grpo-steps", type=int, default=2, help="GRPO steps per stage (per repetition)")
    ap.add_argument("--rollout-prompts", type=int, default=8)
    ap.add_argument("--eval-items", type=int, default=400)
    ap.add_argument("--score-prompts", type=int, default=4)
    ap.add_argument("--tasks", nargs="+", default=["grpo", "rollout", "eval", "score"])
    ap.add_argument("--fresh", action="store_true", help="ignore the cells of an earlier run")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cropi.data.suites import build_suite
    from cropi.model.loading import load_model, load_tokenizer
    from cropi.rollout.store import PromptRollouts

    keep = {k: v for k, v in vars(args).items() if k not in ("fresh", "tasks")}
    prev = None if args.fresh else load_result(NAME)
    cells: dict[str, Any] = prev["cells"] if prev and prev.get("args") == keep else {}
    ref: dict[str, Any] = prev.get("reference", {}) if prev and prev.get("args") == keep else {}

    def save(partial: bool = True) -> None:
        write_result(NAME, {"args": keep, "partial": partial, "reference": ref, "cells": cells,
                            "summary": summarize(cells)})

    tok = load_tokenizer(args.model)
    model = load_model(args.model, "fp32").eval()
    suite = build_suite("default", 0)
    n_params = model_params(model)
    if "matmul_gflops" not in ref:
        ref["matmul_gflops"] = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
        ref["model_params_per_token"] = n_params
        ref["bf16_kl"] = bf16_kl(model, tok, suite.pool)
        save()
    print(f"matmul 1024^3: fp32 {ref['matmul_gflops']['fp32']:.0f} GFLOP/s, "
          f"bf16 {ref['matmul_gflops']['bf16']:.0f} GFLOP/s; KL(bf16||fp32) per token "
          f"{ref['bf16_kl']['mean_kl']:.2e}", flush=True)
    pols = policies(model, tok)
    score_items: list[PromptRollouts] = []

    def run(key: str, fn) -> None:
        if key in cells:
            return
        t = time.perf_counter()
        cells[key] = fn()
        print(f"{key}: {time.perf_counter() - t:.1f} s", flush=True)
        save()

    for rep in range(args.reps):
        order = CONFIGS if rep % 2 == 0 else CONFIGS[::-1]
        for c in order:
            if "grpo" in args.tasks:
                run(f"grpo/{c}/{rep}", lambda c=c: grpo_cell(c, suite.pool[:8], args, rep, n_params))
        for c in order:
            if "rollout" in args.tasks:
                run(f"rollout/{c}/{rep}", lambda c=c: rollout_cell(pols[c], suite.pool, args, rep))
        for c in order:
            if "eval" in args.tasks:
                run(f"eval/{c}/{rep}", lambda c=c: eval_cell(pols[c], suite.tests, c, args))
        if "score" in args.tasks:
            if not score_items:
                from cropi.config import RolloutConfig
                from cropi.rollout.collect import rows_for_chunk

                pool = [r for r in suite.pool[8:40]]
                rows, _ = rows_for_chunk(pols["new"], pool, 8, RolloutConfig(max_new_tokens=64), 7)
                mixed = [r for r in rows if 0 < r["pass_rate"] < 1] + [r for r in rows if r["pass_rate"] in (0, 1)]
                score_items = [PromptRollouts(r["id"], r["source"], r["level"], r["prompt_ids"], r["response_ids"],
                                              r["response_text"], np.asarray(r["rewards"], np.float32),
                                              [np.asarray(x, np.float32) for x in r["logprobs"]])
                               for r in mixed[:args.score_prompts]]
            for c in order + (("new_bf16",) if rep % 2 == 0 else ()):
                if c == "new_bf16" and rep % 2:
                    continue
                run(f"score/{c}/{rep}", lambda c=c: score_cell(model, score_items, "round1" if c == "round1" else "new",
                                                               c == "new_bf16", tok.pad_token_id))
    summary = summarize(cells)
    comp = summary["grpo"]["new"]["completion_mean_tokens"]
    if comp:
        from cropi.model.template import prompt_token_ids

        p_len = float(np.mean([len(prompt_token_ids(tok, r.prompt)) for r in suite.pool[:8]]))
        ref["step_prompt_tokens"] = p_len
        ref["step_gflop"] = 8 * n_params * 16 * (p_len + comp) / 1e9
    save(partial=False)

    g = summary["grpo"]
    steps_tok = g["new"]["completion_mean_tokens"] or 0
    print()
    rows = []
    for k in ("step_s", "generation_s", "reward_s", "prepare_other_s", "forward_s", "backward_s", "optimizer_s"):
        a, b = g["round1"][k], g["new"][k]
        rows.append([f"GRPO {k}", a, b, (a / b) if a and b else None])
    r, e, s = summary["rollout_tokens_per_s"], summary["eval_items_per_s"], summary["score_s_per_prompt"]
    rows.append(["rollout tok/s", r["round1"], r["new"], r["speedup"]])
    rows.append(["eval items/s (400 greedy)", e["round1"], e["new"], e["speedup"]])
    rows.append(["eval accuracy", e["accuracy"]["round1"], e["accuracy"]["new"], None])
    rows.append(["POPI+proj s/prompt (fp32)", s["round1"], s["new"], s["speedup"]])
    rows.append(["POPI+proj s/prompt (bf16 autocast)", s["round1"], s["new_bf16"], s["speedup_bf16"]])
    print_table(["", "round1", "new", "speedup"], rows)
    if steps_tok:
        print(f"GRPO step model FLOPs ~ {ref['step_gflop']:.0f} GFLOP (16 sequences of a "
              f"{ref['step_prompt_tokens']:.0f}-token prompt + {steps_tok:.0f} completion tokens: 2N per token "
              f"generated, 6N per token trained, N = {n_params / 1e6:.0f}M); achieved "
              f"{ref['step_gflop'] / g['round1']['step_s']:.1f} (round1) and "
              f"{ref['step_gflop'] / g['new']['step_s']:.1f} (new) GFLOP/s")
    print(f"eval items whose greedy verdict differs: {e.get('items_differing')}")
    print(f"wrote benchmarks/results/{NAME}.json")


if __name__ == "__main__":
    main()
