"""What the scripts in benchmarks/ share, so that each runs as ``python benchmarks/NAME.py``:

- :mod:`cropi.bench.results`: result files (header, write, read, lock path) and console tables;
- :mod:`cropi.bench.store`: the resumable per-arm x seed store of benchmarks/acceleration.py;
- :mod:`cropi.bench.selection_cells`: the rollouts, group sums and draws of
  benchmarks/selection_quality.py (the metrics are :mod:`cropi.report.selection_quality`);
- :mod:`cropi.bench.selection_cost_summary`: the summary of benchmarks/selection_cost.py (enrichment,
  overlaps with their noise floor, speed-ups) from its stored cells;
- :mod:`cropi.bench.sparse_jl`: a timing estimate of the sparse JL projector;
- :mod:`cropi.bench.timing`: a CPU's matrix-product rate, the split of a GRPO step, timed rollouts and greedy evaluations.
"""

from cropi.bench.results import (HEADER_KEYS, RESULTS, SCHEMA, header, load_result, lock_path,
                                 print_table, result_path, write_result)

__all__ = ["HEADER_KEYS", "RESULTS", "SCHEMA", "header", "load_result", "lock_path", "print_table",
           "result_path", "write_result"]
