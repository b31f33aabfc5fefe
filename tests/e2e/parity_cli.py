"""`cropi` with one extra verifier for pipeline tests on random tiny models.

A random model never answers arithmetic correctly, so every reward would be 0 and every
gradient zero. ``parity`` rewards completions with an even number of characters: a coin flip
that depends on the sampled text, which exercises every code path. Tests only; not shipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cropi.verify import Verdict, register_verifier


@register_verifier("parity")
def _parity(completion: str, record: object) -> Verdict:
    return Verdict.of(len(completion) % 2 == 0, str(len(completion)), "even length")


def write_parity_sets(folder: Path, n_pool: int = 16, n_target: int = 6, n_test: int = 4) -> dict[str, Path]:
    """Pool, one target and two test sets as JSONL with the parity verifier."""
    folder.mkdir(parents=True, exist_ok=True)

    def rows(prefix: str, n: int, source: str) -> list[dict]:
        return [{"id": f"{prefix}{i}", "prompt": f"Say something about {source} {i}.", "answer": "0",
                 "source": source, "level": str(i % 2), "meta": {"verifier": "parity"}} for i in range(n)]

    files = {
        "pool": rows("p", n_pool // 2, "alpha") + rows("q", n_pool - n_pool // 2, "beta"),
        "target": rows("t", n_target, "alpha"),
        "test_t": rows("x", n_test, "alpha"),
        "test_u": rows("y", n_test, "beta"),
    }
    out = {}
    for name, data in files.items():
        out[name] = folder / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps(r) + "\n" for r in data))
    return out


if __name__ == "__main__":
    from cropi.cli import main

    sys.argv[0] = "cropi"
    main()
