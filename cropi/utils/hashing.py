"""Content fingerprints for manifests."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_json(obj: Any) -> str:
    """A canonical JSON text (sorted keys, no whitespace) used for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def fingerprint(obj: Any, length: int = 16) -> str:
    """Short sha256 hex digest of the canonical JSON form of ``obj``."""
    return hashlib.sha256(stable_json(obj).encode("utf-8")).hexdigest()[:length]
