"""Family calibration: can the default model learn a reasoning-gym family at all?

Before a family goes into a suite (as a target or as a distractor) we measure, on the default
model, per family: greedy accuracy, the mean pass rate of K responses sampled at the rollout
temperature, the share of prompts whose K responses are *mixed* (some right, some wrong: only
those carry a GRPO / POPI gradient), the share of completions in the strict answer format, and
the number of distinct questions the generator can produce (counted over 4,000 draws; a suite can
never use more). A family is *learnable* here when its sampled pass rate is roughly 0.05-0.6 and
at least a quarter of its prompts are mixed; below that it gives no gradient, above it little to
learn.

    OMP_NUM_THREADS=1 python benchmarks/family_calibration.py --threads 1

Results go to benchmarks/results/family_calibration.json after every family (a rerun skips the
families already there; ``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

from cropi.bench import result_path, write_result

# Candidate families that no built-in suite used before this benchmark (numeric answers, large
# question spaces), next to two catalogue families as anchors (cs1, gcd20: measured before).
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "aiw": ("aiw", {}),
    "lineq": ("simple_equations", dict(min_terms=2, max_terms=2, min_value=1, max_value=10,
                                       operators=("+", "-"), operators_weights=[0.5, 0.5])),
    "seq": ("number_sequence", {}),
    "primes30": ("count_primes", dict(max_n=30)),
    "lcm20": ("lcm", dict(min_numbers=2, max_numbers=2, min_value=2, max_value=20)),
    "letters": ("letter_counting", dict(min_words=3, max_words=5)),
    "bits255": ("count_bits", dict(max_n=255)),
}


def distinct_questions(dataset: str, config: dict[str, Any], draws: int = 4000) -> int:
    import reasoning_gym

    ds = reasoning_gym.create_dataset(dataset, seed=12345, size=draws, **config)
    return len({ds[i]["question"] for i in range(draws)})


def measure(name: str, fam: Any, args: argparse.Namespace, policy: Any) -> dict[str, Any]:
    from cropi.config import EvalConfig
    from cropi.data.suite_specs import SuiteSpec
    from cropi.data.suites import build_suite_from_spec
    from cropi.evaluation import evaluate_set

    spec = SuiteSpec(name=f"calib_{name}", description="calibration", pool=[(fam, args.n)])
    records = build_suite_from_spec(spec, seed=args.seed).pool
    cfg = EvalConfig(greedy=True, samples=args.k, temperature=args.temperature,
                     max_new_tokens=args.max_new_tokens, max_items=None, seed=args.seed)
    t0 = time.perf_counter()
    res = evaluate_set(policy, name, records, cfg, with_items=True)
    sampled = [r for r in res["items"] if r["mode"] != "greedy"]
    p = np.asarray([r["reward"] for r in sampled])
    mode = f"mean@{args.k}"
    return {
        "dataset": fam.dataset, "config": fam.config, "n": len(records),
        "greedy": res["greedy"], "greedy_format": res["greedy_format"],
        "sampled_pass_rate": res[mode], "sampled_format": res[f"{mode}_format"],
        "mixed_share": float(np.mean((p > 0) & (p < 1))),
        "all_right_share": float(np.mean(p == 1)), "all_wrong_share": float(np.mean(p == 0)),
        "distinct_questions_in_4000": distinct_questions(fam.dataset, fam.config),
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=[*CANDIDATES, "cs1", "gcd20"],
                    help="candidate names (see CANDIDATES) or catalogue families (cropi.data.suite_specs)")
    ap.add_argument("--n", type=int, default=32, help="prompts per family")
    ap.add_argument("--k", type=int, default=8, help="sampled responses per prompt")
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import json

    import torch

    from cropi.config import RolloutConfig
    from cropi.data.suite_specs import FAMILIES, FamilySpec
    from cropi.model.loading import load_model, load_tokenizer
    from cropi.rollout.collect import make_policy

    torch.set_num_threads(args.threads)
    path = result_path("family_calibration")
    rows = {} if args.fresh or not path.exists() else json.loads(path.read_text()).get("families", {})
    policy = make_policy(load_model("default", "fp32"), load_tokenizer("default"),
                         RolloutConfig(temperature=args.temperature, max_new_tokens=args.max_new_tokens))
    for name in args.families:
        if name in rows:
            print(f"skip {name} (done)")
            continue
        if name in CANDIDATES:
            dataset, config = CANDIDATES[name]
            fam = FamilySpec(name=name, dataset=dataset, config=config, level="candidate")
        else:
            fam = FAMILIES[name]
        rows[name] = measure(name, fam, args, policy)
        r = rows[name]
        print(f"{name:10s} greedy {r['greedy']:.2f}  T={args.temperature:g} pass {r['sampled_pass_rate']:.3f}  "
              f"mixed {r['mixed_share']:.2f}  format {r['sampled_format']:.2f}  "
              f"questions {r['distinct_questions_in_4000']}  ({r['seconds']:.0f} s)", flush=True)
        write_result("family_calibration", {"args": vars(args), "families": rows})


if __name__ == "__main__":
    main()
