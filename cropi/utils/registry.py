"""Named registries: the one place each kind of pluggable object (selection policies, scorers,
projectors, rollout and score backends, verifiers) is listed.

An entry is registered with its object, or lazily with a ``"module:attribute"`` path: the module is
imported on first :meth:`Registry.get`, so optional engines (vLLM, Ray) and torch-heavy modules
cost nothing until used, and config validation, ``--help`` texts and error messages list every
name without importing them. Facts about an entry (what it needs, whether it is seeded) live on
the registered object itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from cropi.utils.errors import CropiError

T = TypeVar("T")


class DuplicateNameError(CropiError, ValueError):
    """A second entry under a name that is already registered."""


class Registry(Generic[T]):
    """Name -> object of one kind, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, obj: T | None = None) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, a decorator that registers what it wraps."""
        if obj is None:
            def deco(fn: T) -> T:
                self.register(name, fn)
                return fn
            return deco
        self._add(name, obj)
        return obj

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``"module:attribute"``, imported on first use (optional or heavy modules)."""
        if ":" not in target:
            raise ValueError(f"lazy {self.kind} target {target!r} is not 'module:attribute'")
        self._add(name, target)

    def _add(self, name: str, entry: T | str) -> None:
        if name in self._entries:
            raise DuplicateNameError(f"a {self.kind} named {name!r} is already registered",
                             fix="register it under another name")
        self._entries[name] = entry

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def check(self, name: str, field: str | None = None) -> None:
        """Raise a one-line error naming the registered entries when ``name`` is not one of them."""
        if name not in self._entries:
            raise CropiError(f"unknown {self.kind} {name!r}", field=field,
                             fix=f"use one of {', '.join(self._entries)}")

    def get(self, name: str, field: str | None = None) -> T:
        """The object registered as ``name`` (importing a lazy entry's module now)."""
        self.check(name, field)
        entry = self._entries[name]
        if isinstance(entry, str):
            module, attr = entry.split(":", 1)
            try:
                obj = getattr(importlib.import_module(module), attr)
            except ImportError as exc:
                raise CropiError(f"{self.kind} {name!r} needs a package that is not installed ({exc})",
                                 field=field, fix="install the extra it needs (docs/install.md)") from None
            self._entries[name] = obj
            return obj
        return entry
