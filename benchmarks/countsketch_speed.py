"""Count-sketch projection of a full-model gradient: the sign-table path against the code path,
side by side on the default model's parameter shapes.

Count-sketch sends coordinate ``i`` to bucket ``r_i >> 1`` with sign ``+`` for even ``r_i``
(``r_i`` uniform in ``[0, 2k)``, regenerated per chunk from the seed). The earlier path kept two
tables per chunk (bucket int32 and sign float32, 8 bytes per coordinate), multiplied the chunk by
its signs into a new tensor and added that at the buckets. The code path
(``CountSketchProjector._apply``) keeps ``r`` only (4 bytes per coordinate), adds each value at
``r`` in a ``2k`` buffer and takes the difference of its even and odd entries: the same sums in
another order, with less memory read and written per coordinate (the pass is memory-bound).

Both paths project the same gradients (random values in the shapes of the model's parameters,
d = 134.5M for the default model) with their tables cached, after one warm-up projection each;
the repetitions alternate which path goes first. Reported: median seconds per projection, the
speed-up, and the largest relative difference between the two results (float rounding only).

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/countsketch_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
import torch

from cropi.bench import print_table, write_result
from cropi.config import ProjectionConfig
from cropi.influence.projection import CountSketchProjector, make_projector
from cropi.influence.projection.core import iter_chunks
from cropi.model.loading import load_model


def sign_table_project(proj: CountSketchProjector, grads: list[torch.Tensor],
                       tables: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The earlier path: bucket and sign tables per chunk, a signed copy, ``index_add_``."""
    out = torch.zeros(proj.k)
    for c, pieces in iter_chunks(grads, proj.d, proj.chunk, batched=False):
        if c not in tables:
            tables[c] = proj.bucket_sign(c)
        bucket, sign = tables[c]
        for off, x in pieces:
            n = x.shape[1]
            out.index_add_(0, bucket[off:off + n], x[0].float() * sign[off:off + n])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--model", default="default")
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=10, help="timed projections per path")
    ap.add_argument("--out", default="countsketch_speed", help="result file name")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    shapes = [p.shape for p in load_model(args.model).parameters()]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    d = sum(g.numel() for g in grads)
    proj = make_projector(ProjectionConfig(k=args.k), d, cache_bytes=2**33)
    assert isinstance(proj, CountSketchProjector)
    tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    paths = {"sign tables (earlier)": lambda: sign_table_project(proj, grads, tables),
             "codes (now)": lambda: proj.project(grads)}
    results = {name: fn() for name, fn in paths.items()}  # warm-up: builds and caches the tables
    ref, new = results.values()
    rel = float(((new - ref).abs().max() / ref.abs().max()).item())
    secs: dict[str, list[float]] = {name: [] for name in paths}
    load0 = os.getloadavg()[0]
    for rep in range(args.reps):
        order = list(paths) if rep % 2 == 0 else list(reversed(paths))
        for name in order:
            t = time.perf_counter()
            paths[name]()
            secs[name].append(time.perf_counter() - t)
    med = {name: float(np.median(s)) for name, s in secs.items()}
    base = med["sign tables (earlier)"]
    rows = [[name, f"{med[name]:.3f}", f"{min(secs[name]):.3f}-{max(secs[name]):.3f}", f"{base / med[name]:.2f}x"]
            for name in paths]
    print_table(["path", "median s / projection", "min-max", "speed-up"], rows)
    result: dict[str, Any] = {
        "args": vars(args), "d": d, "k": args.k, "load_1min_start": load0, "load_1min_end": os.getloadavg()[0],
        "seconds": secs, "median_s": med, "speedup": base / med["codes (now)"],
        "table_bytes_per_coordinate": {"sign tables (earlier)": 8, "codes (now)": 4},
        "max_rel_difference": rel}
    print(f"max relative difference {rel:.1e}; result {write_result(args.out, result)}")


if __name__ == "__main__":
    main()
