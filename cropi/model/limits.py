"""How long a prompt may be: the model's context must hold the templated prompt and the response.

Sampling (rollouts, evaluation, GRPO) and every gradient pass need ``prompt tokens +
max_new_tokens`` positions. A prompt that does not fit is refused with a one-line
:class:`CropiError` naming its file, row and field as soon as the tokenizer is loaded, before any
generation, instead of running out of memory (or silently past the trained positions) later.

The context is the smallest *declared* limit: the model config's position count
(``max_position_embeddings`` and its synonyms) and the tokenizer's ``model_max_length`` when it is
set (many tokenizers leave it at a huge placeholder). With neither, prompts are not checked here;
the data layer's character limit (``cropi.data.schema.max_prompt_chars``) still applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cropi.data.schema import PromptRecord
from cropi.model.template import prompt_token_ids
from cropi.utils.errors import CropiError

UNSET_MODEL_MAX_LENGTH = 10**12
"""A tokenizer ``model_max_length`` at or above this is transformers' "no limit" placeholder."""
_CONFIG_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length(tokenizer: Any, model: Any = None) -> int | None:
    """Tokens the model can attend over, or None when neither the model nor the tokenizer says."""
    limits = []
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < UNSET_MODEL_MAX_LENGTH:
        limits.append(tok_max)
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    for key in _CONFIG_KEYS:
        value = getattr(cfg, key, None) if cfg is not None else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            limits.append(value)
            break
    return min(limits) if limits else None


def check_prompt_fits(n_tokens: int, max_new_tokens: int, context: int | None, *,
                      file: str | None, row: int | None, setting: str) -> None:
    """Raise when ``n_tokens`` prompt tokens plus ``max_new_tokens`` exceed ``context``."""
    if context is None or n_tokens + max_new_tokens <= context:
        return
    raise CropiError(
        f"is {n_tokens:,} tokens after the chat template; with {setting}={max_new_tokens} that "
        f"exceeds the model's context of {context:,} tokens",
        file=file, row=row, field="prompt",
        fix=f"shorten or drop this prompt, or lower {setting}",
    )


def check_prompts_fit(tokenizer: Any, records: Sequence[PromptRecord], max_new_tokens: int, *,
                      setting: str, system_prompt: str | None = None, model: Any = None,
                      where: str | None = None) -> None:
    """Refuse the first record whose templated prompt (see :func:`prompt_token_ids`) plus
    ``max_new_tokens`` does not fit the context of ``model`` / ``tokenizer``.

    ``setting`` names the config key of ``max_new_tokens`` (e.g. ``rollout.max_new_tokens``) for
    the message; ``where`` names the set when a record does not know its file (built-in suites),
    and the row is then the record's position in the set. The ids are not kept (a large pool's
    ids would hold gigabytes); callers template again chunk by chunk.
    """
    context = context_length(tokenizer, model)
    if context is None:
        return
    for pos, rec in enumerate(records, start=1):
        n = len(prompt_token_ids(tokenizer, rec.prompt, system_prompt))
        check_prompt_fits(n, max_new_tokens, context, file=rec.file or where,
                          row=rec.row if rec.file else pos, setting=setting)
