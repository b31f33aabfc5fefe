"""The projector registry (``projection.kind``), importable without torch: each kind is declared
here with the factory that builds it, imported on first use (:mod:`cropi.influence.projection`)."""

from __future__ import annotations

from typing import Any

from cropi.utils.registry import Registry

PROJECTORS: Registry[Any] = Registry("projector")
"""``kind -> factory(cfg, d, chunk, cache_bytes) -> Projector``; more with
:func:`cropi.influence.projection.register_projector`."""
for _kind, _factory in (("countsketch", "countsketch_factory"), ("sparse-jl", "sparse_jl_factory"),
                        ("factorized", "factorized_factory"), ("none", "identity_factory")):
    PROJECTORS.register_lazy(_kind, f"cropi.influence.projection:{_factory}")
del _kind, _factory
