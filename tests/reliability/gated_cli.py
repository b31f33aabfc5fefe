"""`cropi` with a test verifier that can hold a command inside its rollouts, for tests that race
two processes or a signal against a run without depending on timing.

The ``gated`` verifier rewards completions of even length (a coin flip, as tests/e2e's parity).
With ``CROPI_TEST_GATE=FILE`` in the environment, every call first touches
``CROPI_TEST_INSIDE`` (when set) and then waits until FILE exists (past the verifier's deadline,
which would otherwise give reward 0). Tests only; not shipped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from cropi.verify import Verdict, register_verifier
from cropi.verify.deadline import _DeadlineExceeded


@register_verifier("gated")
def _gated(completion: str, record: object) -> Verdict:
    gate = os.environ.get("CROPI_TEST_GATE")
    if gate:
        inside = os.environ.get("CROPI_TEST_INSIDE")
        if inside:
            Path(inside).touch()
        while not Path(gate).exists():
            try:
                time.sleep(0.02)
            except _DeadlineExceeded:  # the verifier's deadline: held on purpose, keep waiting
                continue
    return Verdict.of(len(completion) % 2 == 0, str(len(completion)), "even length")


def write_sets(folder: Path, n_pool: int = 8, n_target: int = 4) -> dict[str, Path]:
    """Pool and one target set as JSONL with the gated verifier."""
    folder.mkdir(parents=True, exist_ok=True)

    def rows(prefix: str, n: int, source: str) -> list[dict]:
        return [{"id": f"{prefix}{i}", "prompt": f"Say something about {source} {i}.", "answer": "0",
                 "source": source, "level": "1", "meta": {"verifier": "gated"}} for i in range(n)]

    out = {"pool": folder / "pool.jsonl", "target": folder / "target.jsonl"}
    out["pool"].write_text("".join(json.dumps(r) + "\n" for r in rows("p", n_pool // 2, "alpha")
                                   + rows("q", n_pool - n_pool // 2, "beta")))
    out["target"].write_text("".join(json.dumps(r) + "\n" for r in rows("t", n_target, "alpha")))
    return out


if __name__ == "__main__":
    from cropi.cli import main

    sys.argv[0] = "cropi"
    main()
