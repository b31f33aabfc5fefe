"""cropi: Curriculum RL with Off-Policy Influence guidance (CROPI) for RLVR on language models.

The Python API (docs/python.md) is importable from here; names are loaded on first use, so
``import cropi`` stays light (no torch until a function that needs it is called)::

    import cropi
    cfg = cropi.make_config(name="demo", data={"pool": "pool.jsonl", "targets": {"gsm8k": "val.jsonl"}})
    table = cropi.score_pool(cfg)
    sel = cropi.select_prompts(cfg, ratio=0.1)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "make_config": "cropi.api",
    "open_run": "cropi.api",
    "sample_rollouts": "cropi.api",
    "score_stage": "cropi.api",
    "score_pool": "cropi.api",
    "select_prompts": "cropi.api",
    "run_curriculum": "cropi.api",
    "compare": "cropi.api",
    "evaluate_model": "cropi.api",
    "write_report": "cropi.api",
    "resolve_model": "cropi.api",
    "Selection": "cropi.api",
    "RunConfig": "cropi.config",
    "load_config": "cropi.config",
    "Run": "cropi.curriculum.phases",
    "PromptRollouts": "cropi.rollout.store",
    "PromptRecord": "cropi.data.schema",
    "load_prompts": "cropi.data.io",
    "save_prompts": "cropi.data.io",
    "register_policy": "cropi.select",
    "available_policies": "cropi.select",
    "register_verifier": "cropi.verify",
    "CropiError": "cropi.utils.errors",
}

__all__ = ["__version__", *_EXPORTS]
"""Loaded on first use by :func:`__getattr__` (no static import here: ``cropi.verify`` and the
other light layers import ``cropi`` for ``__version__``)."""


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cropi' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
