"""Pools past memory: peak memory of writing, scoring and selecting a pool's feature store, by
pool size, today's whole-matrix path beside the chunked one. Synthetic features, no model.

For each ``--n`` (default 55,000 and 500,000 prompts, k = 8,192, fp16 as ``cropi score`` stores
them; two target sets of ``--target-n`` prompts), in separate child processes so that each peak
is its own:

- ``write``: the pool's store filled batch by batch as the scoring step does
  (``FeatureStore.write``: rows with pwrite, a CRC-32 per row, preallocated files);
- ``score+select, whole matrix (before)``: what ``_write_stage_scores`` did before this change:
  ``FeatureStore.read()`` as it was (the memory-mapped store turned into float32 and copied), the
  target means with ``target_mean``, the paper scorer (``cropi.influence.scorers.score``), then the
  rrf selection of 10 % (``cropi.select.rank_order``). Run under an address-space cap
  (``--cap-gb``): where it would need more, it fails fast and the row says so instead of taking
  the machine's memory;
- ``score+select, chunked (now)``: ``store_target_mean`` and ``store_cosine_scores`` (the store
  read in chunks of 4,096 rows by file reads), then the same selection.

Peak memory is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the child: resident pages,
memory-mapped file pages included. ``baseline`` is a child that only imports what the others
import. Where both score paths run, their scores are compared (they must be identical, NaN for
NaN) and so are their selections.

    OMP_NUM_THREADS=1 python benchmarks/pool_scale.py [--n 55000 500000] [--k 8192]
        [--dir /tmp/cropi_pool_scale] [--cap-gb 12] [--keep]

The stores take n x k x 2 bytes (8.2 GB at 500k) under ``--dir``; they are removed at the end
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cropi.bench import print_table, write_result

BATCH = 4096
RATIO = 0.10
ZERO_SHARE = 0.25
TARGETS = ("a", "b")


def peak_mb() -> float:
    """This process's peak resident memory in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def synthetic_rows(start: int, n: int, k: int, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start .. start + n`` of a synthetic store: the seeded base rows scaled per row, a
    quarter of them zero-gradient (stored as zeros)."""
    idx = np.arange(start, start + n)
    rng = np.random.default_rng(start)
    feats = base[idx % base.shape[0]] * rng.uniform(0.5, 2.0, size=(n, 1)).astype(np.float32)
    zero = (idx * 2654435761 % 100) < ZERO_SHARE * 100
    return feats, zero


def child_write(folder: Path, n: int, k: int) -> dict[str, Any]:
    from cropi.influence.features import FeatureStore

    base = np.random.default_rng(0).standard_normal((BATCH, k), dtype=np.float32)
    ids = [f"p{i}" for i in range(n)]
    t0 = time.perf_counter()
    store = FeatureStore.open(folder, ids, k, "fp16", {"benchmark": "pool_scale", "n": n})
    for start in range(0, n, BATCH):
        b = min(BATCH, n - start)
        feats, zero = synthetic_rows(start, b, k, base)
        store.write(ids[start:start + b], feats, zero)
    store.finalize()
    return {"seconds": time.perf_counter() - t0, "peak_mb": peak_mb()}


def child_score(root: Path, mode: str, out: Path) -> dict[str, Any]:
    from cropi.influence.features import FeatureStore
    from cropi.influence.scorers import score
    from cropi.influence.scores import store_cosine_scores, store_target_mean, target_mean
    from cropi.select import budget, rank_order

    t0 = time.perf_counter()
    pool = FeatureStore.load(root / "pool")
    targets = {t: FeatureStore.load(root / f"target_{t}") for t in TARGETS}
    if mode == "whole":
        means = {}
        for t, store in targets.items():
            feats = np.asarray(store.features, dtype=np.float32).copy()  # read() before this change
            means[t], _ = target_mean(feats, store.zero, store.ids)
        feats = np.asarray(pool.features, dtype=np.float32).copy()
        scores = score("paper", feats, pool.zero, means)
        del feats
    else:
        means = {t: store_target_mean(store)[0] for t, store in targets.items()}
        scores = store_cosine_scores(pool, means)
    picks = rank_order(scores, budget(pool.n, RATIO), "rrf")[:budget(pool.n, RATIO)]
    seconds = time.perf_counter() - t0
    np.savez(out, picks=picks, **{f"score_{t}": v for t, v in scores.items()})
    return {"seconds": seconds, "peak_mb": peak_mb()}


def child_main(argv: list[str]) -> None:
    mode, folder = argv[0], Path(argv[1])
    if mode == "baseline":
        import cropi.influence.scorers  # noqa: F401
        import cropi.influence.scores  # noqa: F401
        import cropi.select  # noqa: F401

        res = {"seconds": 0.0, "peak_mb": peak_mb()}
    elif mode == "write":
        res = child_write(folder, int(argv[2]), int(argv[3]))
    else:
        cap = float(argv[3])
        if cap > 0:
            resource.setrlimit(resource.RLIMIT_AS, (int(cap * 2**30), int(cap * 2**30)))
        try:
            res = child_score(folder, mode, Path(argv[2]))
        except MemoryError:
            res = {"seconds": None, "peak_mb": peak_mb(), "over_cap_gb": cap}
    print(json.dumps(res))


def run_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    if proc.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_scores(a: Path, b: Path) -> tuple[bool, bool]:
    """(identical scores, identical selections) of two children's outputs."""
    x, y = np.load(a), np.load(b)
    scores = all(np.array_equal(x[f"score_{t}"], y[f"score_{t}"], equal_nan=True) for t in TARGETS)
    return scores, bool(np.array_equal(x["picks"], y["picks"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[55_000, 500_000])
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--target-n", type=int, default=500)
    ap.add_argument("--dir", default="/tmp/cropi_pool_scale")
    ap.add_argument("--cap-gb", type=float, default=12.0,
                    help="address-space cap of the whole-matrix child (it fails fast beyond it)")
    ap.add_argument("--keep", action="store_true", help="keep the stores")
    ap.add_argument("--out", default="pool_scale", help="result name under benchmarks/results")
    args = ap.parse_args()

    rows: list[dict[str, Any]] = []
    base = run_child("baseline", "-")
    rows.append({"n": 0, "step": "baseline (imports only)", **base})
    for n in args.n:
        root = Path(args.dir) / f"n{n}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        try:
            for t in TARGETS:
                run_child("write", str(root / f"target_{t}"), str(args.target_n), str(args.k))
            w = run_child("write", str(root / "pool"), str(n), str(args.k))
            rows.append({"n": n, "step": "write (pwrite, checksums)", **w})
            print(f"n={n}: wrote the store in {w['seconds']:.0f} s, peak {w['peak_mb']:.0f} MB", flush=True)
            results = {}
            for mode, label, cap in (("whole", "score+select, whole matrix (before)", args.cap_gb),
                                     ("chunked", "score+select, chunked (now)", 0.0)):
                res = run_child(mode, str(root), str(root / f"{mode}.npz"), str(cap))
                results[mode] = res
                rows.append({"n": n, "step": label, **res})
                print(f"n={n} {label}: {json.dumps(res)}", flush=True)
            if results["whole"].get("seconds") is not None:
                identical, picks = same_scores(root / "whole.npz", root / "chunked.npz")
                rows[-1].update({"identical_scores": identical, "identical_selection": picks})
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    table = [[r["n"], r["step"], round(r["peak_mb"]), "over cap" if r.get("over_cap_gb") else
              (None if r["seconds"] is None else round(r["seconds"], 1)),
              {True: "yes", False: "NO", None: ""}[r.get("identical_scores")]] for r in rows]
    print_table(["n", "step", "peak MB", "seconds", "same scores"], table)
    payload = {"k": args.k, "dtype": "fp16", "target_n": args.target_n, "ratio": RATIO, "fusion": "rrf",
               "scorer": "paper", "cap_gb": args.cap_gb, "store_gb": {str(n): n * args.k * 2 / 1e9 for n in args.n},
               "rows": rows}
    print(f"wrote {write_result(args.out, payload)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
    else:
        main()
