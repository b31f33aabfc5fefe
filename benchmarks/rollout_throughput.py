"""Rollout throughput of the HF sampler: tokens/s by batch size and dtype (fp32 vs bf16).

Every row generates exactly ``--new-tokens`` tokens per sequence (min_new_tokens forces it), on the
default model with chat-templated prompts of the default suite. Prints a table with the bf16/fp32
ratio per batch size and writes benchmarks/results/rollout_throughput.json.

    python benchmarks/rollout_throughput.py [--batches 1 8 32 64] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from cropi.bench import print_table, write_result
from cropi.data.suites import build_suite
from cropi.model.loading import load_model, load_tokenizer
from cropi.model.template import prompt_token_ids


def _time_generate(model, tok, prompts, new_tokens: int) -> float:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, temperature=1.0,
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=tok.pad_token_id)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default); "
                    "use 1 when another job shares the cores, oversubscription distorts timings")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    fp32 = load_model(args.model, "fp32")
    models = {"fp32": fp32, "bf16": copy.deepcopy(fp32).to(torch.bfloat16)}
    pool = build_suite("default", 0).pool
    rows, results = [], []
    for b in args.batches:
        prompts = [prompt_token_ids(tok, r.prompt) for r in pool[:b]]
        tps = {}
        for name, model in models.items():
            _time_generate(model, tok, prompts[:1], 4)  # warm-up
            sec = _time_generate(model, tok, prompts, args.new_tokens)
            tps[name] = b * args.new_tokens / sec
            results.append({"batch": b, "dtype": name, "seconds": sec, "tokens_per_s": tps[name],
                            "sequences_per_s": b / sec})
        rows.append([b, tps["fp32"], tps["bf16"], tps["bf16"] / tps["fp32"]])
        print(f"batch {b}: fp32 {tps['fp32']:.0f} tok/s, bf16 {tps['bf16']:.0f} tok/s", flush=True)
        write_result("rollout_throughput", {"new_tokens": args.new_tokens, "rows": results, "partial": True})
    print_table(["batch", "fp32 tok/s", "bf16 tok/s", "bf16/fp32"], rows)
    path = write_result("rollout_throughput", {"new_tokens": args.new_tokens, "rows": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
