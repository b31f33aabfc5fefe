"""The rollout backend registry (``rollout.backend``), importable without torch.

``hf`` is cropi's own decode loop (:func:`cropi.rollout.collect.hf_sampler`); ``vllm`` lives in a
higher layer (:mod:`cropi.scale.vllm`) and is imported only when a config names it. More backends
register a factory ``(fp32 model, tokenizer, RolloutConfig, model folder) -> Sampler``.
"""

from __future__ import annotations

from typing import Any

from cropi.utils.registry import Registry

SAMPLERS: Registry[Any] = Registry("rollout backend")
SAMPLERS.register_lazy("hf", "cropi.rollout.collect:hf_sampler")
SAMPLERS.register_lazy("vllm", "cropi.scale.vllm:vllm_sampler")
