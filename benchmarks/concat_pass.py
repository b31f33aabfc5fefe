"""The POPI gradient pass and the drift (ESS) pass with a prompt's responses concatenated against
padded rows, side by side on the default model.

``gradient.concat_responses`` (default true) runs a prompt's K responses as ONE sequence after the
prompt's KV cache, each response attending to the prompt and to itself only (a block attention
mask), so no position is padding, for every prompt where that costs fewer FLOPs
(``cropi.model.logprobs.concat_pays``). The earlier pass (false) ran one row per response, padded
to the longest. Both give the same log-probs and gradients up to float rounding: the relative difference
of the two full gradient vectors is reported per prompt in fp32 (--fp32-check prompts, autocast
off: rounding only) and for the timed passes (bf16 autocast where this CPU has fast bf16: the two
layouts round differently, so this is the size of bf16's own rounding, not a difference of method).

For each of the first --n-prompts pool prompts with a gradient of a rollouts folder, the two
passes alternate (concat first on even prompts, padded first on odd ones), so both see the same
machine load. Counted work: positions run forward/backward by each pass (real tokens, and the
padded positions of the earlier pass).

    OMP_NUM_THREADS=1 python benchmarks/concat_pass.py --rollouts RUN/rollouts --threads 1
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cropi.bench import print_table, write_result
from cropi.config import GradientConfig
from cropi.influence.drift import prompt_drift
from cropi.influence.params import select_params
from cropi.influence.popi import popi_backward
from cropi.model.loading import load_model, load_tokenizer
from cropi.model.logprobs import concat_pays
from cropi.rollout.store import PromptRollouts, load_rollouts


def positions(item: PromptRollouts, concat: bool, drift: bool, config: Any) -> int:
    """Positions one pass runs (one micro-batch per prompt): the prompt and the responses, where
    :func:`concat_pays` chooses the concatenated pass; the earlier passes pad every response to
    the longest (gradient) or repeat the prompt (drift)."""
    lens = [len(r) for r in item.response_ids]
    p = len(item.prompt_ids)
    if concat and concat_pays(config, p - 1, lens):
        return p - 1 + sum(lens)
    if concat:
        return p - 1 + len(lens) * (1 + max(lens))
    if drift:
        return len(lens) * (p + max(lens))
    return p - 1 + len(lens) * (1 + max(lens))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollouts", required=True, help="a run's rollouts folder (its pool set is used)")
    ap.add_argument("--n-prompts", type=int, default=24, help="first N pool prompts with a gradient")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--model", default="default")
    ap.add_argument("--fp32-check", type=int, default=4, help="prompts whose two gradients are also compared in fp32")
    ap.add_argument("--out", default="concat_pass", help="result file name")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    pad = int(load_tokenizer(args.model).pad_token_id)
    items = [it for it in load_rollouts(Path(args.rollouts) / "pool") if not it.zero_grad][:args.n_prompts]
    base = GradientConfig()
    params = select_params(model, base)
    secs: dict[str, float] = {"grad_concat": 0.0, "grad_padded": 0.0, "drift_concat": 0.0, "drift_padded": 0.0}
    rel: list[float] = []
    rel32: list[float] = []
    load0 = os.getloadavg()[0]
    for n, it in enumerate(items):
        grads: dict[bool, torch.Tensor] = {}
        for concat in ((True, False) if n % 2 == 0 else (False, True)):
            cfg = replace(base, concat_responses=concat)
            t = time.perf_counter()
            grads[concat] = _grad(model, params, it, cfg, pad)
            secs[f"grad_{'concat' if concat else 'padded'}"] += time.perf_counter() - t
            t = time.perf_counter()
            prompt_drift(model, it, pad, base.max_batch_tokens, concat)
            secs[f"drift_{'concat' if concat else 'padded'}"] += time.perf_counter() - t
        rel.append(_rel(grads[True], grads[False]))
        if n < args.fp32_check:
            rel32.append(_rel(*(_grad(model, params, it, replace(base, concat_responses=c, autocast_bf16=False), pad)
                                for c in (True, False))))
        print(f"prompt {n + 1}/{len(items)}: rel. difference {rel[-1]:.2e}"
              + (f" (fp32 {rel32[-1]:.1e})" if n < args.fp32_check else ""), flush=True)
    work = {f"{part}_{kind}": int(sum(positions(it, kind == "concat", part == "drift", model.config) for it in items))
            for part in ("grad", "drift") for kind in ("concat", "padded")}
    rows = [[part, f"{secs[f'{part}_padded'] / len(items):.3f}", f"{secs[f'{part}_concat'] / len(items):.3f}",
             f"{secs[f'{part}_padded'] / secs[f'{part}_concat']:.2f}x", work[f"{part}_padded"], work[f"{part}_concat"]]
            for part in ("grad", "drift")]
    print_table(["pass", "padded s/prompt", "concat s/prompt", "speed-up", "padded positions",
                 "concat positions"], rows)
    result: dict[str, Any] = {
        "args": vars(args), "n_prompts": len(items), "load_1min_start": load0, "load_1min_end": os.getloadavg()[0],
        "autocast_bf16": base.autocast_bf16, "seconds": secs, "positions": work,
        "speedup_grad": secs["grad_padded"] / secs["grad_concat"],
        "speedup_drift": secs["drift_padded"] / secs["drift_concat"],
        "grad_rel_difference_max": max(rel), "grad_rel_difference_median": float(np.median(rel)),
        "grad_rel_difference_fp32_max": max(rel32, default=None)}
    print(f"gradients: relative difference max {max(rel):.2e} (fp32: {max(rel32, default=float('nan')):.1e}); "
          f"result {write_result(args.out, result)}")


def _grad(model: torch.nn.Module, params: Any, item: PromptRollouts, cfg: GradientConfig, pad: int) -> torch.Tensor:
    """One prompt's POPI gradient as a float64 vector (the time includes reading it out)."""
    params.zero_grad()
    popi_backward(model, item, cfg, pad)
    return torch.cat([g.flatten() for g in params.grads()]).double()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


if __name__ == "__main__":
    main()
