"""Model fingerprints for manifests: a hash of the config and of the weight files' contents."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cropi.utils.io import atomic_write_json, read_json

_CACHE_FILE = ".cropi_fingerprint.json"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(folder: str | Path) -> str:
    """sha256 over config.json and the weight files of a local model folder (cached per mtime)."""
    folder = Path(folder)
    if not folder.exists():
        return hashlib.sha256(str(folder).encode()).hexdigest()[:16]  # hub id
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    stamp = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = folder / _CACHE_FILE
    if cache.exists():
        try:
            data = read_json(cache)
            if data.get("stamp") == stamp:
                return str(data["fingerprint"])
        except (OSError, ValueError, KeyError):
            pass
    h = hashlib.sha256(json.dumps([[p.name, _file_digest(p)] for p in files]).encode())
    fp = h.hexdigest()[:16]
    try:
        atomic_write_json(cache, {"stamp": stamp, "fingerprint": fp})
    except OSError:
        pass  # read-only folder: recompute next time
    return fp
